"""Making one MQTT connection: TLS, protocol version, a packet-size limit, plain-words errors.

Every client the sidecar opens refuses packets over ``MAX_PACKET_BYTES`` before they are
read into memory (Mosquitto accepts publishes up to ~256 MB by default):

- **MQTT 5** (tried first): the CONNECT carries *Maximum Packet Size*, so the broker never
  sends a larger packet to this client; it discards the message for this client only.
- **MQTT 3.1.1** (used when a broker refuses MQTT 5): the protocol has no such property,
  so the client stops reading a packet whose announced size is over the limit and drops
  the connection, which then reconnects. A *retained* oversize message on a subscribed
  topic would make that link reconnect again and again: on 3.1.1 brokers also set the
  broker's own ``message_size_limit``.

``ProtocolChoice`` remembers, per link, which version the broker accepts.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import BrokerConfig
from gateway.tls import client_context

MAX_PACKET_BYTES = 128 * 1024
INCOMING_QUEUE_LIMIT = 1000  # messages read but not yet handled; more are discarded
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class PacketTooLarge(OSError):
    """A broker announced a packet over the limit (MQTT 3.1.1 links only)."""


def describe_error(exc: BaseException) -> str:
    """A plain-words name for a connection failure, safe to show (never a secret)."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc in (4, 5, 134, 135):
        return f"not authorised: bad username or password ({text})"
    if "not authori" in low or "bad user name or password" in low:
        return f"not authorised: bad username or password ({text})"
    if "certificate" in low or "ssl" in low or "tls" in low or isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {text}"
    if "refused" in low:
        return f"connection refused: {text}"
    if low.startswith("broker unresponsive"):
        return text
    if "timed out" in low or "no probe" in low:
        return f"broker unresponsive: {text}"
    return text


def tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The client TLS context for a broker, or None for plain TCP."""
    tls = broker.tls
    if tls is None:
        return None
    ctx = client_context(tls.server_name)
    if tls.ca_file:
        ctx.load_verify_locations(cafile=tls.ca_file)
    else:
        ctx.load_default_certs()
    if tls.cert_file and tls.key_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ProtocolChoice:
    """MQTT 5 first; 3.1.1 once a broker refuses 5, kept while it keeps working."""

    def __init__(self) -> None:
        self.version = aiomqtt.ProtocolVersion.V5

    def connect_failed(self, exc: BaseException, reached: bool) -> None:
        """A connect failed; ``reached``: the TCP (and TLS) connection had been made.

        A broker that takes the connection but refuses the CONNECT may not speak MQTT 5
        (3.1.1 brokers answer "unacceptable protocol version" or close): try the other
        version next time. Credentials refused under both simply alternate, harmlessly.
        """
        if reached:
            self.version = (
                aiomqtt.ProtocolVersion.V311
                if self.version is aiomqtt.ProtocolVersion.V5
                else aiomqtt.ProtocolVersion.V5
            )


def make_client(
    broker: BrokerConfig,
    *,
    identifier: str,
    keepalive_s: int,
    timeout_s: float,
    version: aiomqtt.ProtocolVersion,
    logger: Any,
    on_oversize: Callable[[int], None],
) -> aiomqtt.Client:
    """An aiomqtt client for one broker with every safety option of this module set."""
    v5 = version is aiomqtt.ProtocolVersion.V5
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        properties.MaximumPacketSize = MAX_PACKET_BYTES
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        identifier=identifier,
        keepalive=keepalive_s,
        timeout=timeout_s,
        socket_options=NODELAY,
        tls_context=tls_context(broker),
        protocol=version,
        clean_session=None if v5 else True,
        clean_start=True if v5 else paho_mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        max_queued_incoming_messages=INCOMING_QUEUE_LIMIT,
        logger=logger,
    )
    if not v5:
        _limit_packet_size(client, MAX_PACKET_BYTES, on_oversize)
    return client


def _limit_packet_size(
    client: aiomqtt.Client, limit: int, on_oversize: Callable[[int], None]
) -> None:
    """Refuse to read an incoming packet body over ``limit`` bytes (MQTT 3.1.1 links).

    paho-mqtt reads a packet's announced remaining length and then the whole body into
    memory; it reads the body through ``_sock_recv``, asking for all of it at once. The
    wrapper fails that read for an oversize body, which paho treats as a lost connection.
    """
    paho = client._client  # private: the only place where paho's reading can be bounded
    receive = paho._sock_recv

    def bounded(bufsize: int) -> bytes:
        packet = paho._in_packet
        if packet["have_remaining"] and packet["remaining_length"] > limit:
            size = int(packet["remaining_length"])
            on_oversize(size)
            raise PacketTooLarge(f"broker sent a packet of {size} bytes; the limit is {limit}")
        return receive(bufsize)

    setattr(paho, "_sock_recv", bounded)  # noqa: B010 - assigning to a method


def refused_code(code: object) -> bool:
    """A SUBACK entry that refuses the subscription (0x80 and above)."""
    if isinstance(code, ReasonCode):
        return bool(code.is_failure)
    return isinstance(code, int) and code >= 0x80


def socket_level(exc: BaseException) -> bool:
    """True when the failure is below MQTT (refused, unreachable, timed out, TLS)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError | TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()
    return "refused" in text or "timed out" in text or "unreachable" in text
