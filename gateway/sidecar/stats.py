"""This sidecar's statistics: a snapshot of its links and counters, written in batches.

The snapshot is written to the sidecar's hash in the shared store (the format is
``gateway.fleet.stats``) at most every ``stats_interval_s``: one pipelined HSET + EXPIRE,
so a vanished sidecar drops out of the fleet view by itself. An idle sidecar's snapshot
changes only in its clock and probe round-trip times; such a snapshot is written again
only every third of ``stats_ttl_s`` (5 s by default), which keeps the hash alive and its
numbers fresh enough at a fifth of the store's load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gateway.drops import Drops
from gateway.errors import raise_if_cancelled
from gateway.fleet.stats import BrokerStat, SidecarStats, to_hash
from gateway.fleet.store import Keys

if TYPE_CHECKING:
    import redis.asyncio as redis

    from gateway.sidecar.election import Decision, LinkStatus
    from gateway.sidecar.rounds import Counters


def take_snapshot(
    instance_id: str,
    table_code: str,
    generation: int,
    links: Sequence[LinkStatus],
    decision: Decision,
    counters: Counters,
    config_error: str = "",
) -> SidecarStats:
    """One sidecar's statistics at this moment, in the shape the fleet view stores."""
    return SidecarStats(
        instance_id=instance_id,
        table_code=table_code,
        updated_unix=time.time(),
        active_broker_id=decision.broker_id or "",
        epoch=decision.epoch,
        config_generation=generation,
        counters=asdict(counters),
        config_error=config_error,
        brokers=tuple(
            BrokerStat(
                id=s.id,
                connected=s.ready,
                connects=s.connects,
                disconnects=s.failures,
                publishes_ok=s.publishes_ok,
                publishes_failed=s.publishes_failed,
                probe_rtt_ms=round(s.probe_rtt_ms, 3),
                last_error=s.last_error,
            )
            for s in links
        ),
    )


class StatsWriter:
    """Writes this sidecar's snapshot every ``interval_s`` until cancelled."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        snapshot: Callable[[], SidecarStats],
        *,
        interval_s: float,
        ttl_s: float,
        on_error: Callable[[Exception], None] = lambda exc: None,
        drops: Drops | None = None,
    ) -> None:
        self._drops = drops or Drops()
        self._client = client
        self._keys = keys
        self._snapshot = snapshot
        self._interval_s = interval_s
        self._ttl_ms = int(ttl_s * 1000)
        self._on_error = on_error
        self._refresh_s = max(interval_s, ttl_s / 3)  # an unchanged snapshot, written again
        self._written: tuple[SidecarStats, float] | None = None  # what (steady), and when
        self.writes = 0

    def due(self, snapshot: SidecarStats, now: float) -> bool:
        """Whether a snapshot should be written: it changed in more than its clock and
        probe round-trip times, or the last write is ``stats_ttl_s / 3`` old."""
        if self._written is None:
            return True
        last, when = self._written
        return now - when >= self._refresh_s or last != _steady(snapshot)

    async def write_once(self, *, only_if_due: bool = False) -> None:
        """Write the snapshot now (raises RedisError if the store does not take it);
        with ``only_if_due``, only if ``due`` says so."""
        from redis.exceptions import ResponseError

        s = self._snapshot()
        key = self._keys.stats(s.instance_id)
        now = time.monotonic()
        if only_if_due and not self.due(s, now):
            return
        mapping: Any = to_hash(s)  # redis-py's Mapping type is invariant in its key type

        async def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()

        try:
            await write()
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            # Our own key, overwritten with another type: replace it rather than fail forever.
            self._drops.add("stats", key, "", "statistics key was not a hash; replaced")
            await self._client.delete(key)
            await write()
        self._written = (_steady(s), now)
        self.writes += 1

    async def run(self) -> None:
        """Write the snapshot every ``interval_s`` until cancelled; errors go to ``on_error``."""
        from redis.exceptions import RedisError

        while True:
            raise_if_cancelled()  # redis-py's connect may swallow one on Python 3.11
            try:
                await self.write_once(only_if_due=True)
            except RedisError as exc:
                self._written = None  # the store may have lost it: write the next one
                self._on_error(exc)  # the election reports the store as unreachable
            await asyncio.sleep(self._interval_s)


def _steady(s: SidecarStats) -> SidecarStats:
    """A snapshot without what changes while nothing happens: its time and the brokers'
    probe round-trip times."""
    brokers = tuple(dataclasses.replace(b, probe_rtt_ms=0.0) for b in s.brokers)
    return dataclasses.replace(s, updated_unix=0.0, brokers=brokers)
