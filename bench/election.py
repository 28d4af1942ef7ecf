"""The shared election's two costs: how fast a fleet follows a new record, and idle Redis load.

A broker group's sidecars agree on the active broker through one Redis record
(``gateway.sidecar.shared_election``). Two numbers decide whether that scales to a studio floor:

* switch latency: the time from a new epoch written (the same Lua CAS the electors use, t0 just
  before the call) until every one of ``--clients`` electors has adopted it (its listener fired),
  max over clients, ``--switches`` times alternating b1/b2. Target p99 <= 100 ms.
* idle load: Redis commands per second per sidecar while nothing changes (the election's
  report/re-read every ``refresh_s`` plus the statistics writer every ``stats_interval_s``),
  from ``INFO stats`` total_commands_processed over ``--idle-seconds`` minus this bench's own
  INFO calls; ``INFO commandstats`` deltas show which commands dominate. Redis counts the
  commands a Lua script runs as well as the EVALSHA itself. Target <= 5.

One private ``redis-server``; every sidecar is a ``SharedElector`` with its own
``gateway.fleet.store.connect`` client and a ``StatsWriter``, fed a synthetic view (b1 and b2
READY), default Redis timers, all in this process: the latency includes N clients' Python work done
serially on one event loop (a real fleet has a process each). Both links claim one earlier
failure: with ``failures=0`` the effective hold-down is 0 whatever ``holddown_s`` says, and the
electors would fail back to b1 within a refresh of every switch to b2. Exit 0 if all targets met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import random
import statistics
import sys
import time
from typing import Any

import redis.asyncio as redis
from benchlib import machine, run_bounded  # bench/ is on sys.path when run as a script
from redis.exceptions import RedisError

from gateway.config import GatewayConfig, parse_config
from gateway.devtools.sandbox import RedisProcess, SandboxError
from gateway.fleet.records import Record, compare_and_set, record_sha
from gateway.fleet.stats import SidecarStats
from gateway.fleet.store import RECORD_FIELD, connect
from gateway.sidecar.election import Decision, LinkState, LinkStatus
from gateway.sidecar.rounds import Counters
from gateway.sidecar.shared_election import SharedElector
from gateway.sidecar.stats import StatsWriter, take_snapshot

TARGETS = {"p99_ms": 100.0, "commands_per_s": 5.0}
OP_S = 5.0  # bound on convergence and on every single switch
FAILURES = 1  # see the docstring: makes holddown_s apply, so nobody fails back during the bench
LUA_ONLY = {"set", "sadd", "smembers", "get", "srem"}  # issued here only by REPORT/VIEWS_SCRIPT


def make_config(url: str) -> GatewayConfig:
    doc = {
        "version": 1,
        "broker_group": "bench",
        "table": {"game": "roulette", "code": "ARO-101"},
        "brokers": [
            {"id": "b1", "host": "10.0.0.1", "port": 1883, "priority": 1},
            {"id": "b2", "host": "10.0.0.2", "port": 1883, "priority": 2},
        ],
        "failover": {"holddown_s": 3600, "holddown_max_s": 3600},
        "redis": {"url": url},
    }
    return parse_config(doc, source="bench/election.py", env={})


def links(config: GatewayConfig) -> list[LinkStatus]:
    """Both brokers READY, as a sidecar's pool would report them."""
    now, wall = time.monotonic(), time.time()
    same: dict[str, Any] = {"state": LinkState.READY, "since": now, "since_wall": wall}
    same |= {"failures": FAILURES, "failure_times": (), "probe_rtt_ms": 0.5, "last_error": ""}
    return [LinkStatus(b.id, b.host, b.port, b.priority, **same) for b in config.brokers]


class Fleet:
    """N sidecars' election and statistics, in this process; records when each adopts an epoch."""

    def __init__(self, config: GatewayConfig, n: int) -> None:
        self.clients = [connect(config.redis) for _ in range(n)]
        self.electors: list[SharedElector] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.target, self.seen, self.done = 0, dict[int, float](), asyncio.Event()
        view, r = links(config), config.redis
        for i, client in enumerate(self.clients):
            e = SharedElector(config, f"bench-{i:03d}", client)
            e.add_listener(functools.partial(self._adopted, i))
            e.update(view, busy=False)
            snapshot = functools.partial(self._snapshot, config, f"bench-{i:03d}", e, view)
            timers = {"interval_s": r.stats_interval_s, "ttl_s": r.stats_ttl_s}
            writer = StatsWriter(client, e.keys, snapshot, on_error=e.on_store_error, **timers)
            self.electors.append(e)
            self.tasks += [asyncio.create_task(e.run()), asyncio.create_task(writer.run())]

    @staticmethod
    def _snapshot(
        c: GatewayConfig, iid: str, e: SharedElector, v: list[LinkStatus]
    ) -> SidecarStats:
        return take_snapshot(iid, c.table.code, c.generation, v, e.current(), Counters())

    def _adopted(self, i: int, decision: Decision) -> None:
        if decision.epoch >= self.target and i not in self.seen:
            self.seen[i] = time.perf_counter()
            if len(self.seen) == len(self.electors):
                self.done.set()

    def arm(self, epoch: int) -> None:
        self.target, self.seen, self.done = epoch, {}, asyncio.Event()

    async def converge(self) -> Decision:
        deadline = time.monotonic() + OP_S
        while time.monotonic() < deadline:
            got = {(e.current().broker_id, e.current().epoch) for e in self.electors}
            if len(got) == 1 and next(iter(got))[1] > 0:  # epoch 0: the local fallback
                return self.electors[0].current()
            await asyncio.sleep(0.01)
        raise RuntimeError(f"the electors did not agree on one record within {OP_S} s: {got}")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks, timeout=OP_S)
        closing = asyncio.gather(*(c.aclose() for c in self.clients), return_exceptions=True)
        await asyncio.wait_for(closing, OP_S)


async def switches(fleet: Fleet, admin: redis.Redis, count: int) -> dict[str, Any]:
    keys = fleet.electors[0].keys
    samples, first, foreign = [], [], 0
    for k in range(count):
        raw = str(await admin.hget(keys.group_hash, RECORD_FIELD))
        current = Record.from_json(raw)
        foreign += k > 0 and current.by != "bench"
        epoch, broker = current.epoch, ("b2", "b1")[k % 2]
        new = Record(broker, epoch + 1, "bench", time.time(), "bench")
        fleet.arm(epoch + 1)
        t0 = time.perf_counter()
        won = await compare_and_set(admin, keys, record_sha(raw), new)
        if not won:
            raise RuntimeError(f"switch {k}: the record moved under the bench (epoch {epoch})")
        try:
            await asyncio.wait_for(fleet.done.wait(), OP_S)
        except TimeoutError:
            msg = f"switch {k}: only {len(fleet.seen)} adopted epoch {epoch + 1} in {OP_S} s"
            raise RuntimeError(msg) from None
        samples.append((max(fleet.seen.values()) - t0) * 1000)
        first.append((min(fleet.seen.values()) - t0) * 1000)
        await asyncio.sleep(random.uniform(0.05, 0.3))  # land at random phases of the refresh
    ms = sorted(samples)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {"p50_ms": statistics.median(ms), "p99_ms": p99, "max_ms": ms[-1],
            "first_client_p50_ms": statistics.median(first), "foreign_writes": foreign}  # fmt: skip


async def idle(fleet: Fleet, admin: redis.Redis, seconds: float) -> dict[str, Any]:
    async def read() -> tuple[int, float, dict[str, int]]:
        total, t = int((await admin.info("stats"))["total_commands_processed"]), time.perf_counter()
        cmds = await admin.info("commandstats")
        return total, t, {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in cmds.items()}

    await asyncio.sleep(1.0)  # let the last switch's reports settle
    n0, t0, c0 = await read()
    await asyncio.sleep(seconds)
    n1, t1, c1 = await read()
    own = 2  # the first reading's INFO stats and INFO commandstats, counted in the second
    scale = len(fleet.electors) * (t1 - t0)
    per = {k: (v - c0.get(k, 0)) / scale for k, v in c1.items() if k != "info"}
    lua = sum(v for k, v in per.items() if k in LUA_ONLY)
    per = {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}
    total = (n1 - n0 - own) / scale
    return {"commands_per_s": total, "issued_by_client_per_s": total - lua,
            "inside_lua_per_s": lua, "by_command_per_s": per, "seconds": t1 - t0}  # fmt: skip


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {"machine": machine(), "clients": args.clients, "switches": args.switches}
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(RedisProcess())
        config = make_config(server.url)
        admin = connect(config.redis)
        stack.push_async_callback(admin.aclose)
        fleet = Fleet(config, args.clients)
        stack.push_async_callback(fleet.close)
        first = await fleet.converge()
        r["initial"] = {"broker": first.broker_id, "epoch": first.epoch}
        r["timers"] = {k: getattr(config.redis, k) for k in ("refresh_s", "stats_interval_s")}
        r["switch"] = await switches(fleet, admin, args.switches)
        r["idle"] = await idle(fleet, admin, args.idle_seconds)
        r["redis_errors"] = sum(e.redis_errors for e in fleet.electors)
    return r


def verdicts(r: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    p99, cmds = r["switch"]["p99_ms"], r["idle"]["commands_per_s"]
    t99, tcmd = TARGETS["p99_ms"], TARGETS["commands_per_s"]
    return [
        ("epoch written -> all switched, p99 (ms)", p99, t99, p99 <= t99),
        ("Redis commands/s per idle sidecar", cmds, tcmd, cmds <= tcmd),
    ]


def report(r: dict[str, Any]) -> None:
    m, s, i = r["machine"], r["switch"], r["idle"]
    print(f"machine: nproc={m['nproc']}, Python {m['python']}, {m['cpu']}, load {m['load_1m']:.2f}")
    print(f"{r['clients']} sidecars (SharedElector + StatsWriter), one process, {r['timers']}, "
          f"first record {r['initial']['broker']} epoch {r['initial']['epoch']}")  # fmt: skip
    print(f"\n{r['switches']} switches, epoch written -> all {r['clients']} switched: "
          f"p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} / max {s['max_ms']:.1f} ms\n"
          f"  (first client to adopt: p50 {s['first_client_p50_ms']:.1f} ms; records not "
          f"written by the bench: {s['foreign_writes']})")  # fmt: skip
    print(f"idle {i['seconds']:.1f} s: {i['commands_per_s']:.2f} commands/s per sidecar = "
          f"{i['issued_by_client_per_s']:.2f} sent by the client + "
          f"{i['inside_lua_per_s']:.2f} run inside Lua scripts")  # fmt: skip
    by = ", ".join(f"{k} {v:g}" for k, v in i["by_command_per_s"].items())
    print(f"  by command (per sidecar per s): {by}")
    print(f"store errors seen by the electors: {r['redis_errors']}\n")
    for name, value, target, ok in verdicts(r):
        print(f"{name:42}{value:>9.2f}  target <= {target:g}  {'PASS' if ok else 'MISS'}")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--clients", type=int, default=50, help="sidecars (electors) in the group")
    p.add_argument("--switches", type=int, default=30, help="timed record changes")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="steady-state window")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.clients < 1 or args.switches < 1 or args.idle_seconds <= 0:
        p.error("--clients and --switches must be >= 1, --idle-seconds > 0")
    logging.getLogger("gateway").setLevel(logging.ERROR)  # 50 x "active broker" per switch

    result = run_bounded(
        lambda: measure(args),
        60 + args.switches * (OP_S + 0.3) + args.idle_seconds,
        (RuntimeError, TimeoutError, RedisError, SandboxError),
    )
    if isinstance(result, int):
        return result
    if args.json:
        checks = [
            {"name": n, "value": v, "target_max": t, "pass": ok} for n, v, t, ok in verdicts(result)
        ]
        print(json.dumps(result | {"verdicts": checks}))
    else:
        report(result)
    return 0 if all(v[-1] for v in verdicts(result)) else 1


if __name__ == "__main__":
    sys.exit(main())
