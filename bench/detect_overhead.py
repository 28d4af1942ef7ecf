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

Telemetry phase (``--skip-telemetry`` leaves it out): two more sidecars on tables of their own,
one with the default environment (no ``OTEL_*``: telemetry off), one exporting traces (every
Detect sampled) and metrics (every second) over OTLP/gRPC to a sink in this process that counts
what it receives. Their sequential rounds alternate (off, on, off, on...) so that machine noise
hits both alike; the target is on/off <= 1.15x at p50. No span at the sink fails the bench.
Added latency is printed in ms and in bare gRPC round trips: the p50 of a ``grpc.health`` Check
over TCP loopback against the same sidecar is the unit (targets: <= 1.5 at p50, <= 3 at p99),
and 16 in flight as a ratio of direct throughput (target >= 0.5x). ``--transport unix`` has the
game call its sidecar on a Unix socket (``--listen-unix``; the unit stays the TCP Check).
``--compare-env``/``--compare-tree``/``--compare-transport`` add an A/B phase (``--only-compare``
alone): two more sidecars, B with the setting or the code of another source tree, their
sequential rounds alternating so machine noise hits both; ``--sidecar-env`` applies to all.
Exit status 0 when every target is met, 1 otherwise, 2 when the measurement itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
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
from benchlib import finish, machine, run_bounded  # bench/ is on sys.path when run as a script
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_metrics
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.client import GatewayClient
from gateway.config import default_topics
from gateway.devtools.sandbox import HOST, MosquittoProcess, free_port
from gateway.devtools.sim import Behaviour, IdpSimulator, SimBroker, SimTable, derive_result
from gateway.protocol import RouletteNumber

Round = Callable[[str], Awaitable[float]]  # runs one round, returns its latency in seconds
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
INPUT = "rtmp://10.0.0.50:1935/live/r10_sr"
OP_S = 5.0  # bound on every single operation
SERVE = [sys.executable, "-m", "gateway", "serve"]
# Children die with the bench even on SIGKILL. setpriv rather than a preexec_fn, which would
# force fork() and run gRPC's fork handlers in a process with live gRPC threads.
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
# p50/p99: added latency in bare gRPC round trips (the p50 of a grpc.health Check over TCP
# loopback against the same sidecar), one unit for both.
TARGETS = {"p50": 1.5, "p99": 3.0, "ratio": 0.5, "rss_mb": 60.0, "serving_s": 1.5, "otel": 1.15}
TELEMETRY_TABLES = {"off": "ARO-901", "on": "ARO-902"}
COMPARE_TABLES = {"a": "ARO-801", "b": "ARO-802"}  # one detection per table at a time
TELEMETRY_ON = {  # and OTEL_EXPORTER_OTLP_ENDPOINT, the sink's
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_TRACES_SAMPLER": "always_on",
    "OTEL_EXPORTER_OTLP_INSECURE": "true",
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
}


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

    def __init__(
        self, workdir: Path, transport: str = "tcp", env: dict[str, str] | None = None
    ) -> None:
        self.workdir, self.procs = workdir, list[asyncio.subprocess.Process]()
        self.transport, self.env = transport, env or {}

    async def spawn(
        self, argv: list[str], out: int, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *PDEATHSIG, *argv, stdin=subprocess.DEVNULL, stdout=out, start_new_session=True,
            stderr=None if out == subprocess.PIPE else out, env=env, cwd=cwd,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def log(self, code: str) -> Path:
        return self.workdir / f"{code}.log"

    async def start(
        self,
        doc: dict[str, Any],
        env: dict[str, str] | None = None,
        *,
        transport: str | None = None,
        tree: str | None = None,
    ) -> tuple[str, int, str]:
        """Start one sidecar (from the source ``tree`` if given): its TCP address, pid and
        the target the game calls."""
        code = doc["game_config"]["game_code"]
        path, port = self.workdir / f"{code}.json", free_port()
        path.write_text(json.dumps(doc))
        out = os.open(self.log(code), os.O_WRONLY | os.O_CREAT, 0o644)
        argv = [*SERVE, "--config", str(path), "--listen", f"{HOST}:{port}"]
        target = f"{HOST}:{port}"
        if (transport or self.transport) == "unix":
            sock = self.workdir / f"{code}.sock"
            argv += ["--listen-unix", str(sock)]
            target = f"unix:{sock}"
        child_env = (os.environ if env is None else env) | self.env
        if tree is not None:  # `python -m gateway` imports from its working directory first
            child_env = child_env | {"PYTHONPATH": tree}
        try:
            proc = await self.spawn(argv, out, child_env, cwd=tree)
            return f"{HOST}:{port}", proc.pid, target
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


class OtlpSink:
    """A minimal OTLP/gRPC collector on a free loopback port: accepts and counts every export."""

    def __init__(self) -> None:
        self.spans = self.server_spans = self.points = self.exports = 0
        self.arrived = asyncio.Event()
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port(f"{HOST}:0")
        t, m = otlp_trace, otlp_metrics
        self._serve("trace.v1.TraceService", t.ExportTraceServiceRequest,
                    t.ExportTraceServiceResponse, self._count_spans)  # fmt: skip
        self._serve("metrics.v1.MetricsService", m.ExportMetricsServiceRequest,
                    m.ExportMetricsServiceResponse, self._count_points)  # fmt: skip

    def _serve(
        self,
        service: str,
        request: type[Message],
        response: type[Message],
        count: Callable[[Any], None],
    ) -> None:
        async def export(message: Message, context: object) -> Message:
            self.exports += 1
            count(message)
            self.arrived.set()
            return response()

        handler = grpc.unary_unary_rpc_method_handler(
            export, request.FromString, response.SerializeToString
        )
        name = f"opentelemetry.proto.collector.{service}"
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(name, {"Export": handler})]
        )

    def _count_spans(self, request: otlp_trace.ExportTraceServiceRequest) -> None:
        for spans in (ss.spans for rs in request.resource_spans for ss in rs.scope_spans):
            self.spans += len(spans)
            self.server_spans += sum(s.kind == Span.SPAN_KIND_SERVER for s in spans)

    def _count_points(self, request: otlp_metrics.ExportMetricsServiceRequest) -> None:
        for rm in request.resource_metrics:
            for metric in (m for sm in rm.scope_metrics for m in sm.metrics):
                data = metric.WhichOneof("data")
                self.points += len(getattr(metric, data).data_points) if data else 0

    async def wait_server_spans(self, n: int, limit: float) -> None:
        """Until ``n`` server spans have arrived, or for ``limit`` seconds at most."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while self.server_spans < n:
                    await self.arrived.wait()
                    self.arrived.clear()

    async def __aenter__(self) -> OtlpSink:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)


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


async def interleaved(
    ones: dict[str, Round], rounds: int, gap_s: float = 0.0
) -> dict[str, list[float]]:
    """``rounds`` sequential rounds on each, alternating (a, b, a, b...): noise hits all alike."""
    latencies: dict[str, list[float]] = {name: [] for name in ones}
    for _ in range(rounds):
        for name, one in ones.items():
            latencies[name] += await sequential(one, 1, gap_s)
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
    r |= {k: getattr(args, k) for k in ("rounds", "warmup", "concurrency", "gap_ms", "transport")}
    r["sidecar_env"] = dict(args.sidecar_env)
    r |= {k: getattr(args, k) for k in ("compare_env", "compare_tree", "compare_transport")}
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        # Before the children: it must outlive them, to receive the on-sidecar's last export.
        sink = None if args.skip_telemetry else await stack.enter_async_context(OtlpSink())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        children = Children(workdir, args.transport, dict(args.sidecar_env))
        stack.push_async_callback(children.close)
        tables = [*codes, *TELEMETRY_TABLES.values(), *COMPARE_TABLES.values()]
        argv = [sys.executable, __file__, "--simulate", str(broker.port), *tables]
        sim = await children.spawn(argv, subprocess.PIPE)
        assert sim.stdout is not None
        if await asyncio.wait_for(sim.stdout.readline(), 30) != b"ready\n":
            raise RuntimeError("the simulator did not start")
        if args.only_compare:
            return r | {"compare": await compare(children, stack, broker.port, args)}
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
        address, pid, target = await children.start(config_doc(broker.port, codes[0]))
        await health_checks(address, 10)
        side: dict[str, Any] = {"serving_s": time.perf_counter() - t0}
        first, inside = await stack.enter_async_context(GatewayClient(target)), list[float]()
        await sequential(sidecar_round(first, inside), args.warmup)
        side["rss_mb"] = rss_mb(pid)
        inside.clear()
        side |= summary(
            await sequential(sidecar_round(first, inside), args.rounds, args.gap_ms / 1000)
        )
        side |= summary([ms / 1000 for ms in inside], "_inside")
        # The unit: a bare health Check over TCP loopback against the same sidecar.
        side |= summary(await health_checks(address, 10, args.rounds), "_grpc_floor")
        if target != address:
            side |= summary(await health_checks(target, 10, args.rounds), "_grpc_floor_target")
        started = [await children.start(config_doc(broker.port, c)) for c in codes[1:]]
        await asyncio.gather(*(health_checks(a, 60) for a, _, _ in started))
        clients = [first]
        clients += [await stack.enter_async_context(GatewayClient(t)) for _, _, t in started]
        pids["sidecars"] = [pid] + [p for _, p, _ in started]
        rounds = [sidecar_round(c, []) for c in clients]
        r["sidecar"] = side | await in_flight(rounds, args.rounds, args.warmup, pids)
        if sink is not None:
            r["telemetry"] = await telemetry(children, stack, sink, broker.port, args)
        if args.compare_env or args.compare_tree or args.compare_transport:
            r["compare"] = await compare(children, stack, broker.port, args)
    return r


async def compare(
    children: Children, stack: contextlib.AsyncExitStack, port: int, args: argparse.Namespace
) -> dict[str, Any]:
    """A/B: sequential Detects alternating between sidecar A (as the main phases) and B
    (``--compare-env``, ``--compare-tree``, ``--compare-transport``), so noise hits both."""
    b_env = os.environ | dict(args.compare_env)
    started = {
        "a": await children.start(config_doc(port, COMPARE_TABLES["a"])),
        "b": await children.start(
            config_doc(port, COMPARE_TABLES["b"]),
            b_env,
            transport=args.compare_transport,
            tree=args.compare_tree,
        ),
    }
    await asyncio.gather(*(health_checks(a, 10) for a, _, _ in started.values()))
    ones: dict[str, Round] = {}
    for k, (_, _, target) in started.items():
        ones[k] = sidecar_round(await stack.enter_async_context(GatewayClient(target)), [])
    await interleaved(ones, args.warmup)
    cpu0 = {k: cpu_s([pid]) for k, (_, pid, _) in started.items()}
    latencies = await interleaved(ones, args.rounds, args.gap_ms / 1000)
    r: dict[str, Any] = {}
    for k, (_, pid, _) in started.items():
        r[k] = summary(latencies[k]) | {
            "cpu_ms_per_round": (cpu_s([pid]) - cpu0[k]) * 1000 / args.rounds
        }
    floors = {
        k: summary(await health_checks(t, 10, args.rounds)) for k, (_, _, t) in started.items()
    }
    for k, f in floors.items():
        r[k] |= {"p50_grpc_floor": f["p50"], "p99_grpc_floor": f["p99"]}
    return r


def report_compare(r: dict[str, Any]) -> None:
    x = r["compare"]
    what = {"env": r.get("compare_env"), "tree": r.get("compare_tree"),
            "transport": r.get("compare_transport")}  # fmt: skip
    b_is = ", ".join(f"{k} {v}" for k, v in what.items() if v)
    print(f"A/B, rounds alternating: A as the main phases, B {b_is}")
    for k in ("a", "b"):
        y = x[k]
        print(
            f"  {k.upper()}: p50 {y['p50']:.3f} / p99 {y['p99']:.3f} ms, CPU "
            f"{y['cpu_ms_per_round']:.2f} ms/round, its floor p50 {y['p50_grpc_floor']:.3f} / "
            f"p99 {y['p99_grpc_floor']:.3f} ms"
        )
    print(
        f"  B/A p50 {x['b']['p50'] / x['a']['p50']:.3f}x, p99 {x['b']['p99'] / x['a']['p99']:.3f}x"
    )


async def telemetry(
    children: Children,
    stack: contextlib.AsyncExitStack,
    sink: OtlpSink,
    port: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Sequential Detects, alternating between a sidecar without telemetry and one with."""
    off = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink.port}"}
    envs = {"off": off, "on": off | TELEMETRY_ON | endpoint}
    started = {
        k: await children.start(config_doc(port, TELEMETRY_TABLES[k]), envs[k]) for k in envs
    }
    await asyncio.gather(*(health_checks(a, 10) for a, _, _ in started.values()))
    inside = {k: list[float]() for k in started}
    ones: dict[str, Round] = {}
    for k, (_, _, target) in started.items():
        ones[k] = sidecar_round(await stack.enter_async_context(GatewayClient(target)), inside[k])
    await interleaved(ones, args.warmup)
    cpu0 = {k: cpu_s([pid]) for k, (_, pid, _) in started.items()}
    for values in inside.values():
        values.clear()
    latencies = await interleaved(ones, args.rounds, args.gap_ms / 1000)
    r: dict[str, Any] = {"tables": TELEMETRY_TABLES}
    for k, (_, pid, _) in started.items():
        cpu = (cpu_s([pid]) - cpu0[k]) * 1000 / args.rounds
        r[k] = summary(latencies[k]) | summary([ms / 1000 for ms in inside[k]], "_inside")
        r[k] |= {"cpu_ms_per_round": cpu, "rss_mb": rss_mb(pid)}
    # One server span per Detect; the batch span processor sends them within 5 s.
    detects = args.warmup + args.rounds
    await sink.wait_server_spans(detects, 15)
    if not sink.spans:
        lines = children.log(TELEMETRY_TABLES["on"]).read_text().splitlines()
        said = "\n".join([ln for ln in lines if "telemetry" in ln or "xport" in ln][-10:])
        raise RuntimeError(f"the OTLP sink received no span: tracing did not run. Sidecar:\n{said}")
    r["sink"] = {"spans": sink.spans, "server_spans": sink.server_spans, "detects": detects}
    r["sink"] |= {"metric_points": sink.points, "exports": sink.exports}
    return r | {f"ratio_{p}": r["on"][p] / r["off"][p] for p in ("p50", "p99")}


Verdict = tuple[str, str, str, str, str, bool | None]  # None: no target, shown for information


def verdicts(r: dict[str, Any]) -> list[Verdict]:
    b, s, t = r["baseline"], r["sidecar"], TARGETS
    add50, add99, ratio = s["p50"] - b["p50"], s["p99"] - b["p99"], s["rps"] / b["rps"]
    rt50, rt99 = added_round_trips(r)
    unit = f"{s['p50_grpc_floor']:.3f}"
    return [
        ("sequential p50 (ms)", f"{b['p50']:.3f}", f"{s['p50']:.3f}", f"{add50:+.3f}", "", None),
        ("sequential p99 (ms)", f"{b['p99']:.3f}", f"{s['p99']:.3f}", f"{add99:+.3f}", "", None),
        ("added p50 (bare gRPC round trips)", unit, "", f"{rt50:.2f}", f"<= {t['p50']}",
         rt50 <= t["p50"]),
        ("added p99 (bare gRPC round trips)", unit, "", f"{rt99:.2f}", f"<= {t['p99']}",
         rt99 <= t["p99"]),
        (f"throughput, {r['concurrency']} in flight (rps)", f"{b['rps']:.0f}", f"{s['rps']:.0f}",
         f"{ratio:.2f}x", f">= {t['ratio']}x", ratio >= t["ratio"]),
        ("sidecar RSS after warm-up (MB)", "", f"{s['rss_mb']:.1f}", "", f"<= {t['rss_mb']:.0f}",
         s["rss_mb"] <= t["rss_mb"]),
        ("sidecar start-to-SERVING (s)", "", f"{s['serving_s']:.3f}", "",
         f"<= {t['serving_s']}", s["serving_s"] <= t["serving_s"]),
    ] + (telemetry_verdicts(r["telemetry"]) if "telemetry" in r else [])  # fmt: skip


def added_round_trips(r: dict[str, Any]) -> tuple[float, float]:
    """Added p50 and p99 over the baseline, in bare gRPC round trips (TCP health Check p50)."""
    b, s = r["baseline"], r["sidecar"]
    unit = s["p50_grpc_floor"]
    return (s["p50"] - b["p50"]) / unit, (s["p99"] - b["p99"]) / unit


def telemetry_verdicts(x: dict[str, Any]) -> list[Verdict]:
    off, on, spans, target = x["off"], x["on"], x["sink"]["spans"], TARGETS["otel"]
    return [
        ("telemetry off/on p50 (ms)", f"{off['p50']:.3f}", f"{on['p50']:.3f}",
         f"{x['ratio_p50']:.3f}x", f"on/off <= {target}", x["ratio_p50"] <= target),
        ("telemetry off/on p99 (ms)", f"{off['p99']:.3f}", f"{on['p99']:.3f}",
         f"{x['ratio_p99']:.3f}x", "", None),
        ("telemetry spans at the OTLP sink", "", f"{spans}", "", "> 0", spans > 0),
    ]  # fmt: skip


def report(r: dict[str, Any]) -> None:
    if "sidecar" not in r:  # --only-compare
        report_compare(r)
        return
    m, b, s = r["machine"], r["baseline"], r["sidecar"]
    print(f"machine: nproc={m['nproc']}, Python {m['python']}, {m['cpu']}, load {m['load_1m']:.2f}")
    print(
        f"game -> sidecar over {r['transport']}"
        + (f", sidecar env {r['sidecar_env']}" if r["sidecar_env"] else "")
        + f"; {r['rounds']} rounds after {r['warmup']} warm-up; one broker and one simulator for "
        f"both. In flight: {r['concurrency']} tables {r['tables']}\n(one IDP detection per "
        "table): one MQTT client per table vs one `gateway serve` process per table."
    )
    print(f"\n{'':34}{'baseline':>10}{'sidecar':>10}{'added':>10}  {'target':<15}verdict")
    for name, base, side, added, target, ok in verdicts(r):
        verdict = "" if ok is None else "PASS" if ok else "MISS"
        print(f"{name:34}{base:>10}{side:>10}{added:>10}  {target:<15}{verdict}".rstrip())
    print(
        f"\nwhere the time goes: gRPC floor (health Check round trip) p50 "
        f"{s['p50_grpc_floor']:.3f} / p99 {s['p99_grpc_floor']:.3f} ms; the sidecar's own "
        f"detect->answer\n(elapsed_ms) p50 {s['p50_inside']:.3f} / p99 {s['p99_inside']:.3f} "
        f"ms vs the baseline's p50 {b['p50']:.3f} / p99 {b['p99']:.3f} ms"
    )
    if "p50_grpc_floor_target" in s:
        print(
            f"gRPC floor over {r['transport']} (the game's target): p50 "
            f"{s['p50_grpc_floor_target']:.3f} / p99 {s['p99_grpc_floor_target']:.3f} ms"
        )
    print(
        f"added in bare gRPC round trips (unit: TCP floor p50 {s['p50_grpc_floor']:.3f} ms): "
        f"p50 {added_round_trips(r)[0]:.2f}, p99 {added_round_trips(r)[1]:.2f}; "
        f"added p99 / floor p99: {(s['p99'] - b['p99']) / s['p99_grpc_floor']:.2f}; "
        f"{r['concurrency']} in flight: {s['rps'] / b['rps']:.2f}x direct"
    )
    print(
        f"max sequential: baseline {b['max']:.2f}, sidecar {s['max']:.2f} ms; in flight p50/p99:"
        f" baseline {b['p50_load']:.1f}/{b['p99_load']:.1f}, sidecar "
        f"{s['p50_load']:.1f}/{s['p99_load']:.1f} ms"
    )
    for who, x in (("baseline", b), ("sidecar", s)):
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in x["cpu_ms_per_round"].items())
        print(f"CPU ms per round in flight, {who}: {cpu}")
    if "telemetry" in r:
        report_telemetry(r["telemetry"])
    if "compare" in r:
        report_compare(r)


def report_telemetry(x: dict[str, Any]) -> None:
    off, on, sink = x["off"], x["on"], x["sink"]
    print(
        f"telemetry rows: sidecar {x['tables']['off']} without telemetry (baseline column) vs "
        f"{x['tables']['on']} exporting OTLP traces\n(always_on) and metrics (1 s) to a sink in "
        f"the bench (sidecar column), rounds alternating; own detect->answer p50\n"
        f"off {off['p50_inside']:.3f} / on {on['p50_inside']:.3f} ms; CPU ms per round off "
        f"{off['cpu_ms_per_round']:.2f} / on {on['cpu_ms_per_round']:.2f}; RSS off "
        f"{off['rss_mb']:.1f} / on {on['rss_mb']:.1f} MB\nsink: {sink['spans']} spans "
        f"({sink['server_spans']} server spans for {sink['detects']} Detects), "
        f"{sink['metric_points']} metric data points, {sink['exports']} export calls"
    )


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
    p.add_argument(
        "--skip-telemetry", action="store_true", help="leave out the telemetry off/on phase"
    )
    p.add_argument(
        "--transport",
        choices=("tcp", "unix"),
        default="tcp",
        help="how the game reaches its sidecar: TCP loopback or a Unix socket (--listen-unix)",
    )
    p.add_argument(
        "--sidecar-env",
        action="append",
        type=lambda kv: tuple(kv.split("=", 1)),
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every sidecar (repeatable), to measure a setting",
    )
    p.add_argument(
        "--compare-env",
        action="append",
        type=lambda kv: tuple(kv.split("=", 1)),
        default=[],
        metavar="KEY=VALUE",
        help="A/B phase: sidecar B gets this environment too (repeatable)",
    )
    p.add_argument(
        "--compare-tree", metavar="DIR", help="A/B phase: sidecar B runs the code in DIR"
    )
    p.add_argument(
        "--compare-transport",
        choices=("tcp", "unix"),
        help="A/B phase: the game reaches sidecar B over this transport",
    )
    p.add_argument("--only-compare", action="store_true", help="run the A/B phase alone")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--simulate", nargs="+", help=argparse.SUPPRESS)  # PORT CODE...: the child
    args = p.parse_args()
    if args.simulate:
        asyncio.run(simulate(int(args.simulate[0]), args.simulate[1:]))
        return 0
    if not cli_exists():
        sys.exit(f"needs the sidecar's CLI: `{' '.join(SERVE)} --help` failed")

    # A wrong answer, no span at the sink... (RuntimeError): nothing to report.
    result = run_bounded(lambda: measure(args), 180 + 0.05 * 7 * (args.rounds + args.warmup))
    return finish(
        result,
        as_json=args.json,
        report=report,
        passed=lambda r: "sidecar" not in r or all(v[-1] is not False for v in verdicts(r)),
    )


if __name__ == "__main__":
    sys.exit(main())
