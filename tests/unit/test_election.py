"""Unit tests of gateway.sidecar.election: the pure decide() and LocalElector on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.config import LinkTimings
from gateway.sidecar.election import (
    Decision,
    LinkState,
    LinkStatus,
    LocalElector,
    decide,
    effective_holddown,
)

TIMINGS = LinkTimings(holddown_s=30.0, holddown_max_s=300.0)
NOW = 10_000.0


def link(
    id: str,
    priority: int,
    state: LinkState = LinkState.READY,
    *,
    since: float = 0.0,
    failure_times: Sequence[float] = (),
    failures: int | None = None,
) -> LinkStatus:
    """A broker link snapshot; ``failures`` defaults to the number of failure times."""
    return LinkStatus(
        id=id,
        host=id,
        port=1883,
        priority=priority,
        state=state,
        since=since,
        since_wall=since,
        failures=len(failure_times) if failures is None else failures,
        failure_times=tuple(failure_times),
        probe_rtt_ms=1.0,
        last_error="",
    )


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- decide() -----------------------------------------------------------------------------


def test_start_picks_highest_priority_ready_broker() -> None:
    """At start the highest-priority (lowest number) ready broker becomes active."""
    links = [link("c", 3), link("a", 1, LinkState.CONNECTING), link("b", 2)]
    broker, reason, recheck = decide(links, None, False, TIMINGS, NOW)
    assert broker == "b"
    assert "started" in reason
    assert recheck is None


def test_start_breaks_priority_ties_by_id() -> None:
    """Two ready brokers of equal priority are ordered by id, so every sidecar agrees."""
    broker, _, _ = decide([link("z", 1), link("m", 1)], None, False, TIMINGS, NOW)
    assert broker == "m"


@pytest.mark.parametrize(
    "links",
    [
        [],
        [link("a", 1, LinkState.CONNECTING), link("b", 2, LinkState.DOWN)],
        [link("a", 1, LinkState.DOWN)],
    ],
    ids=["no-links", "connecting-and-down", "all-down"],
)
@pytest.mark.parametrize("current", [None, "a"])
def test_no_ready_broker_means_none(links: list[LinkStatus], current: str | None) -> None:
    """With no ready broker there is no active broker (commands cannot be carried)."""
    broker, reason, recheck = decide(links, current, False, TIMINGS, NOW)
    assert broker is None
    assert "no broker is ready" in reason
    assert recheck is None


@pytest.mark.parametrize("busy", [False, True])
def test_active_broker_down_moves_at_once(busy: bool) -> None:
    """When the active broker goes down the best ready one takes over at once, even if busy."""
    links = [
        link("a", 1, LinkState.DOWN, since=NOW - 0.1, failure_times=[NOW - 0.1]),
        link("c", 3),
        link("b", 2),
    ]
    broker, reason, recheck = decide(links, "a", busy, TIMINGS, NOW)
    assert broker == "b"
    assert "a is down" in reason
    assert recheck is None


def test_active_broker_gone_moves_at_once() -> None:
    """An active broker that vanished from the link list is replaced at once."""
    broker, reason, _ = decide([link("b", 2)], "a", False, TIMINGS, NOW)
    assert broker == "b"
    assert "gone" in reason


def test_active_preferred_broker_is_kept() -> None:
    """The highest-priority ready broker stays active with nothing to re-check."""
    broker, _, recheck = decide([link("a", 1), link("b", 2)], "a", False, TIMINGS, NOW)
    assert (broker, recheck) == ("a", None)


def test_lower_priority_brokers_never_take_over_while_active_is_ready() -> None:
    """A ready, lower-priority broker never displaces the ready active broker."""
    links = [link("b", 2), link("c", 3, since=NOW - 1000)]
    assert decide(links, "b", False, TIMINGS, NOW)[0] == "b"


def test_failback_waits_for_holddown_and_returns_recheck_time() -> None:
    """A preferred broker back after a failure is not used before its hold-down ends."""
    back_at = NOW - 10.0
    links = [link("a", 1, since=back_at, failure_times=[back_at - 1]), link("b", 2)]
    broker, reason, recheck = decide(links, "b", False, TIMINGS, NOW)
    assert broker == "b"
    assert recheck == pytest.approx(back_at + TIMINGS.holddown_s)
    assert "hold-down" in reason


def test_failback_after_holddown() -> None:
    """Once the preferred broker has been ready for the hold-down, commands go back to it."""
    back_at = NOW - TIMINGS.holddown_s
    links = [link("a", 1, since=back_at, failure_times=[back_at - 1]), link("b", 2)]
    broker, reason, recheck = decide(links, "b", False, TIMINGS, NOW)
    assert broker == "a"
    assert "fail-back" in reason
    assert recheck is None


def test_failback_never_while_busy() -> None:
    """A due fail-back waits while a Detect is in flight, and happens once it is not."""
    back_at = NOW - 1000.0
    links = [link("a", 1, since=back_at, failure_times=[back_at - 1]), link("b", 2)]
    broker, reason, _ = decide(links, "b", True, TIMINGS, NOW)
    assert broker == "b"
    assert "waits for the round in flight" in reason
    assert decide(links, "b", False, TIMINGS, NOW)[0] == "a"


def test_failback_immediate_for_broker_that_never_failed() -> None:
    """A preferred broker that only now finished connecting (never failed) is used at once."""
    links = [link("a", 1, since=NOW), link("b", 2, since=NOW - 5)]
    broker, _, recheck = decide(links, "b", False, TIMINGS, NOW)
    assert (broker, recheck) == ("a", None)


def test_failback_to_second_best_while_best_is_held_down() -> None:
    """With the best broker held down, a better-than-current broker past hold-down is used."""
    links = [
        link("a", 1, since=NOW - 5, failure_times=[NOW - 6]),
        link("b", 2, since=NOW - 100),
        link("c", 3),
    ]
    assert decide(links, "c", False, TIMINGS, NOW)[0] == "b"


# --- damping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recent_failures", "expected"),
    [(1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 300.0), (12, 300.0)],
)
def test_holddown_doubles_per_recent_failure_up_to_cap(
    recent_failures: int, expected: float
) -> None:
    """Each recent failure doubles a flapping broker's hold-down, capped at holddown_max_s."""
    times = [NOW - i for i in range(recent_failures)]
    assert effective_holddown(link("a", 1, failure_times=times), TIMINGS, NOW) == expected


def test_holddown_zero_for_a_broker_that_never_failed() -> None:
    """A broker with no failure needs no hold-down."""
    assert effective_holddown(link("a", 1), TIMINGS, NOW) == 0.0


def test_old_failures_do_not_damp() -> None:
    """Failures long outside the damping window no longer lengthen the hold-down."""
    old = [NOW - 100_000 - i for i in range(6)]
    assert effective_holddown(link("a", 1, failure_times=old), TIMINGS, NOW) == TIMINGS.holddown_s
    assert (
        effective_holddown(link("a", 1, failure_times=[*old, NOW - 1]), TIMINGS, NOW)
        == TIMINGS.holddown_s
    )


def test_flapping_broker_waits_the_damped_holddown() -> None:
    """decide() applies the damped hold-down: 3 recent failures keep fail-back away 120 s."""
    back_at = NOW - 100.0
    flapping = link("a", 1, since=back_at, failure_times=[back_at - 1, back_at - 20, back_at - 40])
    broker, _, recheck = decide([flapping, link("b", 2)], "b", False, TIMINGS, NOW)
    assert broker == "b"
    assert recheck == pytest.approx(back_at + 120.0)
    assert decide([flapping, link("b", 2)], "b", False, TIMINGS, back_at + 120.0)[0] == "a"


# --- LocalElector ---------------------------------------------------------------------------


def _elector(clock: FakeClock) -> tuple[LocalElector, list[Decision]]:
    elector = LocalElector(TIMINGS, clock=clock)
    seen: list[Decision] = []
    elector.add_listener(seen.append)
    return elector, seen


def test_local_elector_starts_with_no_broker() -> None:
    """Before any link report the elector names no broker."""
    elector, seen = _elector(FakeClock())
    assert elector.current().broker_id is None
    assert seen == []


def test_local_elector_notifies_once_per_change() -> None:
    """Listeners hear each change of active broker exactly once, and nothing else."""
    clock = FakeClock()
    elector, seen = _elector(clock)
    a_ready = link("a", 1, since=NOW)
    b_ready = link("b", 2, since=NOW)

    elector.update([a_ready, b_ready], busy=False)
    elector.update([a_ready, b_ready], busy=False)
    elector.update([a_ready, b_ready], busy=True)
    assert [d.broker_id for d in seen] == ["a"]

    clock.now += 1
    a_down = link("a", 1, LinkState.DOWN, since=clock.now, failure_times=[clock.now])
    elector.update([a_down, b_ready], busy=True)
    elector.update([a_down, b_ready], busy=False)
    assert [d.broker_id for d in seen] == ["a", "b"]
    assert elector.current().broker_id == "b"
    assert seen[-1].decided_at == clock.now

    elector.update([link("a", 1, LinkState.DOWN), link("b", 2, LinkState.DOWN)], busy=False)
    assert [d.broker_id for d in seen] == ["a", "b", None]


def test_local_elector_reason_updates_without_notifying() -> None:
    """A new reason for the same broker updates current() but does not notify listeners."""
    clock = FakeClock()
    elector, seen = _elector(clock)
    elector.update([link("b", 2)], busy=False)
    back = link("a", 1, since=NOW - 1, failure_times=[NOW - 2])
    elector.update([back, link("b", 2)], busy=False)
    assert len(seen) == 1
    assert elector.current().broker_id == "b"
    assert "hold-down" in elector.current().reason


def test_local_elector_failback_after_holddown_uses_fake_clock() -> None:
    """Fail-back happens on the first update after the hold-down, not before."""
    clock = FakeClock()
    elector, seen = _elector(clock)
    elector.update([link("b", 2)], busy=False)
    back = link("a", 1, since=NOW, failure_times=[NOW - 1])
    elector.update([back, link("b", 2)], busy=False)
    clock.now = NOW + TIMINGS.holddown_s - 0.5
    elector.update([back, link("b", 2)], busy=False)
    assert elector.current().broker_id == "b"
    clock.now = NOW + TIMINGS.holddown_s
    elector.update([back, link("b", 2)], busy=True)
    assert elector.current().broker_id == "b"
    elector.update([back, link("b", 2)], busy=False)
    assert [d.broker_id for d in seen] == ["b", "a"]


@contextlib.asynccontextmanager
async def running_elector() -> AsyncIterator[
    tuple[FakeClock, LocalElector, list[Decision], asyncio.Event]
]:
    """A LocalElector with a fake clock, its run() loop going, and its decisions recorded."""
    clock = FakeClock()
    elector = LocalElector(TIMINGS, clock=clock)
    changed = asyncio.Event()
    seen: list[Decision] = []

    def listener(decision: Decision) -> None:
        seen.append(decision)
        changed.set()

    elector.add_listener(listener)
    task = asyncio.create_task(elector.run(), name="elector")
    try:
        yield clock, elector, seen, changed
    finally:
        task.cancel()


async def test_local_elector_run_fails_back_when_holddown_expires() -> None:
    """run() re-evaluates by itself when the preferred broker's hold-down expires."""
    async with running_elector() as (clock, elector, seen, changed):
        elector.update([link("b", 2)], busy=False)
        back = link("a", 1, since=NOW, failure_times=[NOW - 1])
        elector.update([back, link("b", 2)], busy=False)
        changed.clear()
        clock.now = NOW + TIMINGS.holddown_s  # the hold-down is over by the fake clock
        async with asyncio.timeout(1.0):
            await changed.wait()
        assert [d.broker_id for d in seen] == ["b", "a"]


async def test_local_elector_run_reaches_best_broker_after_intermediate_failback() -> None:
    """After failing back to a second-best broker, the best one is used when its hold-down ends."""
    async with running_elector() as (clock, elector, seen, changed):
        elector.update([link("c", 3)], busy=False)
        held = link("a", 1, since=NOW, failure_times=[NOW - 1])
        fresh = link("b", 2, since=NOW)  # never failed: no hold-down
        elector.update([held, fresh, link("c", 3)], busy=False)
        assert [d.broker_id for d in seen] == ["c", "b"]
        changed.clear()
        clock.now = NOW + TIMINGS.holddown_s
        async with asyncio.timeout(0.2):
            await changed.wait()
        assert [d.broker_id for d in seen] == ["c", "b", "a"]
