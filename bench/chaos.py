"""Chaos soak: a studio floor under random faults, checked against six invariants.

``python bench/chaos.py --seconds 60 --seed 7`` (or ``--minutes N``). Three mosquitto
(``set_tcp_nodelay``), each behind an ``MqttFaultProxy`` for the sidecars; one Redis; the
IDP simulator in this process on all brokers and tables (roulette, SicBo, Baccarat); six
``gateway serve`` processes: four tables in broker group studio-a (one of them knows only
b1 and b2, as during a broker rollout) and two in studio-b (b2 preferred). Every table plays
rounds back to back (3 s deadline). Faults drawn from ``random.Random(seed)`` are injected
one at a time, each held for a random time, healed, then left to settle (``chaos_faults``).

Invariants (``chaos_check``): 1. an OK result is exactly a final frame the IDP sent for that
round id; 2. a round fails only if its sidecar was down or every broker of that sidecar was
unhealthy at some point of its window (1 s before it to its end), excused failures are
counted by cause; 3. no sidecar exits unless the schedule killed it; 4. epochs never go
down (per sidecar instance, and the records sidecars wrote to Redis); 5. after each heal
the big group's live sidecars agree on one active broker within 1 s; 6. no sidecar's RSS
grows more than 40 MB over its warm-up RSS. Exit status 1 on any violation, listed with
round ids, faults and times (seconds since the soak started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from benchlib import machine, run_bounded  # bench/ is on sys.path when run as a script
from chaos_check import Timeline, Verdict, check
from chaos_faults import Injector
from chaos_monitor import Monitor
from chaos_payloads import KINDS, check_skip
from chaos_stack import DEADLINE_S, TABLES, Studio, play

from gateway.devtools.sandbox import SandboxError
from gateway.devtools.sim import Behaviour

WARMUP_S = 4.0
FAULT_BUDGET_S = 4.3  # a fault's typical hold + settle: shorter runs shrink the holds


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tl = Timeline(t0=time.monotonic())
    behaviour = idp_behaviour()
    keep = Path(args.log_dir) if args.log_dir else None
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        async with Studio(root, tl, behaviour) as studio, Monitor(studio, tl) as monitor:
            startup_s = time.monotonic() - started
            stop = asyncio.Event()
            tables = [
                asyncio.create_task(play(s, args.seed, stop, tl), name=s.spec.code)
                for s in studio.slots
            ]
            injector = Injector(
                studio,
                tl,
                rng,
                monitor.agreement,
                scale=min(1.0, args.seconds / (len(KINDS) * FAULT_BUDGET_S)),
                skip=args.skip,
            )
            try:
                await asyncio.sleep(WARMUP_S)
                monitor.warm_up_done()
                tl.t0 = chaos_start = time.monotonic()
                await injector.run(chaos_start + args.seconds)
                chaos_s = time.monotonic() - chaos_start
                await asyncio.sleep(2.0)  # the last heal settles under load
            finally:
                stop.set()
                _, late = await asyncio.wait(tables, timeout=DEADLINE_S + 2)
                for task in late:
                    task.cancel()
                await asyncio.gather(*tables, return_exceptions=True)
                await injector.close()
            counters = await final_health(studio)
            sent = getattr(studio.sim, "sent", None)
            brokers_of = {s.spec.code: list(s.spec.brokers) for s in studio.slots}
            verdict = check(tl, sent, brokers_of, studio.sim.commands)
            if sent is None:
                tl.info["IdpSimulator.sent missing: results checked against derive_result"] += 1
            proxies = {b: p.dropped_pubacks for b, p in studio.proxies.items()}
            fleet = dict(monitor.fleet_stats)
    return {
        "verdict": verdict,
        "tl": tl,
        "counters": counters,
        "startup_s": startup_s,
        "chaos_s": chaos_s,
        "errors": injector.errors,
        "dropped_pubacks": proxies,
        "fleet_stats": fleet,
        "machine": machine(),
    }


def idp_behaviour() -> Behaviour:
    """The simulated IDPs deal like real ones: a "nothing yet" frame, Baccarat hands stage
    by stage, then the answer 0.2 s after the detect, twice. Each broker that carried the
    round gets its frames on its own, so a hung broker holds back only its own copies."""
    return Behaviour(delay_s=0.2, repeats=2, not_yet=1, deal=True)


async def final_health(studio: Studio) -> dict[str, str]:
    """Per table: the last Health's counters, and ``dropped_inputs``/``loops`` if it has them."""
    out = {}
    for s in studio.slots:
        if not s.running:
            out[s.spec.code] = "not running"
            continue
        try:
            h = await s.monitor.health(deadline_s=2)
        except grpc.aio.AioRpcError as exc:
            out[s.spec.code] = f"Health failed: {exc.code().name}"
            continue
        c = h.counters
        text = (
            f"epoch {h.epoch} active {h.active_broker_id or '-'} gen {h.config_generation}; "
            f"detects ok {c.detects_ok} timed out {c.detects_timed_out} failed "
            f"{c.detects_failed}; frames invalid {c.invalid_frames} stale {c.stale_frames}"
        )
        dropped = getattr(h, "dropped_inputs", None)
        text += "; dropped_inputs " + (str(dict(dropped)) if dropped is not None else "(no field)")
        loops = getattr(h, "loops", None)
        if loops is not None:
            text += f"; loops {len(loops)}"
        out[s.spec.code] = text
    return out


def fmt(x: float | None, unit: str = "s") -> str:
    return "none" if x is None else f"{x:.3f} {unit}"


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    v: Verdict = r["verdict"]
    tl: Timeline = r["tl"]
    s, m = v.summary, r["machine"]
    print(f"machine: nproc={m['nproc']}, Python {m['python']}, {m['cpu']}, load {m['load_1m']:.2f}")
    groups = ", ".join(f"{t.code} {t.game} {t.group} [{','.join(t.brokers)}]" for t in TABLES)
    print(
        f"chaos soak: seed {args.seed}, {r['chaos_s']:.1f} s of faults (asked {args.seconds:g} s)"
        f" after {r['startup_s']:.1f} s start-up and {WARMUP_S:g} s warm-up; tables: {groups}"
    )
    kinds = s["faults"]
    wanted = [k for k in KINDS if k not in args.skip]
    missing = [k for k in wanted if not kinds.get(k)]
    if args.skip:
        print(f"skipped on request: {', '.join(sorted(args.skip))}")
    print(
        f"\nfault kinds injected: {len(wanted) - len(missing)} of {len(wanted)} "
        f"(missing: {', '.join(missing) or 'none'})"
    )
    for k in KINDS:
        variants = sorted(
            x.split("/", 1)[1]
            for x in s["variants"]
            for _ in range(s["variants"][x])
            if x.startswith(k + "/")
        )
        listed = "" if variants == ["-"] * len(variants) else f"  ({', '.join(variants)})"
        print(f"  {k:<16}{kinds.get(k, 0):>3}{listed}")
    print(
        f"\nrounds: {s['rounds']} (ok {s['ok']}, excused {sum(s['excused'].values())}, "
        f"lost {s['lost']}, wrong {s['wrong']})"
    )
    for cause, n in sorted(s["excused"].items()):
        print(f"  excused: {cause}: {n}")
    print(f"sidecar deaths (unplanned): {s['deaths']}")
    print(
        f"max disagreement after heal: {fmt(s['max_disagreement_s'])} over {s['heals_measured']}"
        f" heals ({s['never_agreed']} never agreed within the watch; bound 1 s)"
    )
    print(
        f"max RSS: {s['max_rss_mb']:.1f} MB (highest warm-up {s['warm_rss_mb']:.1f} MB, "
        "bound warm-up + 40 MB per table)"
    )
    print(f"max epoch: {s['max_epoch']}")
    slow = ", ".join(f"{k} {x:.2f}" for k, x in sorted(s["slowest_ok_s"].items()))
    print(
        f"slowest OK round during each kind (s): {slow or '-'}; "
        f"p50 without a fault {fmt(s['quiet_p50_s'])}"
    )
    print(
        f"PUBACKs dropped by the proxies: {r['dropped_pubacks']}; "
        f"GetStats(fleet): {r['fleet_stats']}"
    )
    for k, n in sorted(tl.info.items()):
        print(f"note: {k}: {n}")
    for e in r["errors"]:
        print(f"note: injection error {e}")
    print("\nfaults:")
    for f in tl.faults:
        print(
            f"  #{f.id:<3}{tl.rel(f.start):>8} .. {tl.rel(f.healed):>8}  {f.kind}/{f.variant} "
            f"on {f.target}" + (f": {f.note}" if f.note else "")
        )
    print("\nsidecars at the end:")
    for code, text in r["counters"].items():
        print(f"  {code}: {text}")
    if not v.violations:
        print("\nviolations: none")
        return
    by_inv: dict[int, int] = {}
    for x in v.violations:
        by_inv[x.invariant] = by_inv.get(x.invariant, 0) + 1
    print(
        f"\nviolations: {len(v.violations)} "
        f"({', '.join(f'invariant {k}: {n}' for k, n in sorted(by_inv.items()))})"
    )
    shown: dict[int, int] = {}
    for x in v.violations:
        shown[x.invariant] = shown.get(x.invariant, 0) + 1
        if shown[x.invariant] > args.show:
            continue
        print(f"  [{x.invariant}] {tl.rel(x.at)}: {x.what}")
    for inv, n in sorted(by_inv.items()):
        if n > args.show:
            print(f"  [{inv}] ... and {n - args.show} more")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=None, help="fault phase length (default 60)")
    p.add_argument("--minutes", type=float, default=None, help="fault phase length in minutes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--log-dir", help="keep the configs and sidecar logs here")
    p.add_argument("--show", type=int, default=12, help="violations listed per invariant")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="KIND[/VARIANT]",
        help="leave a fault kind or variant out (e.g. one that takes every sidecar down)",
    )
    args = p.parse_args()
    if args.seconds is not None and args.minutes is not None:
        p.error("give --seconds or --minutes, not both")
    args.seconds = args.minutes * 60 if args.minutes is not None else (args.seconds or 60.0)
    if args.seconds <= 0:
        p.error("the fault phase must be longer than 0 s")
    try:
        args.skip = check_skip(args.skip)
    except ValueError as exc:
        p.error(str(exc))
    logging.basicConfig(level=logging.CRITICAL)  # the simulator's and paho's noise: expected
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    limit = args.seconds + len(KINDS) * 15 + 120
    result = run_bounded(
        lambda: soak(args), limit, failures=(RuntimeError, SandboxError, TimeoutError)
    )
    if isinstance(result, int):
        return result
    report(result, args)
    return 1 if result["verdict"].violations else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
