"""What the sidecar hop costs: Detect through gRPC vs the same MQTT exchange done directly.

One run, one freshly started local Mosquitto (``set_tcp_nodelay true``) and one simulated IDP
set (``gateway.sim.IdpSimulator``, ``Behaviour(delay_s=0)``: the device answers at once, so only
transport and software cost is left, on its own thread and event loop), shared by both sides:

* baseline: what a game pod could do without a sidecar. An aiomqtt client (TCP_NODELAY)
  subscribed to the table's response topic publishes ``detect`` QoS 1, waits for the result
  frame carrying its round_id, then publishes ``timeout`` QoS 1 like the sidecar. Latency is
  detect -> result (the caller's view); ``timeout`` goes out after the answer and before the
  next round, as in the sidecar, which answers first and queues ``timeout`` ahead of the next
  ``detect``.
* sidecar: the real product, ``python -m gateway serve`` subprocesses when that CLI exists (else,
  or with ``--in-process``, ``gateway.app.Sidecar`` on its own thread and event loop), called
  through ``gateway.client.GatewayClient``.

Each side: sequential p50/p99 after a warm-up, then throughput with ``--concurrency`` rounds in
flight. The IDP protocol allows one detection per table, so in-flight rounds use one table each
(ARO-101, ARO-102, ...): one MQTT client per table for the baseline, one sidecar per table for
the product, as production runs one sidecar per game pod. Every answer is checked against the
simulator's deterministic result. Also measured: the sidecar's RSS after warm-up, its
start-to-SERVING time, its own detect->answer time (``elapsed_ms``: the rest of the added
latency is the gRPC hop) and CPU per round by process, to show where throughput goes.
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
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.app import Sidecar
from gateway.client import GatewayClient
from gateway.config import default_topics, parse_config
from gateway.protocol import RouletteNumber
from gateway.sandbox import HOST, MosquittoProcess, free_port
from gateway.sim import Behaviour, IdpSimulator, SimBroker, SimTable, derive_result

T = TypeVar("T")
Round = Callable[[str], Awaitable[float]]  # runs one round, returns its latency in seconds
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
INPUT = "rtmp://10.0.0.50:1935/live/r10_sr"
OP_S = 5.0  # bound on every single operation
SERVE = [sys.executable, "-m", "gateway", "serve"]
# The kernel kills a sidecar if the bench dies abruptly. setpriv, not a preexec_fn: that forces
# fork(), which runs gRPC's fork handlers in a process with live gRPC threads.
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
TARGETS = {"p50": 1.0, "p99": 2.0, "ratio": 0.5, "rss_mb": 60.0, "serving_s": 1.5}


def rss_mb(pid: int) -> float:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("VmRSS:"))


def cpu_s(pids: Iterable[int]) -> float:
    """User + system CPU seconds of processes (all their threads) so far."""
    ticks = 0
    for pid in set(pids):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    nproc = len(os.sched_getaffinity(0))
    return {"nproc": nproc, "python": platform.python_version(), "cpu": cpu,
            "loadavg_1m": os.getloadavg()[0]}  # fmt: skip


def cli_exists() -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return subprocess.run([*SERVE, "--help"], capture_output=True, timeout=30).returncode == 0
    return False


def config_doc(port: int, code: str) -> dict[str, Any]:
    game = {"game_type": "roulette", "game_code": code, "timeout": 5, "input_stream": INPUT}
    return {"brokers": [{"broker": HOST, "port": port, "priority": 1}], "game_config": game}


def new_round_id() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def check(round_id: str, res: object) -> None:
    if res != derive_result("roulette", round_id):
        raise RuntimeError(f"round {round_id}: got {res!r}, not what the simulator sent")


class LoopThread:
    """An event loop of its own on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def call(self, coro: Coroutine[Any, Any, T], limit: float = 15.0) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(fut), limit)

    async def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            await self.call(cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, 5)


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


class InProcess:
    """Sidecars on one event loop in a thread of their own (not the bench client's loop)."""

    where = "in-process, on their own thread and event loop (shares the GIL with the bench)"

    def __init__(self) -> None:
        self.thread, self.running = LoopThread("sidecars"), list[Sidecar]()

    async def start(self, doc: dict[str, Any]) -> tuple[str, int]:
        async def go() -> Sidecar:
            sidecar = Sidecar(parse_config(doc, source="bench", env={}), listen=f"{HOST}:0")
            self.running.append(await sidecar.__aenter__())
            return sidecar

        return (await self.thread.call(go())).address, os.getpid()

    async def close(self) -> None:
        async def stop() -> None:
            await asyncio.gather(*(s.__aexit__(None, None, None) for s in self.running))

        with contextlib.suppress(Exception):
            await self.thread.call(stop(), 20)
        await self.thread.close()


class Subprocesses:
    """One ``python -m gateway serve`` process per sidecar, as in production (logs at INFO)."""

    where = "one `python -m gateway serve` process each"

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.procs = workdir, list[asyncio.subprocess.Process]()

    def _files(self, doc: dict[str, Any]) -> tuple[Path, int]:
        path = self.workdir / f"{doc['game_config']['game_code']}.json"
        path.write_text(json.dumps(doc))
        return path, os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT, 0o644)

    async def start(self, doc: dict[str, Any]) -> tuple[str, int]:
        (path, out), address = self._files(doc), f"{HOST}:{free_port()}"
        argv = [*PDEATHSIG, *SERVE, "--config", str(path), "--listen", address]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True)  # fmt: skip
        finally:
            os.close(out)
        self.procs.append(proc)
        return address, proc.pid

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


async def wait_serving(address: str, limit: float = 10.0) -> None:
    fast = [("grpc.initial_reconnect_backoff_ms", 10), ("grpc.min_reconnect_backoff_ms", 10)]
    async with grpc.aio.insecure_channel(address, options=fast) as channel:
        stub, request = health_pb2_grpc.HealthStub(channel), health_pb2.HealthCheckRequest()
        async with asyncio.timeout(limit):
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(request, timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.002)


def summary(latencies: list[float], key: str = "") -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {f"p50{key}": statistics.median(ms), f"p99{key}": p99, f"max{key}": ms[-1]}


async def sequential(one: Round, rounds: int) -> list[float]:
    return [await one(new_round_id()) for _ in range(rounds)]


async def in_flight(
    ones: list[Round], rounds: int, warmup: int, pids: dict[str, list[int]]
) -> dict[str, Any]:
    async def run(total: int) -> tuple[float, list[float]]:
        todo, latencies = iter(range(total)), list[float]()

        async def worker(one: Round) -> None:
            for _ in todo:  # shared: each round is taken by exactly one worker
                latencies.append(await one(new_round_id()))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(one) for one in ones))
        return time.perf_counter() - t0, latencies

    await run(max(warmup, len(ones)))
    cpu0 = {name: cpu_s(p) for name, p in pids.items()}
    elapsed, latencies = await run(rounds)
    cpu = {name: (cpu_s(p) - cpu0[name]) * 1000 / rounds for name, p in pids.items()}
    return {"rps": rounds / elapsed, **summary(latencies, "_load"), "cpu_ms_per_round": cpu}


async def measure(args: argparse.Namespace, use_cli: bool) -> dict[str, Any]:
    codes = [f"ARO-{101 + i}" for i in range(args.concurrency)]
    r: dict[str, Any] = {"machine": machine(), "tables": f"{codes[0]}..{codes[-1]}", **vars(args)}
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        assert broker.pid is not None
        devices = LoopThread("simulator")
        stack.push_async_callback(devices.close)
        tables = [SimTable("roulette", c, *default_topics(c)) for c in codes]

        async def make_sim() -> IdpSimulator:
            return IdpSimulator([SimBroker(HOST, broker.port)], tables, Behaviour(delay_s=0))

        sim = await devices.call(make_sim())
        asyncio.run_coroutine_threadsafe(sim.run(), devices.loop)
        await devices.call(sim.wait_connected(OP_S))
        pids = {"bench (client+simulator)": [os.getpid()], "mosquitto": [broker.pid]}

        async with contextlib.AsyncExitStack() as direct_stack:
            direct = [DirectTable(broker.port, c) for c in codes]
            await asyncio.gather(*(d.open(direct_stack) for d in direct))
            await sequential(direct[0].round, args.warmup)
            base = summary(await sequential(direct[0].round, args.rounds))
            base |= await in_flight([d.round for d in direct], args.rounds, args.warmup, pids)
        r["baseline"], r["rss_before_sidecar_mb"] = base, rss_mb(os.getpid())

        sidecars = Subprocesses(Path(broker.log_path).parent) if use_cli else InProcess()
        stack.push_async_callback(sidecars.close)
        r["sidecars_run"] = sidecars.where
        t0 = time.perf_counter()
        address, pid = await sidecars.start(config_doc(broker.port, codes[0]))
        await wait_serving(address)
        side: dict[str, Any] = {"serving_s": time.perf_counter() - t0, "in_process": not use_cli}
        inside: list[float] = []
        first = await stack.enter_async_context(GatewayClient(address))
        await sequential(sidecar_round(first, inside), args.warmup)
        side["rss_mb"] = rss_mb(pid)
        inside.clear()
        side |= summary(await sequential(sidecar_round(first, inside), args.rounds))
        side |= summary([ms / 1000 for ms in inside], "_inside")
        started = [await sidecars.start(config_doc(broker.port, c)) for c in codes[1:]]
        await asyncio.gather(*(wait_serving(a, 60) for a, _ in started))
        clients = [first] + [await stack.enter_async_context(GatewayClient(a)) for a, _ in started]
        if use_cli:
            pids["sidecars"] = [pid] + [p for _, p in started]
        else:
            pids = {"bench (client+simulator+sidecars)": [os.getpid()], **pids}
            del pids["bench (client+simulator)"]
        rounds = [sidecar_round(c, []) for c in clients]
        side |= await in_flight(rounds, args.rounds, args.warmup, pids)
        r["sidecar"] = side
    return r


def verdicts(r: dict[str, Any]) -> list[tuple[str, float, float, str, str, bool]]:
    b, s, t, c = r["baseline"], r["sidecar"], TARGETS, r["concurrency"]
    add50, add99, ratio = s["p50"] - b["p50"], s["p99"] - b["p99"], s["rps"] / b["rps"]
    return [
        ("sequential p50 (ms)", b["p50"], s["p50"], f"{add50:+.3f}", f"added <= {t['p50']}",
         add50 <= t["p50"]),
        ("sequential p99 (ms)", b["p99"], s["p99"], f"{add99:+.3f}", f"added <= {t['p99']}",
         add99 <= t["p99"]),
        (f"throughput, {c} in flight (rps)", b["rps"], s["rps"], f"{ratio:.2f}x",
         f">= {t['ratio']}x", ratio >= t["ratio"]),
        ("sidecar RSS after warm-up (MB)", 0, s["rss_mb"], "", f"<= {t['rss_mb']:.0f}",
         s["rss_mb"] <= t["rss_mb"]),
        ("sidecar start-to-SERVING (s)", 0, s["serving_s"], "", f"<= {t['serving_s']}",
         s["serving_s"] <= t["serving_s"]),
    ]  # fmt: skip


def report(r: dict[str, Any]) -> None:
    m, b, s = r["machine"], r["baseline"], r["sidecar"]
    print(f"machine: nproc={m['nproc']}, Python {m['python']}, {m['cpu']}, "
          f"load average {m['loadavg_1m']:.2f} at start")  # fmt: skip
    print(f"{r['rounds']} rounds after {r['warmup']} warm-up, same broker + simulator for both; "
          f"in flight: {r['concurrency']} tables {r['tables']} (one IDP detection per table),\n"
          f"one MQTT client per table (baseline) vs one sidecar per table, "
          f"sidecars {r['sidecars_run']}")  # fmt: skip
    print(f"\n{'':34}{'baseline':>10}{'sidecar':>10}{'added':>10}  {'target':<15}verdict")
    for name, base, side, added, target, ok in verdicts(r):
        digits = 0 if "rps" in name else 3
        cols = "".join(f"{x:>10.{digits}f}" if x else f"{'':>10}" for x in (base, side))
        print(f"{name:34}{cols}{added:>10}  {target:<15}{'PASS' if ok else 'MISS'}")
    print(f"\nsidecar's own detect->answer (elapsed_ms) p50 {s['p50_inside']:.3f} / p99 "
          f"{s['p99_inside']:.3f} ms; the rest of its latency is the gRPC hop")  # fmt: skip
    print(f"max sequential: baseline {b['max']:.2f} ms, sidecar {s['max']:.2f} ms; under load "
          f"p50/p99: baseline {b['p50_load']:.1f}/{b['p99_load']:.1f} ms, sidecar "
          f"{s['p50_load']:.1f}/{s['p99_load']:.1f} ms")  # fmt: skip
    for who, x in (("baseline", b), ("sidecar", s)):
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in x["cpu_ms_per_round"].items())
        print(f"CPU ms per round in flight, {who}: {cpu}")
    if s["in_process"]:
        print(f"RSS is the whole bench process (client, simulator, sidecar); it was "
              f"{r['rss_before_sidecar_mb']:.1f} MB before the sidecar started")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=300, help="timed rounds per phase")
    p.add_argument("--warmup", type=int, default=30, help="untimed rounds before each phase")
    p.add_argument("--concurrency", type=int, default=16, help="rounds (and tables) in flight")
    p.add_argument("--in-process", action="store_true", help="never use `gateway serve`")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    use_cli = not args.in_process and cli_exists()
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt: "N pending publish calls"

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(180 + 0.05 * 4 * (args.rounds + args.warmup)):
            return await measure(args, use_cli)

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
