"""The studio the chaos soak runs: brokers behind fault proxies, Redis, the IDP simulator,
real ``gateway serve`` processes (one per table) with their configs mounted the way kubelet
mounts a ConfigMap, and a game loop per table.

Sidecars reach each broker through its ``MqttFaultProxy`` (so a QoS 1 stall can be put on
one broker); the simulated devices and the hostile client connect to the brokers directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from chaos_check import Death, Interval, RoundRecord, Timeline

from gateway.client import GatewayClient
from gateway.client import result_from_proto as typed
from gateway.devtools.faultproxy import MqttFaultProxy
from gateway.devtools.sandbox import HOST, MosquittoProcess, RedisProcess, free_port
from gateway.devtools.sim import Behaviour, IdpSimulator, SimBroker, SimTable

INPUT = "rtmp://192.0.2.50:1935/live/r10_sr"
OUTPUT = "https://example.invalid/live/r456_dice.flv"
DEADLINE_S = 3.0  # each Detect's gRPC deadline
BASE_TIMEOUT_S = 5.0  # the tables' timeout_s (a valid config swap changes it)
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
BROKERS = ("b1", "b2", "b3")
BIG, OTHER = "studio-a", "studio-b"


@dataclass(frozen=True)
class TableSpec:
    """One table: its game, broker group, and brokers in priority order."""

    code: str
    game: str
    group: str
    brokers: tuple[str, ...]
    shaker: str | None = None


TABLES = (
    TableSpec("ARO-001", "roulette", BIG, BROKERS),
    TableSpec("SBO-001", "sicbo", BIG, BROKERS, shaker="Billy-I"),
    TableSpec("BAC-001", "baccarat", BIG, BROKERS),
    # A second GameTable of the group during a broker rollout: it does not know b3 yet.
    TableSpec("ARO-002", "roulette", BIG, ("b1", "b2")),
    TableSpec("SBO-002", "sicbo", OTHER, ("b2", "b3", "b1"), shaker="Billy-II"),
    TableSpec("BAC-002", "baccarat", OTHER, ("b2", "b3", "b1")),
)


def gateway_command() -> list[str]:
    """``.venv/bin/gateway`` next to this interpreter, else ``python -m gateway``."""
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process, in kB (None if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class ConfigMount:
    """A directory laid out like a kubelet ConfigMap volume: ``table.json`` -> ``..data/``
    -> a timestamped directory; a change is a new directory and an atomic ``..data`` swap."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "table.json"
        self._n = 0
        directory.mkdir(parents=True)

    def write(self, content: bytes) -> None:
        self._n += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{self._n:09d}"
        new = self.dir / stamp
        new.mkdir()
        (new / "table.json").write_bytes(content)
        data, tmp = self.dir / "..data", self.dir / "..data_tmp"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(stamp, tmp)
        os.replace(tmp, data)  # the atomic swap
        if not self.path.is_symlink():
            os.symlink("..data/table.json", self.path)
        if old is not None:
            shutil.rmtree(self.dir / old, ignore_errors=True)


class Sidecar:
    """One table's ``gateway serve`` process slot: same port and config across restarts."""

    def __init__(
        self, spec: TableSpec, root: Path, ports: dict[str, int], redis_url: str, tl: Timeline
    ) -> None:
        self.spec = spec
        self.dir = root / spec.code
        self.mount = ConfigMount(self.dir / "config")
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.redis_url = redis_url
        self.tl = tl
        self.generation = 1
        self.timeout_s = BASE_TIMEOUT_S
        self._ports = ports
        self.proc: asyncio.subprocess.Process | None = None
        self.log: Path | None = None
        self.incarnation = 0
        self.planned_exit = False
        self.dead = False  # ended unplanned; never restarted
        self.instance = ""  # from Health
        self.health: Any = None  # the last HealthResponse
        self.current_round: str | None = None
        self.started = self.last_answer = 0.0  # this process's start, its last Health answer
        self.next_round: str = ""
        self.client = GatewayClient(self.address, default_deadline_s=DEADLINE_S)
        self.monitor = GatewayClient(self.address, default_deadline_s=0.5)
        self.mount.write(self.render())
        self._watch: asyncio.Task[None] | None = None

    def document(self) -> dict[str, Any]:
        s = self.spec
        table: dict[str, Any] = {
            "game": s.game,
            "code": s.code,
            "input": INPUT,
            "timeout_s": self.timeout_s,
            "retry_count": 3,
            "retry_delay_s": 0.2,
        }
        if s.game == "sicbo":
            table["output"] = OUTPUT
        if s.shaker:
            table["shaker_listens"] = f"ikg/sicbo/{s.shaker}/listens"
            table["shaker_says"] = f"ikg/sicbo/{s.shaker}/says"
        brokers = [
            {"id": b, "host": HOST, "port": self._ports[b], "priority": i + 1}
            for i, b in enumerate(s.brokers)
        ]
        return {
            "version": 1,
            "generation": self.generation,
            "environment": "chaos",
            "broker_group": s.group,
            "table": table,
            "brokers": brokers,
        }

    def render(self) -> bytes:
        return json.dumps(self.document(), indent=1).encode()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.incarnation += 1
        self.log = self.dir / f"serve.{self.incarnation}.log"
        argv = [
            *gateway_command(),
            "--log-format",
            "text",
            "serve",
            "--config",
            str(self.mount.path),
            "--listen",
            self.address,
            "--redis-url",
            self.redis_url,
        ]
        out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *PDEATHSIG,
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            os.close(out)
        self.planned_exit, self.instance = False, ""
        self.started, self.last_answer = time.monotonic(), 0.0
        self._watch = asyncio.create_task(
            self._watch_exit(self.proc), name=f"watch {self.spec.code}"
        )

    def tail(self, lines: int = 25) -> str:
        if self.log is None:
            return "(no log)"
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
            return "\n".join("    | " + line[:300] for line in text)
        return "(log unreadable)"

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        if self.planned_exit:
            return
        now = time.monotonic()
        self.dead = True
        self.tl.deaths.append(Death(self.spec.code, proc.pid, rc, now, self.tail()))
        # A crashing sidecar stops serving before it exits: it is counted down from the
        # last Health it answered (the death itself is the violation).
        since = min(now, self.last_answer or self.started)
        self.tl.sidecar_down[self.spec.code].append(Interval(since, None, "died (unplanned)"))

    async def wait_ready(self, limit_s: float, all_brokers: bool = False) -> None:
        """Until this table's own client sees the sidecar SERVING (and, optionally, with
        every broker connected)."""
        async with asyncio.timeout(limit_s):
            await self.client.wait_ready(deadline_s=limit_s)
            while all_brokers:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    h = await self.monitor.health()
                    if h.brokers and all(b.connected for b in h.brokers):
                        return
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL (the schedule's fault)."""
        assert self.proc is not None
        self.planned_exit = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM at the end of the run, SIGKILL if it lingers."""
        self.planned_exit = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 8)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def play(slot: Sidecar, seed: int, stop: asyncio.Event, tl: Timeline) -> None:
    """The table's game: Detect after Detect, unique round ids, each outcome recorded."""
    n = 0
    while not stop.is_set():
        n += 1
        rid = f"{slot.spec.code}-s{seed}-{n:05d}"
        slot.current_round = rid
        slot.next_round = f"{slot.spec.code}-s{seed}-{n + 1:05d}"
        start = time.monotonic()
        ok, result, status, details, broker = False, None, "", "", ""
        try:
            r = await slot.client.detect_raw(rid, deadline_s=DEADLINE_S)
            ok, broker = True, r.broker_id
            # An OK response without a result stays OK with result None: invariant 1
            # reports it (a made-up success), it is never excused as a failure.
            with contextlib.suppress(ValueError):
                result = typed(r)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name if exc.code() else "UNKNOWN"
            details = exc.details() or ""
        except Exception as exc:  # anything else the client raises: a failed round
            status, details = "CLIENT_ERROR", f"{type(exc).__name__}: {exc}"
        rec = RoundRecord(
            slot.spec.code,
            slot.spec.game,
            rid,
            start,
            time.monotonic(),
            ok,
            result,
            status,
            details,
            broker,
        )
        slot.current_round = None
        tl.rounds.append(rec)
        if not rec.ok:
            await asyncio.sleep(0.1)  # no hot loop while a sidecar fails fast


class Studio:
    """Everything started, in order; ``close`` stops it all (also on cancellation)."""

    def __init__(self, root: Path, tl: Timeline, behaviour: Behaviour) -> None:
        self.root, self.tl, self.behaviour = root, tl, behaviour
        self.stack = contextlib.AsyncExitStack()
        self.brokers: dict[str, MosquittoProcess] = {}
        self.proxies: dict[str, MqttFaultProxy] = {}
        self.redis: RedisProcess
        self.sim: IdpSimulator
        self.slots: list[Sidecar] = []

    async def __aenter__(self) -> Studio:
        try:
            await self._start()
        except BaseException:
            await self.stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def _start(self) -> None:
        st = self.stack
        for b in BROKERS:
            self.brokers[b] = await st.enter_async_context(MosquittoProcess(tcp_nodelay=True))
            proxy = MqttFaultProxy(HOST, self.brokers[b].port)
            self.proxies[b] = await st.enter_async_context(proxy)
        self.redis = await st.enter_async_context(RedisProcess())
        sim_brokers = [SimBroker(HOST, self.brokers[b].port, id=b) for b in BROKERS]
        sim_tables = []
        for t in TABLES:
            cmd, resp = f"ikg/idp/{t.code}/command", f"ikg/idp/{t.code}/response"
            says = (
                (f"ikg/sicbo/{t.shaker}/listens", f"ikg/sicbo/{t.shaker}/says")
                if t.shaker
                else (None, None)
            )
            sim_tables.append(SimTable(t.game, t.code, cmd, resp, *says))
        self.sim = IdpSimulator(sim_brokers, sim_tables, self.behaviour, client_prefix="chaos-idp")
        sim_task = asyncio.create_task(self.sim.run(), name="sim")

        async def stop_sim() -> None:
            sim_task.cancel()
            await asyncio.wait({sim_task})

        st.push_async_callback(stop_sim)
        await self.sim.wait_connected(10)
        ports = {b: p.port for b, p in self.proxies.items()}
        for spec in TABLES:
            slot = Sidecar(spec, self.root, ports, self.redis.url, self.tl)
            self.slots.append(slot)
            st.push_async_callback(slot.monitor.close)
            st.push_async_callback(slot.client.close)
            st.push_async_callback(slot.stop)
        for slot in self.slots:
            await slot.start()
        async with asyncio.timeout(30):
            await asyncio.gather(*(s.wait_ready(30, all_brokers=True) for s in self.slots))

    def live(self, group: str | None = None) -> list[Sidecar]:
        """Sidecars running now (not killed by the schedule, not dead), of ``group``."""
        return [
            s
            for s in self.slots
            if s.running and not s.planned_exit and (group is None or s.spec.group == group)
        ]

    def active_of(self, group: str) -> str | None:
        """The active broker most of the group's live sidecars reported last."""
        seen = [s.health.active_broker_id for s in self.live(group) if s.health is not None]
        return max(set(seen), key=seen.count) if seen else None
