"""What the sidecar hop costs: Detect through gRPC vs the same MQTT exchange done directly.

One run, one freshly started local Mosquitto (``set_tcp_nodelay true``) and one simulated IDP
set (``gateway.sim.IdpSimulator``, ``Behaviour(delay_s=0)``: the device answers at once, so only
transport and software cost is left), shared by both sides:

* baseline: what a game pod could do without a sidecar. An aiomqtt client (TCP_NODELAY)
  subscribed to the table's response topic publishes ``detect`` QoS 1, waits for the result
  frame carrying its round_id, then publishes ``timeout`` QoS 1 like the sidecar does. Latency
  is detect -> result (the caller's view); the ``timeout`` publish happens after the answer and
  before the next round, as in the sidecar, which answers first and then queues ``timeout``
  ahead of the next ``detect``.
* sidecar: the real ``gateway.app.Sidecar`` called through ``gateway.client.GatewayClient``.

Each side: sequential p50/p99 after a warm-up, then throughput with ``--concurrency`` rounds in
flight. The IDP protocol allows one detection per table, so in-flight rounds use one table each
(ARO-101, ARO-102, ...): one MQTT client per table for the baseline, one sidecar per table for
the product (production runs one sidecar per game pod). Every answer is checked against the
simulator's deterministic result. Also measured: the sidecar's RSS after warm-up and its
start-to-SERVING time. Sidecars run as ``python -m gateway serve`` subprocesses when that CLI
exists, else in-process on their own event loop and thread (the output says which).
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
from collections.abc import Awaitable, Callable, Coroutine, Iterator
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
SERVE_CMD = [sys.executable, "-m", "gateway", "serve"]
# The kernel kills a sidecar if the bench dies abruptly; setpriv rather than a preexec_fn,
# whose fork() would run gRPC's fork handlers in a process with live gRPC threads.
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
TARGETS = {"p50_ms": 1.0, "p99_ms": 2.0, "ratio": 0.5, "rss_mb": 60.0, "serving_s": 1.5}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {"nproc": len(os.sched_getaffinity(0)), "python": platform.python_version(), "cpu": cpu}


def cli_exists() -> bool:
    try:
        done = subprocess.run([*SERVE_CMD, "--help"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def config_doc(port: int, code: str) -> dict[str, Any]:
    game = {"game_type": "roulette", "game_code": code, "timeout": 5, "input_stream": INPUT}
    return {"brokers": [{"broker": HOST, "port": port, "priority": 1}], "game_config": game}


def rid() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def check(round_id: str, res: object) -> None:
    if res != derive_result("roulette", round_id):
        raise RuntimeError(f"round {round_id}: got {res!r}, simulator sent something else")


class LoopThread:
    """An event loop running on its own daemon thread."""

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
        self.client = aiomqtt.Client(HOST, port, identifier=f"bench-{code}-{uuid.uuid4().hex[:6]}",
                                     socket_options=NODELAY, timeout=OP_S)  # fmt: skip
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        await stack.enter_async_context(self.client)
        await self.client.subscribe(self.response, qos=1)
        reader = asyncio.create_task(self._read())
        stack.callback(reader.cancel)

    async def _read(self) -> None:
        async for message in self.client.messages:
            arg = json.loads(message.payload).get("arg") or {}  # type: ignore[arg-type]
            fut = self.waiting.pop(arg.get("round_id"), None)
            if fut is not None and not fut.done():
                fut.set_result(arg)

    async def round(self, round_id: str) -> float:
        fut = self.waiting[round_id] = asyncio.get_running_loop().create_future()
        arg = {"round_id": round_id, "input": INPUT}
        payload = json.dumps({"command": "detect", "arg": arg}, separators=(",", ":"))
        t0 = time.perf_counter()
        try:
            await self.client.publish(self.command, payload, qos=1)
            answer = await asyncio.wait_for(fut, OP_S)
        finally:
            self.waiting.pop(round_id, None)
        latency = time.perf_counter() - t0
        await self.client.publish(self.command, b'{"command":"timeout","arg":{}}', qos=1)
        if answer.get("err") != 0:
            raise RuntimeError(f"round {round_id}: IDP error {answer}")
        check(round_id, answer.get("res"))
        return latency


def sidecar_round(client: GatewayClient) -> Round:
    async def one(round_id: str) -> float:
        t0 = time.perf_counter()
        d = await client.detect(round_id, input_url=INPUT, deadline_s=OP_S)
        latency = time.perf_counter() - t0
        check(round_id, d.result.number if isinstance(d.result, RouletteNumber) else d.result)
        return latency

    return one


class InProcess:
    """Sidecars on one event loop in a separate thread (not the bench client's loop)."""

    where = "in-process: sidecars on their own event loop + thread (no `python -m gateway serve`)"

    def __init__(self) -> None:
        self.thread = LoopThread("sidecars")
        self.running: list[Sidecar] = []

    async def start(self, doc: dict[str, Any]) -> tuple[str, int]:
        async def go() -> Sidecar:
            sidecar = Sidecar(parse_config(doc, source="bench", env={}), listen=f"{HOST}:0")
            self.running.append(await sidecar.__aenter__())
            return sidecar

        return (await self.thread.call(go())).address, os.getpid()

    async def close(self) -> None:
        async def stop() -> None:
            await asyncio.gather(*(s.__aexit__(None, None, None) for s in self.running),
                                 return_exceptions=True)  # fmt: skip

        with contextlib.suppress(Exception):
            await self.thread.call(stop(), 20)
        await self.thread.close()


class Subprocesses:
    """One ``python -m gateway serve`` process per sidecar, as in production."""

    where = "subprocess per sidecar: python -m gateway serve"

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.procs = workdir, list[asyncio.subprocess.Process]()

    def _files(self, doc: dict[str, Any]) -> tuple[Path, int]:
        path = self.workdir / f"{doc['game_config']['game_code']}.json"
        path.write_text(json.dumps(doc))
        return path, os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT, 0o644)

    async def start(self, doc: dict[str, Any]) -> tuple[str, int]:
        (path, out), address = self._files(doc), f"{HOST}:{free_port()}"
        try:
            proc = await asyncio.create_subprocess_exec(
                *PDEATHSIG, *SERVE_CMD, "--config", str(path), "--listen", address,
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)  # fmt: skip
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
    opts = [("grpc.initial_reconnect_backoff_ms", 10), ("grpc.min_reconnect_backoff_ms", 10),
            ("grpc.max_reconnect_backoff_ms", 50)]  # fmt: skip
    async with grpc.aio.insecure_channel(address, options=opts) as channel:
        stub, request = health_pb2_grpc.HealthStub(channel), health_pb2.HealthCheckRequest()
        async with asyncio.timeout(limit):
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(request, timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.002)


async def sequential(one: Round, rounds: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await one(rid())
    return [await one(rid()) for _ in range(rounds)]


async def in_flight(ones: list[Round], rounds: int, warmup: int) -> dict[str, float]:
    async def run(total: int) -> tuple[float, list[float]]:
        todo: Iterator[int] = iter(range(total))
        latencies: list[float] = []

        async def worker(one: Round) -> None:
            for _ in todo:  # shared: each round is taken by exactly one worker
                latencies.append(await one(rid()))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(one) for one in ones))
        return time.perf_counter() - t0, latencies

    await run(max(warmup, len(ones)))
    elapsed, latencies = await run(rounds)
    return {"rps": rounds / elapsed, "p50_ms_load": statistics.median(latencies) * 1000}


def summary(latencies: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {"p50_ms": statistics.median(ms), "p99_ms": p99, "max_ms": ms[-1]}


async def measure(args: argparse.Namespace, use_cli: bool) -> dict[str, Any]:
    codes = [f"ARO-{101 + i}" for i in range(args.concurrency)]
    out: dict[str, Any] = {"machine": machine(), "rounds": args.rounds, "warmup": args.warmup,
                           "concurrency": args.concurrency, "tables": f"{codes[0]}..{codes[-1]}"}  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        devices = LoopThread("simulator")
        stack.push_async_callback(devices.close)
        tables = [SimTable("roulette", c, *default_topics(c)) for c in codes]

        async def make_sim() -> IdpSimulator:
            return IdpSimulator([SimBroker(HOST, broker.port)], tables, Behaviour(delay_s=0))

        if os.environ.get("BENCH_SIM") == "main":
            sim = await make_sim()
            simtask = asyncio.create_task(sim.run())
            stack.callback(simtask.cancel)
            await sim.wait_connected(OP_S)
        else:
            sim = await devices.call(make_sim())
            asyncio.run_coroutine_threadsafe(sim.run(), devices.loop)
            await devices.call(sim.wait_connected(OP_S))

        async with contextlib.AsyncExitStack() as direct_stack:
            direct = [DirectTable(broker.port, c) for c in codes]
            await asyncio.gather(*(d.open(direct_stack) for d in direct))
            base = summary(await sequential(direct[0].round, args.rounds, args.warmup))
            base |= await in_flight([d.round for d in direct], args.rounds, args.warmup)
        out["baseline"] = base
        out["rss_before_sidecar_mb"] = rss_mb(os.getpid())

        workdir = Path(broker.log_path).parent
        sidecars = Subprocesses(workdir) if use_cli else InProcess()
        stack.push_async_callback(sidecars.close)
        out["sidecar_runs"] = sidecars.where
        t0 = time.perf_counter()
        address, pid = await sidecars.start(config_doc(broker.port, codes[0]))
        await wait_serving(address)
        serving_s = time.perf_counter() - t0
        first = await stack.enter_async_context(GatewayClient(address))
        await sequential(sidecar_round(first), 0, args.warmup)
        rss = rss_mb(pid)
        side = summary(await sequential(sidecar_round(first), args.rounds, 0))
        others = await asyncio.gather(*(sidecars.start(config_doc(broker.port, c)) for c in codes[1:]))
        t1 = time.perf_counter()
        await asyncio.gather(*(wait_serving(a, 60) for a, _ in others))
        print("others serving after", time.perf_counter() - t1, file=sys.stderr)
        clients = [first] + [await stack.enter_async_context(GatewayClient(a)) for a, _ in others]
        side |= await in_flight([sidecar_round(c) for c in clients], args.rounds, args.warmup)
        out["sidecar"] = side | {"rss_mb": rss, "serving_s": serving_s, "in_process": not use_cli}
    return out


def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, bool]]:
    b, s, t = r["baseline"], r["sidecar"], TARGETS
    add50, add99, ratio = s["p50_ms"] - b["p50_ms"], s["p99_ms"] - b["p99_ms"], s["rps"] / b["rps"]
    c = r["concurrency"]
    return [
        ("sequential p50 (ms)", f"{b['p50_ms']:.3f}", f"{s['p50_ms']:.3f}", f"+{add50:.3f}",
         f"added <= {t['p50_ms']}", add50 <= t["p50_ms"]),
        ("sequential p99 (ms)", f"{b['p99_ms']:.3f}", f"{s['p99_ms']:.3f}", f"+{add99:.3f}",
         f"added <= {t['p99_ms']}", add99 <= t["p99_ms"]),
        (f"throughput, {c} in flight (rps)", f"{b['rps']:.0f}", f"{s['rps']:.0f}", f"{ratio:.2f}x",
         f">= {t['ratio']}x", ratio >= t["ratio"]),
        ("sidecar RSS after warm-up (MB)", "", f"{s['rss_mb']:.1f}", "", f"<= {t['rss_mb']:.0f}",
         s["rss_mb"] <= t["rss_mb"]),
        ("sidecar start-to-SERVING (s)", "", f"{s['serving_s']:.3f}", "", f"<= {t['serving_s']}",
         s["serving_s"] <= t["serving_s"]),
    ]  # fmt: skip


def report(r: dict[str, Any]) -> None:
    m, b, s = r["machine"], r["baseline"], r["sidecar"]
    print(f"machine: nproc={m['nproc']} python={m['python']} cpu={m['cpu']}")
    print(f"rounds={r['rounds']} (after {r['warmup']} warm-up); in flight: {r['concurrency']} "
          f"tables {r['tables']}, one MQTT client / one sidecar per table (one IDP detection "
          f"per table); sidecars: {r['sidecar_runs']}")  # fmt: skip
    print(f"\n{'':34}{'baseline':>10}{'sidecar':>10}{'added':>10}  {'target':<15}verdict")
    for name, base, side, added, target, ok in verdicts(r):
        print(f"{name:34}{base:>10}{side:>10}{added:>10}  {target:<15}{'PASS' if ok else 'MISS'}")
    print(f"\np50 under load (ms): baseline {b['p50_ms_load']:.2f}, sidecar {s['p50_ms_load']:.2f};"
          f" max sequential (ms): baseline {b['max_ms']:.2f}, sidecar {s['max_ms']:.2f}")  # fmt: skip
    if s["in_process"]:
        print(f"RSS is the whole bench process (bench client, simulator, sidecar on its thread); "
              f"it was {r['rss_before_sidecar_mb']:.1f} MB before the sidecar started")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    use_cli = cli_exists() and os.environ.get("BENCH_MODE") != "thread"
    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
    logging.getLogger("mqtt").setLevel(logging.ERROR)

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(120 + 0.05 * 4 * (args.rounds + args.warmup)):
            return await measure(args, use_cli)

    try:
        result = asyncio.run(bounded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    ok = all(v[-1] for v in verdicts(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
