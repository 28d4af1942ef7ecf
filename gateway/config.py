"""The sidecar's configuration: one frozen model, loaded once at the edge.

Two file formats are accepted, both JSON:

- the predecessor's per-table file, unchanged (``brokers[]`` with ``broker``/``port``/
  ``username``/``password``/``priority`` and ``game_config``);
- the gateway's own format (``"version": 1``), documented in ``docs/config.md``; it is
  what the operator renders, so the schema exists once, here.

Credentials may come from the file, from files (a mounted Kubernetes Secret) or from
environment variables; a password written inside the config file logs a warning. A bad
file fails with a ``ConfigError`` naming the file and the field, and nothing else: whatever
the bytes (too large, not UTF-8, nested too deeply, NaN, lone surrogates), the loader
raises ``ConfigError`` only, so a hot reload can keep a bad file out instead of ending the
process. Messages never hold a secret's value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import reprlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from gateway.errors import ConfigError as ConfigError  # re-exported for the operator
from gateway.errors import InvalidRequest
from gateway.protocol import Game, check_stream_url

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024  # a credential file or the Redis URL file
_TOPIC_FORBIDDEN = re.compile(r"[+#\x00]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # not encodable as UTF-8: paho and redis-py fail
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REDIS_SCHEMES = re.compile(r"^(rediss?|unix|rediss?\+sentinel)://")
_CREDENTIAL_KEYS = ("username", "password")  # any text, even control characters
_MAX_MESSAGE_CHARS = 2000
_MAX_INT_DIGITS = 100
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")  # used with fullmatch


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
    port: int = 1883
    priority: int = 1
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None

    @property
    def address(self) -> str:
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
    probe_interval_s: float = 0.2
    probe_timeout_s: float = 0.6
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    holddown_s: float = 30.0
    holddown_max_s: float = 300.0


@dataclass(frozen=True)
class RedisConfig:
    """Where the shared active-broker record and statistics live (optional).

    ``url`` is ``redis://``, ``rediss://`` (TLS), ``unix://`` or
    ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``
    (``rediss+sentinel://`` for TLS to the master); it may carry a password, so it is
    read from the environment or a file rather than written in a ConfigMap.
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
        for b in self.brokers:
            if b.id == broker_id:
                return b
        raise KeyError(broker_id)


def default_topics(table_code: str) -> tuple[str, str]:
    """The studio's topic pattern for a table: command and response topics."""
    return f"ikg/idp/{table_code}/command", f"ikg/idp/{table_code}/response"


def derive_broker_group(brokers: tuple[BrokerConfig, ...]) -> str:
    """A stable group id for tables sharing the same broker set."""
    key = ",".join(sorted(b.address for b in brokers))
    return "brokers-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a config file in either format; ConfigError is all it raises."""
    source = str(path)
    try:
        raw = _read_capped(source, MAX_CONFIG_BYTES)
        doc = _decode_json(raw, source)
        return parse_config(doc, source=source, env=os.environ if env is None else env)
    except _Unreadable as exc:
        _fail(f"{source}: {exc.problem}", exc.__cause__)
    except ConfigError:
        raise
    except Exception as exc:  # the last line of defence: one bad file never ends the process
        _fail(f"{source}: unexpected {type(exc).__name__} while loading the file", exc)


def parse_config(doc: Any, *, source: str, env: Mapping[str, str]) -> GatewayConfig:
    """Validate a decoded config document (either format) into the model.

    ConfigError is all it raises, whatever ``doc`` holds.
    """
    try:
        if not isinstance(doc, dict):
            _fail(f"{source}: the top level must be a JSON object")
        if "game_config" in doc and "version" not in doc:
            return _parse_legacy(_Section(doc, "", source, strict=False), env)
        return _parse_v1(_Section(doc, "", source, strict=True), env)
    except ConfigError:
        raise
    except Exception as exc:  # the last line of defence, as in load_config
        _fail(f"{source}: unexpected {type(exc).__name__} while validating the document", exc)


def dump_config(config: GatewayConfig) -> dict[str, Any]:
    """The gateway's own format for a config, without any secret values."""
    t = config.table
    table: dict[str, Any] = {
        "game": t.game.value,
        "code": t.code,
        "command_topic": t.command_topic,
        "response_topic": t.response_topic,
        "timeout_s": t.timeout_s,
        "retry_count": t.retry_count,
        "retry_delay_s": t.retry_delay_s,
        "trace_context_in_command": t.trace_context_in_command,
        "baccarat_tableau": t.baccarat_tableau,
    }
    for key, value in (
        ("shaker_listens", t.shaker_listens),
        ("shaker_says", t.shaker_says),
        ("input", t.input_url),
        ("output", t.output_url),
    ):
        if value is not None:
            table[key] = value
    if t.subscribe_topics:
        table["subscribe_topics"] = list(t.subscribe_topics)
    brokers = []
    for b in config.brokers:
        entry: dict[str, Any] = {"id": b.id, "host": b.host, "port": b.port, "priority": b.priority}
        if b.tls is not None:
            entry["tls"] = {k: v for k, v in vars(b.tls).items() if v not in (None, False)}
        brokers.append(entry)
    doc: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "generation": config.generation,
        "environment": config.environment,
        "broker_group": config.broker_group,
        "table": table,
        "brokers": brokers,
        "failover": dict(vars(config.timings)),
        "redis": {k: v for k, v in vars(config.redis).items() if k != "url"},
    }
    return doc


# --- the two formats -----------------------------------------------------------------


def _parse_v1(top: _Section, env: Mapping[str, str]) -> GatewayConfig:
    top.integer("version", lo=1, hi=FORMAT_VERSION)  # checked; there is one version so far
    t = top.section("table")
    table = _table(
        t,
        game=t.string("game"),
        code=t.string("code"),
        command_topic=t.opt_string("command_topic"),
        response_topic=t.opt_string("response_topic"),
        shaker_listens=t.opt_string("shaker_listens"),
        shaker_says=t.opt_string("shaker_says"),
        timeout_s=t.number("timeout_s", 10.0, lo=0.1, hi=600),
        retry_count=t.integer("retry_count", 3, lo=1, hi=20),
        retry_delay_s=t.number("retry_delay_s", 1.0, lo=0, hi=60),
        input_url=t.opt_string("input"),
        output_url=t.opt_string("output"),
        subscribe_topics=t.strings("subscribe_topics"),
        trace_context_in_command=t.boolean("trace_context_in_command", False),
        baccarat_tableau=t.boolean("baccarat_tableau", True),
    )
    t.done()
    brokers = tuple(_broker_v1(b, env) for b in top.sections("brokers"))
    _check_brokers(top, brokers)
    timings = _timings(top.opt_section("failover"))
    redis = _redis(top.opt_section("redis"), env, top.source)
    group = top.opt_string("broker_group") or derive_broker_group(brokers)
    config = GatewayConfig(
        table=table,
        brokers=brokers,
        broker_group=group,
        timings=timings,
        redis=redis,
        environment=top.string("environment", "production"),
        generation=top.integer("generation", 0, lo=0, hi=2**62),
        source=top.source,
    )
    top.done()
    return config


def _parse_legacy(top: _Section, env: Mapping[str, str]) -> GatewayConfig:
    g = top.section("game_config")
    table = _table(
        g,
        game=g.string("game_type"),
        code=g.string("game_code"),
        command_topic=g.opt_string("command_topic"),
        response_topic=g.opt_string("response_topic"),
        shaker_listens=g.opt_string("shaker_topic"),
        shaker_says=g.opt_string("status_topic"),
        timeout_s=g.number("timeout", 10.0, lo=0.1, hi=600),
        retry_count=g.integer("retry_count", 3, lo=1, hi=20),
        retry_delay_s=g.number("retry_delay", 1.0, lo=0, hi=60),
        input_url=g.opt_string("input_stream"),
        output_url=g.opt_string("output_stream"),
        trace_context_in_command=False,
    )
    brokers = []
    # Credentials for every broker that has none of its own (the predecessor's meaning).
    default_user = top.opt_string("default_username")
    default_password = top.opt_string("default_password")
    if default_password:
        log.warning("%s: default_password is written in the config file; prefer "
                    "password_file or an environment variable", top.source)  # fmt: skip
    for b in top.sections("brokers"):
        host = _host(b, "broker")
        port = b.integer("port", 1883, lo=1, hi=65535)
        broker_id = f"{host}:{port}"
        username, password = _credentials(b, broker_id, env)
        if username is None and password is None:
            username, password = default_user or None, default_password or None
        brokers.append(
            BrokerConfig(
                id=broker_id,
                host=host,
                port=port,
                priority=b.integer("priority", 1, lo=1, hi=1000),
                username=username,
                password=password,
                tls=_legacy_tls(b),
            )
        )
    frozen = tuple(brokers)
    _check_brokers(top, frozen)
    return GatewayConfig(
        table=table,
        brokers=frozen,
        broker_group=derive_broker_group(frozen),
        redis=_redis(None, env, top.source),
        environment=top.string("environment", "production"),
        source=top.source,
    )


def _legacy_tls(b: _Section) -> TlsSettings | None:
    """The predecessor's ``ssl``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``."""
    enabled = b.boolean("ssl", False)
    files = {key: b.opt_string(key) for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")}
    if not enabled:
        for key, value in files.items():
            if value is not None:
                b.fail(key, "is set but ssl is not true: say ssl: true, or remove it")
        return None
    if (files["ssl_certfile"] is None) != (files["ssl_keyfile"] is None):
        b.fail("ssl_certfile", "ssl_certfile and ssl_keyfile must be given together")
    return TlsSettings(
        ca_file=files["ssl_ca_certs"],
        cert_file=files["ssl_certfile"],
        key_file=files["ssl_keyfile"],
    )


def _table(s: _Section, **kw: Any) -> TableConfig:
    try:
        game = Game(kw["game"].lower())
    except ValueError:
        s.fail(
            "game" if "game" in s.data else "game_type",
            f"unknown game {_show(kw['game'])}; expected one of {', '.join(g.value for g in Game)}",
        )
    code = kw["code"]
    if not _ID.fullmatch(code):
        s.fail(
            "code" if "code" in s.data else "game_code",
            f"table code {_show(code)} must be 1-63 letters, digits, '.', '_', ':' or '-'",
        )
    command, response = default_topics(code)
    for key, default in (("command_topic", command), ("response_topic", response)):
        kw[key] = _topic(s, key, default if kw[key] is None else kw[key])
    for key in ("shaker_listens", "shaker_says"):
        if kw[key] is not None:
            kw[key] = _topic(s, key, kw[key])
    extra = kw.get("subscribe_topics", ())
    for i, topic in enumerate(extra):
        key = f"subscribe_topics[{i}]"
        _topic(s, key, topic)
        if topic in (kw["command_topic"], kw["response_topic"]):
            s.fail(key, f"{_show(topic)} is the table's command or response topic")
        if topic in extra[:i]:
            s.fail(key, f"{_show(topic)} is listed twice")
    kw["subscribe_topics"] = tuple(extra)
    for key, name in (("input_url", "input"), ("output_url", "output")):
        if kw[key] is not None:
            try:
                check_stream_url(name, kw[key])
            except InvalidRequest as exc:
                s.fail(name, exc.message)
    kw["game"], kw["code"] = game, code
    return TableConfig(**kw)


def _broker_v1(b: _Section, env: Mapping[str, str]) -> BrokerConfig:
    host = _host(b, "host")
    port = b.integer("port", 1883, lo=1, hi=65535)
    broker_id = b.string("id", f"{host}:{port}")
    if not _ID.fullmatch(broker_id):
        b.fail("id", f"{_show(broker_id)} must be 1-63 letters, digits, '.', '_', ':' or '-'")
    username, password = _credentials(b, broker_id, env)
    tls = None
    t = b.opt_section("tls")
    if t is not None:
        tls = TlsSettings(
            ca_file=t.opt_string("ca_file"),
            cert_file=t.opt_string("cert_file"),
            key_file=t.opt_string("key_file"),
            server_name=t.opt_string("server_name"),
            insecure_skip_verify=t.boolean("insecure_skip_verify", False),
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            t.fail("cert_file", "cert_file and key_file must be given together")
        name = tls.server_name
        if name is not None and (not name or name.startswith(".") or not _resolvable(name)):
            t.fail("server_name", f"{_show(name)} is not a host name")
        t.done()
    broker = BrokerConfig(
        id=broker_id,
        host=host,
        port=port,
        priority=b.integer("priority", 1, lo=1, hi=1000),
        username=username,
        password=password,
        tls=tls,
    )
    b.done()
    return broker


def _credentials(
    b: _Section, broker_id: str, env: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """Username and password: explicit file/env references first, then the environment
    (``GATEWAY_BROKER_<ID>_USERNAME`` / ``_PASSWORD``, then ``GATEWAY_BROKER_USERNAME`` /
    ``_PASSWORD`` for every broker), then the values written in the file."""
    found: list[str | None] = []
    slug = re.sub(r"[^A-Z0-9]", "_", broker_id.upper())
    directory = b.opt_string("credentials_dir")
    for part in _CREDENTIAL_KEYS:
        inline = b.opt_string(part)
        value: str | None = None
        path = b.opt_string(f"{part}_file")
        if path is not None:
            value = _read_secret(b, f"{part}_file", path, missing_ok=False)
        elif directory is not None:
            # An absent file in the mounted Secret is not an error: the environment may supply it.
            value = _read_secret(b, "credentials_dir", str(Path(directory) / part), missing_ok=True)
        ref = b.opt_string(f"{part}_env")
        if value is None and ref is not None:
            if ref not in env:
                b.fail(f"{part}_env", f"environment variable {ref} is not set")
            value = _env_secret(b, f"{part}_env", ref, env[ref])
        if value is None:
            for name in (f"GATEWAY_BROKER_{slug}_{part.upper()}", f"GATEWAY_BROKER_{part.upper()}"):
                if env.get(name):
                    value = _env_secret(b, part, name, env[name])
                    break
        if value is None and inline is not None:
            value = inline
            if part == "password" and inline:
                log.warning(
                    "%s: broker %s has its password written in the config file; "
                    "prefer password_file or an environment variable",
                    b.source,
                    broker_id,
                )
        found.append(value or None)
    return found[0], found[1]


def _check_brokers(top: _Section, brokers: tuple[BrokerConfig, ...]) -> None:
    if not brokers:
        top.fail("brokers", "at least one broker is required")
    seen: dict[str, int] = {}
    for i, b in enumerate(brokers):
        if b.id in seen:
            top.fail(
                f"brokers[{i}]", f"duplicate broker id {_show(b.id)} (also brokers[{seen[b.id]}])"
            )
        seen[b.id] = i


def _redis(r: _Section | None, env: Mapping[str, str], source: str) -> RedisConfig:
    """Redis settings; the URL from ``url_file``, ``url_env``, ``url``, then GATEWAY_REDIS_URL."""
    d = RedisConfig()
    url = env.get("GATEWAY_REDIS_URL") or None
    if r is None:
        problem = None if url is None else _redis_url_problem(url)
        if problem is not None:
            _fail(f"{source}: environment variable GATEWAY_REDIS_URL {problem}")
        return RedisConfig(url=url)
    path = r.opt_string("url_file")
    ref = r.opt_string("url_env")
    if path is not None:
        url = _read_secret(r, "url_file", path, missing_ok=False) or None
    elif ref is not None:
        if ref not in env:
            r.fail("url_env", f"environment variable {ref} is not set")
        url = _env_secret(r, "url_env", ref, env[ref])
    else:
        url = r.opt_string("url") or url
    problem = None if url is None else _redis_url_problem(url)
    if problem is not None:
        r.fail("url", problem)
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


def _timings(s: _Section | None) -> LinkTimings:
    if s is None:
        return LinkTimings()
    d = LinkTimings()
    timings = LinkTimings(
        keepalive_s=s.integer("keepalive_s", d.keepalive_s, lo=1, hi=3600),
        operation_timeout_s=s.number("operation_timeout_s", d.operation_timeout_s, lo=0.05, hi=60),
        probe_interval_s=s.number("probe_interval_s", d.probe_interval_s, lo=0.01, hi=60),
        probe_timeout_s=s.number("probe_timeout_s", d.probe_timeout_s, lo=0.01, hi=60),
        backoff_initial_s=s.number("backoff_initial_s", d.backoff_initial_s, lo=0.001, hi=60),
        backoff_max_s=s.number("backoff_max_s", d.backoff_max_s, lo=0.001, hi=600),
        holddown_s=s.number("holddown_s", d.holddown_s, lo=0, hi=3600),
        holddown_max_s=s.number("holddown_max_s", d.holddown_max_s, lo=0, hi=86400),
    )
    if timings.backoff_max_s < timings.backoff_initial_s:
        s.fail("backoff_max_s", "must be at least backoff_initial_s")
    if timings.holddown_max_s < timings.holddown_s:
        s.fail("holddown_max_s", "must be at least holddown_s")
    s.done()
    return timings


def _host(s: _Section, key: str) -> str:
    host = s.string(key)
    if not host or any(c.isspace() or c in "/@" for c in host) or not _resolvable(host):
        s.fail(key, f"{_show(host)} is not a host name or IP address")
    return host


def _resolvable(name: str) -> bool:
    """Whether the socket layer can encode the name (IDNA: labels of 1-63 characters)."""
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


def _topic(s: _Section, key: str, topic: str) -> str:
    if not topic or len(topic) > 512 or _TOPIC_FORBIDDEN.search(topic):
        s.fail(key, f"{_show(topic)} is not a publishable topic (no wildcards, 1-512 characters)")
    return topic


def _redis_url_problem(url: str) -> str | None:
    """Why the Redis client could not use the URL; never the URL itself (it may hold a
    password)."""
    problem = _text_problem(url, controls=True)
    if problem is not None:
        return problem
    if not _REDIS_SCHEMES.match(url):
        return "must start with redis://, rediss://, unix:// or redis+sentinel://"
    try:
        parts = urlsplit(url)
        if "+sentinel" not in parts.scheme:  # a Sentinel URL lists several host:port pairs
            _ = parts.port  # parsing the port is the check
    except ValueError:
        return "is not a valid URL (bad host or port)"
    return None


# --- reading files and secrets: capped, UTF-8, errors that name the field ---------------


class _Unreadable(Exception):
    """A file that cannot be used; ``problem`` says why, never what the file holds."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _read_capped(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (the file may change while it is read)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL byte in the path
        raise _Unreadable(f"cannot read: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("cannot read: not a regular file")
        if info.st_size > limit:
            raise _Unreadable(f"file is {info.st_size} bytes; at most {limit}")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise _Unreadable(f"file is more than {limit} bytes; at most {limit}")
    return data


def _decode_json(raw: bytes, source: str) -> Any:
    """The document in ``raw``; NaN, Infinity and numbers beyond a float are refused."""
    try:
        return json.loads(
            raw, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_short_int
        )
    except RecursionError as exc:
        _fail(f"{source}: not valid JSON: nested too deeply", exc)
    except MemoryError as exc:
        _fail(f"{source}: not valid JSON: too large to decode", exc)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the hooks below
        _fail(f"{source}: not valid JSON: {exc}", exc)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows; write a finite number")


def _short_int(text: str) -> int:
    # Before int(): Python refuses over 4300 digits, and no field needs more than 19.
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits; at most {_MAX_INT_DIGITS}")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond the range of a float")
    return value


def _read_secret(s: _Section, key: str, path: str, *, missing_ok: bool) -> str | None:
    """A credential or URL file's text, stripped (None if absent and ``missing_ok``)."""
    try:
        data = _read_capped(path, MAX_SECRET_BYTES)
    except _Unreadable as exc:
        if missing_ok and isinstance(exc.__cause__, FileNotFoundError | NotADirectoryError):
            return None
        s.fail(key, f"{path}: {exc.problem}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        s.fail(key, f"{path}: not UTF-8 text")
    return text.strip()


def _env_secret(s: _Section, key: str, name: str, value: str) -> str:
    """A secret from the environment; the process's environment may hold undecodable bytes."""
    if _SURROGATE.search(value):
        s.fail(key, f"environment variable {name} is not UTF-8 text")
    return value


def _text_problem(value: str, *, controls: bool) -> str | None:
    """What makes a string unusable on the wire or in a path, without showing it."""
    found = _SURROGATE.search(value)
    if found:
        return f"is not valid Unicode text (a lone surrogate at character {found.start()})"
    found = _CONTROL.search(value) if controls else None
    if found:
        code = ord(found.group())
        return f"holds a control character (U+{code:04X}) at character {found.start()}"
    return None


class _Brief(reprlib.Repr):
    """A bounded repr for messages: deep, long or huge values never make the error fail."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 2, 80, 80
        self.maxlist = self.maxdict = self.maxtuple = 4

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an integer over 4300 digits raises ValueError.
        return repr(x) if x.bit_length() <= 128 else f"<an integer of {x.bit_length()} bits>"


_show = _Brief().repr


def _clean(text: str) -> str:
    """A message safe for a log line and a protobuf string: no lone surrogates, no control
    characters, bounded length."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "..."
    return text


def _fail(message: str, cause: BaseException | None = None) -> NoReturn:
    raise ConfigError(_clean(message)) from cause


# --- typed field access with precise error messages ----------------------------------

_MISSING: Any = object()


class _Section:
    """One JSON object of the config, read field by field; errors name file and field."""

    def __init__(self, data: dict[str, Any], where: str, source: str, *, strict: bool) -> None:
        self.data = data
        self.where = where
        self.source = source
        self.strict = strict
        self._read: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> NoReturn:
        _fail(f"{self.source}: {self.path(key)}: {problem}")

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _MISSING:
            self.fail(key, "is required")
        return default

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {type(value).__name__}")
        return self._text(key, value)

    def opt_string(self, key: str) -> str | None:
        value = self._get(key, None)
        if value is not None and not isinstance(value, str):
            self.fail(key, f"must be a string, got {type(value).__name__}")
        return None if value is None else self._text(key, value)

    def _text(self, key: str, value: str) -> str:
        """Every string goes on the wire or into a path: it must encode as UTF-8, and only
        credentials may hold control characters."""
        problem = _text_problem(value, controls=key not in _CREDENTIAL_KEYS)
        if problem is not None:
            self.fail(key, problem)
        return value

    def integer(self, key: str, default: Any = _MISSING, *, lo: int, hi: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, got {_show(value)}")
        if not lo <= value <= hi:
            self.fail(key, f"must be between {lo} and {hi}, got {_show(value)}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, lo: float, hi: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"must be a number, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value}")
        if not lo <= value <= hi:
            self.fail(key, f"must be between {lo:g} and {hi:g}, got {_show(value)}")
        return float(value)

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_show(value)}")
        return value

    def section(self, key: str) -> _Section:
        value = self._get(key, _MISSING)
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, got {type(value).__name__}")
        return _Section(value, self.path(key), self.source, strict=self.strict)

    def opt_section(self, key: str) -> _Section | None:
        return self.section(key) if self.data.get(key) is not None else self._get(key, None)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "must be a list of strings")
        return tuple(self._text(f"{key}[{i}]", v) for i, v in enumerate(value))

    def sections(self, key: str) -> list[_Section]:
        value = self._get(key, _MISSING)
        if not isinstance(value, list):
            self.fail(key, f"must be a list, got {type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(f"{key}[{i}]", f"must be an object, got {type(item).__name__}")
            out.append(_Section(item, self.path(f"{key}[{i}]"), self.source, strict=self.strict))
        return out

    def done(self) -> None:
        """Reject unknown fields (they are usually typos) in the strict format."""
        unknown = sorted((_field_name(k) for k in set(self.data) - self._read), key=str)
        if unknown and self.strict:
            self.fail(unknown[0], "unknown field")
        for key in unknown:
            log.debug("%s: ignoring field %s", _clean(self.source), _clean(self.path(key)))


def _field_name(key: object) -> str:
    """A field's name as a message shows it: quoted unless it is a plain word."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else _show(key)
