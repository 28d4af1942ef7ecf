"""Who is the active broker: the decision the broker pool asks for, behind one interface.

The pool never decides. It reports every change of its links to an ``Elector`` and asks
it which broker commands go to. ``LocalElector`` decides alone, from this sidecar's own
view (the embedded default, and the fallback when no shared record is reachable):

- the active broker is the highest-priority ready broker;
- a failed active broker is left at once for the best ready one;
- moving back to a preferred broker (fail-back) waits until it has been ready for the
  hold-down period, and never happens while a Detect is in flight on the table;
- a flapping broker is damped: each failure within the damping window doubles its
  hold-down, up to ``holddown_max_s``.

A broker that has never failed (a fresh start) needs no hold-down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from opentelemetry import trace

from gateway.config import LinkTimings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


class LinkState(StrEnum):
    """Where a broker link stands; only READY (probed round trip) can carry commands."""

    CONNECTING = "connecting"
    READY = "ready"
    DOWN = "down"


@dataclass(frozen=True)
class LinkStatus:
    """A snapshot of one broker link, as the elector and Health see it."""

    id: str
    host: str
    port: int
    priority: int
    state: LinkState
    since: float  # monotonic time of the last state change
    since_wall: float  # the same, as Unix time
    failures: int
    failure_times: tuple[float, ...]  # monotonic times of recent failures (damping)
    probe_rtt_ms: float
    last_error: str
    connects: int = 0  # times the link became ready
    publishes_ok: int = 0
    publishes_failed: int = 0

    @property
    def ready(self) -> bool:
        """True while the link is READY: the only state that can carry commands."""
        return self.state is LinkState.READY


@dataclass(frozen=True)
class Decision:
    """Where commands go now, under which epoch, and why."""

    broker_id: str | None
    epoch: int = 0
    reason: str = "no broker is ready yet"
    decided_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ElectionStatus:
    """How the decision is being made, for Health."""

    state: str = "not configured"  # or "connected ...", "unreachable: ..."
    live_reporters: int = 0
    problems: tuple[str, ...] = ()  # reasons to report DEGRADED


class Elector(Protocol):
    """The seam between the broker pool and whoever decides the active broker."""

    def current(self) -> Decision:
        """The decision commands follow right now (never blocks)."""
        ...

    def update(self, links: Sequence[LinkStatus], busy: bool) -> None:
        """The pool's view changed (a link state, or whether a Detect is in flight)."""
        ...

    def add_listener(self, callback: Callable[[Decision], None]) -> None:
        """Call ``callback`` with every new decision."""
        ...

    async def run(self) -> None:
        """Background work (timers, shared-record watch) until cancelled."""
        ...

    def status(self) -> ElectionStatus:
        """The election's own health."""
        ...


def announce(
    previous: str | None, decision: Decision, listeners: Sequence[Callable[[Decision], None]]
) -> None:
    """Trace an active-broker switch (a short span of its own) and tell the listeners."""
    attributes: dict[str, str | int] = {
        "from": previous or "",
        "to": decision.broker_id or "",
        "epoch": decision.epoch,
        "reason": decision.reason,
    }
    _tracer.start_span("gateway.election.switch", attributes=attributes).end()
    for callback in listeners:
        callback(decision)


def effective_holddown(link: LinkStatus, timings: LinkTimings, now: float) -> float:
    """Hold-down for a broker, doubled for each failure inside the damping window."""
    if link.failures == 0:
        return 0.0
    window = max(timings.holddown_max_s, timings.holddown_s) * 2
    recent = sum(1 for t in link.failure_times if now - t <= window)
    return min(timings.holddown_max_s, timings.holddown_s * 2.0 ** max(0, recent - 1))


def decide(
    links: Sequence[LinkStatus],
    current: str | None,
    busy: bool,
    timings: LinkTimings,
    now: float,
) -> tuple[str | None, str, float | None]:
    """The local rule. Returns (broker id, reason, when to look again or None)."""
    ready = sorted((link for link in links if link.ready), key=lambda s: (s.priority, s.id))
    if not ready:
        return None, "no broker is ready", None
    cur = next((link for link in links if link.id == current), None)
    if cur is None or not cur.ready:
        chosen = ready[0]
        why = "started" if current is None else f"{current} is {cur.state if cur else 'gone'}"
        reason = f"{why}: highest-priority ready broker {chosen.id}"
    else:
        chosen, reason = cur, f"{cur.id} is the highest-priority ready broker"
        for link in _preferred_to(ready, cur):
            if link.since + effective_holddown(link, timings, now) > now:
                continue
            if busy:
                # Re-evaluated when the round ends (the desk reports every busy change).
                return cur.id, f"fail-back to {link.id} waits for the round in flight", None
            held = now - link.since
            chosen, reason = link, f"fail-back to preferred {link.id} after {held:.1f}s ready"
            break
    # Brokers preferred to the chosen one but still in hold-down: look again when it ends.
    dues = [
        link.since + effective_holddown(link, timings, now) for link in _preferred_to(ready, chosen)
    ]
    recheck = min((due for due in dues if due > now), default=None)
    if recheck is not None and chosen is cur and reason.endswith("ready broker"):
        reason = f"{cur.id} active; preferred broker in hold-down for {recheck - now:.1f}s more"
    return chosen.id, reason, recheck


def _preferred_to(ready: Sequence[LinkStatus], link: LinkStatus) -> list[LinkStatus]:
    return [r for r in ready if (r.priority, r.id) < (link.priority, link.id)]


class LocalElector:
    """Decides alone, from this sidecar's view of its brokers (no shared record)."""

    def __init__(self, timings: LinkTimings, clock: Callable[[], float] = time.monotonic) -> None:
        self._timings = timings
        self._clock = clock
        self._decision = Decision(None)
        self._links: Sequence[LinkStatus] = ()
        self._busy = False
        self._listeners: list[Callable[[Decision], None]] = []
        self._recheck: float | None = None
        self._wake = asyncio.Event()

    def current(self) -> Decision:
        """The active broker as decided last (none until a link is ready)."""
        return self._decision

    def status(self) -> ElectionStatus:
        """Always the plain local election: nothing shared that could be unhealthy."""
        return ElectionStatus()

    def add_listener(self, callback: Callable[[Decision], None]) -> None:
        """Call ``callback`` with every new decision."""
        self._listeners.append(callback)

    def update(self, links: Sequence[LinkStatus], busy: bool) -> None:
        """The links or the round changed: decide again (a fail-back waits for idle)."""
        self._links, self._busy = links, busy
        self._evaluate()

    def _evaluate(self) -> None:
        now = self._clock()
        broker_id, reason, self._recheck = decide(
            self._links, self._decision.broker_id, self._busy, self._timings, now
        )
        if self._recheck is not None:
            self._wake.set()
        if broker_id == self._decision.broker_id:
            if reason != self._decision.reason:
                self._decision = Decision(broker_id, 0, reason, self._decision.decided_at)
            return
        previous = self._decision.broker_id
        self._decision = Decision(broker_id, 0, reason, now)
        level = logging.INFO if previous is None else logging.WARNING  # a first choice is no switch
        log.log(level, "active broker %s -> %s: %s", previous, broker_id, reason)
        announce(previous, self._decision, self._listeners)

    async def run(self) -> None:
        """Re-evaluate when a hold-down expires (nothing else changes with time)."""
        while True:
            self._wake.clear()
            if self._recheck is None:
                await self._wake.wait()
                continue
            delay = max(0.0, self._recheck - self._clock())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay + 0.001)
            except TimeoutError:
                self._evaluate()
