"""What the chaos soak watches while it runs: every sidecar's Health (~5 per second), the
groups' records in Redis, the sidecars' RSS, the fleet statistics, and the big group's
agreement on one active broker after each heal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter

import grpc
import redis.asyncio as aioredis
from chaos_check import Agreement, FaultRecord, HealthSample, Timeline
from chaos_payloads import INJECTOR, PREFIX
from chaos_stack import BIG, OTHER, Sidecar, Studio, rss_kb
from redis.exceptions import RedisError

from gateway.v1 import gateway_pb2 as pb

HEALTH_EVERY_S = 0.2
RECORD_EVERY_S = 0.2
RSS_EVERY_S = 1.0
STATS_EVERY_S = 1.0
AGREE_POLL_S = 0.05


def _links(h: pb.HealthResponse) -> str:
    return " ".join(
        f"{b.id}:{pb.BrokerState.Name(b.state).removeprefix('BROKER_STATE_').lower()}"
        for b in h.brokers
    )


class Monitor:
    """Background watchers filling the timeline; ``agreement`` is awaited after a heal."""

    def __init__(self, studio: Studio, tl: Timeline) -> None:
        self.s, self.tl = studio, tl
        self.r = aioredis.from_url(studio.redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.fleet_stats: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Monitor:
        for name, loop in (
            ("health", self._health),
            ("records", self._records),
            ("rss", self._rss),
            ("fleet", self._fleet),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=f"monitor {name}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.r.aclose()

    async def poll(self, slot: Sidecar) -> pb.HealthResponse | None:
        """One Health of a running sidecar, recorded (None if it did not answer)."""
        if not slot.running or slot.planned_exit:
            return None
        try:
            h = await slot.monitor.health()
        except grpc.aio.AioRpcError:
            return None
        now = time.monotonic()
        slot.health, slot.instance, slot.last_answer = h, h.instance_id, now
        self.tl.samples.append(
            HealthSample(
                now,
                slot.spec.code,
                h.instance_id,
                h.epoch,
                h.active_broker_id,
                pb.HealthResponse.Status.Name(h.status),
                h.config_generation,
                h.config_error,
                _links(h),
            )
        )
        return h

    async def _health(self) -> None:
        while True:
            await asyncio.gather(*(self.poll(s) for s in self.s.slots))
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _records(self) -> None:
        last: dict[str, tuple[int, str]] = {}
        while True:
            for group in (BIG, OTHER):
                with contextlib.suppress(RedisError, OSError):
                    raw = await self.r.hget(f"{PREFIX}:group:{group}", "record")
                    self._record(group, raw, last)
            await asyncio.sleep(RECORD_EVERY_S)

    def _record(
        self, group: str, raw: bytes | str | None, last: dict[str, tuple[int, str]]
    ) -> None:
        """A record a sidecar wrote (not the injector's, not a malformed one) joins the check."""
        if raw is None:
            return
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        epoch, by = doc.get("epoch"), doc.get("by")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not isinstance(by, str):
            return
        if by == INJECTOR or last.get(group) == (epoch, by):
            return
        last[group] = (epoch, by)
        self.tl.record_epochs.append((time.monotonic(), group, epoch, by))

    async def _rss(self) -> None:
        while True:
            for s in self.s.slots:
                if s.running and s.proc is not None:
                    kb = rss_kb(s.proc.pid)
                    if kb is not None:
                        self.tl.rss_kb[s.spec.code].append((time.monotonic(), s.proc.pid, kb))
            await asyncio.sleep(RSS_EVERY_S)

    async def _fleet(self) -> None:
        """GetStats(fleet) reads every sidecar's statistics hash, garbage included."""
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            live = self.s.live(BIG)
            if not live:
                continue
            try:
                stats = await live[0].monitor.stats(fleet=True)
                self.fleet_stats["ok" if not stats.fleet_error else "fleet_error"] += 1
            except grpc.aio.AioRpcError as exc:
                self.fleet_stats[exc.code().name] += 1

    def warm_up_done(self) -> None:
        """The RSS each table's sidecar settled at: the bound of invariant 6 is above it."""
        for s in self.s.slots:
            if s.proc is not None and (kb := rss_kb(s.proc.pid)) is not None:
                self.tl.warm_rss_kb[s.spec.code] = kb

    async def agreement(self, fault: FaultRecord, window_s: float) -> None:
        """After a heal: how long until the big group's live sidecars name one active broker."""
        healed = fault.healed or time.monotonic()
        if any(iv.end is None for iv in self.tl.redis_down):
            return  # Redis still faulted: nothing to agree through
        deadline = healed + window_s
        detail = ""
        while True:
            live = self.s.live(BIG)
            if not live:
                return  # nobody left to agree
            answers = await asyncio.gather(*(self.poll(s) for s in live))
            now = time.monotonic()
            views = {
                s.spec.code: (h.active_broker_id if h else "no answer")
                for s, h in zip(live, answers, strict=True)
            }
            if (
                live
                and len(set(views.values())) == 1
                and "" not in views.values()
                and "no answer" not in views.values()
            ):
                self.tl.agreements.append(
                    Agreement(
                        fault.id, healed, max(0.0, now - healed), f"on {next(iter(views.values()))}"
                    )
                )
                return
            detail = ", ".join(f"{k}: {v or '-'}" for k, v in views.items())
            if now >= deadline:
                self.tl.agreements.append(Agreement(fault.id, healed, None, detail))
                return
            await asyncio.sleep(AGREE_POLL_S)
