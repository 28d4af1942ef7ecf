"""The predecessor's config module: ``GameType``, ``Environment``, ``BrokerConfig``,
``MQTTConfigManager``, ``get_config``; with a sidecar, informational.

Programs written for the predecessor build ``BrokerConfig`` objects and override
``system.config`` (brokers, topics, timeout, client id, default credentials) before
``initialize()``. With a sidecar those settings belong to the sidecar's table
configuration (the GameTable, or ``gateway serve --config``): the facade accepts every
assignment, compares what it can with what the sidecar serves (its Health), and warns
once naming each difference (``differences``). It never fails on them.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_config
from gateway.v1 import gateway_pb2 as pb

log = logging.getLogger("gateway.compat")

DEFAULT_CODES = {"sicbo": "SBO-001", "baccarat": "BAC-001", "roulette": "ARO-001"}
# Where MQTTConfigManager looks for the predecessor's per-table file, in config_dir.
CONFIG_FILES = ("{game}-broker.json", "{game}_broker.json", "{game}.json")


def _by_value(cls: type[StrEnum], value: object) -> Any:
    """A member whose value is ``value``'s value, case-insensitive (any enum or string)."""
    raw = value.value if isinstance(value, enum.Enum) else value
    if isinstance(raw, str):
        for member in cls:
            if member.value == raw.lower():
                return member
    return None


class GameType(StrEnum):
    """The studio's games, spelled as in the predecessor's configuration. Members of the
    predecessor's own enum (any enum whose value is "sicbo", ...) convert too."""

    SICBO = "sicbo"
    BACCARAT = "baccarat"
    ROULETTE = "roulette"

    @classmethod
    def _missing_(cls, value: object) -> Any:
        return _by_value(cls, value)


class Environment(StrEnum):
    """Accepted for compatibility; the sidecar's configuration decides what is reached."""

    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"

    @classmethod
    def _missing_(cls, value: object) -> Any:
        return _by_value(cls, value)


@dataclass
class BrokerConfig:
    """One broker as the predecessor described it (the sidecar's list is what counts)."""

    broker: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    priority: int = 1
    keepalive: int = 60
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


@dataclass
class GameConfig:
    """The table as the predecessor described it."""

    game_type: GameType
    game_code: str
    command_topic: str
    response_topic: str
    shaker_topic: str | None = None
    status_topic: str | None = None
    timeout: float = 10.0
    retry_count: int = 3
    retry_delay: float = 1.0


@dataclass
class MQTTConfig:
    """``system.config``: what the predecessor's program configured."""

    brokers: list[BrokerConfig]
    game_config: GameConfig
    environment: Environment = Environment.DEVELOPMENT
    client_id: str = ""
    default_username: str | None = None
    default_password: str | None = field(default=None, repr=False)
    source: str = "defaults"


def default_config(game: GameType, environment: Environment) -> MQTTConfig:
    """The predecessor's defaults for a game: its usual table code and topic pattern."""
    code = DEFAULT_CODES[game.value]
    table = GameConfig(game, code, f"ikg/idp/{code}/command", f"ikg/idp/{code}/response")
    return MQTTConfig([], table, environment)


class MQTTConfigManager:
    """Reads the predecessor's per-table file from ``config_dir`` (the first of
    ``CONFIG_FILES`` that exists), for programs that ask for it; defaults otherwise."""

    def __init__(self, config_dir: str | Path = "conf") -> None:
        self.config_dir = Path(config_dir)

    def get_config(
        self, game_type: GameType | str, environment: Environment | str = Environment.DEVELOPMENT
    ) -> MQTTConfig:
        """The table's settings from its file in ``config_dir``, else the defaults."""
        game, env = GameType(game_type), Environment(environment)
        for name in CONFIG_FILES:
            path = self.config_dir / name.format(game=game.value)
            if path.is_file():
                return _from_file(path, game, env)
        return default_config(game, env)


def get_config(
    game_type: GameType | str,
    environment: Environment | str = Environment.DEVELOPMENT,
    config_dir: str | Path = "conf",
) -> MQTTConfig:
    """``MQTTConfigManager(config_dir).get_config(game_type, environment)``."""
    return MQTTConfigManager(config_dir).get_config(game_type, environment)


def _from_file(path: Path, game: GameType, environment: Environment) -> MQTTConfig:
    """The predecessor's file, read with the sidecar's own loader (same meaning)."""
    try:
        loaded = load_config(path, env={})
    except ConfigError as exc:
        log.warning("predecessor config %s not used: %s", path, exc.message)
        return default_config(game, environment)
    t = loaded.table
    brokers = [
        BrokerConfig(
            broker=b.host,
            port=b.port,
            username=b.username,
            password=b.password,
            priority=b.priority,
            ssl=b.tls is not None,
            ssl_ca_certs=b.tls.ca_file if b.tls else None,
            ssl_certfile=b.tls.cert_file if b.tls else None,
            ssl_keyfile=b.tls.key_file if b.tls else None,
        )
        for b in loaded.brokers
    ]
    table = GameConfig(
        GameType(t.game.value), t.code, t.command_topic, t.response_topic,
        t.shaker_listens, t.shaker_says, t.timeout_s, t.retry_count, t.retry_delay_s,
    )  # fmt: skip
    return MQTTConfig(brokers, table, environment, source=str(path))


def differences(
    config: MQTTConfig, health: pb.HealthResponse, baseline: MQTTConfig | None = None
) -> list[str]:
    """What ``config`` says that the sidecar does not serve, one sentence each (pure).

    The client id and credentials cannot be compared (the sidecar never shows its own):
    they are named only where they differ from ``baseline`` (what the system started
    with), i.e. where the program set them."""
    out: list[str] = []
    g = config.game_config
    if g.game_code and g.game_code != health.table_code:
        out.append(f"game_code {g.game_code!r}: the sidecar serves table {health.table_code!r}")
    for name, mine, theirs in (
        ("command_topic", g.command_topic, health.command_topic),
        ("response_topic", g.response_topic, health.response_topic),
    ):
        if mine and theirs and mine != theirs:
            out.append(f"{name} {mine!r}: the sidecar uses {theirs!r}")
    if health.timeout_s and abs(float(g.timeout) - health.timeout_s) > 1e-9:
        out.append(f"timeout {g.timeout:g}s: the sidecar's detect timeout is {health.timeout_s:g}s")
    if config.brokers:
        mine_b = sorted((b.broker, int(b.port), int(b.priority)) for b in config.brokers)
        theirs_b = sorted((b.host, b.port, b.priority) for b in health.brokers)
        if mine_b != theirs_b:
            out.append(f"brokers {_brokers(mine_b)}: the sidecar uses {_brokers(theirs_b)}")
    base = baseline or MQTTConfig([], config.game_config)
    if config.client_id and config.client_id != base.client_id:
        out.append(
            f"client_id {config.client_id!r} is not used: the sidecar connects to each broker "
            f"with a client id of its own (instance {health.instance_id})"
        )
    named = [
        k
        for k in ("default_username", "default_password")
        if getattr(config, k) and getattr(config, k) != getattr(base, k)
    ]

    def key(b: BrokerConfig) -> tuple[object, ...]:
        return b.broker, b.port, b.username, b.password

    known = {key(b) for b in base.brokers}
    set_here = [b for b in config.brokers if key(b) not in known]
    named += sorted({f"brokers[].{k}" for b in set_here for k in ("username", "password")
                     if getattr(b, k)})  # fmt: skip
    if named:
        out.append(
            f"{', '.join(named)} not used: the sidecar connects with its own credentials "
            "(its Secret or environment)"
        )
    return out


def _brokers(items: list[tuple[str, int, int]]) -> str:
    return ", ".join(f"{h}:{p} (priority {q})" for h, p, q in items) or "none"
