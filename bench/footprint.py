"""Idle cost of one sidecar: CPU, memory, Redis commands and MQTT packets per second.

A table's sidecar spends almost all of its life idle, so its idle cost is the cost per table.
The bench starts two fresh mosquitto (``set_tcp_nodelay``) and a fresh redis-server, then one
``python -m gateway serve`` configured as in production: two brokers, the Redis URL (shared
election and statistics) and Prometheus metrics on. Once it is SERVING with both links up (and
the bench's gRPC channel closed again), it is measured for ``--seconds``: CPU % of one core
from ``/proc/<pid>/stat`` (utime + stime), VmRSS and PSS (``smaps_rollup``), Redis commands/s
from the ``INFO commandstats`` delta of its own Redis (nothing else uses it), and MQTT packets
per second (both ways, both brokers) counted in the brokers' logs. Baseline, in the same run, on
fresh brokers and Redis of its own: a minimal idle Python process holding the same connections
(an aiomqtt client on each broker with the same keepalive, and a redis-py client that pinged
once) and doing nothing else. ``--failover NAME=SECONDS`` sets a timer of the sidecar's
config (``standby_probe_interval_s=0.2`` probes the standby as often as the active broker, to
see what a lever is worth). Exit status 0 when every target is met, 1 if not, 2 when the
measurement failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis
from benchlib import finish, machine, run_bounded  # bench/ is on sys.path when run as a script

from gateway.config import LinkTimings
from gateway.devtools.sandbox import HOST, MosquittoProcess, RedisProcess, free_port
from gateway.v1 import gateway_pb2 as pb
from gateway.v1 import gateway_pb2_grpc as pb_grpc

SERVE = [sys.executable, "-m", "gateway", "--log-format", "json", "serve"]
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
TARGETS = {"cpu_pct": 0.6, "rss_mb": 50.0}
START_LIMIT_S = 30.0
TICK = os.sysconf("SC_CLK_TCK")

# The baseline: the same connections as a sidecar, idle. Run as its own process.
IDLE_CLIENT = r"""
import asyncio, socket, sys
import aiomqtt, redis.asyncio as redis

async def main(host, p1, p2, url, keepalive):
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(host, p1, keepalive=keepalive, socket_options=nodelay), \
            aiomqtt.Client(host, p2, keepalive=keepalive, socket_options=nodelay):
        r = redis.from_url(url)
        await r.ping()
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))
"""


def cpu_ticks(pid: int) -> tuple[int, int]:
    """utime and stime of a process (all its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def memory_mb(pid: int) -> dict[str, float | None]:
    """VmRSS and (if readable) PSS of a process, in MB (10^6 bytes)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024 / 1e6  # type: ignore[union-attr]
    pss = None
    with contextlib.suppress(OSError, AttributeError):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        pss = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1)) * 1024 / 1e6  # type: ignore[union-attr]
    return {"rss_mb": rss, "pss_mb": pss}


async def redis_commands(r: redis.Redis) -> dict[str, int]:
    """Calls per command from ``INFO commandstats`` (the bench's own INFO left out later)."""
    info = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


class BrokerLog:
    """MQTT packets to and from a broker's clients, counted in its log (``log_type all``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        """The log's length now: where the measured window starts or ends."""
        return self.path.stat().st_size

    def packets(self, start: int, end: int) -> int:
        """Packets the broker logged receiving or sending between two log offsets."""
        with self.path.open("rb") as f:
            f.seek(start)
            text = f.read(end - start)
        return len(re.findall(rb": (?:Received|Sending) [A-Z]+ ", text))


def sidecar_config(path: Path, p1: int, p2: int, failover: dict[str, float]) -> None:
    """A production-shaped table config: two brokers, default timers unless ``failover``."""
    brokers = [{"id": "b1", "host": HOST, "port": p1, "priority": 1},
               {"id": "b2", "host": HOST, "port": p2, "priority": 2}]  # fmt: skip
    table = {"game": "roulette", "code": "ARO-501", "input": "rtmp://10.0.0.50:1935/live/r"}
    doc: dict[str, Any] = {"version": 1, "brokers": brokers, "table": table}
    if failover:
        doc["failover"] = failover
    path.write_text(json.dumps(doc))


def text(path: Path) -> str:
    """A log file's text so far."""
    return path.read_text(errors="replace")


async def wait_serving(proc: asyncio.subprocess.Process, log: Path) -> None:
    """Until the sidecar serves with both links connected (the caller bounds it)."""
    address = None
    while address is None:
        if proc.returncode is not None:
            raise RuntimeError(f"sidecar exited: {text(log)[-400:]}")
        found = re.search(r"listening on (\S+);", text(log))
        address = found.group(1) if found else None
        await asyncio.sleep(0.02)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                h = await stub.Health(pb.HealthRequest(), timeout=0.5)
                if h.brokers and all(b.connected for b in h.brokers):
                    return
            await asyncio.sleep(0.05)


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 8)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def observe(
    pid: int, url: str, logs: list[BrokerLog], seconds: float, settle_s: float
) -> dict[str, Any]:
    """Settle, then CPU, memory, Redis and MQTT rates over ``seconds``."""
    await asyncio.sleep(settle_s)
    r = redis.from_url(url)  # one connection, opened before the window (its HELLO not in it)
    try:
        return await _observe(pid, r, logs, seconds)
    finally:
        await r.aclose()


async def _observe(
    pid: int, r: redis.Redis, logs: list[BrokerLog], seconds: float
) -> dict[str, Any]:
    await r.ping()
    t0, c0, r0 = time.monotonic(), cpu_ticks(pid), await redis_commands(r)
    m0 = [b.size() for b in logs]
    await asyncio.sleep(seconds)
    t1, c1, r1 = time.monotonic(), cpu_ticks(pid), await redis_commands(r)
    m1 = [b.size() for b in logs]
    elapsed = t1 - t0
    per_command = {k: (v - r0.get(k, 0)) / elapsed for k, v in r1.items()}
    per_command.pop("info", None)  # the bench's own INFO commandstats
    per_command = {k: round(v, 3) for k, v in sorted(per_command.items()) if v > 0}
    packets = sum(b.packets(x, y) for b, x, y in zip(logs, m0, m1, strict=True)) / elapsed
    return {
        "cpu_pct": (sum(c1) - sum(c0)) / TICK / elapsed * 100,
        "cpu_user_pct": (c1[0] - c0[0]) / TICK / elapsed * 100,
        "cpu_system_pct": (c1[1] - c0[1]) / TICK / elapsed * 100,
        **memory_mb(pid),
        "redis_cmds_s": sum(per_command.values()),
        "redis_by_command": per_command,
        "mqtt_packets_s": packets,
        "seconds": elapsed,
    }


async def run_one(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Fresh brokers and Redis, then the sidecar (or the idle baseline) measured on them."""
    keepalive = LinkTimings().keepalive_s
    async with contextlib.AsyncExitStack() as stack:
        b1 = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        b2 = await stack.enter_async_context(MosquittoProcess(tcp_nodelay=True))
        store = await stack.enter_async_context(RedisProcess())
        log = workdir / f"{kind}.log"
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if kind == "sidecar":
            config = workdir / "table.json"
            sidecar_config(config, b1.port, b2.port, args.failover)
            metrics = f"{HOST}:{free_port()}"
            argv = [*SERVE, "--config", str(config), "--listen", f"{HOST}:0",
                    "--redis-url", store.url, "--metrics-listen", metrics]  # fmt: skip
        else:
            argv = [sys.executable, "-c", IDLE_CLIENT, HOST, str(b1.port), str(b2.port),
                    store.url, str(keepalive)]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *PDEATHSIG, *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, env={**os.environ, **args.env},
            )  # fmt: skip
        finally:
            os.close(out)
        stack.push_async_callback(stop, proc)
        async with asyncio.timeout(START_LIMIT_S):
            if kind == "sidecar":
                await wait_serving(proc, log)
            else:
                while "ready" not in text(log):
                    if proc.returncode is not None:
                        raise RuntimeError(f"baseline exited: {text(log)[-400:]}")
                    await asyncio.sleep(0.02)
        logs = [BrokerLog(b.log_path) for b in (b1, b2)]
        # setpriv execs the program: the pid is the sidecar's (or the baseline's) own.
        result = await observe(proc.pid, store.url, logs, args.seconds, args.settle)
        if proc.returncode is not None:
            raise RuntimeError(f"{kind} exited during the measurement")
        return result


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {"machine": machine(), "seconds": args.seconds, "failover": args.failover}
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        workdir = Path(args.log_dir or tmp)
        os.makedirs(workdir, exist_ok=True)
        r["baseline"] = await run_one("baseline", args, workdir)
        r["sidecar"] = await run_one("sidecar", args, workdir)
    s = r["sidecar"]
    r["verdicts"] = {k: s[k] <= limit for k, limit in TARGETS.items()}
    return r


def report(r: dict[str, Any]) -> None:
    m, b, s, v = r["machine"], r["baseline"], r["sidecar"], r["verdicts"]
    print(f"machine: nproc={m['nproc']}, Python {m['python']}, {m['cpu']}, load {m['load_1m']:.2f}")
    print(
        f"idle for {r['seconds']:g} s after SERVING; baseline: aiomqtt on both brokers + redis-py"
    )
    if r["failover"]:
        print(f"sidecar failover timers: {r['failover']}")
    print(f"{'':22}{'baseline':>10}{'sidecar':>10}{'ratio':>8}  target")
    rows = [("CPU, % of a core", "cpu_pct", "{:.3f}"), ("  user", "cpu_user_pct", "{:.3f}"),
            ("  system", "cpu_system_pct", "{:.3f}"), ("RSS, MB", "rss_mb", "{:.1f}"),
            ("PSS, MB", "pss_mb", "{:.1f}"), ("Redis commands/s", "redis_cmds_s", "{:.2f}"),
            ("MQTT packets/s", "mqtt_packets_s", "{:.2f}")]  # fmt: skip
    for label, key, form in rows:
        bv, sv = b.get(key), s.get(key)
        cells = [form.format(x) if x is not None else "-" for x in (bv, sv)]
        ratio = f"{sv / bv:.1f}x" if bv and sv is not None else "-"
        target = ""
        if key in TARGETS:
            target = f"<= {TARGETS[key]:g} {'met' if v[key] else 'MISSED'}"
        print(f"{label:22}{cells[0]:>10}{cells[1]:>10}{ratio:>8}  {target}")
    print(f"sidecar Redis commands/s by command: {s['redis_by_command']}")


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=60.0, help="measured idle time")
    p.add_argument("--settle", type=float, default=3.0, help="idle time before measuring")
    extra = "extra environment for both processes (OTEL_SDK_DISABLED=true...)"
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help=extra)
    timer = "a failover timer of the sidecar's config (standby_probe_interval_s=0.2...)"
    p.add_argument("--failover", action="append", default=[], metavar="NAME=SECONDS", help=timer)
    p.add_argument("--log-dir", help="keep the config and logs here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.seconds <= 0 or args.settle < 0:
        p.error("--seconds must be > 0, --settle >= 0")
    args.env = dict(e.split("=", 1) for e in args.env)
    args.failover = {k: float(v) for k, v in (f.split("=", 1) for f in args.failover)}
    limit = 2 * (args.seconds + args.settle + START_LIMIT_S) + 60
    result = run_bounded(lambda: measure(args), limit, (RuntimeError, OSError))
    return finish(
        result, as_json=args.json, report=report, passed=lambda r: all(r["verdicts"].values())
    )


if __name__ == "__main__":
    sys.exit(main())
