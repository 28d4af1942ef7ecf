"""A GameTable's status: what its sidecars report through Redis, turned into conditions.

The sidecars' keys are read with the gateway's own readers (``gateway.fleet.stats.read_fleet``,
``gateway.fleet.records.read_group``), so the key layout is defined once; what does not
parse there is skipped, never raised.

Each condition is written in the shape of ``metav1.Condition`` (``type``, ``status``,
``observedGeneration``, ``lastTransitionTime``, ``reason``, ``message``), and every write
carries the full list, so a status an older operator left is replaced, not merged into.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.config import RedisConfig
from gateway.errors import Unavailable
from gateway.fleet.membership import lists_conflict
from gateway.fleet.records import read_group
from gateway.fleet.stats import SidecarStats, read_fleet
from gateway.fleet.store import Keys

READY, RENDERED, DEGRADED = "Ready", "ConfigRendered", "Degraded"

# The limits metav1.Condition puts on reason and message (the CRD states them too): a status
# write that broke them would be refused by the API server, and the status would go stale.
REASON_PATTERN = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")  # for fullmatch
MAX_REASON, MAX_MESSAGE = 1024, 32768
FALLBACK_REASON = "Unspecified"
# RFC 3339 as the API server's date-time format reads it, e.g. 2025-03-01T12:00:00Z.
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class Observed:
    """What Redis says about one table; ``error`` set when it could not be read."""

    active_broker: str = ""
    epoch: int = 0
    sidecars: tuple[SidecarStats, ...] = ()
    error: str = ""
    configured: bool = True  # False: the operator has no Redis to read
    conflict: str = ""  # the group's sidecars share no broker (their broker lists differ)
    record_problem: str = ""  # the stored record is unusable (the sidecars replace it)

    def applied(self, generation: int) -> int:
        """How many live sidecars run the configuration of ``generation``."""
        return sum(1 for s in self.sidecars if s.config_generation == generation)


@dataclass(frozen=True)
class Rendered:
    """The outcome of rendering and applying the ConfigMap."""

    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Condition:
    """One entry of a GameTable's ``status.conditions``."""

    type: str
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str


async def observe(client: redis.Redis | None, gametable: Mapping[str, Any]) -> Observed:
    """Read the group's record and the table's live sidecars; never raises for the store."""
    if client is None:
        return Observed(configured=False)
    spec = gametable["spec"]
    prefix = (spec.get("redis") or {}).get("keyPrefix") or RedisConfig().key_prefix
    keys = Keys(prefix, spec["brokerGroup"]["name"])
    try:
        group = await read_group(client, keys)
        fleet = await read_fleet(client, keys)
    except (RedisError, Unavailable, OSError) as exc:
        return Observed(error=f"cannot read Redis: {exc}")
    mine = tuple(s for s in fleet if s.table_code == spec["tableCode"])
    conflict = lists_conflict(group.views.values())
    record = group.record
    if record is None:
        return Observed(sidecars=mine, conflict=conflict, record_problem=group.record_problem)
    return Observed(
        active_broker=record.broker, epoch=record.epoch, sidecars=mine, conflict=conflict
    )


def conditions(generation: int, rendered: Rendered, seen: Observed) -> list[Condition]:
    """Ready, ConfigRendered and Degraded for one GameTable at one moment."""
    config = Condition(RENDERED, str(rendered.ok), rendered.reason, rendered.message)
    return [_ready(generation, rendered, seen), config, _degraded(seen)]


def _ready(generation: int, rendered: Rendered, seen: Observed) -> Condition:
    if not rendered.ok:
        return Condition(READY, "False", rendered.reason, rendered.message)
    if not seen.configured:
        return Condition(READY, "Unknown", "NoStatusSource",
                         "the operator has no Redis to read the sidecars' status from")  # fmt: skip
    if seen.error:
        return Condition(READY, "Unknown", "RedisUnavailable", seen.error)
    live = len(seen.sidecars)
    applied = seen.applied(generation)
    if live == 0:
        return Condition(READY, "False", "NoSidecars", "no sidecar of this table is reporting")
    if applied < live:
        return Condition(READY, "False", "Rolling",
                         f"{applied} of {live} sidecars run generation {generation}")  # fmt: skip
    if not seen.active_broker:
        return Condition(READY, "False", "NoActiveBroker", "the broker group has no active broker")
    return Condition(READY, "True", "SidecarsReady",
                     f"{live} sidecar(s) on generation {generation}; active broker "
                     f"{seen.active_broker} (epoch {seen.epoch})")  # fmt: skip


def _degraded(seen: Observed) -> Condition:
    if not seen.configured:
        return Condition(DEGRADED, "Unknown", "NoStatusSource",
                         "the operator has no Redis to read the sidecars' status from")  # fmt: skip
    if seen.error:
        return Condition(DEGRADED, "True", "RedisUnavailable", seen.error)
    if seen.conflict:
        return Condition(DEGRADED, "True", "BrokerListConflict", seen.conflict)
    rejected = [s for s in seen.sidecars if s.config_error]
    if rejected:
        first = rejected[0]
        return Condition(DEGRADED, "True", "ConfigRejected",
                         f"{len(rejected)} sidecar(s) kept their last good config; "
                         f"{first.instance_id}: {first.config_error}")  # fmt: skip
    down = _brokers_down(seen.sidecars)
    if down:
        text = ", ".join(f"{b} (seen down by {n} of {len(seen.sidecars)})" for b, n in down)
        return Condition(DEGRADED, "True", "BrokerDown", f"broker(s) down: {text}")
    return Condition(DEGRADED, "False", "Healthy", "every sidecar sees every broker")


def _brokers_down(sidecars: Sequence[SidecarStats]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for s in sidecars:
        for b in s.brokers:
            if not b.connected:
                counts[b.id] = counts.get(b.id, 0) + 1
    return sorted(counts.items())


def status_patch(
    generation: int,
    rendered: Rendered,
    seen: Observed,
    previous: Sequence[Mapping[str, Any]] | None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The ``status`` to write, the full conditions list in the metav1.Condition shape.

    A condition keeps the ``lastTransitionTime`` of the previous condition of its type while
    its status is unchanged; a previous condition without a usable time (as the schema before
    metav1.Condition allowed) gets ``now``.
    """
    stamp = (now or datetime.datetime.now(tz=datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = {c.get("type"): c for c in previous or [] if isinstance(c, Mapping)}
    out = []
    for c in conditions(generation, rendered, seen):
        old = before.get(c.type) or {}
        since = old.get("lastTransitionTime") if old.get("status") == c.status else None
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "observedGeneration": generation,
                "lastTransitionTime": since if _is_timestamp(since) else stamp,
                "reason": _reason(c.reason),
                "message": _message(c.message),
            }
        )
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": out}
    if seen.configured and not seen.error:
        status.update(
            activeBroker=seen.active_broker or None,
            epoch=seen.epoch if seen.active_broker else None,
            liveSidecars=len(seen.sidecars),
            appliedSidecars=seen.applied(generation),
        )
    else:  # unknown now: clear what the last good read left (None deletes in a merge patch)
        status.update(activeBroker=None, epoch=None, liveSidecars=None, appliedSidecars=None)
    return status


def _is_timestamp(value: object) -> bool:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return False
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:  # 2025-02-30T00:00:00Z has the shape but is no date
        return False
    return True


def _reason(reason: str) -> str:
    """The reason, or a fallback where it is not the CamelCase word the schema requires."""
    if len(reason) <= MAX_REASON and REASON_PATTERN.fullmatch(reason):
        return reason
    return FALLBACK_REASON


def _message(message: str) -> str:
    """The message, cut to the schema's limit (an API error can quote a long body)."""
    if len(message) <= MAX_MESSAGE:
        return message
    return message[: MAX_MESSAGE - 1] + "\u2026"
