"""The predecessor's per-table file, accepted unchanged so a studio can switch over first.

That format (``brokers[]`` with ``broker``/``port``/``username``/``password``/``priority``,
``default_username``/``default_password``, the ``ssl*`` keys, and ``game_config``) is
read leniently, as the predecessor read it: fields it does not know are ignored, not
refused. Each field is mapped onto the same model, through the same checks, with the
same defaults as the gateway's own format; what the predecessor could not say (extra
subscriptions, Redis in the file, timers) takes the model's defaults, and Redis may still
come from ``GATEWAY_REDIS_URL``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.config.credentials import broker_credentials
from gateway.config.model import (
    BrokerConfig,
    GatewayConfig,
    TlsSettings,
    derive_broker_group,
    field_defaults,
)
from gateway.config.reading import Section
from gateway.config.validate import (
    TableKeys,
    broker_port,
    broker_priority,
    check_brokers,
    host,
    redis_config,
    table,
    table_fields,
)

log = logging.getLogger(__name__)

_GATEWAY = field_defaults(GatewayConfig)

LEGACY_KEYS = TableKeys(
    game="game_type",
    code="game_code",
    shaker_listens="shaker_topic",
    shaker_says="status_topic",
    timeout="timeout",
    retry_delay="retry_delay",
    input="input_stream",
    output="output_stream",
)
"""The predecessor's names for the table settings (its ``game_config`` object)."""


def parse_legacy(top: Section, env: Mapping[str, str]) -> GatewayConfig:
    """The model from a predecessor's file (``top`` is its top-level object, read leniently)."""
    g = top.section("game_config")
    config_table = table(g, **table_fields(g, LEGACY_KEYS))
    brokers = []
    # Credentials for every broker that has none of its own (the predecessor's meaning).
    default_user = top.opt_string("default_username")
    default_password = top.opt_string("default_password")
    if default_password:
        log.warning("%s: default_password is written in the config file; prefer "
                    "password_file or an environment variable", top.source)  # fmt: skip
    for b in top.sections("brokers"):
        broker_host = host(b, "broker")
        port = broker_port(b)
        broker_id = f"{broker_host}:{port}"
        username, password = broker_credentials(b, broker_id, env)
        if username is None and password is None:
            username, password = default_user or None, default_password or None
        brokers.append(
            BrokerConfig(
                id=broker_id,
                host=broker_host,
                port=port,
                priority=broker_priority(b),
                username=username,
                password=password,
                tls=_legacy_tls(b),
            )
        )
    frozen = tuple(brokers)
    check_brokers(top, frozen)
    return GatewayConfig(
        table=config_table,
        brokers=frozen,
        broker_group=derive_broker_group(frozen),
        redis=redis_config(None, env, top.source),
        environment=top.string("environment", _GATEWAY["environment"]),
        source=top.source,
    )


def _legacy_tls(b: Section) -> TlsSettings | None:
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
