"""Property tests of gateway.config: any bytes, any document, any secret file -> a config or
a ConfigError naming the file (and the field), never another exception."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import re
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import (
    MAX_CONFIG_BYTES,
    GatewayConfig,
    dump_config,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError
from gateway.protocol import Game
from gateway.sidecar.reload import ConfigReloader
from tests.unit.documents import mutations

SOURCE = "/etc/gateway/table.json"

# Deterministic and quick: the same examples every run, no example database on disk.
FAST = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any code point, lone surrogates included (they decode from JSON's "\ud800" escapes).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
    | st.sampled_from(["", "sicbo", "10.0.0.1", "ikg/+/x", "a\nb", "\ud800", "redis://r"])
)
TREES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            ANY_TEXT | st.sampled_from(["version", "table", "brokers"]), children, max_size=4
        )
    ),
    max_leaves=16,
)


def _mutated(doc: Any) -> st.SearchStrategy[Any]:
    return mutations(doc, TREES)


PREDECESSOR: dict[str, Any] = {
    "brokers": [
        {"broker": "192.168.20.9", "port": 1883, "username": "PFC", "priority": 1},
        {"broker": "192.168.20.10", "port": 1883, "username": "PFC", "priority": 2},
    ],
    "game_config": {
        "game_type": "sicbo",
        "game_code": "SBO-001",
        "command_topic": "ikg/idp/SBO-001/command",
        "response_topic": "ikg/idp/SBO-001/response",
        "shaker_topic": "ikg/sicbo/Billy-III/listens",
        "status_topic": "ikg/sicbo/Billy-III/says",
        "timeout": 10,
        "retry_count": 3,
        "retry_delay": 1.0,
        "input_stream": "rtmp://10.0.0.54:1935/live/r14_sb",
    },
    "environment": "development",
}
GATEWAY_FORMAT: dict[str, Any] = {
    "version": 1,
    "generation": 7,
    "environment": "production",
    "broker_group": "studio-a",
    "table": {
        "game": "sicbo",
        "code": "SBO-001",
        "shaker_listens": "ikg/sicbo/Billy-III/listens",
        "shaker_says": "ikg/sicbo/Billy-III/says",
        "timeout_s": 10,
        "retry_count": 3,
        "retry_delay_s": 1.0,
        "input": "rtmp://10.0.0.54:1935/live/r14_sb",
        "output": "https://cdn.example/live/r456_dice.flv",
        "subscribe_topics": ["studio/SBO-001/announcements"],
    },
    "brokers": [
        {
            "id": "mqtt-a",
            "host": "10.0.0.9",
            "port": 8883,
            "priority": 1,
            "credentials_dir": "/nonexistent/brokers/mqtt-a",
            "tls": {"ca_file": "/etc/gateway/tls/ca.crt", "server_name": "mqtt-a.studio.internal"},
        },
        {
            "id": "mqtt-b",
            "host": "10.0.0.10",
            "port": 1883,
            "priority": 2,
            "username_env": "MQTT_B_USER",
            "password_env": "MQTT_B_PASSWORD",
        },
    ],
    "failover": {"probe_interval_s": 0.2, "probe_timeout_s": 0.6, "holddown_s": 30},
    "redis": {"url_env": "GATEWAY_REDIS_URL", "key_prefix": "studio-gateway"},
}
ENV = {"MQTT_B_USER": "gw", "MQTT_B_PASSWORD": "pw", "GATEWAY_REDIS_URL": "redis://r:6379/0"}


def _outcome(call: Callable[[], GatewayConfig], source: str) -> GatewayConfig | ConfigError:
    """The config, or the ConfigError: any other exception fails the test."""
    try:
        return call()
    except ConfigError as exc:
        assert exc.message.startswith(f"{source}: "), exc.message
        # Caught by validation, not by the last line of defence.
        assert not re.search(r"unexpected \w+ while", exc.message), exc.message
        exc.message.encode("utf-8")  # fit for a log line and Health's protobuf string
        return exc


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config") / "table.json"


def test_examples_are_valid() -> None:
    """The two documents the mutations start from are valid."""
    assert parse_config(copy.deepcopy(PREDECESSOR), source=SOURCE, env={}).table.code == "SBO-001"
    assert parse_config(copy.deepcopy(GATEWAY_FORMAT), source=SOURCE, env=ENV).generation == 7


@FAST
@given(st.binary(max_size=600) | TREES.map(lambda t: json.dumps(t).encode()))
def test_any_bytes_load_or_fail_naming_the_file(config_file: Path, content: bytes) -> None:
    """Whatever bytes the file holds, load_config gives a config or a ConfigError naming it."""
    config_file.write_bytes(content)
    _outcome(lambda: load_config(config_file, env={}), str(config_file))


@FAST
@given(
    st.sampled_from([PREDECESSOR, GATEWAY_FORMAT]).flatmap(_mutated),
    st.booleans(),
)
def test_one_field_replaced_gives_a_config_or_a_config_error(
    config_file: Path, doc: dict[str, Any], from_disk: bool
) -> None:
    """Either format with one field replaced or deleted: a config or a ConfigError, from
    memory as from disk (NaN and Infinity cannot be written to the file)."""
    result = _outcome(lambda: parse_config(doc, source=SOURCE, env=ENV), SOURCE)
    if from_disk:
        config_file.write_text(json.dumps(doc))
        on_disk = _outcome(lambda: load_config(config_file, env=ENV), str(config_file))
        if isinstance(on_disk, GatewayConfig):
            assert isinstance(result, GatewayConfig)


@FAST
@given(TREES)
def test_any_document_parses_or_fails_naming_the_source(doc: Any) -> None:
    """Any decoded JSON document: parse_config gives a config or a ConfigError naming it."""
    _outcome(lambda: parse_config(doc, source=SOURCE, env={}), SOURCE)


@settings(FAST, max_examples=40)
@given(
    st.integers(min_value=1, max_value=200_000),
    st.sampled_from([("[", "]"), ('{"a": ', "}"), ('{"version": 1, "table": ', "}")]),
)
def test_deeply_nested_json_is_a_config_error(
    config_file: Path, depth: int, shape: tuple[str, str]
) -> None:
    """Nesting at any depth is refused with a ConfigError, never a RecursionError."""
    opening, closing = shape
    config_file.write_text(opening * depth + "0" + closing * depth)
    error = _outcome(lambda: load_config(config_file, env={}), str(config_file))
    assert isinstance(error, ConfigError)


def test_deep_python_document_is_a_config_error() -> None:
    """A document nested 100000 deep in memory fails naming the field, not in repr()."""
    value: Any = 0
    for _ in range(100_000):
        value = [value]
    doc = copy.deepcopy(GATEWAY_FORMAT)
    doc["table"]["timeout_s"] = value
    with pytest.raises(ConfigError, match=r"^/etc/gateway/table\.json: table\.timeout_s: "):
        parse_config(doc, source=SOURCE, env=ENV)


MARKER = b"pw-7f3a9c"


@FAST
@given(st.binary(max_size=300), st.sampled_from(["password_file", "username_file", "dir"]))
def test_credential_file_with_any_bytes(tmp_path: Path, content: bytes, how: str) -> None:
    """A credential file with any bytes: the secret, or a ConfigError naming the field and
    the path but never the content."""
    secret_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    part = "username" if how == "username_file" else "password"
    secret = secret_dir / part
    secret.write_bytes(content + MARKER)
    doc = copy.deepcopy(GATEWAY_FORMAT)
    broker = doc["brokers"][0]
    if how == "dir":
        broker["credentials_dir"] = str(secret_dir)
    else:
        broker[how] = str(secret)
    result = _outcome(lambda: parse_config(doc, source=SOURCE, env=ENV), SOURCE)
    if isinstance(result, ConfigError):
        field = "credentials_dir" if how == "dir" else how
        assert result.message.startswith(f"{SOURCE}: brokers[0].{field}: {secret}: ")
        assert "UTF-8" in result.message
        assert MARKER.decode() not in result.message
    else:
        value = getattr(result.brokers[0], part)
        assert value == (content + MARKER).decode("utf-8").strip()


@FAST
@given(st.binary(max_size=200))
def test_redis_url_file_with_any_bytes(tmp_path: Path, content: bytes) -> None:
    """The Redis URL file with any bytes: a URL, or a ConfigError that never shows it."""
    path = tmp_path / "url"
    path.write_bytes(b"redis://:" + MARKER + b"@" + content)
    doc = copy.deepcopy(GATEWAY_FORMAT)
    doc["redis"] = {"url_file": str(path)}
    result = _outcome(lambda: parse_config(doc, source=SOURCE, env=ENV), SOURCE)
    if isinstance(result, ConfigError):
        assert result.message.startswith(f"{SOURCE}: redis.url")
        assert MARKER.decode() not in result.message
    else:
        assert result.redis.url is not None and MARKER.decode() in result.redis.url


# --- generated valid documents -------------------------------------------------------------

CODES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
TOPIC_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="+#"),
    min_size=1,
    max_size=30,
)
HOSTS = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,12}){0,3}", fullmatch=True) | st.sampled_from(
    ["10.0.0.9", "::1", "mqtt-ä.studio"]
)


@st.composite
def valid_gateway_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document in the gateway's format that satisfies every rule of docs/config.md."""
    code = draw(CODES)
    command, response = draw(st.lists(TOPIC_TEXT, min_size=2, max_size=2, unique=True))
    extra = draw(st.lists(TOPIC_TEXT, max_size=3, unique=True))
    extra = [t for t in extra if t not in (command, response)]
    table: dict[str, Any] = {
        "game": draw(st.sampled_from([g.value for g in Game])),
        "code": code,
        "command_topic": command,
        "response_topic": response,
        "timeout_s": draw(st.floats(0.1, 600)),
        "retry_count": draw(st.integers(1, 20)),
        "retry_delay_s": draw(st.floats(0, 60)),
        "subscribe_topics": extra,
        "trace_context_in_command": draw(st.booleans()),
        "baccarat_tableau": draw(st.booleans()),
    }
    if draw(st.booleans()):
        table["input"] = f"rtmp://10.0.0.54:1935/live/{code}"
    ids = draw(st.lists(CODES, min_size=1, max_size=3, unique=True))
    brokers = []
    for broker_id in ids:
        broker: dict[str, Any] = {
            "id": broker_id,
            "host": draw(HOSTS),
            "port": draw(st.integers(1, 65535)),
            "priority": draw(st.integers(1, 1000)),
        }
        if draw(st.booleans()):
            broker["tls"] = {
                "ca_file": "/tls/ca.pem",
                "server_name": draw(HOSTS),
                "insecure_skip_verify": draw(st.booleans()),
            }
        brokers.append(broker)
    holddown = draw(st.floats(0, 3600))
    refresh = draw(st.floats(0.05, 60))
    return {
        "version": 1,
        "generation": draw(st.integers(0, 2**62)),
        "environment": draw(st.sampled_from(["production", "lab"])),
        "broker_group": draw(CODES),
        "table": table,
        "brokers": brokers,
        "failover": {"holddown_s": holddown, "holddown_max_s": holddown + draw(st.floats(0, 10))},
        "redis": {
            "key_prefix": draw(CODES),
            "refresh_s": refresh,
            "view_ttl_s": min(600, refresh + draw(st.floats(0.5, 100))),
        },
    }


def _without_secrets(config: GatewayConfig, source: str) -> GatewayConfig:
    brokers = tuple(dataclasses.replace(b, username=None, password=None) for b in config.brokers)
    redis = dataclasses.replace(config.redis, url=None)
    return dataclasses.replace(config, brokers=brokers, redis=redis, source=source)


@settings(FAST, max_examples=60)
@given(valid_gateway_documents())
def test_valid_documents_load_and_round_trip(config_file: Path, doc: dict[str, Any]) -> None:
    """A valid document loads from disk, and dump_config of it re-parses to an equal model."""
    config_file.write_text(json.dumps(doc))
    config = load_config(config_file, env={"GATEWAY_BROKER_PASSWORD": "pw"})
    assert config.table.code == doc["table"]["code"]
    assert [b.id for b in config.brokers] == [b["id"] for b in doc["brokers"]]
    dumped = json.loads(json.dumps(dump_config(config)))
    again = parse_config(dumped, source="dumped", env={})
    assert again == _without_secrets(config, "dumped")


@FAST
@given(
    st.text(string.printable, max_size=40).filter(lambda s: s.strip()),
    st.sampled_from([PREDECESSOR, GATEWAY_FORMAT]),
)
def test_predecessor_and_gateway_round_trip_with_any_environment_name(
    environment: str, base: dict[str, Any]
) -> None:
    """Any printable environment name survives parse -> dump -> parse in both formats."""
    doc = copy.deepcopy(base)
    doc["environment"] = environment
    result = _outcome(lambda: parse_config(doc, source=SOURCE, env=ENV), SOURCE)
    if isinstance(result, GatewayConfig):
        again = parse_config(json.loads(json.dumps(dump_config(result))), source="d", env={})
        assert again == _without_secrets(result, "d")
    else:
        assert "environment" in result.message


# --- the reloader keeps a hostile file out ----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000, b'{"version": NaN}', b"\xed\xa0\x80", b" " * (MAX_CONFIG_BYTES + 1)],
    ids=["deep", "nan", "surrogate-bytes", "too-large"],
)
def test_reload_keeps_a_hostile_file_out(config_file: Path, content: bytes) -> None:
    """A hostile file on reload is reported and the running configuration stays."""
    config_file.write_text(json.dumps(GATEWAY_FORMAT))
    current = load_config(config_file, env=ENV)
    applied: list[GatewayConfig] = []

    async def idle() -> None:
        return None

    reloader = ConfigReloader(config_file, current, apply=applied.append, wait_idle=idle)
    config_file.write_bytes(content)
    asyncio.run(reloader.check())
    assert reloader.config is current and applied == []
    assert reloader.last_error.startswith("kept generation 7: ")
    assert str(config_file) in reloader.last_error
