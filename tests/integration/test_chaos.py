"""The chaos soak (bench/chaos.py): a seeded run end to end, and its invariant checker."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from gateway.devtools.sim import derive_result
from gateway.protocol import RouletteNumber

BENCH = Path(__file__).resolve().parents[2] / "bench"
SEED = 11
SOAK_S = 60


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_chaos_soak_injects_every_fault_and_breaks_no_invariant() -> None:
    """A 60 s seeded soak injects every fault kind, answers rounds and exits 0 (no violation)."""
    cmd = [sys.executable, str(BENCH / "chaos.py"), "--seconds", str(SOAK_S), "--seed", str(SEED)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, check=False)
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    kinds = re.search(r"fault kinds injected: (\d+) of (\d+)", proc.stdout)
    rounds = re.search(r"rounds: (\d+) \(ok (\d+)", proc.stdout)
    assert kinds is not None and rounds is not None, output
    assert kinds[1] == kinds[2], output
    total, ok = int(rounds[1]), int(rounds[2])
    assert ok >= 100 and ok >= total // 2, output
    assert proc.returncode == 0, output


# --- the checker on made-up timelines (no I/O) ---------------------------------------


@pytest.fixture(scope="module")
def cc() -> Iterator[ModuleType]:
    """bench/chaos_check.py (bench/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("chaos_check")
    finally:
        sys.path.remove(str(BENCH))


def roulette_round(cc: ModuleType, rid: str, start: float, ok: bool, status: str = "") -> Any:
    """A round of ARO-001; an OK one carries the simulated IDP's result for the round id."""
    result = RouletteNumber(derive_result("roulette", rid)) if ok else None  # type: ignore[arg-type]
    return cc.RoundRecord("ARO-001", "roulette", rid, start, start + 0.3, ok, result, status)


def final(rid: str, res: object) -> SimpleNamespace:
    return SimpleNamespace(table_code="ARO-001", round_id=rid, res=res, err=0, final=True)


BROKERS = {"ARO-001": ["b1", "b2"]}


def test_checker_flags_a_result_the_idp_did_not_send(cc: ModuleType) -> None:
    """An OK result that differs from every final frame of its round is a violation."""
    tl = cc.Timeline()
    tl.rounds += [roulette_round(cc, "r1", 1.0, True), roulette_round(cc, "r2", 2.0, True)]
    sent = [final("r1", derive_result("roulette", "r1")), final("r2", 99)]
    verdict = cc.check(tl, sent, BROKERS)
    assert [(v.invariant, "r2" in v.what) for v in verdict.violations] == [(1, True)]
    assert verdict.summary["wrong"] == 1


def test_checker_excuses_exactly_rounds_without_a_healthy_broker(cc: ModuleType) -> None:
    """A failed round is lost while any broker of its sidecar stayed healthy, else excused."""
    tl = cc.Timeline()
    tl.broker_down["b1"].append(cc.Interval(10.0, 12.0, "broker killed"))
    tl.broker_down["b2"].append(cc.Interval(20.0, 22.0, "broker stopped"))
    tl.broker_down["b1"].append(cc.Interval(19.0, 20.5, "QoS 1 stalled"))
    tl.broker_down["b2"].append(cc.Interval(50.0, None, "broker killed"))  # never healed
    tl.broker_down["b1"].append(cc.Interval(49.0, 51.0, "broker stopped"))
    tl.sidecar_down["ARO-001"].append(cc.Interval(30.0, 31.0, "killed by the schedule"))
    fail: dict[str, Any] = {"ok": False, "status": "DEADLINE_EXCEEDED"}
    tl.rounds += [
        roulette_round(cc, "one-down", 11.0, **fail),  # b2 healthy throughout: lost
        roulette_round(cc, "both-down", 20.1, **fail),  # b1 and b2 both unhealthy: excused
        roulette_round(cc, "lead", 21.4, **fail),  # b1 healed 0.9 s before: still excused
        roulette_round(cc, "sidecar", 31.5, **fail),  # within 1 s after the restart: excused
        roulette_round(cc, "later", 40.0, **fail),  # nothing going on: lost
        roulette_round(cc, "open", 50.5, **fail),  # b2 still down, b1 stopped: excused
        roulette_round(cc, "b1-back", 52.5, **fail),  # b1 back for 1.5 s: lost
    ]
    verdict = cc.check(tl, [], BROKERS)
    lost = [v.what.split()[3] for v in verdict.violations if v.invariant == 2]
    assert lost == ["one-down", "later", "b1-back"]
    assert sum(verdict.summary["excused"].values()) == 4


def test_checker_flags_deaths_epochs_disagreement_and_rss(cc: ModuleType) -> None:
    """An unplanned exit, a falling epoch, a slow agreement and RSS growth each fail the run."""
    tl = cc.Timeline()
    tl.deaths.append(cc.Death("ARO-001", 42, 1, 5.0, "RecursionError"))
    for at, epoch in ((1.0, 3), (2.0, 4), (3.0, 2)):
        sample = cc.HealthSample(at, "ARO-001", "ARO-001-x", epoch, "b1", "SERVING", 1, "", "")
        tl.samples.append(sample)
    tl.record_epochs += [(1.0, "g", 5, "ARO-001-x"), (2.0, "g", 4, "ARO-001-y")]
    tl.faults.append(cc.FaultRecord(1, "broker_kill", "-", "b1", 0.0, 1.0))
    tl.agreements += [cc.Agreement(1, 1.0, 1.5, "late"), cc.Agreement(1, 1.0, 0.2, "ok")]
    tl.warm_rss_kb["ARO-001"] = 50_000
    tl.rss_kb["ARO-001"] += [(1.0, 42, 60_000), (2.0, 42, 50_000 + 41 * 1024)]
    verdict = cc.check(tl, [], BROKERS)
    assert sorted(v.invariant for v in verdict.violations) == [3, 4, 4, 5, 6]
