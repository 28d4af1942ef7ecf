"""Broker links and the pool that fans frames in and commands out.

``BrokerLink`` owns one aiomqtt connection to one broker and keeps it alive: connect
(TLS, credentials, TCP_NODELAY, a client id unique to this sidecar instance), subscribe
and wait for the SUBACK, prove the round trip with a first probe, then keep probing
through the broker every few hundred milliseconds. A killed broker is noticed when the
socket drops; a hung one when a probe misses its deadline, well before keepalive would.
Any failure marks the link DOWN at once, fails its in-flight publishes, and reconnects
with capped exponential backoff and jitter.

``BrokerPool`` runs one link per broker, all at once. Every ready link hears the
response topics (the IDP may answer on any broker); commands go to the broker the
``Elector`` names. Links never decide which broker is active.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from opentelemetry import trace
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import BrokerConfig, LinkTimings
from gateway.election import Decision, ElectionStatus, Elector, LinkState, LinkStatus
from gateway.errors import NoBrokerAvailable, raise_if_cancelled

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_mqtt_log = logging.getLogger(__name__ + ".mqtt")  # paho packet traces, quiet by default

MessageHandler = Callable[[str, str, bytes], None]
"""Called with (broker id, topic, payload) for every message on a subscribed topic."""

_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_FAILURE_MEMORY = 32


class ProbeMissed(Exception):
    """A probe did not come back through the broker in time."""


@dataclass(frozen=True)
class PublishReceipt:
    """Which broker accepted a command (PUBACK), under which epoch."""

    broker_id: str
    epoch: int


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
    if isinstance(exc, ProbeMissed):
        return f"broker unresponsive: {text}"
    if "timed out" in low:
        return f"broker unresponsive: {text}"
    return text


def _tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    tls = broker.tls
    if tls is None:
        return None
    ctx: ssl.SSLContext = (
        _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT, tls.server_name)
        if tls.server_name
        else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    )
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


class _ServerNameContext(ssl.SSLContext):
    """Verifies the broker's certificate against a configured name, not the dialled host."""

    def __new__(cls, protocol: int, server_name: str) -> _ServerNameContext:
        return super().__new__(cls, protocol)

    def __init__(self, protocol: int, server_name: str) -> None:
        self._server_name = server_name

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = self._server_name
        return super().wrap_socket(sock, *args, **kwargs)


def _refused(code: object) -> bool:
    """A SUBACK entry that refuses the subscription (0x80 and above)."""
    if isinstance(code, ReasonCode):
        return bool(code.is_failure)
    return isinstance(code, int) and code >= 0x80


class BrokerLink:
    """One supervised connection to one broker."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        topics: Sequence[str],
        instance_id: str,
        timings: LinkTimings,
        on_message: MessageHandler,
        on_state: Callable[[], None],
    ) -> None:
        self.broker = broker
        self._topics = tuple(topics)
        self._timings = timings
        self._on_message = on_message
        self._on_state = on_state
        self._client_id = f"gw-{instance_id}-{broker.id}"
        self._probe_topic = f"studio-gateway/probe/{instance_id}/{broker.id}"
        self._client: aiomqtt.Client | None = None
        self._state = LinkState.CONNECTING
        self._since = time.monotonic()
        self._since_wall = time.time()
        self._failures: list[float] = []
        self._failure_count = 0
        self._connects = 0
        self._publishes_ok = 0
        self._publishes_failed = 0
        self._rtt_ms = 0.0
        self._last_error = ""
        self._probe_waiter: tuple[int, asyncio.Future[None]] | None = None
        self._pending: set[asyncio.Future[None]] = set()

    @property
    def id(self) -> str:
        return self.broker.id

    @property
    def state(self) -> LinkState:
        return self._state

    def status(self) -> LinkStatus:
        return LinkStatus(
            id=self.broker.id,
            host=self.broker.host,
            port=self.broker.port,
            priority=self.broker.priority,
            state=self._state,
            since=self._since,
            since_wall=self._since_wall,
            failures=self._failure_count,
            failure_times=tuple(self._failures),
            probe_rtt_ms=self._rtt_ms,
            last_error=self._last_error,
            connects=self._connects,
            publishes_ok=self._publishes_ok,
            publishes_failed=self._publishes_failed,
        )

    def _set_state(self, state: LinkState) -> None:
        if state is self._state:
            return
        previous, self._state = self._state, state
        self._since, self._since_wall = time.monotonic(), time.time()
        attributes = {"broker": self.id, "from": previous.value, "to": state.value}
        if self._last_error and state is LinkState.DOWN:
            attributes["error"] = self._last_error
        _tracer.start_span("gateway.broker.state", attributes=attributes).end()
        self._on_state()

    def _mark_down(self, exc: BaseException) -> None:
        """Record the failure and fail publishes waiting on this connection, at once."""
        self._last_error = describe_error(exc)
        for fut in list(self._pending):
            fut.cancel()
        if self._state is LinkState.READY:
            self._failure_count += 1
            self._failures = [*self._failures[-_FAILURE_MEMORY + 1 :], time.monotonic()]
            log.warning("broker %s down: %s", self.id, self._last_error)
        elif self._state is LinkState.CONNECTING:
            log.info("broker %s not reachable: %s", self.id, self._last_error)
        self._set_state(LinkState.DOWN)

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait for the broker's acknowledgement (PUBACK for QoS 1)."""
        client = self._client
        if client is None or self._state is not LinkState.READY:
            raise NoBrokerAvailable(f"broker {self.id} is {self._state}")
        fut = asyncio.ensure_future(
            client.publish(topic, payload, qos=qos, timeout=self._timings.operation_timeout_s)
        )
        self._pending.add(fut)
        try:
            await fut
        except asyncio.CancelledError:
            self._publishes_failed += 1
            task = asyncio.current_task()
            if fut.cancelled() and task is not None and not task.cancelling():
                raise NoBrokerAvailable(
                    f"broker {self.id} went down during publish: {self._last_error}"
                ) from None
            raise
        except aiomqtt.MqttError as exc:
            self._publishes_failed += 1
            raise NoBrokerAvailable(
                f"publish to broker {self.id} failed: {describe_error(exc)}"
            ) from exc
        finally:
            self._pending.discard(fut)
        self._publishes_ok += 1
        raise_if_cancelled()  # the caller was cancelled but aiomqtt's wait_for ate it

    async def run(self) -> None:
        """Keep the connection up until cancelled."""
        t = self._timings
        attempt = 0
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._session()
                except (aiomqtt.MqttError, ProbeMissed, OSError) as exc:
                    self._mark_down(exc)
                raise_if_cancelled()
                if time.monotonic() - started > t.backoff_max_s * 2:
                    attempt = 0  # it was up for a while: start the backoff over
                delay = min(t.backoff_max_s, t.backoff_initial_s * 2.0**attempt)
                attempt += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                self._set_state(LinkState.CONNECTING)
        finally:
            self._client = None

    async def _session(self) -> None:
        b, t = self.broker, self._timings
        client = aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=self._client_id,
            keepalive=t.keepalive_s,
            timeout=t.operation_timeout_s,
            socket_options=_NODELAY,
            tls_context=_tls_context(b),
            clean_session=True,
            logger=_mqtt_log,
        )
        async with client:
            raise_if_cancelled()
            granted = await client.subscribe(
                [(topic, 1) for topic in self._topics] + [(self._probe_topic, 0)]
            )
            topics = [*self._topics, self._probe_topic]
            refused = [t for t, code in zip(topics, granted, strict=False) if _refused(code)]
            if refused:
                raise aiomqtt.MqttError(f"subscription refused by the broker for {refused}")
            raise_if_cancelled()
            self._client = client
            # Not a TaskGroup: on Python 3.11 a child failing while the group waits in
            # __aexit__ leaves the parent task with a pending cancel request, which later
            # swallows a real cancellation of this long-lived loop.
            read = asyncio.create_task(self._read(client), name=f"read {self.id}")
            probe = asyncio.create_task(self._probe(client), name=f"probe {self.id}")
            try:
                done, _ = await asyncio.wait({read, probe}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._client = None
                read.cancel()
                probe.cancel()
                await asyncio.wait({read, probe})
            for task in done:
                task.result()  # re-raise the failure that ended the session

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                topic = message.topic.value
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                if topic == self._probe_topic:
                    self._probe_answered(data)
                else:
                    self._on_message(self.id, topic, data)
        except aiomqtt.MqttError as exc:
            self._mark_down(exc)
            raise
        raise aiomqtt.MqttError("message stream ended")

    def _probe_answered(self, data: bytes) -> None:
        waiter = self._probe_waiter
        if waiter is not None and data == str(waiter[0]).encode() and not waiter[1].done():
            waiter[1].set_result(None)

    async def _probe(self, client: aiomqtt.Client) -> None:
        """Prove the round trip through the broker, forever; the first proof makes it READY."""
        t = self._timings
        seq = 0
        loop = asyncio.get_running_loop()
        while True:
            raise_if_cancelled()
            seq += 1
            fut: asyncio.Future[None] = loop.create_future()
            self._probe_waiter = (seq, fut)
            sent = time.monotonic()
            try:
                async with asyncio.timeout(t.probe_timeout_s):
                    await client.publish(self._probe_topic, str(seq).encode(), qos=0)
                    await fut
            except TimeoutError:
                exc = ProbeMissed(f"no probe answer within {t.probe_timeout_s:g}s")
                self._mark_down(exc)
                raise exc from None
            self._rtt_ms = (time.monotonic() - sent) * 1000
            if self._state is not LinkState.READY:
                self._connects += 1
                self._set_state(LinkState.READY)
                log.info("broker %s ready (probe %.2f ms)", self.id, self._rtt_ms)
            await asyncio.sleep(t.probe_interval_s)


class BrokerPool:
    """All brokers at once: frames in from every ready broker, commands out to the active one."""

    def __init__(
        self,
        brokers: Sequence[BrokerConfig],
        *,
        topics: Sequence[str],
        instance_id: str,
        timings: LinkTimings,
        elector: Elector,
        on_message: MessageHandler,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._elector = elector
        self._busy = busy
        self._listeners: list[Callable[[], None]] = []
        self.links = {
            b.id: BrokerLink(
                b,
                topics=topics,
                instance_id=instance_id,
                timings=timings,
                on_message=on_message,
                on_state=self.reevaluate,
            )
            for b in brokers
        }
        elector.add_listener(self._on_decision)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after any change of a link state or of the decision."""
        self._listeners.append(callback)

    def _on_decision(self, decision: Decision) -> None:
        self._notify()

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def reevaluate(self) -> None:
        """A link changed state: tell the elector and the listeners."""
        self._elector.update(self.statuses(), self._busy())
        self._notify()

    def busy_changed(self) -> None:
        """A round started or ended: a deferred fail-back may be due now."""
        self._elector.update(self.statuses(), self._busy())

    def statuses(self) -> list[LinkStatus]:
        return [link.status() for link in self.links.values()]

    def decision(self) -> Decision:
        return self._elector.current()

    def election_status(self) -> ElectionStatus:
        return self._elector.status()

    def any_ready(self) -> bool:
        return any(link.state is LinkState.READY for link in self.links.values())

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> PublishReceipt:
        """Publish to the active broker; NoBrokerAvailable at once if there is none."""
        decision = self._elector.current()
        if decision.broker_id is None:
            raise NoBrokerAvailable(f"no broker is ready ({self._summary()})")
        await self.links[decision.broker_id].publish(topic, payload, qos)
        return PublishReceipt(decision.broker_id, decision.epoch)

    def _summary(self) -> str:
        parts = []
        for link in self.links.values():
            error = link.status().last_error
            parts.append(f"{link.id}: {link.state}" + (f" ({error})" if error else ""))
        return "; ".join(parts)

    async def run(self) -> None:
        """Run every link and the elector until cancelled."""
        self.reevaluate()
        async with asyncio.TaskGroup() as tasks:
            for link in self.links.values():
                tasks.create_task(link.run(), name=f"link {link.id}")
            tasks.create_task(self._elector.run(), name="elector")
