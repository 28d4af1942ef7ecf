"""The configuration model: frozen dataclasses, and the defaults the parsers fill in.

Everything a sidecar is configured with ends up in one ``GatewayConfig``, built once at the
edge and never changed (a hot reload builds a new one). This module owns the shape of that
model and nothing that reads files: the operator renders the same model the sidecar loads,
and bench scripts build it in memory, so they import only this.

Each default is written once, here. A field's default lives on the dataclass field; the
parsers read it back through ``field_defaults`` rather than repeat the literal. Defaults
that code outside the parser also needs (the operator writes a broker's port and priority
into the document it renders) are module constants the field defaults use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from gateway.protocol import Game

FORMAT_VERSION = 1
"""The newest version of the gateway's own file format (``"version": 1``)."""

DEFAULT_PORT = 50051
"""The TCP port the sidecar's gRPC server listens on unless told otherwise."""

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
"""Where a game finds its sidecar unless told otherwise: loopback, the sidecar's port."""

DEFAULT_HEALTH_PORT = DEFAULT_PORT + 1
"""The port the injected sidecar serves ``grpc.health.v1`` on for the kubelet's probes."""

DEFAULT_BROKER_PORT = 1883
"""An MQTT broker's port when the file names none (plain MQTT's registered port)."""

DEFAULT_BROKER_PRIORITY = 1
"""A broker's priority when the file names none: the preferred rank."""


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards one broker. Without ``ca_file`` the system trust store is used."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class BrokerConfig:
    """One MQTT broker. Priority 1 is preferred; the id defaults to ``host:port``."""

    id: str
    host: str
    port: int = DEFAULT_BROKER_PORT
    priority: int = DEFAULT_BROKER_PRIORITY
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None

    @property
    def address(self) -> str:
        """``host:port``, as logs and the default broker id show the broker."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TableConfig:
    """The one game table this sidecar serves."""

    game: Game
    code: str
    command_topic: str
    response_topic: str
    shaker_listens: str | None = None
    shaker_says: str | None = None
    timeout_s: float = 10.0
    retry_count: int = 3
    retry_delay_s: float = 1.0
    input_url: str | None = None
    output_url: str | None = None
    # Extra topics every broker link subscribes to, streamed to the game by Subscribe.
    subscribe_topics: tuple[str, ...] = ()
    # Carry the W3C trace context inside the detect command (off: the devices are not ours).
    trace_context_in_command: bool = False
    # Baccarat: a hand is final only by the punto banco tableau (off for variants that
    # deal differently; then the first frame with the four first cards is the answer).
    baccarat_tableau: bool = True


@dataclass(frozen=True)
class LinkTimings:
    """Timers of the broker links and the active-broker decision (all in seconds)."""

    keepalive_s: int = 5
    operation_timeout_s: float = 2.0
    probe_interval_s: float = 0.2  # between probes of the active broker (and of all, when none is)
    probe_timeout_s: float = 0.6
    # Between probes of a standby broker (never less than probe_interval_s): only the active
    # one carries rounds, so only its hang must be noticed within a second; a standby that
    # becomes active is probed at once and from then on every probe_interval_s.
    standby_probe_interval_s: float = 1.0
    backoff_initial_s: float = 0.05
    # Short, so a link is back about a second after its broker heals (a refused connect
    # is cheap; a hung broker paces the attempts itself by its CONNACK timeout).
    backoff_max_s: float = 1.0
    holddown_s: float = 30.0
    holddown_max_s: float = 300.0


@dataclass(frozen=True)
class RedisConfig:
    """Where the shared active-broker record and statistics live (optional).

    ``url`` is ``redis://``, ``rediss://`` (TLS), ``unix://`` or
    ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``
    (``rediss+sentinel://`` for TLS to the Sentinels and the master); it may carry a
    password, so it is read from the environment or a file rather than written in a
    ConfigMap.
    """

    url: str | None = field(default=None, repr=False)
    key_prefix: str = "studio-gateway"
    view_ttl_s: float = 3.0  # a sidecar's broker view expires this long after its last report
    refresh_s: float = 1.0  # re-read of the record and refresh of the view, at least this often
    grace_s: float = (
        5.0  # Redis unreachable and the active broker locally dead this long: fail over locally
    )
    stats_interval_s: float = 1.0  # statistics are written at most this often
    stats_ttl_s: float = 15.0  # statistics of a vanished sidecar expire after this


@dataclass(frozen=True)
class GatewayConfig:
    """Everything one sidecar needs: its table, its brokers and its timers."""

    table: TableConfig
    brokers: tuple[BrokerConfig, ...]
    broker_group: str
    timings: LinkTimings = LinkTimings()
    redis: RedisConfig = RedisConfig()
    environment: str = "production"
    generation: int = 0
    source: str = "<memory>"

    def broker(self, broker_id: str) -> BrokerConfig:
        """The broker with this id (KeyError if the config has none): links name brokers by id."""
        for b in self.brokers:
            if b.id == broker_id:
                return b
        raise KeyError(broker_id)


def field_defaults(model: type[Any]) -> Mapping[str, Any]:
    """Each field's declared default by name, for a parser that fills in what a file omits.

    Reading them from the dataclass keeps every default written once, on its field.
    """
    return MappingProxyType({f.name: f.default for f in fields(model) if f.default is not MISSING})


def default_topics(table_code: str) -> tuple[str, str]:
    """The studio's topic pattern for a table: command and response topics."""
    return f"ikg/idp/{table_code}/command", f"ikg/idp/{table_code}/response"


def derive_broker_group(brokers: tuple[BrokerConfig, ...]) -> str:
    """A stable group id for tables sharing the same broker set."""
    key = ",".join(sorted(b.address for b in brokers))
    return "brokers-" + hashlib.sha256(key.encode()).hexdigest()[:12]
