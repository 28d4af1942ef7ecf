"""What the chaos soak records, and the invariants it checks afterwards (no I/O here).

The soak (``chaos.py``) appends to one ``Timeline`` while it runs: every round a table
played, every fault with its hold and heal, when each broker was unhealthy and each
sidecar down, Health samples, record epochs read from Redis, RSS samples, the group's
agreement after each heal. ``check`` turns that into violations of the six invariants
(numbered as in docs/performance.md, "Chaos soak") and the counts of the summary.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.devtools.sim import derive_result
from gateway.protocol import BaccaratHand, Result, RouletteNumber, SicBoDice

LEAD_S = 1.0  # a round's window starts this long before the round (links settling)
AGREE_S = 1.0  # the big group agrees on one active broker within this after a heal
RSS_GROWTH_KB = 40 * 1024  # a sidecar's RSS may grow this much over its warm-up RSS


@dataclass
class RoundRecord:
    """One Detect as the game saw it."""

    table: str
    game: str
    round_id: str
    start: float
    end: float
    ok: bool
    result: Result | None = None
    status: str = ""  # gRPC status name when not ok
    details: str = ""
    broker: str = ""


@dataclass
class Interval:
    """A time a broker was unhealthy or a sidecar was down; ``end`` None: still so."""

    start: float
    end: float | None
    cause: str
    fault: int | None = None  # the FaultRecord.id that caused it, if any

    def overlaps(self, start: float, end: float) -> bool:
        return self.start < end and (self.end is None or self.end > start)


@dataclass
class FaultRecord:
    """One injected fault: what, where, when it started, when it was healed."""

    id: int
    kind: str
    variant: str
    target: str
    start: float
    healed: float | None = None
    note: str = ""
    failed: bool = False  # the injection itself failed (not counted as injected)


@dataclass
class Death:
    """A sidecar process that ended without the schedule killing it."""

    table: str
    pid: int
    returncode: int | None
    at: float
    log_tail: str


@dataclass
class HealthSample:
    """One Health answer of one sidecar."""

    at: float
    table: str
    instance: str
    epoch: int
    active: str
    status: str
    generation: int
    config_error: str
    links: str  # e.g. "b1:ready b2:down"


@dataclass
class Agreement:
    """How long the big group's live sidecars disagreed on the active broker after a heal."""

    fault: int
    healed: float
    disagreement_s: float | None  # None: not within the window watched
    detail: str


@dataclass
class Timeline:
    """Everything the soak saw, in monotonic seconds."""

    t0: float = 0.0
    rounds: list[RoundRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    broker_down: dict[str, list[Interval]] = field(default_factory=lambda: defaultdict(list))
    sidecar_down: dict[str, list[Interval]] = field(default_factory=lambda: defaultdict(list))
    redis_down: list[Interval] = field(default_factory=list)
    deaths: list[Death] = field(default_factory=list)
    samples: list[HealthSample] = field(default_factory=list)
    record_epochs: list[tuple[float, str, int, str]] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    rss_kb: dict[str, list[tuple[float, int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    warm_rss_kb: dict[str, int] = field(default_factory=dict)
    info: Counter[str] = field(default_factory=Counter)

    def rel(self, t: float | None) -> str:
        return "-" if t is None else f"{t - self.t0:.2f}s"

    def faults_during(self, start: float, end: float) -> list[FaultRecord]:
        return [
            f
            for f in self.faults
            if f.start < end and (f.healed is None or f.healed > start - LEAD_S)
        ]


def typed_result(game: str, res: object) -> Result | None:
    """A ``res`` as the client types it (None if it is not a valid shape for the game)."""
    try:
        if game == "sicbo" and isinstance(res, list) and len(res) == 3:
            return SicBoDice((int(res[0]), int(res[1]), int(res[2])))
        if game == "roulette" and isinstance(res, int | str) and not isinstance(res, bool):
            return RouletteNumber(int(res))
        if game == "baccarat" and isinstance(res, list) and len(res) == 6:
            c = [str(x) for x in res]
            return BaccaratHand((c[0], c[1], c[2], c[3], c[4], c[5]))
    except (TypeError, ValueError):
        return None
    return None


@dataclass
class Violation:
    invariant: int
    at: float | None
    what: str


@dataclass
class Verdict:
    violations: list[Violation]
    summary: dict[str, Any]


def _finals(sent: Sequence[Any]) -> dict[tuple[str, str], list[object]]:
    finals: dict[tuple[str, str], list[object]] = defaultdict(list)
    for f in sent:
        if f.final and f.round_id is not None and f.err in (0, None):
            finals[(f.table_code, f.round_id)].append(f.res)
    return finals


def _describe_fault(tl: Timeline, f: FaultRecord) -> str:
    return f"#{f.id} {f.kind}/{f.variant} on {f.target} ({tl.rel(f.start)}..{tl.rel(f.healed)})"


def _links_at(tl: Timeline, table: str, t: float) -> str:
    """The sidecar's own view of its links in the last Health sample before ``t``."""
    last = None
    for s in tl.samples:
        if s.table == table and s.at <= t:
            last = s
    return "no Health sample" if last is None else f"{last.links}; active {last.active or '-'}"


def check_results(tl: Timeline, sent: Sequence[Any] | None) -> list[Violation]:
    """Invariant 1: an OK result is exactly a final frame the IDP sent for that round."""
    out: list[Violation] = []
    finals = _finals(sent) if sent is not None else {}
    for r in tl.rounds:
        if not r.ok:
            continue
        if sent is None:
            allowed = [derive_result(r.game, r.round_id)]
        else:
            allowed = finals.get((r.table, r.round_id), [])
            if not allowed and r.result == typed_result(r.game, derive_result(r.game, r.round_id)):
                # The IDP's answer reached the broker, which died before its PUBACK: the
                # simulator did not log the frame, but only it sends this value for this id.
                tl.info["ok with the answer frame missing from the simulator's log"] += 1
                continue
        typed = [t for res in allowed if (t := typed_result(r.game, res)) is not None]
        if r.result is None or r.result not in typed:
            sent_text = ", ".join(repr(a) for a in allowed) or "no final frame"
            out.append(
                Violation(
                    1,
                    r.end,
                    f"wrong result for {r.table} round {r.round_id}: "
                    f"got {r.result}, the IDP sent {sent_text}",
                )
            )
    return out


def excuse(tl: Timeline, r: RoundRecord, brokers: Iterable[str]) -> str | None:
    """Why a failed round is excused, or None if it had to succeed (invariant 2)."""
    start, end = r.start - LEAD_S, r.end
    for iv in tl.sidecar_down.get(r.table, []):
        if iv.overlaps(start, end):
            return f"sidecar {iv.cause}"
    unhealthy = []
    for b in brokers:
        ivs = [iv for iv in tl.broker_down.get(b, []) if iv.overlaps(start, end)]
        if not ivs:
            return None  # this broker was healthy for the whole window
        unhealthy.append(ivs[0].cause)
    return "no healthy broker (" + ", ".join(sorted(set(unhealthy))) + ")"


def _idp_saw(tl: Timeline, r: RoundRecord, commands: Sequence[Any]) -> str:
    """The commands the table's IDP received during a round (broker, time)."""
    seen = []
    for c in commands:
        if c.table_code == r.table and r.start <= c.at <= r.end + 0.5:
            what = c.command if c.round_id is None else f"{c.command} {c.round_id}"
            seen.append(f"{what} via {c.broker} @{tl.rel(c.at)}")
    return "; ".join(seen[:8]) or "nothing"


def check_rounds(
    tl: Timeline, brokers_of: dict[str, list[str]], commands: Sequence[Any] = ()
) -> tuple[list[Violation], Counter[str]]:
    """Invariant 2: a failed round is lost unless its sidecar or every broker of it was down."""
    out: list[Violation] = []
    excused: Counter[str] = Counter()
    for r in tl.rounds:
        if r.ok:
            continue
        why = excuse(tl, r, brokers_of[r.table])
        if why is not None:
            excused[why] += 1
            continue
        during = tl.faults_during(r.start, r.end)
        faults = "; ".join(_describe_fault(tl, f) for f in during) or "no fault"
        out.append(
            Violation(
                2,
                r.start,
                (
                    f"lost round {r.table} {r.round_id} ({tl.rel(r.start)}..{tl.rel(r.end)}): "
                    f"{r.status} {r.details[:160]!r}; during: {faults}; "
                    f"its links before: {_links_at(tl, r.table, r.start)}; "
                    f"its IDP got: {_idp_saw(tl, r, commands)}"
                ),
            )
        )
    return out, excused


def check_epochs(tl: Timeline) -> list[Violation]:
    """Invariant 4: no sidecar's epoch and no sidecar-written record's epoch goes down."""
    out: list[Violation] = []
    last: dict[str, tuple[int, float]] = {}
    for s in tl.samples:
        prev = last.get(s.instance)
        if prev is not None and s.epoch < prev[0]:
            out.append(
                Violation(
                    4,
                    s.at,
                    f"{s.instance} epoch {prev[0]} -> {s.epoch} "
                    f"({tl.rel(prev[1])} -> {tl.rel(s.at)})",
                )
            )
        if prev is None or s.epoch >= prev[0]:
            last[s.instance] = (s.epoch, s.at)
    top: dict[str, tuple[int, float, str]] = {}
    for at, group, epoch, by in tl.record_epochs:
        best = top.get(group)
        if best is not None and epoch < best[0]:
            out.append(
                Violation(
                    4,
                    at,
                    f"record of {group}: epoch {best[0]} (by {best[2]}, "
                    f"{tl.rel(best[1])}) -> {epoch} (by {by}, {tl.rel(at)})",
                )
            )
        if best is None or epoch > best[0]:
            top[group] = (epoch, at, by)
    return out


def check(
    tl: Timeline,
    sent: Sequence[Any] | None,
    brokers_of: dict[str, list[str]],
    commands: Sequence[Any] = (),
) -> Verdict:
    """Every invariant over the whole run, and the numbers of the summary.

    ``sent`` is the simulator's log of published frames (``IdpSimulator.sent``; None: check
    against ``derive_result``), ``commands`` its log of received commands (evidence only).
    """
    violations = check_results(tl, sent)
    lost, excused = check_rounds(tl, brokers_of, commands)
    violations += lost
    for d in tl.deaths:
        violations.append(
            Violation(
                3,
                d.at,
                f"sidecar {d.table} pid {d.pid} exited with "
                f"{d.returncode} unplanned; its log ends:\n{d.log_tail}",
            )
        )
    violations += check_epochs(tl)
    for a in tl.agreements:
        if a.disagreement_s is None or a.disagreement_s > AGREE_S:
            f = next(x for x in tl.faults if x.id == a.fault)
            took = (
                "never, within the watch"
                if a.disagreement_s is None
                else f"{a.disagreement_s:.2f}s"
            )
            violations.append(
                Violation(
                    5,
                    a.healed,
                    f"after {_describe_fault(tl, f)} the group agreed {took}: {a.detail}",
                )
            )
    max_rss = 0
    for table, samples in tl.rss_kb.items():
        if not samples:
            continue
        peak = max(kb for _, _, kb in samples)
        max_rss = max(max_rss, peak)
        warm = tl.warm_rss_kb.get(table)
        if warm is not None and peak > warm + RSS_GROWTH_KB:
            at = next(t for t, _, kb in samples if kb == peak)
            violations.append(
                Violation(
                    6,
                    at,
                    f"{table} RSS {peak / 1024:.1f} MB > warm-up "
                    f"{warm / 1024:.1f} MB + {RSS_GROWTH_KB // 1024} MB",
                )
            )
    slowest: dict[str, float] = {}
    quiet: list[float] = []
    for r in tl.rounds:
        if not r.ok:
            continue
        kinds = {f.kind for f in tl.faults_during(r.start, r.end)}
        for k in kinds:
            slowest[k] = max(slowest.get(k, 0.0), r.end - r.start)
        if not kinds:
            quiet.append(r.end - r.start)
    quiet.sort()
    measured = [a.disagreement_s for a in tl.agreements if a.disagreement_s is not None]
    epochs = [s.epoch for s in tl.samples] + [e for _, _, e, _ in tl.record_epochs]
    summary = {
        "faults": Counter(f.kind for f in tl.faults if not f.failed),
        "variants": Counter(f"{f.kind}/{f.variant}" for f in tl.faults if not f.failed),
        "failed_injections": sum(f.failed for f in tl.faults),
        "rounds": len(tl.rounds),
        "ok": sum(r.ok for r in tl.rounds),
        "excused": excused,
        "lost": len(lost),
        "wrong": sum(v.invariant == 1 for v in violations),
        "deaths": len(tl.deaths),
        "heals_measured": len(tl.agreements),
        "never_agreed": sum(a.disagreement_s is None for a in tl.agreements),
        "max_disagreement_s": max(measured) if measured else None,
        "max_rss_mb": max_rss / 1024,
        "warm_rss_mb": max(tl.warm_rss_kb.values(), default=0) / 1024,
        "max_epoch": max(epochs, default=0),
        "slowest_ok_s": slowest,
        "quiet_p50_s": quiet[len(quiet) // 2] if quiet else None,
    }
    violations.sort(key=lambda v: (v.invariant, v.at or 0.0))
    return Verdict(violations, summary)
