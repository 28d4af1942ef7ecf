"""The shared active-broker record: several sidecars, real Redis, real brokers, faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from gateway.config import RedisConfig
from gateway.devtools.sandbox import MosquittoProcess, RedisProcess
from gateway.devtools.sim import Behaviour
from gateway.fleet.records import Record, compare_and_set, record_sha
from gateway.fleet.store import RECORD_FIELD, Keys, connect
from gateway.sidecar.app import Sidecar
from gateway.sidecar.election import Decision
from gateway.v1 import gateway_pb2 as pb
from tests.integration.harness import FAST_REDIS, expected, fleet, make_config, until
from tests.integration.proxy import TcpProxy

CODES = ["ARO-005", "ARO-006", "ARO-007"]
KEYS = Keys("studio-gateway", "test-group")


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisProcess]:
    async with RedisProcess() as r:
        yield r


def decisions(sidecars: list[Sidecar]) -> list[tuple[str | None, int]]:
    return [(s.pool.decision().broker_id, s.pool.decision().epoch) for s in sidecars]


async def agreed(sidecars: list[Sidecar], broker: str = "b1") -> int:
    """Wait until every sidecar uses ``broker`` under one epoch; return that epoch.

    At start-up a record may first be created on b2 (b1 still connecting somewhere) and
    fail back to b1 at once, so the epoch is 1 or 2."""
    await until(lambda: {d for d in decisions(sidecars)} in ({(broker, 1)}, {(broker, 2)}),
                5, f"agreement on {broker}")  # fmt: skip
    return decisions(sidecars)[0][1]


def record_switches(sidecars: list[Sidecar]) -> list[list[tuple[float, Decision]]]:
    seen: list[list[tuple[float, Decision]]] = [[] for _ in sidecars]
    for log, s in zip(seen, sidecars, strict=True):
        s.elector.add_listener(lambda d, log=log: log.append((time.monotonic(), d)))
    return seen


async def test_three_sidecars_agree_and_move_together(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """Kill the active broker: all three sidecars take the same broker and epoch within 250 ms."""
    b1, _ = two_brokers
    async with fleet(two_brokers, CODES, Behaviour(delay_s=0.02), redis_url=redis_server.url) as (
        _,
        sidecars,
        clients,
    ):
        # All on the preferred broker (a start-up record on b2 fails back at once).
        await until(lambda: {d[0] for d in decisions(sidecars)} == {"b1"}, 5, "agreement")
        await until(lambda: len(set(decisions(sidecars))) == 1, 5, "one epoch")
        broker, epoch = decisions(sidecars)[0]
        assert broker == "b1" and epoch >= 1
        seen = record_switches(sidecars)
        await b1.kill()
        await until(lambda: all(d == ("b2", epoch + 1) for d in decisions(sidecars)), 3, "switch")
        times = [next(t for t, d in log if d.broker_id == "b2") for log in seen]
        assert max(times) - min(times) <= 0.25
        for client, code in zip(clients, CODES, strict=True):
            d = await client.detect(f"{code}-after")
            assert (d.broker_id, d.epoch) == ("b2", epoch + 1)
        h = await clients[0].health()
        assert h.live_reporters == 3 and h.epoch == epoch + 1
        assert h.election.startswith("connected: epoch")


async def test_one_sidecars_own_network_fault_does_not_move_the_fleet(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """A path cut for one sidecar only: the fleet stays, that sidecar says DEGRADED."""
    b1, _ = two_brokers
    async with TcpProxy(b1.host, b1.port) as proxy:
        ports = {CODES[2]: {"b1": proxy.port}}
        async with fleet(
            two_brokers, CODES, Behaviour(delay_s=0.02), redis_url=redis_server.url, ports=ports
        ) as (_, sidecars, clients):
            epoch = await agreed(sidecars)
            proxy.cut()
            cut_link = sidecars[2].pool.links["b1"]
            await until(lambda: not cut_link.status().ready, 2, "the cut is noticed")
            await asyncio.sleep(3 * FAST_REDIS["refresh_s"])  # several report/plan rounds
            assert decisions(sidecars) == [("b1", epoch)] * 3
            h = await clients[2].health()
            assert h.status == pb.HealthResponse.DEGRADED
            assert "active broker b1 is not reachable from this sidecar" in h.reason
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await clients[2].detect(f"{CODES[2]}-cut", deadline_s=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            d = await clients[0].detect(f"{CODES[0]}-fine")
            assert (d.broker_id, d.epoch) == ("b1", epoch)


async def test_ten_concurrent_proposers_make_exactly_one_switch(
    redis_server: RedisProcess,
) -> None:
    """Ten CAS writes racing on one epoch: exactly one wins, the epoch grows by one."""
    client = connect(RedisConfig(url=redis_server.url))
    try:

        def record(broker: str, epoch: int) -> Record:
            return Record(broker, epoch, "test", 0.0, "race")

        assert await compare_and_set(client, KEYS, "", record("b1", 1))
        first = await client.hget(KEYS.group_hash, RECORD_FIELD)  # type: ignore[misc]
        results = await asyncio.gather(
            *(
                compare_and_set(client, KEYS, record_sha(first), record(f"b{i}", 2))
                for i in range(10)
            )
        )
        assert sum(results) == 1
        stored = Record.from_json(await client.hget(KEYS.group_hash, RECORD_FIELD))  # type: ignore[misc]
        assert stored.epoch == 2
    finally:
        await client.aclose()


async def test_deleted_record_is_recreated_with_a_higher_epoch(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """The record deleted by hand comes back above every epoch the sidecars have seen."""
    b1, _ = two_brokers
    async with fleet(
        two_brokers, CODES[:2], Behaviour(delay_s=0.02), redis_url=redis_server.url
    ) as (_, sidecars, _clients):
        epoch = await agreed(sidecars)
        await b1.kill()
        await until(lambda: set(decisions(sidecars)) == {("b2", epoch + 1)}, 3, "switch to b2")
        admin = aioredis.from_url(redis_server.url, decode_responses=True)
        try:
            await admin.hdel(KEYS.group_hash, RECORD_FIELD)  # type: ignore[misc]
            await until(lambda: all(e > epoch + 1 for _, e in decisions(sidecars)), 3, "again")
            text = await admin.hget(KEYS.group_hash, RECORD_FIELD)  # type: ignore[misc]
            record = Record.from_json(text)
            assert (record.epoch, record.broker) == (epoch + 2, "b2")
            assert "record missing" in record.reason
        finally:
            await admin.aclose()


async def test_redis_down_keeps_serving_degraded_and_converges_when_back(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """Redis killed mid-load: Detects go on, Health DEGRADED; back: one record again."""
    async with fleet(two_brokers, CODES, Behaviour(delay_s=0.02), redis_url=redis_server.url) as (
        _,
        sidecars,
        clients,
    ):
        epoch = await agreed(sidecars)
        await redis_server.kill()
        for i in range(5):
            for client, code in zip(clients, CODES, strict=True):
                d = await client.detect(f"{code}-nor-{i}")
                assert d.result == expected("roulette", f"{code}-nor-{i}")
                assert (d.broker_id, d.epoch) == ("b1", epoch)
        h = await clients[0].health()
        assert h.status == pb.HealthResponse.DEGRADED
        assert h.election.startswith("unreachable")
        assert "shared store unreachable" in h.reason
        await redis_server.restart()  # empty: the record is re-created above epoch 1
        await until(
            lambda: len(set(decisions(sidecars))) == 1 and decisions(sidecars)[0][1] > epoch,
            5,
            "convergence on a new record",
        )
        assert decisions(sidecars)[0][0] == "b1"  # no flapping: the broker in use is kept
        await until(
            lambda: all(s.service.health().status == pb.HealthResponse.SERVING for s in sidecars),
            3,
            "SERVING again",
        )


async def test_store_down_and_active_broker_dead_fails_over_locally(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """No Redis and the active broker dead for longer than the grace: local fail-over, said."""
    b1, _ = two_brokers
    async with fleet(
        two_brokers, CODES[:1], Behaviour(delay_s=0.02), redis_url=redis_server.url
    ) as (_, sidecars, clients):
        await agreed(sidecars)
        await redis_server.kill()
        await until(lambda: not sidecars[0].elector.status().state.startswith("connected"), 3, "")
        await b1.kill()
        await until(lambda: decisions(sidecars)[0][0] == "b2", 3, "local fail-over")
        assert "local fail-over" in sidecars[0].pool.decision().reason
        d = await clients[0].detect(f"{CODES[0]}-local")
        assert d.broker_id == "b2"


async def test_fleet_stats_and_their_expiry(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """GetStats(fleet) lists every live sidecar with totals; a stopped one expires."""
    async with fleet(
        two_brokers, CODES[:2], Behaviour(delay_s=0.02), redis_url=redis_server.url
    ) as (_, sidecars, clients):
        await clients[0].detect(f"{CODES[0]}-s1")
        extra_config = sidecars[1].config
        async with Sidecar(extra_config, listen="127.0.0.1:0") as extra:
            async with asyncio.timeout(5):
                await extra.wait_serving()

            async def fleet_size() -> pb.StatsResponse:
                return await clients[0].stub.GetStats(pb.StatsRequest(fleet=True))

            async def all_up(stats: pb.StatsResponse) -> bool:
                t = stats.totals
                return t.sidecars == 3 and t.active_connections == 6

            async with asyncio.timeout(5):  # every sidecar writes at most every 0.2 s
                while not await all_up(await fleet_size()):  # noqa: ASYNC110 - polls the store
                    await asyncio.sleep(0.1)
            stats = await fleet_size()
            assert stats.totals.total_connections == 6 and stats.totals.failed_connections == 0
            assert stats.totals.detects_ok >= 1
            assert stats.local.instance_id == sidecars[0].instance_id
            assert extra.instance_id in {s.instance_id for s in stats.fleet}
        async with asyncio.timeout(5):  # the stopped sidecar's hash expires (ttl 1 s)
            while extra.instance_id in {s.instance_id for s in (await fleet_size()).fleet}:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert {s.instance_id for s in (await fleet_size()).fleet} == {
            s.instance_id for s in sidecars
        }


async def test_cli_health_fleet_shows_the_group(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """`gateway health --fleet` prints the election state and every live sidecar with totals."""
    from tests.integration.test_cli import gateway, run

    async with fleet(
        two_brokers, CODES[:2], Behaviour(delay_s=0.02), redis_url=redis_server.url
    ) as (_, sidecars, clients):
        epoch = await agreed(sidecars)

        async def both_listed() -> bool:
            stats = await clients[0].stats(fleet=True)
            return stats.totals.sidecars == 2 and stats.totals.active_connections == 4

        async with asyncio.timeout(5):
            while not await both_listed():  # noqa: ASYNC110 - polls the store
                await asyncio.sleep(0.1)
        code, out, err = await run(*gateway("health", "--target", sidecars[0].address, "--fleet"))
        assert code == 0, err
        assert f"election (test-group): connected: epoch {epoch}" in out
        assert "fleet of test-group: 2 sidecar(s); connections total 4, active 4, failed 0" in out
        for s in sidecars:
            assert s.instance_id in out


async def test_an_idle_sidecar_costs_the_store_two_commands_per_refresh_and_few_stats_writes(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess
) -> None:
    """Idle: each refresh runs HSET + HGETALL in one script; unchanged statistics are written
    again only every third of their TTL, not every stats_interval_s."""
    redis_cfg = {**FAST_REDIS, "url": redis_server.url, "stats_interval_s": 0.1, "stats_ttl_s": 3}
    config = make_config(two_brokers, "roulette", "ARO-008", redis=redis_cfg)
    admin = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        async with Sidecar(config, listen="127.0.0.1:0") as sidecar:
            await sidecar.wait_serving()
            await until(lambda: all(s.ready for s in sidecar.pool.statuses()), 5, "links up")
            await asyncio.sleep(0.5)  # let the start-up changes be written
            before = await admin.info("commandstats")
            await asyncio.sleep(2.0)  # a window to count commands in (refresh_s 0.2)
            after = await admin.info("commandstats")
    finally:
        await admin.aclose()

    def calls(name: str) -> int:
        def count(info: dict[str, Any]) -> int:
            return int(info.get(f"cmdstat_{name}", {}).get("calls", 0))

        return count(after) - count(before)

    steps = calls("evalsha")
    assert steps >= 5, after  # about 10 refreshes
    assert calls("type") == 0 and calls("hget") == 0
    assert calls("hgetall") == steps
    assert calls("pexpire") <= 3  # statistics: about 2 (every 1 s), not 20 (every 0.1 s)
