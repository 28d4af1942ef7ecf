"""The faults of the chaos soak: what each kind does, its variants, and how it is healed.

Every fault is injected, held for a random time, then healed; ``Injector.run`` rotates
through the kinds in a seeded shuffled order (so even a short run injects each kind), and
through each kind's variants the same way. Faults never overlap. While a broker is killed,
stopped, restarting or has its PUBACKs stalled it is marked unhealthy in the timeline;
while the schedule has a sidecar killed it is marked down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import redis.asyncio as aioredis
from chaos_check import FaultRecord, Interval, Timeline
from chaos_payloads import (
    GARBAGE_STATS,
    GARBAGE_VIEWS,
    KINDS,
    PREFIX,
    RECORD_VARIANTS,
    VARIANTS,
    hostile_payloads,
    invalid_config,
    record_text,
)
from chaos_stack import BASE_TIMEOUT_S, BIG, BROKERS, OTHER, Sidecar, Studio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.devtools.sandbox import HOST

STALL_MIN_S = 3.5  # a QoS 1 stall lasts at least this (the soak's Detect deadline is 3 s)
OVERTIME_S = 60.0  # past the end, keep going at most this long to inject every kind


class Injector:
    """Injects the faults, one at a time, and records them in the timeline."""

    def __init__(
        self,
        studio: Studio,
        tl: Timeline,
        rng: random.Random,
        agreement: Callable[[FaultRecord, float], Awaitable[None]],
        scale: float = 1.0,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.s, self.tl, self.rng = studio, tl, rng
        self.kinds = tuple(k for k in KINDS if k not in skip)
        self._skip = skip
        self._agreement = agreement
        self._scale = scale
        self._variants: dict[str, list[str]] = {}
        # Retries: after a Redis restart the pool's first connection is a dead one.
        self.r = aioredis.from_url(
            studio.redis.url,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.errors: list[str] = []

    async def close(self) -> None:
        await self.r.aclose()

    def _variant(self, kind: str) -> str:
        options = [v for v in VARIANTS.get(kind, ("-",)) if f"{kind}/{v}" not in self._skip]
        queue = self._variants.setdefault(kind, [])
        if not queue:
            queue.extend(self.rng.sample(options, len(options)))
        return queue.pop(0)

    def _hold(self, lo: float, hi: float) -> float:
        return self.rng.uniform(lo, hi) * self._scale

    async def run(self, end_at: float) -> None:
        """Inject until ``end_at``, and at least until every kind was injected once."""
        done: set[str] = set()
        cycle: list[str] = []
        while time.monotonic() < end_at or len(done) < len(self.kinds):
            if time.monotonic() > end_at + OVERTIME_S:
                break  # a kind that cannot be injected: reported as missing
            if not self.s.live():
                self.errors.append("every sidecar is down: no faults injected after this")
                break
            if not cycle:
                cycle = self.rng.sample(self.kinds, len(self.kinds))
            kind = cycle.pop(0)
            fault = FaultRecord(len(self.tl.faults) + 1, kind, self._variant(kind), "", 0.0)
            self.tl.faults.append(fault)
            try:
                await getattr(self, kind)(fault)
            except (RedisError, aiomqtt.MqttError, OSError) as exc:
                fault.failed = True
                fault.note += f" injection failed: {exc}"
                self.errors.append(f"#{fault.id} {kind}: {exc}")
            if fault.healed is None:
                fault.healed = time.monotonic()
            if not fault.failed:
                done.add(kind)
            settle = self._hold(1.6, 2.6)
            watch_until = time.monotonic() + settle
            await self._agreement(fault, settle)
            await asyncio.sleep(max(0.0, watch_until - time.monotonic()))

    # --- targets -------------------------------------------------------------------

    def _broker(self) -> str:
        """Mostly a group's active broker (that is where faults bite), else any broker."""
        roll = self.rng.random()
        active = self.s.active_of(BIG) if roll < 0.5 else self.s.active_of(OTHER)
        if active in BROKERS and roll < 0.8:
            return active
        return self.rng.choice(BROKERS)

    def _unhealthy(self, fault: FaultRecord, broker: str, cause: str) -> Interval:
        iv = Interval(time.monotonic(), None, cause, fault.id)
        self.tl.broker_down[broker].append(iv)
        fault.target, fault.start = broker, iv.start
        return iv

    def _healed(self, fault: FaultRecord, *ivs: Interval) -> None:
        now = time.monotonic()
        for iv in ivs:
            iv.end = now
        fault.healed = now

    # --- brokers -------------------------------------------------------------------

    async def broker_kill(self, fault: FaultRecord) -> None:
        b = self._broker()
        iv = self._unhealthy(fault, b, "broker killed")
        await self.s.brokers[b].kill()
        await asyncio.sleep(self._hold(1.0, 3.0))
        await self.s.brokers[b].start()
        self._healed(fault, iv)

    async def broker_stop(self, fault: FaultRecord) -> None:
        b = self._broker()
        iv = self._unhealthy(fault, b, "broker stopped (SIGSTOP)")
        self.s.brokers[b].pause()
        await asyncio.sleep(self._hold(1.0, 3.0))
        self.s.brokers[b].resume()
        self._healed(fault, iv)

    async def broker_restart(self, fault: FaultRecord) -> None:
        b = self._broker()
        iv = self._unhealthy(fault, b, "broker restarting")
        await self.s.brokers[b].stop()
        await asyncio.sleep(self._hold(0.1, 1.0))
        await self.s.brokers[b].start()
        self._healed(fault, iv)

    async def qos1_stall(self, fault: FaultRecord) -> None:
        b = self._broker()
        iv = self._unhealthy(fault, b, "QoS 1 stalled")
        proxy = self.s.proxies[b]
        before = proxy.dropped_pubacks
        proxy.stall_acks()
        # Longer than a Detect's deadline, never scaled down: a shorter stall is ridden out
        # by the publish timeout and a retry on the same broker, and proves nothing.
        await asyncio.sleep(self.rng.uniform(STALL_MIN_S, STALL_MIN_S + 2.5))
        proxy.heal()
        self._healed(fault, iv)
        fault.note = f"{proxy.dropped_pubacks - before} PUBACKs dropped"

    # --- Redis ---------------------------------------------------------------------

    def _redis_down(self, fault: FaultRecord, cause: str) -> Interval:
        iv = Interval(time.monotonic(), None, cause, fault.id)
        self.tl.redis_down.append(iv)
        fault.target, fault.start = "redis", iv.start
        return iv

    async def redis_kill(self, fault: FaultRecord) -> None:
        iv = self._redis_down(fault, "redis killed")
        await self.s.redis.kill()
        await asyncio.sleep(self._hold(1.0, 3.0))
        await self.s.redis.start()  # empty: no persistence
        self._healed(fault, iv)

    async def redis_pause(self, fault: FaultRecord) -> None:
        iv = self._redis_down(fault, "redis stopped (SIGSTOP)")
        self.s.redis.pause()
        await asyncio.sleep(self._hold(1.0, 3.0))
        self.s.redis.resume()
        self._healed(fault, iv)

    async def redis_restart(self, fault: FaultRecord) -> None:
        iv = self._redis_down(fault, "redis restarting")
        await self.s.redis.restart()
        self._healed(fault, iv)

    # --- the shared record ---------------------------------------------------------

    async def corrupt_record(self, fault: FaultRecord) -> None:
        group = BIG if self.rng.random() < 0.75 else OTHER
        key = f"{PREFIX}:group:{group}"
        fault.target, fault.start = group, time.monotonic()
        v = fault.variant
        undo: Callable[[], Awaitable[str]]
        if v in RECORD_VARIANTS:
            current: dict[str, Any] = {}
            with contextlib.suppress(ValueError, TypeError):
                loaded = json.loads(await self.r.hget(key, "record") or b"{}")
                current = loaded if isinstance(loaded, dict) else {}
            text = record_text(v, current)
            await self.r.hset(key, "record", text)

            async def undo() -> str:
                if await self.r.hget(key, "record") == text.encode():
                    await self.r.hdel(key, "record")
                    return "still in place at heal: deleted"
                return "replaced by the sidecars before the heal"
        elif v == "group_key_string":
            await self.r.delete(key)
            await self.r.set(key, "not a hash")

            async def undo() -> str:
                if await self.r.type(key) == b"string":
                    await self.r.delete(key)
                    return "still a string at heal: deleted"
                return "replaced before the heal"
        elif v == "garbage_views":
            await self.r.hset(key, mapping=GARBAGE_VIEWS)  # type: ignore[arg-type]

            async def undo() -> str:
                left = [f for f in GARBAGE_VIEWS if await self.r.hexists(key, f)]
                if left:
                    await self.r.hdel(key, *left)
                return f"{len(left)}/{len(GARBAGE_VIEWS)} garbage views left at heal"
        else:  # garbage_stats: a made-up sidecar's hash, and junk fields in a real one's
            fake = f"{key}:stats:chaos-fake"
            live = [s for s in self.s.live(group) if s.instance]
            real = f"{key}:stats:{live[0].instance}" if live else None
            await self.r.hset(fake, mapping=GARBAGE_STATS)  # type: ignore[arg-type]
            await self.r.pexpire(fake, 30_000)
            junk = {b"chaos:" + k: x for k, x in GARBAGE_STATS.items()}
            if real is not None:
                await self.r.hset(real, mapping=junk)  # type: ignore[arg-type]

            async def undo() -> str:
                await self.r.delete(fake)
                if real is not None:
                    await self.r.hdel(real, *junk)
                return "garbage stats removed"

        await asyncio.sleep(self._hold(1.0, 2.5))
        fault.note = await undo()
        self._healed(fault)

    # --- hostile frames ------------------------------------------------------------

    def _topics(self) -> list[tuple[str, str, str]]:
        """(topic, game, round id) of every topic a live sidecar subscribes to."""
        out = []
        for s in self.s.live():
            rid = s.current_round or s.next_round or f"{s.spec.code}-s0-00001"
            out.append((f"ikg/idp/{s.spec.code}/response", s.spec.game, rid))
            if s.spec.shaker:
                out.append((f"ikg/sicbo/{s.spec.shaker}/says", s.spec.game, rid))
            if s.instance:
                for b in s.spec.brokers:
                    out.append((f"studio-gateway/probe/{s.instance}/{b}", s.spec.game, rid))
        return out

    async def hostile_frames(self, fault: FaultRecord) -> None:
        b = self._broker()
        fault.target, fault.start = b, time.monotonic()
        big = fault.variant in ("payload_1mb", "payload_300kb")
        end = fault.start + self._hold(1.0, 2.5)
        bursts = frames = 0
        ident = f"chaos-hostile-{uuid.uuid4().hex[:6]}"
        async with aiomqtt.Client(HOST, self.s.brokers[b].port, identifier=ident, timeout=10) as c:
            while True:
                for topic, game, rid in self._topics():
                    for payload in hostile_payloads(fault.variant, game, rid):
                        await c.publish(topic, payload, qos=1)
                        frames += 1
                bursts += 1
                if time.monotonic() >= end or (big and bursts >= 2):
                    break
                await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        fault.note = f"{frames} frames in {bursts} bursts"
        self._healed(fault)

    # --- configuration ---------------------------------------------------------------

    def _slot(self, fault: FaultRecord) -> Sidecar | None:
        live = self.s.live()
        fault.start = time.monotonic()
        if not live:
            fault.failed, fault.note = True, "no live sidecar to target"
            return None
        slot = self.rng.choice(live)
        fault.target = slot.spec.code
        return slot

    async def config_swap(self, fault: FaultRecord) -> None:
        slot = self._slot(fault)
        if slot is None:
            return
        if fault.variant == "valid":
            slot.generation += 1
            slot.timeout_s = (
                BASE_TIMEOUT_S + 1 if slot.timeout_s == BASE_TIMEOUT_S else BASE_TIMEOUT_S
            )
            slot.mount.write(slot.render())
        else:
            slot.mount.write(invalid_config(fault.variant, slot.document()))
        want = slot.generation
        await asyncio.sleep(self._hold(1.2, 2.5))
        h = slot.health
        seen = (
            "no Health"
            if h is None
            else f"generation {h.config_generation}, "
            + (f"config_error {h.config_error[:90]!r}" if h.config_error else "no config_error")
        )
        if fault.variant == "valid":
            applied = h is not None and h.config_generation == want
            self.tl.info[
                "valid config swaps applied" if applied else "valid config swaps NOT applied"
            ] += 1
        else:
            rejected = h is not None and bool(h.config_error) and h.config_generation == want
            self.tl.info[
                "invalid config swaps reported" if rejected else "invalid config swaps NOT reported"
            ] += 1
        slot.generation += 1
        slot.timeout_s = BASE_TIMEOUT_S
        slot.mount.write(slot.render())  # heal: a valid file with a higher generation
        fault.note = f"before heal: {seen}"
        self._healed(fault)

    # --- sidecars ------------------------------------------------------------------

    async def sidecar_kill(self, fault: FaultRecord) -> None:
        slot = self._slot(fault)
        if slot is None:
            return
        iv = Interval(time.monotonic(), None, "killed by the schedule", fault.id)
        fault.start = iv.start
        self.tl.sidecar_down[slot.spec.code].append(iv)
        if slot.running:
            await slot.kill()
        await asyncio.sleep(self._hold(0.5, 2.0))
        if slot.dead:
            fault.note = "died before the kill: not restarted"
            self._healed(fault, iv)
            return
        await slot.start()
        try:
            await slot.wait_ready(15)
        except TimeoutError:
            fault.note = "restarted, but not SERVING within 15 s"
        self._healed(fault, iv)
