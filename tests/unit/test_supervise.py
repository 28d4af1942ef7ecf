"""The supervision boundary and the backoff it uses: counted drops, restarted loops."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from gateway.backoff import Backoff
from gateway.drops import Drops, excerpt
from gateway.sidecar.supervise import Supervisor


def test_backoff_doubles_up_to_the_cap_and_jitters_below_it() -> None:
    """Delay n is in [(1 - jitter) * ceiling, ceiling], ceiling = min(max, initial * 2**n)."""
    b = Backoff(0.1, 1.0, jitter=0.5, rng=random.Random(1))
    for n in range(12):
        ceiling = min(1.0, 0.1 * 2**n)
        delay = b.next()
        assert ceiling * 0.5 <= delay <= ceiling
    assert b.attempt == 12


def test_backoff_resets_after_a_success_or_a_long_stable_try() -> None:
    """reset() and a try that lasted stable_s both start the delays over."""
    now = [0.0]
    b = Backoff(0.1, 10.0, jitter=0.0, stable_s=5.0, clock=lambda: now[0])
    assert [b.next() for _ in range(3)] == [0.1, 0.2, 0.4]
    b.reset()
    assert b.next() == 0.1
    b.started()
    now[0] += 6.0
    assert b.next() == 0.1  # the try was up 6 s > stable_s: not a flap
    b.started()
    now[0] += 1.0
    assert b.next() == 0.2


@pytest.mark.parametrize("initial,maximum,jitter", [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.0)])
def test_backoff_refuses_nonsense(initial: float, maximum: float, jitter: float) -> None:
    """Zero or inverted bounds and jitter of 1 (a zero delay) are refused."""
    with pytest.raises(ValueError):
        Backoff(initial, maximum, jitter=jitter)


def test_excerpt_is_short_safe_and_says_the_size() -> None:
    """An excerpt of a hostile input is printable, bounded, and names its full size."""
    text = excerpt(b"[" * 5000)
    assert text.startswith("b'[[[[") and text.endswith("... (5000 bytes)")
    assert len(text) < 120
    assert excerpt("\x00\ud800x") == "'\\x00\\ud800x' (3 chars)"


def test_drops_count_every_input_and_log_the_first_per_kind_and_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every drop is counted; only the first of a kind from a source is logged."""
    drops = Drops()
    with caplog.at_level(logging.WARNING, "gateway.sidecar.supervise"):
        for _ in range(100):
            drops.add("frame", "broker b1 topic t", b"[[[", "not JSON")
        drops.add("frame", "broker b2 topic t", b"{", "not JSON")
        drops.add("record", "group", "", "no epoch")
        drops.add("config", "/etc/x", "", "bad", logged=True)
    assert drops.counts == {"frame": 101, "record": 1, "config": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("dropped frame from broker b1 topic t: not JSON; input b'[[['")


def test_drops_remember_a_bounded_number_of_sources(caplog: pytest.LogCaptureFixture) -> None:
    """Sources chosen by an attacker (view field names) cannot grow memory or the log."""
    drops = Drops()
    with caplog.at_level(logging.WARNING, "gateway.sidecar.supervise"):
        for i in range(10_000):
            drops.add("view", f"view:{i}", "", "bad")
    assert drops.counts["view"] == 10_000
    assert len(caplog.records) <= 257


async def test_a_failing_loop_is_restarted_with_its_failure_shown() -> None:
    """A loop that raises is restarted (after a backoff) and counted; others go on."""
    sup = Supervisor(backoff_initial_s=0.001, backoff_max_s=0.01)
    runs = 0
    steady = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 4:
            raise KeyError("b9")
        steady.set()
        await asyncio.Event().wait()

    async def other() -> None:
        await asyncio.Event().wait()

    tasks = [
        asyncio.create_task(sup.run("flaky", flaky)),
        asyncio.create_task(sup.run("other", other)),
    ]
    async with asyncio.timeout(5):
        await steady.wait()
    health = {h.name: h for h in sup.loops()}
    assert health["flaky"].restarts == 3 and "KeyError" in health["flaky"].last_error
    assert health["other"].restarts == 0
    assert sup.problems() == ("loop flaky restarted 3x, last: KeyError: 'b9'",)
    assert sup.problems(now=health["flaky"].last_failure + 3600) == ()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks)


async def test_a_loop_that_returns_is_restarted_and_cancellation_is_honoured() -> None:
    """Returning is a failure too (loops run until cancelled); cancel ends the supervisor."""
    sup = Supervisor(backoff_initial_s=0.001, backoff_max_s=0.001)
    calls = 0

    async def returns() -> None:
        nonlocal calls
        calls += 1

    task = asyncio.create_task(sup.run("returns", returns))
    async with asyncio.timeout(5):
        while calls < 3:  # noqa: ASYNC110 - counting the supervisor's own restarts
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sup.loops()[0].last_error.startswith("returned")
