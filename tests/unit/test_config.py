"""Unit tests of gateway.config: both file formats, credentials, dump round trip, bad files."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    MAX_CONFIG_BYTES,
    MAX_SECRET_BYTES,
    BrokerConfig,
    GatewayConfig,
    LinkTimings,
    RedisConfig,
    TableConfig,
    TlsSettings,
    default_topics,
    derive_broker_group,
    dump_config,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError
from gateway.protocol import Game

SOURCE = "/etc/gateway/table.json"

# The predecessor's per-table file, as IDP-PROTOCOL.md shows it.
PREDECESSOR = """
    {"brokers": [{"broker": "192.168.20.9", "port": 1883, "username": "...", "password": "...", "priority": 1},
                 {"broker": "192.168.20.10", "port": 1883, "username": "...", "password": "...", "priority": 2}],
     "game_config": {"game_type": "sicbo", "game_code": "SBO-001",
                     "command_topic": "ikg/idp/SBO-001/command", "response_topic": "ikg/idp/SBO-001/response",
                     "shaker_topic": "ikg/sicbo/Billy-III/listens", "status_topic": "ikg/sicbo/Billy-III/says",
                     "timeout": 10, "retry_count": 3, "retry_delay": 1.0},
     "environment": "development"}
"""  # noqa: E501  (kept verbatim from the protocol notes)


def _legacy() -> dict[str, Any]:
    """A fresh copy of the predecessor file, for tests that alter one field."""
    doc: dict[str, Any] = json.loads(PREDECESSOR)
    return doc


def _v1(**table: Any) -> dict[str, Any]:
    """A minimal file in the gateway's own format."""
    return {
        "version": 1,
        "table": {"game": "roulette", "code": "ARO-001", **table},
        "brokers": [{"host": "10.0.0.1"}],
    }


def _parse(doc: Any, env: dict[str, str] | None = None) -> GatewayConfig:
    return parse_config(doc, source=SOURCE, env=env or {})


# --- the predecessor file -----------------------------------------------------------------


def test_predecessor_file_loads_unchanged() -> None:
    """The predecessor's per-table file loads as-is into the same table, brokers and timers."""
    config = _parse(json.loads(PREDECESSOR))
    assert config.table == TableConfig(
        game=Game.SICBO,
        code="SBO-001",
        command_topic="ikg/idp/SBO-001/command",
        response_topic="ikg/idp/SBO-001/response",
        shaker_listens="ikg/sicbo/Billy-III/listens",
        shaker_says="ikg/sicbo/Billy-III/says",
        timeout_s=10.0,
        retry_count=3,
        retry_delay_s=1.0,
    )
    assert [(b.id, b.host, b.port, b.priority) for b in config.brokers] == [
        ("192.168.20.9:1883", "192.168.20.9", 1883, 1),
        ("192.168.20.10:1883", "192.168.20.10", 1883, 2),
    ]
    assert config.environment == "development"
    assert config.source == SOURCE
    assert config.timings == LinkTimings()
    assert config.broker_group == derive_broker_group(config.brokers)


def test_predecessor_file_loads_from_disk(tmp_path: Path) -> None:
    """load_config reads the predecessor file from disk and records where it came from."""
    path = tmp_path / "sbo-001.json"
    path.write_text(PREDECESSOR)
    config = load_config(path, env={})
    assert config.table.code == "SBO-001"
    assert config.source == str(path)
    assert len(config.brokers) == 2


def test_predecessor_defaults_topics_from_table_code() -> None:
    """Without topics in the predecessor file, the studio's pattern for the table is used."""
    doc = _legacy()
    del doc["game_config"]["command_topic"], doc["game_config"]["response_topic"]
    config = _parse(doc)
    assert (config.table.command_topic, config.table.response_topic) == (
        "ikg/idp/SBO-001/command",
        "ikg/idp/SBO-001/response",
    )


def test_predecessor_default_credentials_apply_to_brokers_without_their_own() -> None:
    """Top-level default_username/default_password: used by every broker that has none."""
    doc = _legacy()
    doc["default_username"], doc["default_password"] = "PFC", "wago"
    del doc["brokers"][0]["username"], doc["brokers"][0]["password"]
    doc["brokers"][1]["username"], doc["brokers"][1]["password"] = "own", "pw"
    config = _parse(doc)
    assert [(b.username, b.password) for b in config.brokers] == [("PFC", "wago"), ("own", "pw")]


def test_predecessor_ssl_settings_become_tls() -> None:
    """ssl, ssl_ca_certs, ssl_certfile, ssl_keyfile keep their meaning: TLS to that broker."""
    doc = _legacy()
    doc["brokers"][0].update(
        ssl=True, ssl_ca_certs="/etc/ca.crt", ssl_certfile="/etc/c.crt", ssl_keyfile="/etc/c.key"
    )
    doc["brokers"][1]["keepalive"] = 60  # unused: the probes notice a hang
    config = _parse(doc)
    assert config.brokers[0].tls == TlsSettings("/etc/ca.crt", "/etc/c.crt", "/etc/c.key")
    assert config.brokers[1].tls is None


@pytest.mark.parametrize(
    "edit,field",
    [
        ({"ssl_ca_certs": "/etc/ca.crt"}, "brokers[0].ssl_ca_certs: is set but ssl is not true"),
        ({"ssl": True, "ssl_certfile": "/c.crt"}, "brokers[0].ssl_certfile: ssl_certfile and"),
        ({"ssl": "yes"}, "brokers[0].ssl: must be true or false"),
    ],
)
def test_predecessor_ssl_settings_that_cannot_be_meant_are_refused_by_name(
    edit: dict[str, Any], field: str
) -> None:
    """TLS settings are never silently dropped: a contradiction names the key."""
    doc = _legacy()
    doc["brokers"][0].update(edit)
    with pytest.raises(ConfigError, match=re.escape(field)):
        _parse(doc)


def test_predecessor_password_in_file_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A password written in the file works but warns, without showing the password."""
    doc = _legacy()
    doc["brokers"][0]["password"] = "s3cret-inline"
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        config = _parse(doc)
    assert config.brokers[0].password == "s3cret-inline"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("192.168.20.9:1883" in r.getMessage() for r in warnings)
    assert all(SOURCE in r.getMessage() for r in warnings)
    assert "s3cret-inline" not in caplog.text


def test_no_warning_when_password_comes_from_env(caplog: pytest.LogCaptureFixture) -> None:
    """Passwords from the environment do not trigger the password-in-file warning."""
    doc = _legacy()
    for b in doc["brokers"]:
        del b["password"]
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        config = _parse(doc, {"GATEWAY_BROKER_PASSWORD": "from-env"})
    assert [b.password for b in config.brokers] == ["from-env", "from-env"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_global_env_credentials_override_the_file() -> None:
    """GATEWAY_BROKER_USERNAME/PASSWORD replace the values written in the file."""
    env = {"GATEWAY_BROKER_USERNAME": "gw", "GATEWAY_BROKER_PASSWORD": "pw"}
    config = _parse(_legacy(), env)
    assert [(b.username, b.password) for b in config.brokers] == [("gw", "pw"), ("gw", "pw")]


def test_per_broker_env_password_uses_slugged_id() -> None:
    """GATEWAY_BROKER_<ID>_PASSWORD (id upper-cased, non-alnum -> _) wins for that broker."""
    env = {
        "GATEWAY_BROKER_PASSWORD": "shared",
        "GATEWAY_BROKER_192_168_20_10_1883_PASSWORD": "only-b",
        "GATEWAY_BROKER_192_168_20_10_1883_USERNAME": "user-b",
    }
    config = _parse(_legacy(), env)
    a, b = config.brokers
    assert (a.username, a.password) == ("...", "shared")
    assert (b.username, b.password) == ("user-b", "only-b")


def test_per_broker_env_password_for_named_v1_broker() -> None:
    """A v1 broker id like 'broker-a.studio' maps to GATEWAY_BROKER_BROKER_A_STUDIO_PASSWORD."""
    doc = _v1()
    doc["brokers"] = [{"id": "broker-a.studio", "host": "10.0.0.1"}, {"host": "10.0.0.2"}]
    config = _parse(doc, {"GATEWAY_BROKER_BROKER_A_STUDIO_PASSWORD": "pa"})
    assert [b.password for b in config.brokers] == ["pa", None]


def test_password_file_and_password_env(tmp_path: Path) -> None:
    """password_file (trimmed) and password_env name where a broker's secret lives."""
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    doc = _v1()
    doc["brokers"] = [
        {"id": "a", "host": "10.0.0.1", "username": "u", "password_file": str(secret)},
        {"id": "b", "host": "10.0.0.2", "password_env": "MY_B_PASSWORD"},
    ]
    config = _parse(doc, {"MY_B_PASSWORD": "from-env", "GATEWAY_BROKER_PASSWORD": "global"})
    assert [(b.username, b.password) for b in config.brokers] == [
        ("u", "from-file"),
        (None, "from-env"),
    ]


def test_credentials_dir_reads_username_and_password(tmp_path: Path) -> None:
    """credentials_dir (a mounted Secret) supplies username and password files."""
    (tmp_path / "username").write_text("gateway\n")
    (tmp_path / "password").write_text("mounted-secret\n")
    doc = _v1()
    doc["brokers"][0]["credentials_dir"] = str(tmp_path)
    config = _parse(doc, {"GATEWAY_BROKER_PASSWORD": "ignored"})
    assert (config.brokers[0].username, config.brokers[0].password) == (
        "gateway",
        "mounted-secret",
    )


def test_credentials_dir_without_files_falls_back_to_env(tmp_path: Path) -> None:
    """An empty credentials_dir is not an error: the environment still supplies secrets."""
    doc = _v1()
    doc["brokers"][0]["credentials_dir"] = str(tmp_path)
    config = _parse(doc, {"GATEWAY_BROKER_PASSWORD": "env"})
    assert (config.brokers[0].username, config.brokers[0].password) == (None, "env")


# --- the gateway's own format -----------------------------------------------------------


def test_v1_minimal_file_gets_defaults() -> None:
    """A minimal v1 file gets topics from the table code and documented defaults."""
    config = _parse(_v1())
    command, response = default_topics("ARO-001")
    assert config.table == TableConfig(
        game=Game.ROULETTE,
        code="ARO-001",
        command_topic=command,
        response_topic=response,
    )
    assert (command, response) == ("ikg/idp/ARO-001/command", "ikg/idp/ARO-001/response")
    assert config.table.timeout_s == 10.0
    assert config.table.retry_count == 3
    assert config.brokers == (BrokerConfig(id="10.0.0.1:1883", host="10.0.0.1"),)
    assert config.timings == LinkTimings()
    assert config.redis == RedisConfig()
    assert config.environment == "production"
    assert config.generation == 0


def test_v1_full_file() -> None:
    """Every documented v1 field reaches the model."""
    doc = {
        "version": 1,
        "generation": 7,
        "environment": "staging",
        "broker_group": "studio-a",
        "table": {
            "game": "SicBo",
            "code": "SBO-001",
            "command_topic": "custom/cmd",
            "response_topic": "custom/resp",
            "shaker_listens": "ikg/sicbo/Billy-III/listens",
            "shaker_says": "ikg/sicbo/Billy-III/says",
            "timeout_s": 4.5,
            "retry_count": 5,
            "retry_delay_s": 0.25,
            "input": "rtmp://10.0.0.54:1935/live/r14_sb",
            "output": "https://example.invalid/live/r456_dice.flv",
        },
        "brokers": [
            {
                "id": "primary",
                "host": "mqtt-a.studio",
                "port": 8883,
                "priority": 1,
                "tls": {
                    "ca_file": "/tls/ca.pem",
                    "cert_file": "/tls/c.pem",
                    "key_file": "/tls/k.pem",
                    "server_name": "mqtt-a",
                },
            },
            {"id": "backup", "host": "mqtt-b.studio", "priority": 2},
        ],
        "failover": {"holddown_s": 10, "holddown_max_s": 60, "keepalive_s": 3},
        "redis": {"url_env": "REDIS_URL", "key_prefix": "gw"},
    }
    config = _parse(doc, {"REDIS_URL": "redis://:pw@redis:6379/0"})
    assert config.table.game is Game.SICBO
    assert config.table.command_topic == "custom/cmd"
    assert config.table.timeout_s == 4.5
    assert config.table.output_url == "https://example.invalid/live/r456_dice.flv"
    assert config.brokers[0].tls == TlsSettings("/tls/ca.pem", "/tls/c.pem", "/tls/k.pem", "mqtt-a")
    assert config.brokers[1].tls is None
    assert config.brokers[1].port == 1883
    assert config.timings == dataclasses.replace(
        LinkTimings(), holddown_s=10.0, holddown_max_s=60.0, keepalive_s=3
    )
    assert config.redis == RedisConfig(url="redis://:pw@redis:6379/0", key_prefix="gw")
    assert (config.generation, config.environment, config.broker_group) == (
        7,
        "staging",
        "studio-a",
    )


def test_broker_group_is_stable_and_order_independent() -> None:
    """Tables sharing a broker set derive the same group, whatever the broker order."""
    a = _parse(_legacy())
    doc = _legacy()
    doc["brokers"].reverse()
    assert _parse(doc).broker_group == a.broker_group
    other = _legacy()
    other["brokers"][1]["port"] = 1884
    assert _parse(other).broker_group != a.broker_group


# --- dump_config ------------------------------------------------------------------------


def _without_secrets(config: GatewayConfig, source: str) -> GatewayConfig:
    brokers = tuple(dataclasses.replace(b, username=None, password=None) for b in config.brokers)
    return dataclasses.replace(
        config,
        brokers=brokers,
        redis=dataclasses.replace(config.redis, url=None),
        source=source,
    )


@pytest.mark.parametrize("which", ["predecessor", "v1-full"])
def test_dump_config_round_trips(which: str) -> None:
    """parse(dump(c)) gives back the same config, apart from secrets and source."""
    if which == "predecessor":
        doc = _legacy()
        doc["game_config"]["input_stream"] = "rtmp://10.0.0.54:1935/live/r14_sb"
    else:
        doc = _v1(
            input="rtmp://10.0.0.50:1935/live/r10_sr",
            timeout_s=2.5,
            shaker_says="x/says",
        )
        doc.update(generation=3, environment="lab", broker_group="g1")
        doc["brokers"] = [
            {"id": "a", "host": "h1", "port": 8883, "priority": 2, "password": "pa",
             "tls": {"ca_file": "/ca.pem", "insecure_skip_verify": True}},
            {"id": "b", "host": "h2", "tls": {}},
        ]  # fmt: skip
        doc["failover"] = {"probe_interval_s": 0.5, "holddown_s": 1}
        doc["redis"] = {"url": "redis://:pw@r:6379", "key_prefix": "p"}
    original = _parse(doc, {"GATEWAY_BROKER_PASSWORD": "pw"})
    dumped = dump_config(original)
    reparsed = parse_config(json.loads(json.dumps(dumped)), source="dumped", env={})
    assert reparsed == _without_secrets(original, "dumped")


def test_dump_config_never_contains_a_secret() -> None:
    """No password or Redis URL credential appears in a dumped config."""
    doc = _v1()
    doc["brokers"] = [
        {"id": "a", "host": "h1", "username": "user", "password": "inline-pw-1"},
        {"id": "b", "host": "h2", "password_env": "PW_B"},
    ]
    doc["redis"] = {"url": "redis://:redis-pw-3@r:6379"}
    config = _parse(doc, {"PW_B": "env-pw-2"})
    assert [b.password for b in config.brokers] == ["inline-pw-1", "env-pw-2"]
    text = json.dumps(dump_config(config))
    for secret in ("inline-pw-1", "env-pw-2", "redis-pw-3", "password"):
        assert secret not in text


def test_config_repr_hides_passwords() -> None:
    """Printing a config (e.g. in a traceback) never shows a password or the Redis URL."""
    doc = _v1()
    doc["brokers"][0]["password"] = "inline-pw-9"
    doc["redis"] = {"url": "redis://:redis-pw-9@r:6379"}
    text = repr(_parse(doc))
    assert "inline-pw-9" not in text
    assert "redis-pw-9" not in text


# --- bad files ----------------------------------------------------------------------------


def _legacy_with(edit: Any) -> dict[str, Any]:
    doc = _legacy()
    edit(doc)
    return doc


def _v1_with(edit: Any) -> dict[str, Any]:
    doc = _v1()
    edit(doc)
    return doc


BAD_DOCS: list[tuple[str, Any, str]] = [
    (
        "missing-game-type",
        _legacy_with(lambda d: d["game_config"].pop("game_type")),
        "game_config.game_type",
    ),
    (
        "unknown-game-legacy",
        _legacy_with(lambda d: d["game_config"].update(game_type="poker")),
        "game_config.game_type",
    ),
    ("unknown-game-v1", _v1(game="blackjack"), "table.game"),
    ("port-0", _legacy_with(lambda d: d["brokers"][0].update(port=0)), "brokers[0].port"),
    ("port-70000", _legacy_with(lambda d: d["brokers"][1].update(port=70000)), "brokers[1].port"),
    ("port-string", _legacy_with(lambda d: d["brokers"][0].update(port="1883")), "brokers[0].port"),
    ("port-bool", _v1_with(lambda d: d["brokers"][0].update(port=True)), "brokers[0].port"),
    (
        "duplicate-broker-legacy",
        _legacy_with(lambda d: d["brokers"].append(copy.deepcopy(d["brokers"][0]))),
        "brokers[2]",
    ),
    (
        "duplicate-broker-v1",
        _v1_with(
            lambda d: d.update(brokers=[{"id": "a", "host": "h1"}, {"id": "a", "host": "h2"}])
        ),
        "brokers[1]",
    ),
    ("no-brokers-legacy", _legacy_with(lambda d: d.update(brokers=[])), "brokers"),
    ("no-brokers-v1", _v1_with(lambda d: d.pop("brokers")), "brokers"),
    ("brokers-not-list", _v1_with(lambda d: d.update(brokers={"host": "h"})), "brokers"),
    ("broker-not-object", _v1_with(lambda d: d.update(brokers=["h1"])), "brokers[0]"),
    (
        "broker-missing-host",
        _legacy_with(lambda d: d["brokers"][0].pop("broker")),
        "brokers[0].broker",
    ),
    (
        "broker-host-with-slash",
        _v1_with(lambda d: d["brokers"][0].update(host="h/1")),
        "brokers[0].host",
    ),
    ("bad-broker-id", _v1_with(lambda d: d["brokers"][0].update(id="a b")), "brokers[0].id"),
    (
        "wildcard-plus",
        _legacy_with(lambda d: d["game_config"].update(command_topic="ikg/idp/+/command")),
        "game_config.command_topic",
    ),
    (
        "wildcard-hash",
        _legacy_with(lambda d: d["game_config"].update(response_topic="ikg/idp/#")),
        "game_config.response_topic",
    ),
    ("wildcard-v1-shaker", _v1(shaker_says="ikg/sicbo/+/says"), "table.shaker_says"),
    ("typo-in-table", _v1(timout_s=5), "table.timout_s"),
    ("typo-at-top", _v1_with(lambda d: d.update(enviroment="prod")), "enviroment"),
    ("typo-in-broker", _v1_with(lambda d: d["brokers"][0].update(prority=2)), "brokers[0].prority"),
    (
        "typo-in-failover",
        _v1_with(lambda d: d.update(failover={"holddown": 5})),
        "failover.holddown",
    ),
    (
        "timeout-0-legacy",
        _legacy_with(lambda d: d["game_config"].update(timeout=0)),
        "game_config.timeout",
    ),
    ("timeout-0-v1", _v1(timeout_s=0), "table.timeout_s"),
    ("timeout-string", _v1(timeout_s="10"), "table.timeout_s"),
    ("retry-count-0", _v1(retry_count=0), "table.retry_count"),
    ("bad-table-code", _v1(code="ARO 001"), "table.code"),
    ("bad-input-url", _v1(input="file:///etc/passwd"), "table.input"),
    ("version-2", _v1_with(lambda d: d.update(version=2)), "version"),
    ("no-table", _v1_with(lambda d: d.pop("table")), "table"),
    ("table-not-object", _v1_with(lambda d: d.update(table="ARO-001")), "table"),
    (
        "holddown-max-below-holddown",
        _v1_with(lambda d: d.update(failover={"holddown_s": 60, "holddown_max_s": 30})),
        "failover.holddown_max_s",
    ),
    (
        "standby-probe-interval-zero",
        _v1_with(lambda d: d.update(failover={"standby_probe_interval_s": 0})),
        "failover.standby_probe_interval_s",
    ),
    (
        "password-env-unset",
        _v1_with(lambda d: d["brokers"][0].update(password_env="NOT_SET_ANYWHERE")),
        "brokers[0].password_env",
    ),
    (
        "tls-cert-without-key",
        _v1_with(lambda d: d["brokers"][0].update(tls={"cert_file": "/tls/c.pem"})),
        "brokers[0].tls.cert_file",
    ),
    (
        "tls-key-without-cert",
        _v1_with(lambda d: d["brokers"][0].update(tls={"key_file": "/tls/k.pem"})),
        "brokers[0].tls.cert_file",
    ),
    (
        "password-file-missing",
        _v1_with(lambda d: d["brokers"][0].update(password_file="/nonexistent/pw")),
        "brokers[0].password_file",
    ),
]


@pytest.mark.parametrize(
    ("doc", "field"), [(d, f) for _, d, f in BAD_DOCS], ids=[i for i, _, _ in BAD_DOCS]
)
def test_bad_file_names_file_and_field(doc: Any, field: str) -> None:
    """A bad config fails with a ConfigError naming the file and the offending field."""
    with pytest.raises(ConfigError) as info:
        _parse(doc)
    assert info.value.message.startswith(f"{SOURCE}: {field}: ")


@pytest.mark.parametrize("doc", [[], "config", 3, None], ids=["list", "string", "int", "null"])
def test_top_level_not_an_object(doc: Any) -> None:
    """A file whose top level is not a JSON object is rejected, naming the file."""
    with pytest.raises(ConfigError, match=f"^{SOURCE}: .*top level"):
        _parse(doc)


def test_top_level_list_on_disk(tmp_path: Path) -> None:
    """load_config rejects a file holding a JSON list, naming the file."""
    path = tmp_path / "list.json"
    path.write_text(json.dumps([json.loads(PREDECESSOR)]))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.message.startswith(f"{path}: ")


@pytest.mark.parametrize(
    "content",
    [b'{"brokers": [', b"", b"\xff\xfe\x00garbage", b"{'single': 'quotes'}"],
    ids=["truncated", "empty", "binary", "single-quotes"],
)
def test_bad_json_names_the_file(tmp_path: Path, content: bytes) -> None:
    """A file that is not JSON fails with a ConfigError naming the file."""
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.message.startswith(f"{path}: ")
    assert "JSON" in info.value.message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A config path that does not exist fails with a ConfigError naming the path."""
    path = tmp_path / "nope" / "table.json"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.message.startswith(f"{path}: cannot read")


def test_table_code_with_trailing_newline_is_rejected() -> None:
    """A table code with a trailing newline is rejected instead of producing broken topics."""
    with pytest.raises(ConfigError, match=r"table\.code"):
        _parse(_v1(code="ARO-001\n"))


# --- hostile files: each fails with a ConfigError naming the file and the field -------------

HOSTILE_FILES: dict[str, tuple[bytes, str]] = {
    "deep-array": (b"[" * 100_000, "not valid JSON: nested too deeply"),
    "deep-object": (b'{"a":' * 100_000, "not valid JSON: nested too deeply"),
    "nan": (json.dumps(_v1(timeout_s=float("nan"))).encode(), "NaN is not a number JSON allows"),
    "infinity": (b'{"version": 1, "generation": -Infinity}', "-Infinity is not a number"),
    "float-overflow": (b'{"version": 1e400}', "number 1e400 is beyond the range of a float"),
    "huge-integer": (b'{"version": ' + b"9" * 5000 + b"}", "an integer of 5000 digits"),
    "surrogate-escape": (
        json.dumps(_v1(command_topic="ikg/\ud800")).encode(),
        "table.command_topic: is not valid Unicode text",
    ),
    "encoded-surrogate": (
        b'{"version": 1, "table": {"game": "roulette", "code": "ARO-001", '
        b'"response_topic": "x\xed\xa0\x80"}, "brokers": [{"host": "h"}]}',
        "table.response_topic: is not valid Unicode text",
    ),
    "control-in-host": (
        json.dumps(_v1_with(lambda d: d["brokers"][0].update(host="h\x1b[2J"))).encode(),
        "brokers[0].host: holds a control character (U+001B)",
    ),
    "host-label-too-long": (
        json.dumps(_v1_with(lambda d: d["brokers"][0].update(host="a" * 64 + ".studio"))).encode(),
        "brokers[0].host: ",
    ),
    "server-name-empty-label": (
        json.dumps(
            _v1_with(lambda d: d["brokers"][0].update(tls={"server_name": "mqtt..studio"}))
        ).encode(),
        "brokers[0].tls.server_name: 'mqtt..studio' is not a host name",
    ),
    "unknown-field-with-newline": (
        json.dumps(_v1_with(lambda d: d.update({"evil\nkey": 1}))).encode(),
        "'evil\\nkey': unknown field",
    ),
    "too-large": (b" " * (MAX_CONFIG_BYTES + 1), f"at most {MAX_CONFIG_BYTES}"),
}


@pytest.mark.parametrize(("content", "expected"), HOSTILE_FILES.values(), ids=list(HOSTILE_FILES))
def test_hostile_file_is_a_config_error(tmp_path: Path, content: bytes, expected: str) -> None:
    """Each hostile file fails with a ConfigError naming the file and the problem."""
    path = tmp_path / "table.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = info.value.message
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message and message.encode("utf-8")


def test_config_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A config path that is a FIFO is refused at once instead of waiting for a writer."""
    path = tmp_path / "table.json"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(path, env={})


SECRET = b"s3cret-\xff-value"


@pytest.mark.parametrize(
    ("field", "content", "expected"),
    [
        ("password_file", SECRET, "not UTF-8 text"),
        ("username_file", SECRET, "not UTF-8 text"),
        ("password_file", b"x" * (MAX_SECRET_BYTES + 1), f"at most {MAX_SECRET_BYTES}"),
        ("password_file", None, "not a regular file"),
    ],
    ids=["password-not-utf8", "username-not-utf8", "password-too-large", "password-a-directory"],
)
def test_bad_credential_file_names_field_and_path_not_content(
    tmp_path: Path, field: str, content: bytes | None, expected: str
) -> None:
    """A credential file that is not small UTF-8 text fails naming field and path only."""
    path = tmp_path / "secret"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    doc = _v1_with(lambda d: d["brokers"][0].update({field: str(path)}))
    with pytest.raises(ConfigError) as info:
        _parse(doc)
    assert info.value.message.startswith(f"{SOURCE}: brokers[0].{field}: {path}: ")
    assert expected in info.value.message
    assert "s3cret" not in info.value.message


def test_credentials_dir_with_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A mounted Secret whose password is not UTF-8 names credentials_dir and the file."""
    (tmp_path / "password").write_bytes(SECRET)
    doc = _v1_with(lambda d: d["brokers"][0].update(credentials_dir=str(tmp_path)))
    with pytest.raises(ConfigError) as info:
        _parse(doc)
    assert info.value.message == (
        f"{SOURCE}: brokers[0].credentials_dir: {tmp_path / 'password'}: not UTF-8 text"
    )


def test_redis_url_file_not_utf8_hides_the_url(tmp_path: Path) -> None:
    """A Redis URL file that is not UTF-8 is named, and nothing of the URL is shown."""
    path = tmp_path / "url"
    path.write_bytes(b"redis://:s3cret@r:6379/\xff")
    with pytest.raises(ConfigError) as info:
        _parse(_v1_with(lambda d: d.update(redis={"url_file": str(path)})))
    assert info.value.message == f"{SOURCE}: redis.url_file: {path}: not UTF-8 text"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"GATEWAY_BROKER_PASSWORD": "pw\udcff"},
            "brokers[0].password: environment variable GATEWAY_BROKER_PASSWORD is not UTF-8 text",
        ),
        ({"GATEWAY_REDIS_URL": "redis://:s3cret@r:port"}, "GATEWAY_REDIS_URL is not a valid URL"),
        ({"GATEWAY_REDIS_URL": "http://:s3cret@r"}, "GATEWAY_REDIS_URL must start with redis://"),
    ],
    ids=["undecodable-password", "redis-url-bad-port", "redis-url-bad-scheme"],
)
def test_bad_secret_from_the_environment(env: dict[str, str], expected: str) -> None:
    """A secret in the environment that the libraries could not use fails, never shown."""
    with pytest.raises(ConfigError) as info:
        _parse(_v1(), env)
    assert expected in info.value.message
    assert "s3cret" not in info.value.message and "udcff" not in info.value.message


def test_values_in_messages_are_bounded() -> None:
    """A huge integer or a long string is shown briefly; the message stays short."""
    with pytest.raises(ConfigError) as info:
        _parse(_v1_with(lambda d: d["brokers"][0].update(port=10**5000)))
    assert "an integer of 16610 bits" in info.value.message
    with pytest.raises(ConfigError) as info:
        _parse(_v1(command_topic="#" * 100_000))
    assert len(info.value.message) < 300


def test_standby_brokers_are_probed_every_second_unless_the_file_says_otherwise() -> None:
    """standby_probe_interval_s defaults to 1 s, is read from "failover", and survives a dump."""
    assert _parse(_v1()).timings.standby_probe_interval_s == 1.0
    doc = _v1()
    doc["failover"] = {"standby_probe_interval_s": 2.5}
    config = _parse(doc)
    assert config.timings.standby_probe_interval_s == 2.5
    assert config.timings.probe_interval_s == 0.2
    assert dump_config(config)["failover"]["standby_probe_interval_s"] == 2.5
