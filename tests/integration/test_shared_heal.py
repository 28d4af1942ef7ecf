"""Corrupt, foreign or conflicting shared state in Redis heals; no sidecar process ends.

Real redis-server and mosquitto processes, real ``gateway serve`` processes of one broker
group, and writes straight into the group's keys as a hand edit, a bug or another
version of the software could make them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.config import RedisConfig
from gateway.devtools.sandbox import MosquittoProcess, RedisProcess
from gateway.fleet.records import Record
from gateway.fleet.store import RECORD_FIELD, Keys, connect
from tests.integration.harness import FAST_REDIS, expected, make_config
from tests.integration.processes import studio

KEYS = Keys("studio-gateway", "test-group")
CODES = ["ARO-005", "ARO-006"]


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisProcess]:
    async with RedisProcess() as r:
        yield r


def group_configs(brokers: list[MosquittoProcess], url: str, codes: list[str]) -> list[Any]:
    return [make_config(brokers, "roulette", c, redis={**FAST_REDIS, "url": url}) for c in codes]


async def eventually(check: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> None:
    """Poll ``check`` (state in another process: no event to wait on) until true, bounded."""
    try:
        async with asyncio.timeout(limit_s):
            while not await check():  # noqa: ASYNC110 - the state is in other processes
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {limit_s}s: {what}") from None


CORRUPT = {
    "not JSON": "{broker: b1",
    "no epoch": json.dumps({"broker": "b1", "by": "x", "at": 0, "reason": "hand edit"}),
    "no by": json.dumps({"broker": "b1", "epoch": 40, "at": 0, "reason": "hand edit"}),
    "epoch a string": json.dumps({"broker": "b1", "epoch": "7", "by": "x", "at": 0, "reason": ""}),
    "epoch 1e400": '{"broker":"b1","epoch":1e400,"by":"x","at":0,"reason":""}',
    "unknown broker": Record("b9", 50, "other", 0.0, "another broker list").to_json(),
    "a list": "[1, 2, 3]",
    "deep nesting": "[" * 5000,
    "1 MB": json.dumps({"broker": "b1", "epoch": 3, "pad": "x" * 1_000_000}),
}


@pytest.mark.parametrize("kind", CORRUPT)
async def test_a_corrupt_record_is_replaced_at_a_higher_epoch(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess, tmp_path: Path, kind: str
) -> None:
    """Whatever the record holds, it is replaced by a proper one above every epoch seen
    (and above the epoch the bad one carries), the sidecars live on and agree, and a
    round goes through on the active broker."""
    configs = group_configs(two_brokers, redis_server.url, CODES)
    admin = connect(RedisConfig(url=redis_server.url))
    async with studio(configs, tmp_path, redis_url=redis_server.url) as (_, procs):
        clients = [GatewayClient(p.address) for p in procs]
        try:
            before = max([(await c.health()).epoch for c in clients])
            await admin.hset(KEYS.group_hash, RECORD_FIELD, CORRUPT[kind])  # type: ignore[misc]
            floor = max(before, 50 if kind == "unknown broker" else 40 if kind == "no by" else 0)

            async def healed() -> bool:
                text = await admin.hget(KEYS.group_hash, RECORD_FIELD)  # type: ignore[misc]
                try:
                    record = Record.from_json(str(text))
                except Exception:
                    return False
                return record.broker in ("b1", "b2") and record.epoch > floor

            await eventually(healed, 5, f"a record with {kind} replaced")
            record = Record.from_json(str(await admin.hget(KEYS.group_hash, RECORD_FIELD)))  # type: ignore[misc]
            assert "record unusable" in record.reason or "re-created" in record.reason

            async def agree() -> bool:
                hs = [await c.health() for c in clients]
                return {(h.active_broker_id, h.epoch) for h in hs} == {
                    (record.broker, record.epoch)
                }

            await eventually(agree, 5, "both sidecars on the healed record")
            for p in procs:
                p.assert_alive()
            h = await clients[0].health()
            assert h.election.startswith("connected")
            d = await clients[0].detect(f"{CODES[0]}-{len(kind)}", deadline_s=5)
            assert d.result == expected("roulette", f"{CODES[0]}-{len(kind)}")
            assert sum([(await c.health()).dropped_inputs.get("record", 0) for c in clients]) >= 1
        finally:
            for c in clients:
                await c.close()
            await admin.aclose()


async def test_a_record_without_by_costs_no_command_storm(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess, tmp_path: Path
) -> None:
    """A record the sidecars cannot parse is replaced once, not fought over: Redis sees
    the idle rate of commands afterwards, not hundreds per second."""
    configs = group_configs(two_brokers, redis_server.url, CODES[:1])
    admin = connect(RedisConfig(url=redis_server.url))

    async def commands() -> int:
        info = await admin.info("stats")
        return int(info["total_commands_processed"])

    async with studio(configs, tmp_path, redis_url=redis_server.url):
        try:
            await admin.hset(KEYS.group_hash, RECORD_FIELD, CORRUPT["no by"])  # type: ignore[misc]
            await asyncio.sleep(1.0)  # let it heal
            start = await commands()
            await asyncio.sleep(2.0)
            per_s = (await commands() - start - 2) / 2.0  # less our own two INFO calls
            # Idle with refresh_s 0.2: a step (script, ~4 commands) and a stats write (2)
            # five times a second. A storm was ~800/s.
            assert per_s < 60, per_s
        finally:
            await admin.aclose()


async def test_a_group_key_of_the_wrong_type_and_garbage_views_heal(
    two_brokers: list[MosquittoProcess], redis_server: RedisProcess, tmp_path: Path
) -> None:
    """The group key replaced by a string, then garbage view fields and statistics keys:
    the hash is re-created, bad views removed, the fleet statistics still read."""
    configs = group_configs(two_brokers, redis_server.url, CODES)
    admin = connect(RedisConfig(url=redis_server.url))
    async with studio(configs, tmp_path, redis_url=redis_server.url) as (_, procs):
        clients = [GatewayClient(p.address) for p in procs]
        try:
            await admin.set(KEYS.group_hash, "not a hash")

            async def is_hash() -> bool:
                return await admin.type(KEYS.group_hash) == "hash" and bool(  # type: ignore[no-any-return]
                    await admin.hget(KEYS.group_hash, RECORD_FIELD)  # type: ignore[misc]
                )

            await eventually(is_hash, 5, "the group hash re-created with a record")
            garbage = {"view:ghost": "[[[[", "view:x": '{"i": "x", "e": 1e400}'}
            await admin.hset(KEYS.group_hash, mapping=garbage)  # type: ignore[misc]
            await admin.set(KEYS.stats("fake-string"), "not a hash")
            await admin.hset(KEYS.stats("fake-hash"), mapping={"counters": "[[[", "epoch": "x"})  # type: ignore[misc]

            async def views_gone() -> bool:
                fields = await admin.hkeys(KEYS.group_hash)  # type: ignore[misc]
                return not {"view:ghost", "view:x"} & set(fields)

            await eventually(views_gone, 5, "the garbage views removed")
            stats = await clients[0].stats(fleet=True)
            assert stats.fleet_error == ""
            assert {s.table_code for s in stats.fleet} == set(CODES)
            counts = [(await c.health()).dropped_inputs for c in clients]
            # Whoever read first dropped them; each sidecar reads the fleet for itself.
            assert sum(d.get("view", 0) for d in counts) >= 2
            assert sum(d.get("record", 0) for d in counts) >= 1
            assert counts[0].get("stats", 0) >= 2
            for p in procs:
                p.assert_alive()
        finally:
            for c in clients:
                await c.close()
            await admin.aclose()


async def test_different_broker_lists_converge_on_a_broker_every_sidecar_has(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """Two GameTables of one group while a broker is added (b1,b2 and b2,b3): the group
    uses b2, which both have, Health names the difference, and the epoch stays put."""
    async with MosquittoProcess() as m1, MosquittoProcess() as m2, MosquittoProcess() as m3:
        redis = {**FAST_REDIS, "url": redis_server.url}
        old = make_config([m1, m2], "roulette", "ARO-005", redis=redis)
        new = make_config([m2, m3], "roulette", "ARO-006", redis=redis)
        # The same broker ids on both sidecars: b2 is m2 for both.
        new_doc_brokers = {"b1": "b2", "b2": "b3"}
        new = _renamed(new, new_doc_brokers)
        async with studio([old, new], tmp_path, redis_url=redis_server.url) as (_, procs):
            clients = [GatewayClient(p.address) for p in procs]
            try:

                async def on_b2() -> bool:
                    hs = [await c.health() for c in clients]
                    return all(h.active_broker_id == "b2" for h in hs)

                await eventually(on_b2, 8, "both sidecars on b2")
                epoch = (await clients[0].health()).epoch
                await asyncio.sleep(2)
                hs = [await c.health() for c in clients]
                assert {h.epoch for h in hs} == {epoch}  # no flip-flop, no epoch storm
                assert "broker lists differ" in hs[0].election
                for code, c in zip(["ARO-005", "ARO-006"], clients, strict=True):
                    d = await c.detect(f"{code}-lists", deadline_s=5)
                    assert d.broker_id == "b2"
                for p in procs:
                    p.assert_alive()
            finally:
                for c in clients:
                    await c.close()


async def test_broker_lists_with_nothing_in_common_are_reported_not_fought_over(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """Lists b1 and b2 in one group: each sidecar serves on its own broker, Health says
    DEGRADED naming the conflict, and the record does not flip-flop."""
    async with MosquittoProcess() as m1, MosquittoProcess() as m2:
        redis = {**FAST_REDIS, "url": redis_server.url}
        one = make_config([m1], "roulette", "ARO-005", redis=redis)
        two = _renamed(make_config([m2], "roulette", "ARO-006", redis=redis), {"b1": "b2"})
        admin = connect(RedisConfig(url=redis_server.url))
        async with studio([one, two], tmp_path, redis_url=redis_server.url) as (_, procs):
            clients = [GatewayClient(p.address) for p in procs]
            try:

                async def reported() -> bool:
                    hs = [await c.health() for c in clients]
                    return all("broker lists conflict" in h.reason for h in hs)

                await eventually(reported, 8, "the conflict in both sidecars' Health")
                first = Record.from_json(str(await admin.hget(KEYS.group_hash, RECORD_FIELD)))  # type: ignore[misc]
                await asyncio.sleep(2)
                later = Record.from_json(str(await admin.hget(KEYS.group_hash, RECORD_FIELD)))  # type: ignore[misc]
                assert later.epoch == first.epoch
                for code, c, broker in zip(
                    ["ARO-005", "ARO-006"], clients, ["b1", "b2"], strict=True
                ):
                    d = await c.detect(f"{code}-conflict", deadline_s=5)
                    assert d.broker_id == broker
            finally:
                for c in clients:
                    await c.close()
                await admin.aclose()


def _renamed(config: Any, ids: dict[str, str]) -> Any:
    """The config with its broker ids renamed (make_config numbers them b1, b2, ...)."""
    from dataclasses import replace

    brokers = tuple(replace(b, id=ids.get(b.id, b.id)) for b in config.brokers)
    return replace(config, brokers=brokers)
