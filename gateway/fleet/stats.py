"""The fleet's statistics: one Redis hash per sidecar, and the fleet view that adds them up.

Each sidecar writes one hash (``Keys.stats``) at most every ``stats_interval_s`` (one
pipelined HSET + EXPIRE, ``gateway.sidecar.stats``), expiring ``stats_ttl_s`` after its
last write, so a vanished sidecar drops out of the fleet view by itself. This module is the
format both sides share: the sidecar writes it, ``gateway health --fleet`` and the
operator's status read it. The fleet view reads every live hash of the broker group and
adds them up (the predecessor's promised ``get_connection_stats()``: total / active /
failed connections).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.drops import Drops
from gateway.errors import MalformedInput, Unavailable
from gateway.fleet.store import Keys

if TYPE_CHECKING:
    import redis.asyncio as redis

log = logging.getLogger(__name__)

MAX_STATS_CHARS = 256 * 1024


@dataclass(frozen=True)
class BrokerStat:
    """One broker link of one sidecar, as the fleet view shows it."""

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
    """What ``totals`` adds up over the live sidecars of a group."""

    sidecars: int
    total_connections: int
    active_connections: int
    failed_connections: int
    detects_ok: int
    detects_timed_out: int
    detects_failed: int


def to_hash(s: SidecarStats) -> dict[str, str]:
    """The hash one sidecar writes (``from_hash`` reads it back)."""
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


def from_hash(h: Mapping[str, str]) -> SidecarStats:
    """Decode a stats hash; MalformedInput (naming the field) for anything else."""
    try:
        return _from_hash(h)
    except MalformedInput:
        raise
    except (KeyError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise MalformedInput(f"statistics hash: {type(exc).__name__}: {exc}") from None


def _from_hash(h: Mapping[str, str]) -> SidecarStats:
    if sum(len(v) for v in h.values()) > MAX_STATS_CHARS:
        raise MalformedInput(f"statistics hash is over {MAX_STATS_CHARS} characters")
    counters = json.loads(h["counters"])
    brokers = json.loads(h["brokers"])
    if not isinstance(counters, dict) or not isinstance(brokers, list):
        raise MalformedInput("statistics hash: counters must be an object, brokers a list")
    updated, epoch = float(h["updated_unix"]), int(h["epoch"])
    if not math.isfinite(updated) or not 0 <= epoch < 2**63:
        raise MalformedInput("statistics hash: updated_unix or epoch out of range")
    return SidecarStats(
        instance_id=h["instance_id"],
        table_code=h["table_code"],
        updated_unix=updated,
        active_broker_id=h["active_broker_id"],
        epoch=epoch,
        config_generation=int(h["config_generation"]),
        counters={str(k): _count(v) for k, v in counters.items()},
        brokers=tuple(_broker(b) for b in brokers),
        config_error=h.get("config_error", ""),
    )


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise MalformedInput(f"statistics hash: a counter is not a count: {value!r:.40}")
    return value


def _broker(b: Any) -> BrokerStat:
    if not isinstance(b, dict):
        raise MalformedInput("statistics hash: a broker entry is not an object")
    stat = BrokerStat(**b)  # TypeError for missing or unknown keys
    numbers = (stat.connects, stat.disconnects, stat.publishes_ok, stat.publishes_failed)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise MalformedInput(f"statistics hash: broker {stat.id!r:.40} has a bad count")
    if not isinstance(stat.connected, bool) or not isinstance(stat.probe_rtt_ms, int | float):
        raise MalformedInput(f"statistics hash: broker {stat.id!r:.40} has a bad field")
    if not isinstance(stat.id, str) or not isinstance(stat.last_error, str):
        raise MalformedInput("statistics hash: a broker id or error is not a string")
    return stat


def totals(fleet: Sequence[SidecarStats]) -> FleetTotals:
    """The fleet's sums: connections by state and detects by outcome."""
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


async def read_fleet(
    client: redis.Redis, keys: Keys, drops: Drops | None = None
) -> list[SidecarStats]:
    """Every live sidecar of the group (malformed hashes dropped and counted);
    Unavailable if the store does not answer."""
    from redis.exceptions import RedisError

    try:
        names = [key async for key in client.scan_iter(match=keys.stats_pattern, count=500)]
        if not names:
            return []
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        # An error reply (a key of the wrong type) belongs to that key alone.
        hashes = await pipe.execute(raise_on_error=False)
    except RedisError as exc:
        raise Unavailable(f"shared store unreachable: {exc}") from exc
    fleet = []
    for name, h in zip(names, hashes, strict=True):
        if not h:
            continue  # expired between SCAN and HGETALL
        try:
            if not isinstance(h, dict):
                raise MalformedInput(f"statistics key is not a hash: {h}")
            fleet.append(from_hash(h))
        except MalformedInput as exc:
            if drops is not None:
                drops.add("stats", str(name), "", exc.message)
            else:
                log.warning("ignoring malformed statistics hash %s: %s", name, exc.message)
    return sorted(fleet, key=lambda s: (s.table_code, s.instance_id))
