"""Loading a config file, and the gateway's own format (``"version": 1``) both ways.

``load_config`` is the one entry point a sidecar uses, at start-up and on every hot
reload: it reads the file capped, decodes it strictly, tells the two formats apart (a
``game_config`` without a ``version`` is the predecessor's) and validates it into the
model. ConfigError is all it raises, whatever the file holds, so a bad reload is kept out
and the last good configuration stays. ``parse_config`` is the same without the file, for
the operator, which validates what it renders before it writes a ConfigMap.

The gateway's format (``docs/config.md``) is strict: an unknown field is refused, because
it is usually a typo that would otherwise be silently ignored. ``dump_config`` writes it
back, without any secret values; parsing the dump gives the same config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.credentials import broker_credentials
from gateway.config.legacy import parse_legacy
from gateway.config.model import (
    FORMAT_VERSION,
    BrokerConfig,
    GatewayConfig,
    LinkTimings,
    TableConfig,
    TlsSettings,
    derive_broker_group,
    field_defaults,
)
from gateway.config.reading import (
    MAX_CONFIG_BYTES,
    Section,
    Unreadable,
    decode_json,
    fail,
    read_capped,
    show,
)
from gateway.config.validate import (
    ID,
    TableKeys,
    broker_port,
    broker_priority,
    check_brokers,
    host,
    redis_config,
    resolvable,
    table,
    table_fields,
)
from gateway.errors import ConfigError

log = logging.getLogger(__name__)

_GATEWAY = field_defaults(GatewayConfig)
_TABLE = field_defaults(TableConfig)

V1_KEYS = TableKeys()
"""The gateway's own names for the table settings (its ``table`` object)."""
_TLS = field_defaults(TlsSettings)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a config file in either format; ConfigError is all it raises."""
    source = str(path)
    try:
        raw = read_capped(source, MAX_CONFIG_BYTES)
        doc = decode_json(raw, source)
        return parse_config(doc, source=source, env=os.environ if env is None else env)
    except Unreadable as exc:
        fail(f"{source}: {exc.problem}", exc.__cause__)
    except ConfigError:
        raise
    except Exception as exc:  # the last line of defence: one bad file never ends the process
        fail(f"{source}: unexpected {type(exc).__name__} while loading the file", exc)


def parse_config(doc: Any, *, source: str, env: Mapping[str, str]) -> GatewayConfig:
    """Validate a decoded config document (either format) into the model.

    ConfigError is all it raises, whatever ``doc`` holds.
    """
    try:
        if not isinstance(doc, dict):
            fail(f"{source}: the top level must be a JSON object")
        if "game_config" in doc and "version" not in doc:
            return parse_legacy(Section(doc, "", source, strict=False), env)
        return _parse_v1(Section(doc, "", source, strict=True), env)
    except ConfigError:
        raise
    except Exception as exc:  # the last line of defence, as in load_config
        fail(f"{source}: unexpected {type(exc).__name__} while validating the document", exc)


def dump_config(config: GatewayConfig) -> dict[str, Any]:
    """The gateway's own format for a config, without any secret values."""
    t = config.table
    table_doc: dict[str, Any] = {
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
            table_doc[key] = value
    if t.subscribe_topics:
        table_doc["subscribe_topics"] = list(t.subscribe_topics)
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
        "table": table_doc,
        "brokers": brokers,
        "failover": dict(vars(config.timings)),
        "redis": {k: v for k, v in vars(config.redis).items() if k != "url"},
    }
    return doc


def _parse_v1(top: Section, env: Mapping[str, str]) -> GatewayConfig:
    top.integer("version", lo=1, hi=FORMAT_VERSION)  # checked; there is one version so far
    t = top.section("table")
    config_table = table(
        t,
        **table_fields(t, V1_KEYS),
        subscribe_topics=t.strings("subscribe_topics"),
        trace_context_in_command=t.boolean(
            "trace_context_in_command", _TABLE["trace_context_in_command"]
        ),
        baccarat_tableau=t.boolean("baccarat_tableau", _TABLE["baccarat_tableau"]),
    )
    t.done()
    brokers = tuple(_broker_v1(b, env) for b in top.sections("brokers"))
    check_brokers(top, brokers)
    timings = _timings(top.opt_section("failover"))
    redis = redis_config(top.opt_section("redis"), env, top.source)
    group = top.opt_string("broker_group") or derive_broker_group(brokers)
    config = GatewayConfig(
        table=config_table,
        brokers=brokers,
        broker_group=group,
        timings=timings,
        redis=redis,
        environment=top.string("environment", _GATEWAY["environment"]),
        generation=top.integer("generation", _GATEWAY["generation"], lo=0, hi=2**62),
        source=top.source,
    )
    top.done()
    return config


def _broker_v1(b: Section, env: Mapping[str, str]) -> BrokerConfig:
    broker_host = host(b, "host")
    port = broker_port(b)
    broker_id = b.string("id", f"{broker_host}:{port}")
    if not ID.fullmatch(broker_id):
        b.fail("id", f"{show(broker_id)} must be 1-63 letters, digits, '.', '_', ':' or '-'")
    username, password = broker_credentials(b, broker_id, env)
    tls = None
    t = b.opt_section("tls")
    if t is not None:
        tls = TlsSettings(
            ca_file=t.opt_string("ca_file"),
            cert_file=t.opt_string("cert_file"),
            key_file=t.opt_string("key_file"),
            server_name=t.opt_string("server_name"),
            insecure_skip_verify=t.boolean("insecure_skip_verify", _TLS["insecure_skip_verify"]),
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            t.fail("cert_file", "cert_file and key_file must be given together")
        if tls.insecure_skip_verify:
            log.warning(
                "%s: broker %s has tls.insecure_skip_verify: its certificate is not checked, "
                "so anyone on the network path can pose as the broker and read its "
                "credentials, commands and results",
                b.source,
                broker_id,
            )
        name = tls.server_name
        if name is not None and (not name or name.startswith(".") or not resolvable(name)):
            t.fail("server_name", f"{show(name)} is not a host name")
        t.done()
    broker = BrokerConfig(
        id=broker_id,
        host=broker_host,
        port=port,
        priority=broker_priority(b),
        username=username,
        password=password,
        tls=tls,
    )
    b.done()
    return broker


def _timings(s: Section | None) -> LinkTimings:
    if s is None:
        return LinkTimings()
    d = LinkTimings()
    timings = LinkTimings(
        keepalive_s=s.integer("keepalive_s", d.keepalive_s, lo=1, hi=3600),
        operation_timeout_s=s.number("operation_timeout_s", d.operation_timeout_s, lo=0.05, hi=60),
        probe_interval_s=s.number("probe_interval_s", d.probe_interval_s, lo=0.01, hi=60),
        probe_timeout_s=s.number("probe_timeout_s", d.probe_timeout_s, lo=0.01, hi=60),
        standby_probe_interval_s=s.number(
            "standby_probe_interval_s", d.standby_probe_interval_s, lo=0.01, hi=60
        ),
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
