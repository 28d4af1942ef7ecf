"""The checks both file formats share: the table, its topics, hosts, the broker list, Redis.

The predecessor's format and the gateway's own spell their fields differently, but they
describe the same table and the same brokers, and a value one format accepts the other
must accept too. So each format's parser only maps its field names; building the table,
checking a topic or a host, reading a port, a priority or the detect timers, and checking
the broker list happen here, once, with the bounds and (from the model) the defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config.credentials import redis_url
from gateway.config.model import (
    DEFAULT_BROKER_PORT,
    DEFAULT_BROKER_PRIORITY,
    BrokerConfig,
    RedisConfig,
    TableConfig,
    default_topics,
    field_defaults,
)
from gateway.config.reading import Section, show
from gateway.errors import InvalidRequest
from gateway.protocol import Game, check_stream_url

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
"""A table code or broker id (used with fullmatch): it goes into topics, keys and logs."""

_TOPIC_FORBIDDEN = re.compile(r"[+#\x00]")
_TABLE = field_defaults(TableConfig)


def table(s: Section, **kw: Any) -> TableConfig:
    """The table from fields already read (``kw`` are TableConfig's fields), checked."""
    try:
        game = Game(kw["game"].lower())
    except ValueError:
        s.fail(
            "game" if "game" in s.data else "game_type",
            f"unknown game {show(kw['game'])}; expected one of {', '.join(g.value for g in Game)}",
        )
    code = kw["code"]
    if not ID.fullmatch(code):
        s.fail(
            "code" if "code" in s.data else "game_code",
            f"table code {show(code)} must be 1-63 letters, digits, '.', '_', ':' or '-'",
        )
    command, response = default_topics(code)
    for key, default in (("command_topic", command), ("response_topic", response)):
        kw[key] = topic(s, key, default if kw[key] is None else kw[key])
    for key in ("shaker_listens", "shaker_says"):
        if kw[key] is not None:
            kw[key] = topic(s, key, kw[key])
    extra = kw.get("subscribe_topics", _TABLE["subscribe_topics"])
    for i, name in enumerate(extra):
        key = f"subscribe_topics[{i}]"
        topic(s, key, name)
        if name in (kw["command_topic"], kw["response_topic"]):
            s.fail(key, f"{show(name)} is the table's command or response topic")
        if name in extra[:i]:
            s.fail(key, f"{show(name)} is listed twice")
    kw["subscribe_topics"] = tuple(extra)
    for key, name in (("input_url", "input"), ("output_url", "output")):
        if kw[key] is not None:
            try:
                check_stream_url(name, kw[key])
            except InvalidRequest as exc:
                s.fail(name, exc.message)
    kw["game"], kw["code"] = game, code
    return TableConfig(**kw)


@dataclass(frozen=True)
class TableKeys:
    """What one file format calls the table settings both formats have (the defaults
    are the gateway's own names)."""

    game: str = "game"
    code: str = "code"
    command_topic: str = "command_topic"
    response_topic: str = "response_topic"
    shaker_listens: str = "shaker_listens"
    shaker_says: str = "shaker_says"
    timeout: str = "timeout_s"
    retry_count: str = "retry_count"
    retry_delay: str = "retry_delay_s"
    input: str = "input"
    output: str = "output"


def table_fields(s: Section, keys: TableKeys) -> dict[str, Any]:
    """The settings both formats share, read under the format's own field names (in this
    order, so the first bad one is the one reported), for ``table()``."""
    return {
        "game": s.string(keys.game),
        "code": s.string(keys.code),
        "command_topic": s.opt_string(keys.command_topic),
        "response_topic": s.opt_string(keys.response_topic),
        "shaker_listens": s.opt_string(keys.shaker_listens),
        "shaker_says": s.opt_string(keys.shaker_says),
        "timeout_s": s.number(keys.timeout, _TABLE["timeout_s"], lo=0.1, hi=600),
        "retry_count": s.integer(keys.retry_count, _TABLE["retry_count"], lo=1, hi=20),
        "retry_delay_s": s.number(keys.retry_delay, _TABLE["retry_delay_s"], lo=0, hi=60),
        "input_url": s.opt_string(keys.input),
        "output_url": s.opt_string(keys.output),
    }


def broker_port(b: Section) -> int:
    """A broker's ``port`` (both formats name it so)."""
    return b.integer("port", DEFAULT_BROKER_PORT, lo=1, hi=65535)


def broker_priority(b: Section) -> int:
    """A broker's ``priority`` (both formats name it so); 1 is preferred."""
    return b.integer("priority", DEFAULT_BROKER_PRIORITY, lo=1, hi=1000)


def check_brokers(top: Section, brokers: tuple[BrokerConfig, ...]) -> None:
    """At least one broker, and no broker id twice (links and records are keyed by id)."""
    if not brokers:
        top.fail("brokers", "at least one broker is required")
    seen: dict[str, int] = {}
    for i, b in enumerate(brokers):
        if b.id in seen:
            top.fail(
                f"brokers[{i}]", f"duplicate broker id {show(b.id)} (also brokers[{seen[b.id]}])"
            )
        seen[b.id] = i


def redis_config(r: Section | None, env: Mapping[str, str], source: str) -> RedisConfig:
    """Redis settings; the URL from ``url_file``, ``url_env``, ``url``, then GATEWAY_REDIS_URL."""
    url = redis_url(r, env, source)
    if r is None:
        return RedisConfig(url=url)
    d = RedisConfig()
    config = RedisConfig(
        url=url,
        key_prefix=r.string("key_prefix", d.key_prefix),
        view_ttl_s=r.number("view_ttl_s", d.view_ttl_s, lo=0.5, hi=600),
        refresh_s=r.number("refresh_s", d.refresh_s, lo=0.05, hi=60),
        grace_s=r.number("grace_s", d.grace_s, lo=0, hi=3600),
        stats_interval_s=r.number("stats_interval_s", d.stats_interval_s, lo=0.05, hi=600),
        stats_ttl_s=r.number("stats_ttl_s", d.stats_ttl_s, lo=1, hi=86400),
    )
    if config.view_ttl_s <= config.refresh_s:
        r.fail("view_ttl_s", "must be longer than refresh_s, or views expire between refreshes")
    r.done()
    return config


def host(s: Section, key: str) -> str:
    """A broker's host name or IP address, one the socket layer can use."""
    name = s.string(key)
    if not name or any(c.isspace() or c in "/@" for c in name) or not resolvable(name):
        s.fail(key, f"{show(name)} is not a host name or IP address")
    return name


def resolvable(name: str) -> bool:
    """Whether the socket layer can encode the name (IDNA: labels of 1-63 characters)."""
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


def topic(s: Section, key: str, name: str) -> str:
    """A topic the sidecar publishes or subscribes to: no wildcards, 1-512 characters."""
    if not name or len(name) > 512 or _TOPIC_FORBIDDEN.search(name):
        s.fail(key, f"{show(name)} is not a publishable topic (no wildcards, 1-512 characters)")
    return name
