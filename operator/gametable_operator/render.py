"""From a GameTable to the sidecar's configuration: pure functions, no cluster access.

The GameTable's spec is rendered into the gateway's own config format (``"version": 1``,
``docs/config.md``) and checked with ``gateway.config.parse_config``, so the schema exists
once. Credentials never enter the document: each broker points at the directory where the
sidecar mounts its Secret, and Redis at the mounted URL file.

Whatever a GameTable holds (any JSON in any field), rendering raises ``InvalidGameTable``
only, naming the resource and the spec field: one bad resource never stops the operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from gateway.config import (
    DEFAULT_BROKER_PORT,
    DEFAULT_BROKER_PRIORITY,
    ConfigError,
    GatewayConfig,
    parse_config,
)

# The one name imported beyond the config model: the error parse_config raises.

GROUP = "studio.gateway.dev"
VERSION = "v1alpha1"
KIND = "GameTable"
API_VERSION = f"{GROUP}/{VERSION}"
CONFIG_KEY = "table.json"
SECRETS_DIR = "/etc/gateway/secrets"
BROKERS_DIR = f"{SECRETS_DIR}/brokers"
TLS_DIR = f"{SECRETS_DIR}/tls"
REDIS_URL_FILE = f"{SECRETS_DIR}/redis/url"
CONFIG_DIR = "/etc/gateway/config"

# Field paths of the gateway's format, as the GameTable spells them (for error messages).
_SPEC_PATHS = (
    ("table.game", "spec.game"),
    ("table.code", "spec.tableCode"),
    ("table.command_topic", "spec.topics.command"),
    ("table.response_topic", "spec.topics.response"),
    ("table.subscribe_topics", "spec.topics.subscribe"),
    ("table.shaker_listens", "spec.shaker.name"),
    ("table.shaker_says", "spec.shaker.name"),
    ("table.timeout_s", "spec.detect.timeoutSeconds"),
    ("table.retry_count", "spec.detect.retryCount"),
    ("table.retry_delay_s", "spec.detect.retryDelaySeconds"),
    ("table.baccarat_tableau", "spec.detect.baccaratTableau"),
    ("table.input", "spec.streams.input"),
    ("table.output", "spec.streams.output"),
    ("redis.key_prefix", "spec.redis.keyPrefix"),
    ("broker_group", "spec.brokerGroup.name"),
    ("brokers", "spec.brokerGroup.brokers"),
    ("generation", "metadata.generation"),
)
_BROKER_FIELDS = {"server_name": "serverName", "insecure_skip_verify": "insecureSkipVerify"}


class InvalidGameTable(ValueError):
    """A GameTable that cannot be rendered; the message names the resource and the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def render_config(gametable: Mapping[str, Any]) -> GatewayConfig:
    """The sidecar configuration a GameTable describes, validated by the gateway's parser."""
    return _render(gametable)[1]


def render_document(gametable: Mapping[str, Any]) -> dict[str, Any]:
    """The gateway's config document (``table.json``) for a GameTable, validated."""
    return _render(gametable)[0]


def render_configmap(gametable: Mapping[str, Any]) -> dict[str, Any]:
    """The ConfigMap ``<name>-gateway`` holding ``table.json``, owned by the GameTable."""
    doc = render_document(gametable)
    with _named(_source(gametable)):
        meta = _section(gametable, "metadata", "metadata")
        name = _string(meta, "name", "metadata.name")
        uid = _string(meta, "uid", "metadata.uid")
        table_json = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        namespace = _namespace(meta)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{name}-gateway",
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "studio-gateway",
                "app.kubernetes.io/component": "sidecar-config",
                f"{GROUP}/gametable": name,
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {CONFIG_KEY: table_json},
    }


def _render(gametable: Mapping[str, Any]) -> tuple[dict[str, Any], GatewayConfig]:
    source = _source(gametable)
    with _named(source):
        if not isinstance(gametable, Mapping):
            raise InvalidGameTable("must be an object")
        doc = _document(gametable)
        # parse_config would stat the Secret mounts and read the Redis URL file, which exist
        # only in the sidecar; it validates a copy without them, so rendering does no I/O.
        config = parse_config(_without_mounts(doc), source=source, env={})
    return doc, config


def _source(gametable: Any) -> str:
    """How messages name the resource, whatever its metadata holds."""
    meta = gametable.get("metadata") if isinstance(gametable, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not _is_text(name):
        return "GameTable (without a valid metadata.name)"
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    return f"GameTable {namespace if _is_text(namespace) else 'default'}/{name}"


@contextmanager
def _named(source: str) -> Iterator[None]:
    """Every failure inside becomes InvalidGameTable, prefixed with the resource."""
    try:
        yield
    except InvalidGameTable as exc:
        raise InvalidGameTable(f"{source}: {exc.message}") from exc
    except ConfigError as exc:
        raise InvalidGameTable(_spec_message(exc.message, source)) from exc
    except Exception as exc:  # the last line of defence: one bad GameTable costs only itself
        raise InvalidGameTable(
            f"{source}: unexpected {type(exc).__name__} while rendering"
        ) from exc


def _document(gametable: Mapping[str, Any]) -> dict[str, Any]:
    meta = _section(gametable, "metadata", "metadata")
    spec = _section(gametable, "spec", "spec")
    game = _string(spec, "game", "spec.game")
    code = _string(spec, "tableCode", "spec.tableCode")
    table: dict[str, Any] = {"game": game, "code": code}

    topics = _opt_section(spec, "topics", "spec.topics")
    for key, field in (("command", "command_topic"), ("response", "response_topic")):
        if topics.get(key) is not None:
            table[field] = topics[key]
    if topics.get("subscribe"):
        table["subscribe_topics"] = topics["subscribe"]

    shaker = _opt_section(spec, "shaker", "spec.shaker")
    if shaker:
        if game != "sicbo":
            raise InvalidGameTable("spec.shaker: only for sicbo tables")
        shaker_name = _string(shaker, "name", "spec.shaker.name")
        table["shaker_listens"] = f"ikg/sicbo/{shaker_name}/listens"
        table["shaker_says"] = f"ikg/sicbo/{shaker_name}/says"

    detect = _opt_section(spec, "detect", "spec.detect")
    for key, field in (
        ("timeoutSeconds", "timeout_s"),
        ("retryCount", "retry_count"),
        ("retryDelaySeconds", "retry_delay_s"),
        ("baccaratTableau", "baccarat_tableau"),
    ):
        if detect.get(key) is not None:
            table[field] = detect[key]

    streams = _opt_section(spec, "streams", "spec.streams")
    if streams.get("output") is not None and game != "sicbo":
        raise InvalidGameTable("spec.streams.output: only for sicbo tables")
    for key in ("input", "output"):
        if streams.get(key) is not None:
            table[key] = streams[key]

    group = _section(spec, "brokerGroup", "spec.brokerGroup")
    brokers = group.get("brokers")
    if not isinstance(brokers, list) or not brokers:
        raise InvalidGameTable("spec.brokerGroup.brokers: at least one broker is required")
    doc: dict[str, Any] = {
        "version": 1,
        "generation": meta.get("generation", 0),
        "broker_group": _string(group, "name", "spec.brokerGroup.name"),
        "table": table,
        "brokers": [_broker(b, i) for i, b in enumerate(brokers)],
    }

    redis = _opt_section(spec, "redis", "spec.redis")
    if redis:
        url_secret = _section(redis, "urlSecret", "spec.redis.urlSecret")
        _string(url_secret, "name", "spec.redis.urlSecret.name")
        _string(url_secret, "key", "spec.redis.urlSecret.key")
        doc["redis"] = {"url_file": REDIS_URL_FILE}
        if redis.get("keyPrefix") is not None:
            doc["redis"]["key_prefix"] = redis["keyPrefix"]
    return doc


def _broker(b: Any, i: int) -> dict[str, Any]:
    where = f"spec.brokerGroup.brokers[{i}]"
    if not isinstance(b, Mapping):
        raise InvalidGameTable(f"{where}: must be an object")
    broker_id = _string(b, "id", f"{where}.id")
    secret = _section(b, "credentialsSecret", f"{where}.credentialsSecret")
    _string(secret, "name", f"{where}.credentialsSecret.name")
    entry: dict[str, Any] = {
        "id": broker_id,
        "host": b.get("host"),
        "port": b.get("port", DEFAULT_BROKER_PORT),
        "priority": b.get("priority", DEFAULT_BROKER_PRIORITY),
        "credentials_dir": f"{BROKERS_DIR}/{broker_id}",
    }
    if b.get("tls") is not None:
        tls = _opt_section(b, "tls", f"{where}.tls")
        entry["tls"] = {}
        if tls.get("caSecretKey") is not None:
            _string(tls, "caSecretKey", f"{where}.tls.caSecretKey")
            entry["tls"]["ca_file"] = f"{TLS_DIR}/{broker_id}/ca.crt"
        if tls.get("serverName") is not None:
            entry["tls"]["server_name"] = tls["serverName"]
        if tls.get("insecureSkipVerify") is not None:
            entry["tls"]["insecure_skip_verify"] = tls["insecureSkipVerify"]
    return entry


def _without_mounts(doc: dict[str, Any]) -> dict[str, Any]:
    # Copies only what it changes: a deep copy would recurse into unvalidated spec values.
    checked = dict(doc)
    checked["brokers"] = [
        {k: v for k, v in b.items() if k != "credentials_dir"} for b in doc["brokers"]
    ]
    if "redis" in doc:
        checked["redis"] = {k: v for k, v in doc["redis"].items() if k != "url_file"}
    return checked


def _spec_message(message: str, source: str) -> str:
    """Rewrite the gateway's field path (``brokers[1].port``) into the spec's."""
    rest = message.removeprefix(f"{source}: ")
    path, sep, problem = rest.partition(": ")
    if not sep:
        return message
    for ours, theirs in _SPEC_PATHS:
        if path == ours or path.startswith((f"{ours}.", f"{ours}[")):
            path = theirs + path[len(ours) :]
            break
    path = re.sub(r"\w+$", lambda m: _BROKER_FIELDS.get(m.group(0), m.group(0)), path)
    return f"{source}: {path}: {problem}"


def _namespace(meta: Mapping[str, Any]) -> str:
    namespace = meta.get("namespace")
    if namespace is None or namespace == "":
        return "default"
    if not _is_text(namespace):
        raise InvalidGameTable("metadata.namespace: must be a string of printable characters")
    return str(namespace)


def _section(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, Mapping):
        raise InvalidGameTable(f"{where}: is required and must be an object")
    return value


def _opt_section(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidGameTable(f"{where}: must be an object")
    return value


def _string(parent: Mapping[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidGameTable(f"{where}: is required and must be a non-empty string")
    if not value.isprintable():  # control characters and lone surrogates
        raise InvalidGameTable(f"{where}: must hold printable characters only")
    return value


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != "" and value.isprintable()
