"""What a sidecar writes to its group's shared record, and when: pure rules, no I/O.

``plan()`` looks at one read of the group (the record, the live views, this sidecar's
own view and links) and returns the one change to propose, or None. The rules are in
``docs/election.md``; in short:

- **Heal.** No record, a record that does not parse or names a broker no sidecar of the
  group has, or a record behind an epoch some live sidecar has seen: re-create it above
  every epoch seen, on the broker the group uses (so nothing flaps).
- **Fail over** when a majority of the sidecars that have the active broker see it down
  (or this sidecar is the only reporter), to the best broker every sidecar that has it
  sees up, else to the best one a majority sees up.
- **Fail back** to a preferred broker that a majority has seen up for its hold-down,
  never in the middle of this sidecar's round.
- **Different broker lists** (two GameTables of one group during a broker rollout): the
  group uses a broker every sidecar has; an active broker some sidecar lacks is replaced
  by the best common one. With no common broker nobody moves the record for that reason
  (no flip-flop, no epoch storm) and every sidecar reports the conflict.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.fleet.membership import majority, membership
from gateway.fleet.records import MAX_EPOCH, Record, View
from gateway.sidecar.election import LinkStatus, effective_holddown


@dataclass(frozen=True)
class Proposal:
    """A new record to write: broker and epoch, and why."""

    broker: str
    epoch: int
    reason: str


def plan(
    record: Record | None,
    views: Sequence[View],
    me: View,
    links: Sequence[LinkStatus],
    current: str | None,
    busy: bool,
    config: GatewayConfig,
    now: float,
    settled: bool = True,
    *,
    problem: str = "",
    floor: int = 0,
) -> Proposal | None:
    """What, if anything, this sidecar should write to the record now (pure).

    ``record`` is the parsed record (None if absent or unusable: ``problem`` then says why
    it is unusable); ``floor`` an epoch the stored bytes carry even if they do not parse.
    """
    live = {v.instance: v for v in views}
    live[me.instance] = me
    n = len(live)
    group = membership(me, live.values(), config)
    seen = max(v.epoch for v in live.values())
    common_up = [b for b in group.common if b in me.up]
    own_up = sorted((b for b in group.mine if b in me.up), key=lambda b: (group.mine[b], b))
    known = group.known
    if record is not None and known is not None and record.broker not in known:
        problem = f"it names broker {record.broker}, which no sidecar of the group has"
        floor = max(floor, record.epoch)
        record = None
    if record is None or record.epoch < seen:
        if record is None and not problem and not settled:
            return None  # let every link finish connecting before the first record
        keep = [b for b in (record.broker if record else None, current) if b in common_up]
        choices = keep + common_up if group.common else own_up
        if not choices:
            return None
        broker = choices[0]
        epoch = min(MAX_EPOCH, max(seen, floor, record.epoch if record else 0) + 1)
        if problem:
            why = f"record unusable ({problem})"
        elif record is None:
            why = "record missing"
        else:
            why = f"record epoch {record.epoch} < {seen}"
        return Proposal(broker, epoch, f"{why}: re-created on {broker}")

    active = record.broker
    up = {b: sum(1 for v in live.values() if b in v.up) for b in group.mine}
    having = {b: sum(1 for i in live if group.has(i, b)) for b in group.mine}

    def backed(broker: str) -> bool:  # up for a majority of the sidecars that have it
        return n == 1 or majority(up[broker], having[broker])

    def best_first(brokers: Sequence[str]) -> list[str]:
        """The backed brokers, those up for every sidecar that has them first (each part
        in the group's order): a switch leaves no sidecar on a broker it cannot reach while
        another broker would serve them all."""
        backed_ones = [b for b in brokers if backed(b)]
        return sorted(backed_ones, key=lambda b: up[b] < having[b])

    next_epoch = min(MAX_EPOCH, record.epoch + 1)
    if group.common and active not in group.common:
        candidates = best_first(common_up)
        if not candidates:
            return None
        why = f"{active} is not configured on every sidecar of the group"
        return Proposal(candidates[0], next_epoch, f"{why}: moved to {candidates[0]}")
    if active in group.mine and active not in me.up:
        have = sum(1 for i in live if group.has(i, active))
        down = have - sum(1 for v in live.values() if active in v.up)
        if not (majority(down, have) or n == 1):
            return None  # our own problem: the fleet stays, this sidecar is degraded
        candidates = best_first(common_up if group.common else own_up)
        if not candidates:
            return None
        why = f"{active} down for {down}/{have} sidecars"
        return Proposal(candidates[0], next_epoch, why)
    if busy or not group.common or active not in me.up:
        return None
    order = list(group.common)
    for b in order[: order.index(active)]:
        if b not in me.up:
            continue
        ups = sorted(v.up[b] for v in live.values() if b in v.up)
        k = n // 2 + 1
        if len(ups) < k:
            continue
        since = ups[k - 1]  # a majority has seen it up at least since then
        status = next((s for s in links if s.id == b), None)
        hold = effective_holddown(status, config.timings, time.monotonic()) if status else 0.0
        if now - since >= hold:
            why = f"fail-back to preferred {b}: up for a majority for {now - since:.1f}s"
            return Proposal(b, next_epoch, why)
    return None
