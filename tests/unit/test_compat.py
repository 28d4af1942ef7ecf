"""The compatibility facade's pure mappings: result shapes, statistics, health; no I/O."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from gateway import compat
from gateway.client import (
    BaccaratHand,
    IdpFailed,
    RouletteNumber,
    RoundTimedOut,
    SicBoDice,
)
from gateway.compat import (
    CompleteMQTTSystem,
    Environment,
    GameType,
    connection_stats,
    health_report,
    legacy_result,
    parse_payload,
    test_broker_connection,
    topic_matches,
)
from gateway.compat.legacy import describe_failure
from gateway.compat.system import DEFAULT_TARGET
from gateway.v1 import gateway_pb2 as pb

TARGET = "127.0.0.1:50051"


def test_enums_keep_the_predecessors_values() -> None:
    """GameType and Environment carry the predecessor's spellings."""
    assert [g.value for g in GameType] == ["sicbo", "baccarat", "roulette"]
    assert [e.value for e in Environment] == ["development", "staging", "production"]
    assert GameType("roulette") is GameType.ROULETTE


@pytest.mark.parametrize(
    ("result", "old"),
    [
        (SicBoDice((4, 2, 6)), [4, 2, 6]),
        (RouletteNumber(35), 35),
        (RouletteNumber(0), 0),
        (BaccaratHand(("KD", "8S", "10H", "AC", "", "")), ["KD", "8S", "10H", "AC", "", ""]),
    ],
)
def test_results_take_the_predecessors_shapes(result: object, old: object) -> None:
    """SicBo a list of 3 ints, Roulette an int, Baccarat a list of 6 strings."""
    converted = legacy_result(result)  # type: ignore[arg-type]  # each Result member
    assert converted == old and type(converted) is type(old)


def test_payload_data_is_json_or_the_raw_text() -> None:
    """A handler's data is the parsed JSON, or {"raw": text} as the predecessor gave."""
    assert parse_payload('{"msg": "last call"}') == {"msg": "last call"}
    assert parse_payload("S0") == {"raw": "S0"}
    assert parse_payload("7") == 7


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("ikg/sicbo/Billy-III/says", "ikg/sicbo/Billy-III/says", True),
        ("ikg/sicbo/+/says", "ikg/sicbo/Billy-III/says", True),
        ("ikg/sicbo/#", "ikg/sicbo/Billy-III/says", True),
        ("ikg/sicbo/#", "ikg/sicbo", True),
        ("#", "studio/SBO-001/announcements", True),
        ("ikg/sicbo/+", "ikg/sicbo/Billy-III/says", False),
        ("ikg/sicbo/Billy-III/says", "ikg/sicbo/Billy-III/listens", False),
        ("ikg/sicbo/Billy-III/says/x", "ikg/sicbo/Billy-III/says", False),
    ],
)
def test_topic_filters_match_as_mqtt_does(pattern: str, topic: str, matches: bool) -> None:
    """Handler topics are MQTT filters: + one level, a trailing # the rest."""
    assert topic_matches(pattern, topic) is matches


def test_failure_description_names_class_status_and_idp_code() -> None:
    """A failed detect's log text names the error class, gRPC status, IDP code, details."""
    meta = (("idp-err", "-3"), ("idp-err-name", "NO_SHAKE"))
    idp = IdpFailed(
        grpc.StatusCode.FAILED_PRECONDITION, "IDP said -3", target=TARGET, trailing_metadata=meta
    )
    assert describe_failure(idp) == (
        f"IdpFailed (FAILED_PRECONDITION, idp err -3 NO_SHAKE) from sidecar {TARGET}: IDP said -3"
    )
    late = RoundTimedOut(grpc.StatusCode.DEADLINE_EXCEEDED, "no result", target=TARGET)
    assert describe_failure(late) == (
        f"RoundTimedOut (DEADLINE_EXCEEDED) from sidecar {TARGET}: no result"
    )


def _stats(*connected: bool) -> pb.StatsResponse:
    local = pb.SidecarStats(
        table_code="SBO-001",
        active_broker_id="b1",
        updated_unix=1700000000.0,
        counters=pb.Counters(detects_ok=5, detects_timed_out=1),
        brokers=[
            pb.BrokerStats(id=f"b{i + 1}", connected=c, last_error="" if c else "refused")
            for i, c in enumerate(connected)
        ],
    )
    return pb.StatsResponse(local=local)


def test_connection_stats_count_one_connection_per_broker() -> None:
    """total = brokers, active = connected ones, failed = the rest; extras alongside."""
    stats = connection_stats(_stats(True, False), target=TARGET)
    assert (stats["total_connections"], stats["active_connections"]) == (2, 1)
    assert stats["failed_connections"] == 1
    assert stats["brokers"]["b2"] == {
        "connected": False, "connects": 0, "disconnects": 0, "publishes_ok": 0,
        "publishes_failed": 0, "probe_rtt_ms": 0.0, "last_error": "refused",
    }  # fmt: skip
    assert stats["counters"]["detects_ok"] == 5 and stats["counters"]["detects_timed_out"] == 1
    assert (stats["active_broker"], stats["table_code"]) == ("b1", "SBO-001")
    assert stats["sidecar_reachable"] is True and stats["error"] == ""


def test_connection_stats_without_a_sidecar_count_nothing_active() -> None:
    """Not initialized, or the last refresh failed: nothing active, the error said."""
    empty = connection_stats(None, target=TARGET, error="not initialized")
    assert (empty["total_connections"], empty["active_connections"]) == (0, 0)
    assert empty["sidecar_reachable"] is False and empty["error"] == "not initialized"
    stale = connection_stats(_stats(True, True), target=TARGET, error="did not answer")
    assert (stale["total_connections"], stale["active_connections"]) == (2, 0)
    assert stale["failed_connections"] == 2


def _health(status: int, *down: str, game: int = pb.GAME_SICBO, **kw: str) -> pb.HealthResponse:
    brokers = [
        pb.BrokerHealth(
            id=b, host="10.0.0.9", port=1883, connected=b not in down,
            state=pb.BROKER_STATE_DOWN if b in down else pb.BROKER_STATE_READY,
            last_error="connection refused" if b in down else "", active=b == "b1",
        )
        for b in ("b1", "b2")
    ]  # fmt: skip
    return pb.HealthResponse(
        status=status,  # type: ignore[arg-type]  # a HealthResponse.Status value
        reason=kw.get("reason", "active b1 (epoch 0): preferred"),
        table_code="SBO-001",
        game=game,  # type: ignore[arg-type]  # a Game value
        active_broker_id="b1",
        brokers=brokers,
        config_error=kw.get("config_error", ""),
    )


def test_serving_is_healthy_without_issues() -> None:
    """SERVING with every broker up: healthy, no issues, brokers listed."""
    report = health_report(_health(pb.HealthResponse.SERVING), target=TARGET, game=GameType.SICBO)
    assert (report["status"], report["issues"]) == ("healthy", [])
    assert [b["id"] for b in report["brokers"]] == ["b1", "b2"]
    assert report["brokers"][0]["state"] == "READY" and report["active_broker"] == "b1"


def test_degraded_names_the_broker_down_and_why() -> None:
    """DEGRADED: the sidecar's reason, then each broker down with its last error."""
    h = _health(pb.HealthResponse.DEGRADED, "b2", reason="active b1; not ready: b2 DOWN")
    report = health_report(h, target=TARGET, game=GameType.SICBO)
    assert report["status"] == "degraded"
    assert report["issues"] == [
        "sidecar: active b1; not ready: b2 DOWN",
        "broker b2 (10.0.0.9:1883) DOWN: connection refused",
    ]


def test_not_serving_is_unhealthy() -> None:
    """NOT_SERVING (no broker can carry a detect) is unhealthy."""
    h = _health(pb.HealthResponse.NOT_SERVING, "b1", "b2", reason="no broker is ready")
    report = health_report(h, target=TARGET, game=GameType.SICBO)
    assert report["status"] == "unhealthy" and report["issues"][0] == "sidecar: no broker is ready"
    assert len(report["issues"]) == 3


def test_refused_configuration_change_degrades() -> None:
    """A configuration change the sidecar did not apply is an issue, and degraded."""
    h = _health(pb.HealthResponse.SERVING, config_error="brokers[0].port: must be 1-65535")
    report = health_report(h, target=TARGET, game=GameType.SICBO)
    assert report["status"] == "degraded"
    assert report["issues"] == [
        "configuration change not applied: brokers[0].port: must be 1-65535"
    ]


def test_another_games_sidecar_is_unhealthy() -> None:
    """A sidecar serving another game is unhealthy, naming what it serves."""
    h = _health(pb.HealthResponse.SERVING, game=pb.GAME_BACCARAT)
    report = health_report(h, target=TARGET, game=GameType.SICBO)
    assert report["status"] == "unhealthy" and report["game"] == "baccarat"
    assert report["issues"] == [f"sidecar at {TARGET} serves baccarat table SBO-001, not sicbo"]


def test_no_health_answer_is_unhealthy_with_the_reason() -> None:
    """No Health answer: unhealthy, the one issue saying why."""
    report = health_report(None, target=TARGET, game=GameType.ROULETTE, error="unreachable")
    assert (report["status"], report["issues"]) == ("unhealthy", ["unreachable"])


def test_target_comes_from_argument_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """target= wins over GATEWAY_TARGET, which wins over 127.0.0.1:50051."""
    monkeypatch.delenv("GATEWAY_TARGET", raising=False)
    assert CompleteMQTTSystem(GameType.SICBO).target == DEFAULT_TARGET == TARGET
    monkeypatch.setenv("GATEWAY_TARGET", "127.0.0.1:6000")
    assert CompleteMQTTSystem(GameType.SICBO).target == "127.0.0.1:6000"
    assert CompleteMQTTSystem(GameType.SICBO, target="10.0.0.1:1").target == "10.0.0.1:1"


def test_predecessor_arguments_are_accepted_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """The predecessor's positional arguments still work and are kept where its callers
    read them (attributes and the status); the sidecar owns what they configured."""
    system = CompleteMQTTSystem("baccarat", "staging", "conf", 10, False, False)
    assert (system.game_type, system.environment) == (GameType.BACCARAT, Environment.STAGING)
    assert system.is_initialized is False and system.is_running is False
    assert (system.max_connections, system.enable_connection_pooling) == (10, False)
    assert system.enable_message_processing is False
    assert system.logger.name == "gateway.compat.baccarat"
    status = system.get_system_status()
    assert status["connection_manager"]["enabled"] is False
    assert status["message_processor"]["enabled"] is False
    assert status["config_info"]["game_code"] == "BAC-001"
    assert status["primary_client"]["connected"] is False


async def test_calls_before_initialize_fail_softly(caplog: pytest.LogCaptureFixture) -> None:
    """Before initialize: detect (False, None) with an ERROR, health unhealthy, stats zero."""
    system = CompleteMQTTSystem(GameType.ROULETTE)
    with caplog.at_level(logging.ERROR, logger="gateway.compat"):
        assert await system.detect("ARO-001-early") == (False, None)
    assert "call initialize() first" in caplog.text
    health = await system.check_health()
    assert health["status"] == "unhealthy" and "initialize" in health["issues"][0]
    assert system.get_connection_stats()["total_connections"] == 0
    await system.cleanup()  # nothing to clean: fine


def test_game_type_accepts_the_predecessors_own_enum_members() -> None:
    """Any enum member whose value is a game's spelling converts (case-insensitively)."""
    import enum

    class Theirs(enum.Enum):
        SICBO = "sicbo"
        ROULETTE = "ROULETTE"

    assert GameType(Theirs.SICBO) is GameType.SICBO
    assert GameType(Theirs.ROULETTE) is GameType.ROULETTE
    assert CompleteMQTTSystem(Theirs.SICBO).game_type is GameType.SICBO
    with pytest.raises(ValueError):
        GameType("craps")


def test_each_game_finds_its_own_sidecar(monkeypatch: pytest.MonkeyPatch) -> None:
    """target= first, then GATEWAY_TARGET_<GAME>, then GATEWAY_TARGET, then the default."""
    from gateway.compat import sidecar_target

    monkeypatch.setenv("GATEWAY_TARGET", "10.0.0.1:1")
    monkeypatch.setenv("GATEWAY_TARGET_SICBO", "10.0.0.2:2")
    assert sidecar_target(GameType.SICBO) == "10.0.0.2:2"
    assert sidecar_target(GameType.ROULETTE) == "10.0.0.1:1"
    assert sidecar_target(GameType.SICBO, "x:3") == "x:3"


def health_of(**kw: object) -> pb.HealthResponse:
    base: dict[str, object] = {
        "table_code": "ARO-001",
        "command_topic": "ikg/idp/ARO-001/command",
        "response_topic": "ikg/idp/ARO-001/response",
        "timeout_s": 10.0,
        "instance_id": "ARO-001-ab",
        "brokers": [pb.BrokerHealth(id="b1", host="10.0.0.9", port=1883, priority=1)],
    }
    return pb.HealthResponse(**{**base, **kw})  # type: ignore[arg-type]


def test_the_programs_settings_are_compared_with_what_the_sidecar_serves() -> None:
    """Each setting that differs is named once; credentials and client id only if set."""
    from gateway.compat.config import BrokerConfig, default_config, differences

    config = default_config(GameType.ROULETTE, Environment.PRODUCTION)
    baseline = default_config(GameType.ROULETTE, Environment.PRODUCTION)
    assert differences(config, health_of(), baseline) == []
    config.brokers = [BrokerConfig("10.0.0.9", 1883, "PFC", "wago", 1)]
    assert differences(config, health_of(), baseline) == [
        "brokers[].password, brokers[].username not used: the sidecar connects with its own "
        "credentials (its Secret or environment)"
    ]
    config.brokers = [BrokerConfig("192.168.20.9")]
    config.game_config.response_topic = "other/response"
    config.game_config.timeout = 30
    config.client_id = "mine"
    found = differences(config, health_of(), baseline)
    assert (
        found[0] == "response_topic 'other/response': the sidecar uses 'ikg/idp/ARO-001/response'"
    )
    assert found[1] == "timeout 30s: the sidecar's detect timeout is 10s"
    assert found[2].startswith("brokers 192.168.20.9:1883 (priority 1): the sidecar uses 10.0.0.9")
    assert found[3].startswith("client_id 'mine' is not used")


def test_the_predecessors_file_is_read_from_config_dir(tmp_path: Path) -> None:
    """MQTTConfigManager/get_config read the per-table file as the sidecar would; absent
    or unreadable, the game's defaults."""
    from gateway.compat import MQTTConfigManager, get_config

    root = tmp_path
    (root / "sicbo-broker.json").write_text(
        '{"brokers": [{"broker": "10.0.0.9", "port": 8883, "priority": 1, "ssl": true}],'
        ' "default_username": "PFC", "game_config": {"game_type": "sicbo", "game_code": "SBO-002"}}'
    )
    config = MQTTConfigManager(root).get_config("sicbo")
    assert config.game_config.game_code == "SBO-002"
    assert [(b.broker, b.port, b.ssl, b.username) for b in config.brokers] == [
        ("10.0.0.9", 8883, True, "PFC")
    ]
    assert get_config(GameType.BACCARAT, "production", root).game_config.game_code == "BAC-001"
    (root / "roulette.json").write_text("[[[")
    assert get_config("roulette", config_dir=root).source == "defaults"


def test_the_predecessors_names_import_from_both_paths() -> None:
    """``gateway.compat`` and ``gateway.compat.system`` give the same objects as before."""
    from gateway.compat import system

    shared = set(system.__all__) & set(compat.__all__)
    assert {"CompleteMQTTSystem", "create_complete_sicbo_system", "sidecar_target"} <= shared
    for name in shared:
        assert getattr(compat, name) is getattr(system, name)
    assert system.test_broker_connection is test_broker_connection
    assert system.DEFAULT_TARGET == DEFAULT_TARGET == "127.0.0.1:50051"
