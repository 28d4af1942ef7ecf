"""Connection and detect statistics: per sidecar, written in batches, read as a fleet.

Each sidecar writes one Redis hash (``Keys.stats``) at most every ``stats_interval_s``
(one pipelined HSET + EXPIRE), expiring ``stats_ttl_s`` after its last write, so a
vanished sidecar drops out of the fleet view by itself. The fleet view reads every live
hash of the broker group and adds them up (the predecessor's promised
``get_connection_stats()``: total / active / failed connections).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.detect import Counters
from gateway.election import Decision, LinkStatus
from gateway.errors import Unavailable, raise_if_cancelled
from gateway.store import Keys

if TYPE_CHECKING:
    import redis.asyncio as redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerStat:
    id: str
    connected: bool
    connects: int
    disconnects: int
    publishes_ok: int
    publishes_failed: int
    probe_rtt_ms: float
    last_error: str


@dataclass(frozen=True)
class SidecarStats:
    """One sidecar's numbers at one moment."""

    instance_id: str
    table_code: str
    updated_unix: float
    active_broker_id: str
    epoch: int
    config_generation: int
    counters: dict[str, int] = field(default_factory=dict)
    brokers: tuple[BrokerStat, ...] = ()
    config_error: str = ""


@dataclass(frozen=True)
class FleetTotals:
    sidecars: int
    total_connections: int
    active_connections: int
    failed_connections: int
    detects_ok: int
    detects_timed_out: int
    detects_failed: int


def take_snapshot(
    instance_id: str,
    table_code: str,
    generation: int,
    links: Sequence[LinkStatus],
    decision: Decision,
    counters: Counters,
    config_error: str = "",
) -> SidecarStats:
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


def to_hash(s: SidecarStats) -> dict[str, str]:
    return {
        "instance_id": s.instance_id,
        "table_code": s.table_code,
        "updated_unix": repr(s.updated_unix),
        "active_broker_id": s.active_broker_id,
        "epoch": str(s.epoch),
        "config_generation": str(s.config_generation),
        "counters": json.dumps(s.counters, separators=(",", ":")),
        "brokers": json.dumps([asdict(b) for b in s.brokers], separators=(",", ":")),
        "config_error": s.config_error,
    }


def from_hash(h: dict[str, str]) -> SidecarStats:
    """Decode a stats hash; raises ValueError/KeyError/TypeError on a malformed one."""
    return SidecarStats(
        instance_id=h["instance_id"],
        table_code=h["table_code"],
        updated_unix=float(h["updated_unix"]),
        active_broker_id=h["active_broker_id"],
        epoch=int(h["epoch"]),
        config_generation=int(h["config_generation"]),
        counters={str(k): int(v) for k, v in json.loads(h["counters"]).items()},
        brokers=tuple(BrokerStat(**b) for b in json.loads(h["brokers"])),
        config_error=h.get("config_error", ""),
    )


def totals(fleet: Sequence[SidecarStats]) -> FleetTotals:
    links = [b for s in fleet for b in s.brokers]
    return FleetTotals(
        sidecars=len(fleet),
        total_connections=len(links),
        active_connections=sum(1 for b in links if b.connected),
        failed_connections=sum(1 for b in links if not b.connected),
        detects_ok=sum(s.counters.get("detects_ok", 0) for s in fleet),
        detects_timed_out=sum(s.counters.get("detects_timed_out", 0) for s in fleet),
        detects_failed=sum(s.counters.get("detects_failed", 0) for s in fleet),
    )


async def read_fleet(client: redis.Redis, keys: Keys) -> list[SidecarStats]:
    """Every live sidecar of the group; Unavailable if the store does not answer."""
    from redis.exceptions import RedisError

    try:
        names = [key async for key in client.scan_iter(match=keys.stats_pattern, count=500)]
        if not names:
            return []
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        hashes = await pipe.execute()
    except RedisError as exc:
        raise Unavailable(f"shared store unreachable: {exc}") from exc
    fleet = []
    for name, h in zip(names, hashes, strict=True):
        if not h:
            continue  # expired between SCAN and HGETALL
        try:
            fleet.append(from_hash(h))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed stats hash %s: %s", name, exc)
    return sorted(fleet, key=lambda s: (s.table_code, s.instance_id))


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
    ) -> None:
        self._client = client
        self._keys = keys
        self._snapshot = snapshot
        self._interval_s = interval_s
        self._ttl_ms = int(ttl_s * 1000)
        self._on_error = on_error
        self.writes = 0

    async def write_once(self) -> None:
        s = self._snapshot()
        key = self._keys.stats(s.instance_id)
        pipe = self._client.pipeline(transaction=False)
        mapping: Any = to_hash(s)  # redis-py's Mapping type is invariant in its key type
        pipe.hset(key, mapping=mapping)
        pipe.pexpire(key, self._ttl_ms)
        await pipe.execute()
        self.writes += 1

    async def run(self) -> None:
        from redis.exceptions import RedisError

        while True:
            raise_if_cancelled()  # redis-py's connect may swallow one on Python 3.11
            try:
                await self.write_once()
            except RedisError as exc:
                self._on_error(exc)  # the election reports the store as unreachable
            await asyncio.sleep(self._interval_s)
