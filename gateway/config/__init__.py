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

The package is split by job, each module importing only those before it:

- ``model``: the frozen dataclasses, their defaults and pure helpers (topics, groups);
- ``reading``: capped file reading, strict JSON decoding, typed field access, messages;
- ``credentials``: broker credentials and the Redis URL from files or the environment;
- ``validate``: the checks both formats share (table, topics, hosts, brokers, Redis);
- ``legacy``: the predecessor's format;
- ``parse``: ``load_config``, ``parse_config`` and the gateway's own format both ways.

Import from ``gateway.config``; the names below are its interface.
"""

from gateway.config.credentials import MAX_SECRET_BYTES, command_line_redis_url, redis_url_file
from gateway.config.model import (
    DEFAULT_ADDRESS,
    DEFAULT_BROKER_PORT,
    DEFAULT_BROKER_PRIORITY,
    DEFAULT_HEALTH_PORT,
    DEFAULT_PORT,
    FORMAT_VERSION,
    BrokerConfig,
    GatewayConfig,
    LinkTimings,
    RedisConfig,
    TableConfig,
    TlsSettings,
    default_topics,
    derive_broker_group,
)
from gateway.config.parse import dump_config, load_config, parse_config
from gateway.config.reading import MAX_CONFIG_BYTES
from gateway.errors import ConfigError  # re-exported: the operator catches it from here

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_BROKER_PORT",
    "DEFAULT_BROKER_PRIORITY",
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_PORT",
    "FORMAT_VERSION",
    "MAX_CONFIG_BYTES",
    "MAX_SECRET_BYTES",
    "BrokerConfig",
    "ConfigError",
    "GatewayConfig",
    "LinkTimings",
    "RedisConfig",
    "TableConfig",
    "TlsSettings",
    "command_line_redis_url",
    "default_topics",
    "derive_broker_group",
    "dump_config",
    "load_config",
    "parse_config",
    "redis_url_file",
]
