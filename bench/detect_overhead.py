"""What the sidecar hop costs: Detect through gRPC vs the same MQTT exchange done directly.

Both sides share one freshly started local Mosquitto (``set_tcp_nodelay true``) and one
``IdpSimulator`` with ``Behaviour(delay_s=0)`` in a process of its own (the IDPs are not in the
game pod), so only transport and software cost is measured:

* baseline: a game pod without a sidecar. An aiomqtt client (TCP_NODELAY) subscribed to the
  table's response topic publishes ``detect`` QoS 1, waits for the result frame with its
  round_id (the timed span), then publishes ``timeout`` QoS 1 as the sidecar does.
* sidecar: the product as deployed, one ``python -m gateway serve`` process per table (its own
  interpreter and loop, logging at INFO), called through ``gateway.client.GatewayClient``.

Each: sequential p50/p99 after a warm-up, rounds back to back (the sidecar answers first and
sends ``timeout`` after, so that tail overlaps its next round here, unlike production where
rounds are seconds apart), then throughput with ``--concurrency`` rounds in flight. The IDP
protocol allows one detection per table, so in-flight rounds use one table each (ARO-101...):
one MQTT client per table vs one sidecar per table (production runs one sidecar per game pod).
Every answer is checked against the simulator's deterministic result. Also: sidecar RSS after
warm-up and start-to-SERVING; and, to explain the numbers, the gRPC floor (a health Check round
trip), the sidecar's own detect->answer time and CPU per round by process.
Exit status 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.client import GatewayClient
from gateway.config import default_topics
from gateway.protocol import RouletteNumber
from gateway.sandbox import HOST, MosquittoProcess, free_port
from gateway.sim import Behaviour, IdpSimulator, SimBroker, SimTable, derive_result

Round = Callable[[str], Awaitable[float]]  # runs one round, returns its latency in seconds
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
INPUT = "rtmp://10.0.0.50:1935/live/r10_sr"
OP_S = 5.0  # bound on every single operation
SERVE = [sys.executable, "-m", "gateway", "serve"]
# Children die with the bench even on SIGKILL. setpriv rather than a preexec_fn, which would
# force fork() and run gRPC's fork handlers in a process with live gRPC threads.
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
TARGETS = {"p50": 1.0, "p99": 2.0, "ratio": 0.5, "rss_mb": 60.0, "serving_s": 1.5}


def rss_mb(pid: int) -> float:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("VmRSS:"))


def cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, all threads) used so far by processes."""
    ticks = 0
    for pid in set(pids):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    nproc, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    return {"nproc": nproc, "python": platform.python_version(), "cpu": cpu, "load_1m": load}


def cli_exists() -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return subprocess.run([*SERVE, "--help"], capture_output=True, timeout=30).returncode == 0
    return False


def config_doc(port: int, code: str) -> dict[str, Any]:
    game = {"game_type": "roulette", "game_code": code, "timeout": 5, "input_stream": INPUT}
    return {"brokers": [{"broker": HOST, "port": port, "priority": 1}], "game_config": game}


def check(round_id: str, res: object) -> None:
    if res != derive_result("roulette", round_id):
        raise RuntimeError(f"round {round_id}: got {res!r}, not what the simulator sent")


async def simulate(port: int, codes: list[str]) -> None:
    """The simulator child (``--simulate``): says "ready" once subscribed, runs until killed."""
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt: "N pending publish calls"
    tables = [SimTable("roulette", c, *default_topics(c)) for c in codes]
    sim = IdpSimulator([SimBroker(HOST, port)], tables, Behaviour(delay_s=0))
    task = asyncio.create_task(sim.run())
    await sim.wait_connected(OP_S)
    print("ready", flush=True)
    await task


class DirectTable:
    """The baseline: one table's request/response over a plain aiomqtt client."""

    def __init__(self, port: int, code: str) -> None:
        self.command, self.response = default_topics(code)
        ident = f"bench-{code}-{uuid.uuid4().hex[:6]}"
        self.client = aiomqtt.Client(HOST, port, identifier=ident, socket_options=NODELAY)
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        await stack.enter_async_context(self.client)
        await self.client.subscribe(self.response, qos=1, timeout=OP_S)
        stack.callback(asyncio.create_task(self._read()).cancel)

    async def _read(self) -> None:
        async for message in self.client.messages:
            arg = json.loads(message.payload).get("arg") or {}
            fut = self.waiting.pop(str(arg.get("round_id")), None)
            if fut is not None and not fut.done():
                fut.set_result(arg)

    async def round(self, round_id: str) -> float:
        fut = self.waiting[round_id] = asyncio.get_running_loop().create_future()
        arg = {"round_id": round_id, "input": INPUT}
        detect = json.dumps({"command": "detect", "arg": arg}, separators=(",", ":"))
        t0 = time.perf_counter()
        try:
            await self.client.publish(self.command, detect, qos=1, timeout=OP_S)
            answer = await asyncio.wait_for(fut, OP_S)
        finally:
            self.waiting.pop(round_id, None)
        latency = time.perf_counter() - t0
        stop = b'{"command":"timeout","arg":{}}'
        await self.client.publish(self.command, stop, qos=1, timeout=OP_S)
        if answer.get("err") != 0:
            raise RuntimeError(f"round {round_id}: IDP error {answer}")
        check(round_id, answer.get("res"))
        return latency


def sidecar_round(client: GatewayClient, inside_ms: list[float]) -> Round:
    async def one(round_id: str) -> float:
        t0 = time.perf_counter()
        d = await client.detect(round_id, input_url=INPUT, deadline_s=OP_S)
        latency = time.perf_counter() - t0
        check(round_id, d.result.number if isinstance(d.result, RouletteNumber) else d.result)
        inside_ms.append(d.elapsed_ms)
        return latency

    return one


class Children:
    """Child processes: the simulator and one ``gateway serve`` per sidecar, as deployed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.procs = workdir, list[asyncio.subprocess.Process]()

    async def spawn(self, argv: list[str], out: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *PDEATHSIG, *argv, stdin=subprocess.DEVNULL, stdout=out, start_new_session=True,
            stderr=None if out == subprocess.PIPE else out,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def start(self, doc: dict[str, Any]) -> tuple[str, int]:
        path, port = self.workdir / f"{doc['game_config']['game_code']}.json", free_port()
        path.write_text(json.dumps(doc))
        out = os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            argv = [*SERVE, "--config", str(path), "--listen", f"{HOST}:{port}"]
            return f"{HOST}:{port}", (await self.spawn(argv, out)).pid
        finally:
            os.close(out)

    async def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), OP_S)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), OP_S)


async def health_checks(address: str, limit: float, count: int = 0) -> list[float]:
    """Wait (up to ``limit`` s) until SERVING; then time ``count`` sequential Checks."""
    fast = [("grpc.initial_reconnect_backoff_ms", 10), ("grpc.min_reconnect_backoff_ms", 10)]
    async with grpc.aio.insecure_channel(address, options=fast) as channel:
        stub, request = health_pb2_grpc.HealthStub(channel), health_pb2.HealthCheckRequest()
        async with asyncio.timeout(limit):
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(request, timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                await asyncio.sleep(0.002)
        latencies = []
        for _ in range(count):
            t0 = time.perf_counter()
            await stub.Check(request, timeout=OP_S)
            latencies.append(time.perf_counter() - t0)
        return latencies


def summary(latencies: list[float], key: str = "") -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {f"p50{key}": statistics.median(ms), f"p99{key}": p99, f"max{key}": ms[-1]}


async def sequential(one: Round, rounds: int, gap_s: float = 0.0) -> list[float]:
    """Rounds one after another; ``gap_s`` idles between them, as tables do between rounds."""
    latencies = []
    for _ in range(rounds):
        latencies.append(await one(f"bench-{uuid.uuid4().hex[:12]}"))
        if gap_s:
            await asyncio.sleep(gap_s)
    return latencies


async def in_flight(ones: list[Round], n: int, warmup: int, pids: dict[str, list[int]]) -> Any:
    async def run(total: int) -> tuple[float, list[float]]:
        todo, latencies = iter(range(total)), list[float]()

        async def worker(one: Round) -> None:
            for _ in todo:  # shared: each round is taken by exactly one worker
                latencies.extend(await sequential(one, 1))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(one) for one in ones))
        return time.perf_counter() - t0, latencies

    await run(max(warmup, len(ones)))
    cpu0 = {name: cpu_s(p) for name, p in pids.items()}
    elapsed, latencies = await run(n)
    cpu = {name: (cpu_s(p) - cpu0[name]) * 1000 / n for name, p in pids.items()}
    return {"rps": n / elapsed, **summary(latencies, "_load"), "cpu_ms_per_round": cpu}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    codes = [f"ARO-{101 + i}" for i in range(args.concurrency)]
    r: dict[str, Any] = {"machine": machine(), "tables": f"{codes[0]}..{codes[-1]}"}
    r |= {k: getattr(args, k) for k in ("rounds", "warmup", "concurrency", "gap_ms")}
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        children = Children(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        stack.push_async_callback(children.close)
        argv = [sys.executable, __file__, "--simulate", str(broker.port), *codes]
        sim = await children.spawn(argv, subprocess.PIPE)
        assert sim.stdout is not None
        if await asyncio.wait_for(sim.stdout.readline(), 30) != b"ready\n":
            raise RuntimeError("the simulator did not start")
        pids = {
            "bench client": [os.getpid()],
            "simulator": [sim.pid],
            "mosquitto": [broker.pid or 0],
        }

        async with contextlib.AsyncExitStack() as direct_stack:
            direct = [DirectTable(broker.port, c) for c in codes]
            await asyncio.gather(*(d.open(direct_stack) for d in direct))
            await sequential(direct[0].round, args.warmup)
            base = summary(await sequential(direct[0].round, args.rounds, args.gap_ms / 1000))
            base |= await in_flight([d.round for d in direct], args.rounds, args.warmup, pids)
        r["baseline"] = base

        t0 = time.perf_counter()
        address, pid = await children.start(config_doc(broker.port, codes[0]))
        await health_checks(address, 10)
        side: dict[str, Any] = {"serving_s": time.perf_counter() - t0}
        first, inside = await stack.enter_async_context(GatewayClient(address)), list[float]()
        await sequential(sidecar_round(first, inside), args.warmup)
        side["rss_mb"] = rss_mb(pid)
        inside.clear()
        side |= summary(
            await sequential(sidecar_round(first, inside), args.rounds, args.gap_ms / 1000)
        )
        side |= summary([ms / 1000 for ms in inside], "_inside")
        side |= summary(await health_checks(address, 10, args.rounds), "_grpc_floor")
        started = [await children.start(config_doc(broker.port, c)) for c in codes[1:]]
        await asyncio.gather(*(health_checks(a, 60) for a, _ in started))
        clients = [first] + [await stack.enter_async_context(GatewayClient(a)) for a, _ in started]
        pids["sidecars"] = [pid] + [p for _, p in started]
        rounds = [sidecar_round(c, []) for c in clients]
        r["sidecar"] = side | await in_flight(rounds, args.rounds, args.warmup, pids)
    return r


def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, bool]]:
    b, s, t = r["baseline"], r["sidecar"], TARGETS
    add50, add99, ratio = s["p50"] - b["p50"], s["p99"] - b["p99"], s["rps"] / b["rps"]
    return [
        ("sequential p50 (ms)", f"{b['p50']:.3f}", f"{s['p50']:.3f}", f"{add50:+.3f}",
         f"added <= {t['p50']}", add50 <= t["p50"]),
        ("sequential p99 (ms)", f"{b['p99']:.3f}", f"{s['p99']:.3f}", f"{add99:+.3f}",
         f"added <= {t['p99']}", add99 <= t["p99"]),
        (f"throughput, {r['concurrency']} in flight (rps)", f"{b['rps']:.0f}", f"{s['rps']:.0f}",
         f"{ratio:.2f}x", f">= {t['ratio']}x", ratio >= t["ratio"]),
        ("sidecar RSS after warm-up (MB)", "", f"{s['rss_mb']:.1f}", "", f"<= {t['rss_mb']:.0f}",
         s["rss_mb"] <= t["rss_mb"]),
        ("sidecar start-to-SERVING (s)", "", f"{s['serving_s']:.3f}", "",
         f"<= {t['serving_s']}", s["serving_s"] <= t["serving_s"]),
    ]  # fmt: skip


def report(r: dict[str, Any]) -> None:
    m, b, s = r["machine"], r["baseline"], r["sidecar"]
    print(f"machine: nproc={m['nproc']}, Python {m['python']}, {m['cpu']}, load {m['load_1m']:.2f}")
    print(
        f"{r['rounds']} rounds after {r['warmup']} warm-up; one broker and one simulator for "
        f"both. In flight: {r['concurrency']} tables {r['tables']}\n(one IDP detection per "
        "table): one MQTT client per table vs one `gateway serve` process per table."
    )
    print(f"\n{'':34}{'baseline':>10}{'sidecar':>10}{'added':>10}  {'target':<15}verdict")
    for name, base, side, added, target, ok in verdicts(r):
        print(f"{name:34}{base:>10}{side:>10}{added:>10}  {target:<15}{'PASS' if ok else 'MISS'}")
    print(
        f"\nwhere the time goes: gRPC floor (health Check round trip) p50 "
        f"{s['p50_grpc_floor']:.3f} / p99 {s['p99_grpc_floor']:.3f} ms; the sidecar's own "
        f"detect->answer\n(elapsed_ms) p50 {s['p50_inside']:.3f} / p99 {s['p99_inside']:.3f} "
        f"ms vs the baseline's p50 {b['p50']:.3f} / p99 {b['p99']:.3f} ms"
    )
    print(
        f"max sequential: baseline {b['max']:.2f}, sidecar {s['max']:.2f} ms; in flight p50/p99:"
        f" baseline {b['p50_load']:.1f}/{b['p99_load']:.1f}, sidecar "
        f"{s['p50_load']:.1f}/{s['p99_load']:.1f} ms"
    )
    for who, x in (("baseline", b), ("sidecar", s)):
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in x["cpu_ms_per_round"].items())
        print(f"CPU ms per round in flight, {who}: {cpu}")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=300, help="timed rounds per phase")
    p.add_argument("--warmup", type=int, default=30, help="untimed rounds before each phase")
    p.add_argument("--concurrency", type=int, default=16, help="rounds (and tables) in flight")
    p.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="idle time between sequential rounds, in both runs (tables idle 16-50 s)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--simulate", nargs="+", help=argparse.SUPPRESS)  # PORT CODE...: the child
    args = p.parse_args()
    if args.simulate:
        asyncio.run(simulate(int(args.simulate[0]), args.simulate[1:]))
        return 0
    if not cli_exists():
        sys.exit(f"needs the sidecar's CLI: `{' '.join(SERVE)} --help` failed")

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(180 + 0.05 * 5 * (args.rounds + args.warmup)):
            return await measure(args)

    try:
        result = asyncio.run(bounded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0 if all(v[-1] for v in verdicts(result)) else 1


if __name__ == "__main__":
    sys.exit(main())
