"""Runtime broker failover under load: how long tables go without results when a broker dies.

A killed (SIGKILL), hung (SIGSTOP) or QoS 1-stalled (PUBACKs dropped by a proxy) active broker
must cost a table at most 0.25 s / 1 s / 1 s (p99) and no failed Detect. Each trial starts two
fresh mosquitto (``set_tcp_nodelay``), the IDP simulator on both (in this process;
``Behaviour(delay_s=0.05)``, answering on the broker that carried the command) and one ``python
-m gateway serve`` per table (ARO-201...), as deployed, with the DEFAULT failover timers (no
"failover" section: probe every 0.2 s, 0.6 s miss deadline, keepalive 5 s). Tables run rounds
back to back (5 s deadline); once all links are up, broker b1 (priority 1) is killed, stopped or
stalled at a random phase. A trial's number is fault -> first successful Detect completed on b2,
max over tables; failed Detects (non-OK or a wrong result) are counted over the whole trial. The
sidecars' JSON logs ("active broker b1 -> b2") split the number into detection and re-publish.
Baseline, concurrently in the same run: the predecessor's plain aiomqtt client
(``keepalive=60``, default timeout) iterating ``client.messages``, its own broker stopped (once:
killed) right after it subscribed, timed until MqttError: the worst phase for a hang, ~2x
keepalive. Exit status 0 when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from calendar import timegm
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiomqtt
import grpc
from benchlib import finish, machine, run_bounded  # bench/ is on sys.path when run as a script

from gateway.client import GatewayClient
from gateway.config import LinkTimings, default_topics
from gateway.devtools.faultproxy import MqttFaultProxy
from gateway.devtools.sandbox import HOST, MosquittoProcess
from gateway.devtools.sim import Behaviour, IdpSimulator, SimBroker, SimTable, derive_result
from gateway.protocol import RouletteNumber
from gateway.v1 import gateway_pb2 as pb
from gateway.v1 import gateway_pb2_grpc as pb_grpc

INPUT = "rtmp://10.0.0.50:1935/live/r10_sr"
DEADLINE_S = 5.0  # the tables' gRPC deadline
WARMUP_ROUNDS = 5  # per table, before the fault
RECOVER_S = 15.0  # bound on fault -> first success on b2
TRIAL_S = 60.0  # bound on a whole trial
BASELINE_LIMIT_S = 150.0  # bound on one plain-client trial
SERVE = [sys.executable, "-m", "gateway", "--log-format", "json", "serve"]
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
TARGETS = {"kill": 0.25, "hang": 1.0, "stall": 1.0}
FAULTS = {"kill": "SIGKILL", "hang": "SIGSTOP", "stall": "no PUBACK"}


@dataclass
class Table:
    """One table's game loop: Detect after Detect; successes (time, broker) and failures."""

    code: str
    client: GatewayClient
    ok: list[tuple[float, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            rid = f"{self.code}-{n}"
            try:
                d = await self.client.detect(rid, deadline_s=DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                self.failed.append(f"{rid}: {exc.code().name} {exc.details()}")
                await asyncio.sleep(0.05)  # no hot loop if the sidecar fails fast
                continue
            if d.result != RouletteNumber(cast(int, derive_result("roulette", rid))):
                self.failed.append(f"{rid}: wrong result {d.result}")
            else:
                self.ok.append((time.monotonic(), d.broker_id))

    def first_b2(self, after: float) -> float | None:
        return next((t - after for t, b in self.ok if t > after and b == "b2"), None)


def write_configs(workdir: Path, codes: list[str], brokers: list[dict[str, Any]]) -> list[str]:
    """One config per table in the gateway's format, with no "failover" section (defaults)."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [workdir / f"{code}.json" for code in codes]
    for code, path in zip(codes, paths, strict=True):
        table = {"game": "roulette", "code": code, "input": INPUT}
        path.write_text(json.dumps({"version": 1, "brokers": brokers, "table": table}))
    return [str(path) for path in paths]


async def spawn_sidecar(stack: contextlib.AsyncExitStack, config: str) -> asyncio.Task[str]:
    """Start ``gateway serve`` on port 0 (no race for a free port), stopped with ``stack``;
    the task returns its address once it is serving with every broker connected."""
    out = os.open(config.replace(".json", ".log"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            *PDEATHSIG, *SERVE, "--config", config, "--listen", f"{HOST}:0",
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(out)

    async def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 8)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 5)

    stack.push_async_callback(stop)
    task = asyncio.create_task(ready(proc, config.replace(".json", ".log")))
    stack.callback(task.cancel)
    return task


def logged(log: str, pattern: str) -> str | None:
    """The first match of ``pattern`` (its group 1) in a log file, if any."""
    found = re.search(pattern, Path(log).read_text(errors="replace"))
    return found.group(1) if found else None


async def until(predicate: Callable[[], bool], limit_s: float) -> bool:
    """Whether ``predicate`` came true within ``limit_s`` (state spread over tasks: polled)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            return True
    return False


async def ready(proc: asyncio.subprocess.Process, log: str) -> str:
    """The sidecar's address once it serves with every broker connected (the caller bounds it)."""
    while (address := logged(log, r"listening on (\S+);")) is None:
        if proc.returncode is not None:
            raise RuntimeError(f"sidecar exited: {logged(log, r'(?s)(.{0,300})$')}")
        await asyncio.sleep(0.01)
    fast = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20)]
    async with grpc.aio.insecure_channel(address, options=fast) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                h = await stub.Health(pb.HealthRequest(), timeout=0.5)
                if h.brokers and all(b.connected for b in h.brokers):
                    return address
            await asyncio.sleep(0.02)


def switch_time(log: str, fault_wall: float) -> float | None:
    """Fault -> the sidecar's own "active broker b1 -> b2" log line (ms resolution)."""
    t = logged(log, r'"time": "([^"]+)"[^\n]*"message": "active broker b1 -> b2')
    if t is None:
        return None
    return timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + int(t[20:23]) / 1000 - fault_wall


async def trial(fault: str, tables: int, workdir: Path) -> dict[str, Any]:
    codes = [f"ARO-{201 + i}" for i in range(tables)]
    async with contextlib.AsyncExitStack() as stack:
        b1 = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        b2 = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        sim_tables = [SimTable("roulette", c, *default_topics(c)) for c in codes]
        sim_brokers = [SimBroker(HOST, b1.port, id="b1"), SimBroker(HOST, b2.port, id="b2")]
        # A QoS 1 stall: the sidecars reach b1 through a proxy that can drop its PUBACKs
        # (the IDP, directly connected, still hears and answers everything).
        proxy = await stack.enter_async_context(MqttFaultProxy(HOST, b1.port))
        ports = {"b1": proxy.port if fault == "stall" else b1.port, "b2": b2.port}
        sim = IdpSimulator(sim_brokers, sim_tables, Behaviour(delay_s=0.05))
        sim_task = asyncio.create_task(sim.run())
        stack.push_async_callback(asyncio.wait, {sim_task})
        stack.callback(sim_task.cancel)
        await sim.wait_connected(10)
        brokers = [{"id": b.id, "host": HOST, "port": ports[b.id], "priority": i + 1}
                   for i, b in enumerate(sim_brokers)]  # fmt: skip
        configs = write_configs(workdir, codes, brokers)
        starting = [await spawn_sidecar(stack, config) for config in configs]
        async with asyncio.timeout(30):
            addresses = await asyncio.gather(*starting)
        clients = [await stack.enter_async_context(GatewayClient(a)) for a in addresses]
        desks = [Table(code, client) for code, client in zip(codes, clients, strict=True)]
        stop = asyncio.Event()
        loops = [asyncio.create_task(d.run(stop)) for d in desks]
        try:
            if not await until(lambda: all(len(d.ok) >= WARMUP_ROUNDS for d in desks), 10):
                raise RuntimeError(f"no rounds before the fault: {[d.failed[:1] for d in desks]}")
            await asyncio.sleep(random.uniform(0, 0.25))  # random phase of rounds and probes
            fault_at, fault_wall = time.monotonic(), time.time()
            if fault == "kill":
                await b1.kill()
            elif fault == "stall":
                proxy.stall_acks()
            else:
                b1.pause()
            await until(lambda: all(d.first_b2(fault_at) is not None for d in desks), RECOVER_S)
        finally:
            stop.set()
            _, late = await asyncio.wait(loops, timeout=DEADLINE_S + 2)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
            if b1.paused:
                b1.resume()  # SIGCONT before tearing down
    per_table = [d.first_b2(fault_at) for d in desks]
    return {
        "s": None if None in per_table else max(x for x in per_table if x is not None),
        "per_table_s": per_table,
        "switch_s": [switch_time(c.replace(".json", ".log"), fault_wall) for c in configs],
        "failed": sum(len(d.failed) for d in desks),
        "failures": [f for d in desks for f in d.failed][:5],
        "rounds_ok": sum(len(d.ok) for d in desks),
    }


async def plain_client_notices(fault: str) -> float | None:
    """The predecessor's client: seconds until MqttError after the fault (None: not in time)."""
    noticed: float | None = None

    async def first_error(client: aiomqtt.Client) -> float:
        with contextlib.suppress(aiomqtt.MqttError):
            async for _ in client.messages:
                pass
        return time.monotonic()

    async with MosquittoProcess(tcp_nodelay=True) as broker:
        with contextlib.suppress(aiomqtt.MqttError):
            async with aiomqtt.Client(HOST, broker.port, keepalive=60) as client:
                await client.subscribe(default_topics("ARO-200")[1], qos=1)
                reader = asyncio.create_task(first_error(client))
                t0 = time.monotonic()
                try:
                    if fault == "kill":
                        await broker.kill()
                    else:
                        broker.pause()
                    with contextlib.suppress(TimeoutError):
                        noticed = await asyncio.wait_for(reader, BASELINE_LIMIT_S) - t0
                finally:
                    reader.cancel()
                    if broker.paused:
                        broker.resume()
    return noticed


async def baselines(trials: int) -> dict[str, Any]:
    kill = await plain_client_notices("kill")
    return {"kill_s": [kill], "hang_s": [await plain_client_notices("hang") for _ in range(trials)]}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99/max of the trials' numbers; p99 and max are None if a trial never recovered."""
    ok = sorted(r["s"] for r in runs if r["s"] is not None)
    full = len(ok) == len(runs)
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) > 1 else ok * 99
    sw = [s for r in runs for s in r["switch_s"] if s is not None]
    return {
        "p50": statistics.median(ok) if ok else None,
        "p99": q[98] if full else None,
        "max": ok[-1] if full else None,
        "never_recovered": len(runs) - len(ok),
        "failed": sum(r["failed"] for r in runs),
        "switch_p50": statistics.median(sw) if sw else None,
        "switch_max": max(sw) if sw else None,
        "trials": runs,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    d = LinkTimings()
    r: dict[str, Any] = {"machine": machine(), "trials": args.trials, "tables": args.tables}
    r["setup"] = (
        f"{args.tables} tables ARO-201.., one `python -m gateway serve` process per table "
        f"(default timers: probe {d.probe_interval_s:g} s / miss {d.probe_timeout_s:g} s, "
        f"keepalive {d.keepalive_s} s); IDP simulator in the bench process (answers 0.05 s "
        "after a detect, on its broker); 2 fresh mosquitto (set_tcp_nodelay) per trial; rounds "
        f"back to back, {DEADLINE_S:g} s deadline; kill, hang and stall trials interleaved"
    )
    base = asyncio.create_task(baselines(args.baseline_trials)) if args.baseline_trials else None
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in FAULTS}
    try:
        with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
            logs = Path(args.log_dir or tmp)
            for i in range(args.trials):
                for fault in FAULTS:
                    async with asyncio.timeout(TRIAL_S):
                        runs[fault].append(await trial(fault, args.tables, logs / f"{fault}{i}"))
        r["baseline"] = await base if base else "skipped"
    finally:
        if base:
            base.cancel()
            await asyncio.wait({base})
    r |= {f: summary(x) for f, x in runs.items()}
    r["verdicts"] = {f: (r[f]["p99"] or 1e9) <= TARGETS[f] for f in TARGETS}
    r["verdicts"]["failed"] = sum(r[f]["failed"] for f in FAULTS) == 0
    return r


def fmt(x: float | None, digits: int = 3) -> str:
    return "none" if x is None else f"{x:.{digits}f}"


def report(r: dict[str, Any]) -> None:
    m, v, b, n = r["machine"], r["verdicts"], r["baseline"], r["trials"]
    print(f"machine: nproc={m['nproc']}, Python {m['python']}, {m['cpu']}, load {m['load_1m']:.2f}")
    print(f"setup: {r['setup']}")
    print(f"\nfault -> first OK Detect on b2 (max over tables), s; {n} trials each, so p99 ~ max")
    print(
        f"{'':10}{'p50':>7}{'p99':>7}{'max':>7}{'failed':>7}{'plain client':>14}  target  verdict"
    )
    for f in FAULTS:
        plain = (
            "skipped"
            if b == "skipped" or f + "_s" not in b
            else fmt(b[f + "_s"][0], 1 + 2 * (f == "kill"))
        )
        s = r[f]
        row = [fmt(s[k]) for k in ("p50", "p99", "max")] + [str(s["failed"]), plain]
        cells = "".join(f"{c:>7}" for c in row[:4]) + f"{row[4]:>14}"
        print(f"{FAULTS[f]:10}{cells}  <= {TARGETS[f]:<4g} {'PASS' if v[f] else 'MISS'}")
    failed = sum(r[f]["failed"] for f in FAULTS)
    print(f"failed Detects, all trials: {failed} (target 0) {'PASS' if v['failed'] else 'MISS'}")
    hang = "" if b == "skipped" else f"; its SIGSTOP trials: {[fmt(x, 1) for x in b['hang_s']]}"
    print(f"plain client: aiomqtt keepalive 60 s, stopped/killed right after subscribing{hang}")
    print("plain client, no PUBACK: never notices (its QoS 0 messages and pings still flow)")
    for f in FAULTS:
        s = r[f]
        print(f"\n{FAULTS[f]}: fault -> sidecar switched to b2 (its log) p50 "
              f"{fmt(s['switch_p50'])} / max {fmt(s['switch_max'])} s; never recovered: "
              f"{s['never_recovered']}.\n  per trial: max [per table] (switch)")  # fmt: skip
        for t in s["trials"]:
            tables, switch = (" ".join(fmt(x) for x in t[k]) for k in ("per_table_s", "switch_s"))
            fails = f"; failed {t['failed']}: {'; '.join(t['failures'])}" if t["failed"] else ""
            print(f"  {fmt(t['s'])} [{tables}] ({switch}) {t['rounds_ok']} rounds ok{fails}")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--trials", type=int, default=10, help="trials of each fault")
    p.add_argument("--tables", type=int, default=3, help="tables, one sidecar each")
    p.add_argument("--baseline-trials", type=int, default=1, help="plain-client SIGSTOP trials")
    p.add_argument("--log-dir", help="keep the sidecars' configs and logs here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.trials < 1 or args.tables < 1 or args.baseline_trials < 0:
        p.error("--trials and --tables must be >= 1, --baseline-trials >= 0")
    logging.basicConfig(level=logging.CRITICAL)  # "sim lost b1", paho's resets: expected here
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)  # aiomqtt sets its own level

    limit = len(FAULTS) * args.trials * TRIAL_S + (args.baseline_trials + 1) * BASELINE_LIMIT_S + 60
    result = run_bounded(lambda: measure(args), limit)
    return finish(
        result, as_json=args.json, report=report, passed=lambda r: all(r["verdicts"].values())
    )


if __name__ == "__main__":
    sys.exit(main())
