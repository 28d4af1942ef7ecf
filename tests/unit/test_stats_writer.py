"""When the statistics writer writes: on a change at once, an idle snapshot seldom (no I/O)."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from gateway.fleet.stats import BrokerStat, SidecarStats
from gateway.fleet.store import Keys
from gateway.sidecar.stats import StatsWriter, _steady


def _snapshot(**kw: Any) -> SidecarStats:
    broker = BrokerStat("b1", True, 1, 0, 3, 0, 0.9, "")
    base = SidecarStats("i1", "ARO-001", 1000.0, "b1", 2, 0, {"detects_ok": 3}, (broker,))
    return dataclasses.replace(base, **kw)


def _writer() -> StatsWriter:
    # due() does no I/O: the client is never used.
    return StatsWriter(cast(Any, None), Keys("p", "g"), _snapshot, interval_s=1.0, ttl_s=15.0)


def test_the_first_snapshot_is_always_due() -> None:
    """A sidecar that has written nothing yet writes at once."""
    assert _writer().due(_snapshot(), now=0.0)


def test_an_idle_snapshot_is_written_again_only_every_third_of_the_ttl() -> None:
    """Only the clock and probe round-trip times moved: not due until ttl / 3 (5 s) passed."""
    w = _writer()
    w._written = (_steady(_snapshot()), 100.0)
    idle = _snapshot(updated_unix=1003.0)
    rtt = dataclasses.replace(idle.brokers[0], probe_rtt_ms=1.7)
    idle = dataclasses.replace(idle, brokers=(rtt,))
    assert not w.due(idle, now=101.0)
    assert not w.due(idle, now=104.9)
    assert w.due(idle, now=105.0)


def test_a_changed_count_or_broker_is_due_at_once() -> None:
    """A finished Detect, a broker going down or a new active broker is written at once."""
    w = _writer()
    w._written = (_steady(_snapshot()), 100.0)
    down = dataclasses.replace(_snapshot().brokers[0], connected=False)
    for changed in (
        _snapshot(counters={"detects_ok": 4}),
        _snapshot(brokers=(down,)),
        _snapshot(active_broker_id="b2", epoch=3),
    ):
        assert w.due(changed, now=100.5), changed
