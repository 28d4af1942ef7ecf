"""The predecessor-compatible facade against a real sidecar, real mosquitto and the simulator."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway import compat
from gateway.client import IdpFailed, NotReady, RoundTimedOut
from gateway.compat import CompleteMQTTSystem, Environment, GameType, WrongSidecar, legacy_result
from gateway.devtools.sandbox import MosquittoProcess, free_port
from gateway.sidecar.app import Sidecar
from tests.integration.harness import Stack, expected, make_config, until

LISTENS, SAYS = "ikg/sicbo/Billy-III/listens", "ikg/sicbo/Billy-III/says"
SHAKER: dict[str, Any] = {"shaker_listens": LISTENS, "shaker_says": SAYS}
EXTRA = "studio/SBO-001/announcements"
Seen = list[tuple[str, str, Any]]


def system_for(s: Stack | Sidecar, game: GameType, **kw: Any) -> CompleteMQTTSystem:
    sidecar = s.sidecar if isinstance(s, Stack) else s
    return CompleteMQTTSystem(game, Environment.PRODUCTION, target=sidecar.address, **kw)


async def say(broker: MosquittoProcess, topic: str, payload: bytes) -> None:
    """Publish as a device would."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(broker.host, broker.port, socket_options=options) as c:
        await c.publish(topic, payload, qos=1)


@pytest.mark.parametrize("game", list(GameType))
async def test_detect_returns_the_predecessors_result_shapes(
    broker: MosquittoProcess, game: GameType
) -> None:
    """(True, result) in the old shape: SicBo [d1, d2, d3], Roulette n, Baccarat 6 cards."""
    async with Stack([broker], game.value) as s, system_for(s, game) as system:
        round_id = f"{s.code}-compat-1"
        ok, result = await system.detect(round_id, "rtmp://192.0.2.7:1935/live/cam")
        assert ok is True
        assert result == legacy_result(expected(game.value, round_id))
        shape = {GameType.SICBO: (list, 3), GameType.BACCARAT: (list, 6)}.get(game)
        if shape is None:
            assert isinstance(result, int)
        else:
            assert isinstance(result, shape[0]) and len(result) == shape[1]
        # The stream URL reaches the IDP under the name the devices read.
        assert s.commands("detect")[-1]["arg"]["input"] == "rtmp://192.0.2.7:1935/live/cam"
        assert system.last_detect_error is None


async def test_silence_is_false_none_with_a_warning_naming_the_timeout(
    broker: MosquittoProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """No answer within the table's timeout: (False, None), never a made-up default."""
    caplog.set_level(logging.WARNING, logger="gateway.compat")
    async with (
        Stack([broker], "roulette", timeout_s=0.5) as s,
        system_for(s, GameType.ROULETTE) as system,
    ):
        s.behave(answer="silence")
        assert await system.detect("ARO-001-compat-silent") == (False, None)
        assert isinstance(system.last_detect_error, RoundTimedOut)
    [record] = [r for r in caplog.records if "ARO-001-compat-silent" in r.getMessage()]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "RoundTimedOut (DEADLINE_EXCEEDED)" in message and "within 0.50s" in message
    assert s.sidecar.address in message


async def test_idp_error_is_false_none_with_the_idp_code(
    broker: MosquittoProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """err -3 from the IDP: (False, None), the WARNING naming -3 NO_SHAKE (re-shake)."""
    caplog.set_level(logging.WARNING, logger="gateway.compat")
    async with Stack([broker], "sicbo") as s, system_for(s, GameType.SICBO) as system:
        s.behave(answer="error", err=-3)
        assert await system.detect("SBO-001-compat-noshake") == (False, None)
        assert isinstance(system.last_detect_error, IdpFailed)
        assert system.last_detect_error.idp_code == "-3"
    assert "IdpFailed (FAILED_PRECONDITION, idp err -3 NO_SHAKE)" in caplog.text


async def test_bad_round_id_is_false_none_with_an_error(
    broker: MosquittoProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A round id the sidecar refuses: (False, None) and an ERROR naming the field."""
    caplog.set_level(logging.WARNING, logger="gateway.compat")
    async with Stack([broker], "roulette") as s, system_for(s, GameType.ROULETTE) as system:
        assert await system.detect("") == (False, None)
        assert await system.detect("ARO-1", "rtmp://a/b", input="rtmp://c/d") == (False, None)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "InvalidRound (INVALID_ARGUMENT)" in errors[0] and "round_id" in errors[0]
    assert "two different stream URLs" in errors[1]
    assert len(s.commands("detect")) == 0


async def test_handlers_receive_shaker_states_during_a_real_shake(
    broker: MosquittoProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync and async handlers get S2, S1, S0; a raising handler stops neither them nor
    the stream."""
    sync_seen: Seen = []
    async_seen: Seen = []

    def broken(topic: str, payload: str, data: Any) -> None:
        raise RuntimeError(f"handler bug on {payload}")

    async def on_async(topic: str, payload: str, data: Any) -> None:
        await asyncio.sleep(0)
        async_seen.append((topic, payload, data))

    async with Stack([broker], "sicbo", **SHAKER) as s:
        system = system_for(s, GameType.SICBO)
        system.add_message_handler(SAYS, broken)  # registered first, raises every time
        system.add_message_handler(SAYS, lambda *m: sync_seen.append(m))
        system.add_message_handler("ikg/sicbo/+/says", on_async)
        async with system:
            assert system.subscribed_topics == {SAYS}
            ok, states = await system.shake(duration_s=0.2)
            assert (ok, states) == (True, ["S2", "S1", "S0"])
            await until(lambda: len(async_seen) == 3, 5, "the async handler saw the cycle")
            await until(lambda: len(sync_seen) == 3, 5, "the sync handler saw the cycle")
            # A second cycle: the stream outlived three handler exceptions.
            assert (await system.shake(duration_s=0.1))[0] is True
            await until(lambda: len(sync_seen) == 6, 5, "the second cycle arrived")
    assert sync_seen[:3] == [(SAYS, st, {"raw": st}) for st in ("S2", "S1", "S0")]
    assert async_seen[:3] == sync_seen[:3]
    failures = [r for r in caplog.records if r.getMessage().startswith("message handler")]
    assert len(failures) == 6 and all(r.levelno == logging.ERROR for r in failures)


async def test_handlers_added_after_initialize(
    broker: MosquittoProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A carried topic works at once (JSON parsed); one the sidecar does not carry is an
    ERROR listing those it does."""
    caplog.set_level(logging.ERROR, logger="gateway.compat")
    seen: Seen = []
    async with (
        Stack([broker], "sicbo", subscribe_topics=[EXTRA], **SHAKER) as s,
        system_for(s, GameType.SICBO) as system,
    ):
        assert system.subscribed_topics == {SAYS, EXTRA}  # open before any handler
        system.add_message_handler(EXTRA, lambda *m: seen.append(m))
        await say(broker, EXTRA, b'{"msg": "last call"}')
        await until(lambda: len(seen) == 1, 5, "the announcement reached the handler")
        assert seen == [(EXTRA, '{"msg": "last call"}', {"msg": "last call"})]
        system.add_message_handler("ikg/idp/SBO-001/response", lambda *m: seen.append(m))
        await until(lambda: "not carried" in caplog.text, 5, "the unknown topic reported")
        assert f"it carries: {SAYS}, {EXTRA}" in caplog.text
        assert "'ikg/idp/SBO-001/response'" in caplog.text
        await until(lambda: system.subscribed_topics == {SAYS, EXTRA}, 5, "re-subscribed")
        await say(broker, EXTRA, b"plain text")  # the carried topic still flows
        await until(lambda: len(seen) == 2, 5, "the second announcement")
        assert seen[1] == (EXTRA, "plain text", {"raw": "plain text"})


async def test_subscription_and_health_across_a_sidecar_restart(
    broker: MosquittoProcess,
) -> None:
    """While the sidecar is down health is unhealthy (unreachable) and stats count nothing
    active; once it is back the handlers' subscription re-opens by itself."""
    seen: Seen = []
    port = free_port()
    config = make_config([broker], "sicbo", **SHAKER)
    system = CompleteMQTTSystem(GameType.SICBO, target=f"127.0.0.1:{port}", stats_interval_s=0.1)
    system.add_message_handler(SAYS, lambda *m: seen.append(m))
    try:
        async with Sidecar(config, listen=f"127.0.0.1:{port}"):
            assert await system.initialize() is True
            await say(broker, SAYS, b"S0")
            await until(lambda: len(seen) == 1, 5, "S0 before the restart")
            assert (await system.check_health())["status"] == "healthy"
        await until(lambda: not system.subscribed_topics, 5, "the stream noticed the stop")
        health = await system.check_health()
        assert health["status"] == "unhealthy"
        [issue] = health["issues"]
        assert issue.startswith(f"sidecar at 127.0.0.1:{port} unreachable: UNAVAILABLE: ")
        await until(
            lambda: not system.get_connection_stats()["sidecar_reachable"], 5, "stats noticed"
        )
        assert system.get_connection_stats()["active_connections"] == 0
        async with Sidecar(config, listen=f"127.0.0.1:{port}"):
            await until(lambda: system.subscribed_topics == {SAYS}, 15, "re-subscribed")
            await say(broker, SAYS, b"S1")
            await until(lambda: len(seen) == 2, 5, "S1 after the restart")
            await until(
                lambda: system.get_connection_stats()["active_connections"] == 1, 5, "stats back"
            )
    finally:
        await system.cleanup()
    assert [m[1] for m in seen] == ["S0", "S1"]


async def test_stats_and_health_with_a_broker_down(two_brokers: list[MosquittoProcess]) -> None:
    """Two brokers, one killed: stats 2 total, 1 active, 1 failed; health degraded, naming it."""
    b1, b2 = two_brokers
    async with (
        Stack(two_brokers, "roulette") as s,
        system_for(s, GameType.ROULETTE, stats_interval_s=0.1) as system,
    ):
        stats = system.get_connection_stats()  # filled by initialize
        assert (stats["total_connections"], stats["active_connections"]) == (2, 2)
        assert (stats["failed_connections"], stats["active_broker"]) == (0, "b1")
        assert set(stats["brokers"]) == {"b1", "b2"} and stats["sidecar_reachable"] is True
        assert await system.detect("ARO-001-compat-stats") == (
            True,
            legacy_result(expected("roulette", "ARO-001-compat-stats")),
        )
        healthy = await system.check_health()
        assert (healthy["status"], healthy["issues"]) == ("healthy", [])
        assert (healthy["table_code"], healthy["game"]) == ("ARO-001", "roulette")

        await b2.kill()
        await until(lambda: not s.sidecar.pool.links["b2"].status().ready, 5, "b2 seen down")
        await until(
            lambda: system.get_connection_stats()["failed_connections"] == 1, 5, "stats refreshed"
        )
        stats = system.get_connection_stats()
        assert (stats["total_connections"], stats["active_connections"]) == (2, 1)
        assert stats["brokers"]["b2"]["connected"] is False
        assert stats["counters"]["detects_ok"] == 1
        assert (await system.refresh_connection_stats())["failed_connections"] == 1
        health = await system.check_health()
        assert health["status"] == "degraded"
        assert any(i.startswith(f"broker b2 ({b2.host}:{b2.port}) ") for i in health["issues"])

        await b1.kill()
        await until(lambda: not s.sidecar.pool.links["b1"].status().ready, 5, "b1 seen down")
        health = await system.check_health()
        assert health["status"] == "unhealthy"
        assert sum(i.startswith("broker b") for i in health["issues"]) == 2


async def test_broker_connection_is_a_real_mqtt_connect(broker: MosquittoProcess) -> None:
    """True against a live broker, False against a closed port; function and method."""
    closed = free_port()
    assert await compat.test_broker_connection(broker.host, broker.port) is True
    assert await compat.test_broker_connection("127.0.0.1", closed, timeout_s=1) is False
    system = CompleteMQTTSystem(GameType.SICBO)  # needs no sidecar
    assert await system.test_broker_connection(broker.host, broker.port) is True
    assert await system.test_broker_connection("127.0.0.1", closed) is False


async def test_target_from_gateway_target(
    broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without target=, the sidecar is the one GATEWAY_TARGET names."""
    async with Stack([broker], "baccarat") as s:
        monkeypatch.setenv("GATEWAY_TARGET", s.sidecar.address)
        async with CompleteMQTTSystem(GameType.BACCARAT) as system:
            assert system.target == s.sidecar.address and system.table_code == "BAC-001"
            ok, cards = await system.detect("BAC-001-compat-env")
            assert ok and cards == legacy_result(expected("baccarat", "BAC-001-compat-env"))


async def test_gateway_target_may_name_a_unix_socket(
    broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """GATEWAY_TARGET=unix:PATH reaches a sidecar serving --listen-unix PATH."""
    path = tmp_path / "gateway.sock"
    async with Stack([broker], "baccarat", listen_unix=str(path)):
        monkeypatch.setenv("GATEWAY_TARGET", f"unix:{path}")
        async with CompleteMQTTSystem(GameType.BACCARAT) as system:
            assert system.target == f"unix:{path}" and system.table_code == "BAC-001"
            ok, cards = await system.detect("BAC-001-compat-uds")
            assert ok and cards == legacy_result(expected("baccarat", "BAC-001-compat-uds"))


async def test_initialize_refuses_the_wrong_sidecar(
    broker: MosquittoProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A SicBo system pointed at a Baccarat sidecar fails initialize, saying both."""
    caplog.set_level(logging.ERROR, logger="gateway.compat")
    async with Stack([broker], "baccarat") as s:
        system = system_for(s, GameType.SICBO)
        with pytest.raises(WrongSidecar) as info:
            await system.initialize()
        message = str(info.value)
        assert s.sidecar.address in message
        assert "serves baccarat table BAC-001, not sicbo" in message
        assert system.is_initialized is False
        assert await system.detect("SBO-001-compat-wrong") == (False, None)
        assert len(s.commands("detect")) == 0
    assert "serves baccarat" in caplog.text


async def test_initialize_without_a_sidecar_raises_not_ready() -> None:
    """Nobody at the target: NotReady within ready_timeout_s, naming the target."""
    target = f"127.0.0.1:{free_port()}"
    system = CompleteMQTTSystem(GameType.ROULETTE, target=target, ready_timeout_s=0.5)
    with pytest.raises(NotReady) as info:
        await system.initialize()
    assert target in str(info.value)
    await system.cleanup()


async def test_cleanup_is_idempotent_and_stops_everything(broker: MosquittoProcess) -> None:
    """cleanup twice is fine; afterwards no stream, no detect, and initialize works again."""
    async with Stack([broker], "sicbo", **SHAKER) as s:
        system = system_for(s, GameType.SICBO)
        system.add_message_handler(SAYS, lambda *m: None)
        await system.initialize()
        assert system.is_running and system.subscribed_topics == {SAYS}
        assert s.sidecar.hub._listeners  # the handlers' stream, as the sidecar sees it
        await system.cleanup()
        await system.cleanup()
        await until(lambda: not s.sidecar.hub._listeners, 5, "the stream ended at the sidecar")
        assert not system.is_initialized and not system.subscribed_topics
        assert await system.detect("SBO-001-compat-after") == (False, None)
        assert system.get_connection_stats()["sidecar_reachable"] is False
        assert await system.initialize() is True
        ok, _ = await system.detect("SBO-001-compat-again")
        assert ok
        await system.cleanup()


async def test_the_system_works_from_any_loop_and_any_thread(broker: MosquittoProcess) -> None:
    """initialize in one asyncio.run, each detect in its own asyncio.run on a worker
    thread, cleanup from yet another loop: every round gets its real result."""
    async with Stack([broker], "roulette") as s:
        system = system_for(s, GameType.ROULETTE)

        def in_a_loop_of_its_own(coro: Any) -> Any:
            return asyncio.run(coro)

        assert await asyncio.to_thread(in_a_loop_of_its_own, system.initialize()) is True
        for n in range(5):
            rid = f"{s.code}-loops-{n}"
            ok, result = await asyncio.to_thread(in_a_loop_of_its_own, system.detect(rid))
            assert (ok, result) == (True, legacy_result(expected("roulette", rid)))
        ok, result = await system.detect(f"{s.code}-loops-here")  # and from this loop too
        assert ok is True
        assert await asyncio.to_thread(in_a_loop_of_its_own, system.send_timeout_command())
        await asyncio.to_thread(in_a_loop_of_its_own, system.cleanup())
        assert system.is_initialized is False
        assert await system.detect(f"{s.code}-after") == (False, None)
