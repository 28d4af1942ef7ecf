"""Hostile bytes on every topic a sidecar hears cost one message each, never the process.

Real mosquitto brokers, real ``gateway serve`` processes, the simulated IDP and shaker,
and a publisher that sends what an attacker or a broken device could.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway.client import GatewayClient
from gateway.devtools.sandbox import MosquittoProcess
from gateway.sidecar.connection import MAX_PACKET_BYTES
from gateway.sidecar.topics import MAX_LISTENERS, QUEUE_BYTES, TopicHub
from tests.integration.harness import Stack, expected, make_config, until
from tests.integration.processes import publish_raw, studio
from tests.integration.v311_broker import V311OnlyBroker

SAYS, LISTENS = "ikg/sicbo/Billy-III/says", "ikg/sicbo/Billy-III/listens"
# Each is one input that reaches the sidecar (under the packet limit) and is not a frame.
HOSTILE = {
    "deep nesting": b"[" * 5000,
    "deep objects": b'{"a":' * 3000,
    "not UTF-8": b"\xff\xfe\x00\x80garbage",
    "a 5000-digit integer": b'{"response":"result","arg":{"round_id":"x","err":'
    + b"9" * 5000
    + b"}}",
    "empty": b"",
    "100 KB of spaces": b" " * 100_000,
}
HUGE = b"x" * (1 << 20)  # over the packet limit: the broker never hands it out (MQTT 5)


async def dropped(client: GatewayClient, kind: str) -> int:
    return int((await client.health()).dropped_inputs.get(kind, 0))


async def test_hostile_frames_on_every_broker_cost_one_frame_each(
    two_brokers: list[MosquittoProcess], tmp_path: Path
) -> None:
    """Nested, non-UTF-8, huge-number, empty and oversize frames on the active and the
    standby broker, on the response, shaker and probe topics: every sidecar lives on,
    counts each frame once by kind, and still answers the next round and shake."""
    configs = [
        make_config(two_brokers, "roulette", "ARO-001"),
        make_config(two_brokers, "sicbo", "SBO-001", shaker_listens=LISTENS, shaker_says=SAYS),
    ]
    async with studio(configs, tmp_path) as (sim, procs):
        sim.shake_time_scale = 0.05
        clients = [GatewayClient(p.address) for p in procs]
        healths = [await c.health() for c in clients]
        for broker in two_brokers:
            for config, health in zip(configs, healths, strict=True):
                topics = [config.table.response_topic, SAYS]
                topics += [
                    f"studio-gateway/probe/{health.instance_id}/{b.id}" for b in health.brokers
                ]
                for topic in topics:
                    for payload in (*HOSTILE.values(), HUGE):
                        await publish_raw(broker.host, broker.port, topic, payload)
        want = len(HOSTILE) * len(two_brokers)
        for client in clients:
            await until_count(client, "frame", want)
        shook = asyncio.create_task(clients[1].shake(duration_s=1.0, deadline_s=10))
        await until(lambda: sim.shaker_state["SBO-001"] == "S1", 5, "the shaker is shaking")
        for payload in HOSTILE.values():
            await publish_raw(two_brokers[0].host, two_brokers[0].port, SAYS, payload)
        assert (await shook).states[-1] == "S0"
        for proc in procs:
            proc.assert_alive()
        for config, client in zip(configs, clients, strict=True):
            game, code = config.table.game.value, config.table.code
            d = await client.detect(f"{code}-after", deadline_s=5)
            assert d.result == expected(game, f"{code}-after")
            assert await dropped(client, "frame") == want  # the 1 MiB ones never arrived
        assert await dropped(clients[1], "shaker_message") >= 1
        log = procs[0].log()
        assert re.search(r"dropped frame from broker b1 topic ikg/idp/ARO-001/response: ", log)
        assert "(5000 bytes)" in log  # the excerpt says how big the input was
        for client in clients:
            await client.close()


async def until_count(client: GatewayClient, kind: str, want: int, limit_s: float = 10) -> None:
    """Wait until Health counts ``want`` dropped inputs of ``kind`` (bounded)."""
    async with asyncio.timeout(limit_s):
        while await dropped(client, kind) < want:  # noqa: ASYNC110 - Health has no push
            await asyncio.sleep(0.05)


async def test_an_oversize_packet_on_a_311_broker_costs_one_reconnect(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """A broker that speaks only MQTT 3.1.1 gets a 3.1.1 connection; a packet over the
    limit there is refused before it is read (the link reconnects), and the sidecar
    lives on and answers the next round."""
    async with V311OnlyBroker(broker.host, broker.port) as old:
        config = make_config([broker], "roulette", ports={"b1": old.port})
        sim_config = make_config([broker], "roulette")
        async with studio([config], tmp_path, sim_configs=[sim_config]) as (_, [proc]):
            assert old.refused >= 1  # MQTT 5 was tried first
            assert "broker b1 ready (MQTT 3.1.1" in proc.log()
            async with GatewayClient(proc.address) as client:
                big = b"{" + b" " * (MAX_PACKET_BYTES + 1000) + b"}"
                await publish_raw(broker.host, broker.port, config.table.response_topic, big)
                await until_count(client, "packet", 1)
                await client.wait_ready(10)
                d = await client.detect("ARO-001-after-big", deadline_s=5)
                assert d.result == expected("roulette", "ARO-001-after-big")
                proc.assert_alive()


async def test_subscribe_streams_and_queues_are_bounded(broker: MosquittoProcess) -> None:
    """One stream more than the limit is refused with RESOURCE_EXHAUSTED; the others go on."""
    extra = "studio/extra/ARO-001"
    async with Stack([broker], "roulette", subscribe_topics=[extra]) as s:
        streams = [s.client.subscribe([extra]) for _ in range(MAX_LISTENERS)]
        for stream in streams:
            await stream.__aenter__()
        try:
            with pytest.raises(Exception) as refused:
                async with s.client.subscribe([extra]):
                    pass
            assert "RESOURCE_EXHAUSTED" in str(refused.value)
            await publish_raw(broker.host, broker.port, extra, b"hello")
            async with asyncio.timeout(5):
                message = await streams[0].__anext__()
            assert message.payload == b"hello"
        finally:
            for stream in streams:
                await stream.__aexit__(None, None, None)


def test_a_listener_queue_never_holds_more_than_its_byte_cap() -> None:
    """A reader that never reads keeps at most QUEUE_BYTES of payload; the gap is counted."""

    async def fill() -> tuple[int, int]:
        hub = TopicHub(["t"])
        async with hub.listen(["t"]) as listener:
            chunk = b"x" * (64 * 1024)
            for _ in range(100):
                hub.on_message("b1", "t", chunk)
            return listener._bytes, listener.dropped

    held, lost = asyncio.run(fill())
    assert held <= QUEUE_BYTES
    assert lost == 100 - QUEUE_BYTES // (64 * 1024)
