"""Shake and Subscribe end to end: real mosquitto, the shaker simulator, a real sidecar."""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import parse_qs, urlsplit

import aiomqtt
import grpc
import pytest

from gateway.client import InvalidRound, ShakeFailed
from gateway.devtools.sandbox import MosquittoProcess
from tests.integration.harness import Stack, until

LISTENS, SAYS = "ikg/sicbo/Billy-III/listens", "ikg/sicbo/Billy-III/says"
SHAKER = {"shaker_listens": LISTENS, "shaker_says": SAYS}


def cycle(s: Stack) -> dict[str, str]:
    """The parameters of the last /cycle command the simulated shaker received."""
    text = [c.payload for c in s.sim.commands if c.command == "/cycle"][-1]
    return {k: v[0] for k, v in parse_qs(urlsplit(text).query).items()}


async def say(broker: MosquittoProcess, topic: str, payload: bytes) -> None:
    """Publish as a device would."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(broker.host, broker.port, socket_options=options) as c:
        await c.publish(topic, payload, qos=1)


async def test_shake_completes_at_idle_after_the_cycle(broker: MosquittoProcess) -> None:
    """The cycle goes out as the shaker's plain text; done at its S0 after S2, S1."""
    async with Stack([broker], "sicbo", **SHAKER) as s:
        shook = await s.client.shake(duration_s=0.2)
        assert shook.states == ("S2", "S1", "S0")
        assert shook.broker_id == "b1" and shook.budget_s == pytest.approx(7.2)
        assert shook.elapsed_ms >= 200
        assert cycle(s) == {"pattern": "0", "parameter1": "10", "parameter2": "0",
                            "amplitude": "0.41", "duration": "0.2"}  # fmt: skip
        await s.client.shake(pattern=2, parameter1=12, amplitude=0.5, duration_s=0.1)
        assert cycle(s) == {"pattern": "2", "parameter1": "12", "parameter2": "0",
                            "amplitude": "0.5", "duration": "0.1"}  # fmt: skip


async def test_motion_fault_is_a_typed_failure(broker: MosquittoProcess) -> None:
    """S90 from the shaker: FAILED_PRECONDITION, shake-err MOTION_FAULT, states named."""
    async with Stack([broker], "sicbo", **SHAKER) as s:
        s.sim.shaker_fault[s.code] = True
        with pytest.raises(ShakeFailed) as info:
            await s.client.shake(duration_s=0.1)
        assert info.value.failure == "MOTION_FAULT"
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "S90" in (info.value.details() or "")


async def test_silent_shaker_times_out_within_the_callers_deadline(
    broker: MosquittoProcess,
) -> None:
    """No S0 in time: the sidecar answers TIMEOUT itself, before the caller's deadline."""
    async with Stack([broker], "sicbo", **SHAKER) as s:
        s.sim.shaker_silent[s.code] = True
        started = time.monotonic()
        with pytest.raises(ShakeFailed) as info:
            await s.client.shake(duration_s=0.1, deadline_s=1.0)
        assert time.monotonic() - started < 1.0
        assert info.value.failure == "TIMEOUT"
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "last: S2" in (info.value.details() or "")


async def test_shakes_one_at_a_time_and_only_on_sicbo(broker: MosquittoProcess) -> None:
    """A second concurrent Shake is BUSY; a roulette table has NO_SHAKER; bad input named."""
    async with Stack([broker], "sicbo", **SHAKER) as s:
        first = asyncio.create_task(s.client.shake(duration_s=0.5))
        await until(lambda: s.sim.shaker_state[s.code] == "S1", 5, "the first cycle runs")
        with pytest.raises(ShakeFailed) as info:
            await s.client.shake(duration_s=0.1)
        assert info.value.failure == "BUSY" and info.value.code() == grpc.StatusCode.ABORTED
        assert (await first).states[-1] == "S0"
        with pytest.raises(InvalidRound, match="amplitude"):
            await s.client.shake(amplitude=2.0)
    async with Stack([broker], "roulette") as s:
        with pytest.raises(ShakeFailed) as info:
            await s.client.shake(duration_s=0.1)
        assert info.value.failure == "NO_SHAKER"


async def test_subscribe_survives_a_broker_kill(two_brokers: list[MosquittoProcess]) -> None:
    """Shaker states keep streaming to the game after the broker carrying them dies."""
    b1, b2 = two_brokers
    async with (
        Stack(two_brokers, "sicbo", **SHAKER) as s,
        s.client.subscribe([SAYS]) as messages,
    ):
        assert messages.topics == [SAYS]
        await say(b1, SAYS, b"S0")
        first = await asyncio.wait_for(anext(messages), 5)
        assert (first.topic, first.payload, first.broker_id) == (SAYS, b"S0", "b1")
        await b1.kill()
        await until(lambda: not s.sidecar.pool.links["b1"].status().ready, 5, "b1 seen down")
        await say(b2, SAYS, b"S1")
        second = await asyncio.wait_for(anext(messages), 5)
        assert (second.payload, second.broker_id) == (b"S1", "b2")
        assert second.sequence == first.sequence + 1
        await until(lambda: "b2" in s.sim.connected, 5, "the shaker is on b2")
        shook = await s.client.shake(duration_s=0.1)  # through b2 now
        assert shook.broker_id == "b2"
        seen = [(await asyncio.wait_for(anext(messages), 5)).payload for _ in shook.states]
        assert seen == [st.encode() for st in shook.states]


async def test_subscribe_topics_are_configured_not_arbitrary(broker: MosquittoProcess) -> None:
    """Configured extra topics stream; any other topic is refused, naming those that exist."""
    extra = "studio/SBO-001/announcements"
    async with Stack([broker], "sicbo", subscribe_topics=[extra], **SHAKER) as s:
        async with s.client.subscribe() as messages:  # every configured topic
            assert sorted(messages.topics) == sorted([SAYS, extra])
            await say(broker, extra, b'{"msg": "last call"}')
            m = await asyncio.wait_for(anext(messages), 5)
            assert (m.topic, m.payload) == (extra, b'{"msg": "last call"}')
        with pytest.raises(InvalidRound) as info:
            async with s.client.subscribe(["ikg/idp/SBO-001/response"]):
                pass
        assert "ikg/idp/SBO-001/response" in str(info.value) and extra in str(info.value)
