"""Real ``gateway serve`` processes for tests that must see whether the process survives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.client import GatewayClient
from gateway.config import GatewayConfig, dump_config
from gateway.devtools.sandbox import free_port
from gateway.devtools.sim import Behaviour, IdpSimulator, sim_devices
from gateway.sidecar.connection import NODELAY


class SidecarProcess:
    """One ``gateway serve`` child with its config file in ``workdir``; the test owns it."""

    def __init__(
        self,
        doc: dict[str, Any],
        workdir: Path,
        *,
        redis_url: str | None = None,
        name: str = "sidecar",
        extra: Sequence[str] = (),
    ) -> None:
        self.doc = doc
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "table.json"
        self.log_path = self.dir / "serve.log"
        self.port = free_port()
        self.redis_url = redis_url
        self.extra = list(extra)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def write_config(self, content: bytes | None = None) -> None:
        """Replace the config file atomically (like a ConfigMap update), with ``content`` or
        the current document."""
        data = content if content is not None else json.dumps(self.doc).encode()
        tmp = self.dir / "table.json.new"
        tmp.write_bytes(data)
        tmp.replace(self.config_path)

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, ready_s: float = 15.0) -> None:
        """Start and wait until it answers Health with an active broker."""
        self.write_config()
        argv = [sys.executable, "-m", "gateway", "--log-format", "text", "serve"]
        argv += ["--config", str(self.config_path), "--listen", self.address, *self.extra]
        if self.redis_url is not None:
            argv += ["--redis-url", self.redis_url]
        out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        finally:
            os.close(out)
        async with GatewayClient(self.address) as client:
            try:
                await client.wait_ready(ready_s)
            except Exception as exc:
                raise AssertionError(f"sidecar not ready: {exc}\n{self.log()[-3000:]}") from exc

    def assert_alive(self) -> None:
        """The process has not ended (with its log in the message if it has)."""
        assert self.alive, f"sidecar exited with {self.returncode()}:\n{self.log()[-4000:]}"

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def studio(
    configs: Sequence[GatewayConfig],
    workdir: Path,
    *,
    redis_url: str | None = None,
    behaviour: Behaviour | None = None,
    sim_configs: Sequence[GatewayConfig] | None = None,
) -> AsyncIterator[tuple[IdpSimulator, list[SidecarProcess]]]:
    """The simulated IDPs of ``configs``' tables (in this process, on their brokers, or on
    those of ``sim_configs``) and one ``gateway serve`` process per config; everything is
    stopped at the end."""
    devices, tables = sim_devices(list(sim_configs or configs))
    sim = IdpSimulator(devices, tables, behaviour or Behaviour(delay_s=0.02))
    task = asyncio.create_task(sim.run(), name="sim")
    procs = [
        SidecarProcess(dump_config(c), workdir, redis_url=redis_url, name=f"{c.table.code}-{i}")
        for i, c in enumerate(configs)
    ]
    try:
        await sim.wait_connected()
        await asyncio.gather(*(p.start() for p in procs))
        yield sim, procs
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish_raw(host: str, port: int, topic: str, payload: bytes, *, qos: int = 1) -> None:
    """Publish bytes as any client on the network could (MQTT 3.1.1, TCP_NODELAY)."""
    async with aiomqtt.Client(host, port, socket_options=NODELAY, timeout=10) as client:
        await client.publish(topic, payload, qos=qos)
