"""The sidecar's lifecycle: resources opened in order, loops in one TaskGroup, ordered stop.

``Sidecar`` is an async context manager so tests and the demo run the real thing
in-process; ``serve`` wraps it for the ``gateway serve`` command with signal handling.
The parts it runs are built and wired in ``assembly.py``; this module owns only when
they start and stop. Shutdown order: health goes NOT_SERVING, the gRPC server drains
in-flight calls, then the round desk and the broker links stop. Every loop runs under
one ``Supervisor``: a loop that fails is restarted with backoff and shown in Health,
never the process; the process ends only for a bad config at start, a signal, or a
listener that cannot bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.config import DEFAULT_ADDRESS
from gateway.sidecar.assembly import Parts
from gateway.sidecar.gauges import FailoverMeter, observe_brokers
from gateway.sidecar.health_verdict import overall_status
from gateway.sidecar.readiness import LIVENESS_SERVICE, Readiness
from gateway.v1 import gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.fleet.stats import SidecarStats
    from gateway.sidecar.election import Elector

__all__ = ["DEFAULT_LISTEN", "LIVENESS_SERVICE", "Sidecar", "make_instance_id", "serve"]

log = logging.getLogger(__name__)

DEFAULT_LISTEN = DEFAULT_ADDRESS
DRAIN_GRACE_S = 5.0
STOP_LIMIT_S = 5.0


def make_instance_id(table_code: str) -> str:
    """Unique per sidecar process, so two pods never evict each other's MQTT sessions."""
    return f"{table_code}-{secrets.token_hex(4)}"


class Sidecar:
    """One running sidecar: broker pool, round desk, gRPC server, health."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        listen: str = DEFAULT_LISTEN,
        health_listen: str | None = None,
        listen_unix: str | None = None,
        instance_id: str | None = None,
        elector: Elector | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor[object, object]] = (),
        config_path: str | None = None,
        config_adjust: Callable[[GatewayConfig], GatewayConfig] | None = None,
    ) -> None:
        self.instance_id = instance_id or make_instance_id(config.table.code)
        self._listen = listen
        self._health_listen = health_listen
        self._listen_unix = listen_unix
        self._interceptors = list(interceptors)
        self._parts = parts = Parts(
            config,
            instance_id=self.instance_id,
            elector=elector,
            config_path=config_path,
            config_adjust=config_adjust,
        )
        self.store = parts.store
        self.drops = parts.drops
        self.supervisor = parts.supervisor
        self.elector = parts.elector
        self.hub = parts.hub
        self.pool = parts.pool
        self.desk = parts.desk
        self.shaker = parts.shaker
        self.stats_writer = parts.stats_writer
        self.service = parts.service
        self.reloader = parts.reloader
        self.elector.add_listener(
            FailoverMeter(lambda: parts.config.table.code, self.pool).on_decision
        )
        observe_brokers(config.table.code, self.pool, parts.problems)
        self.readiness = Readiness(
            lambda: overall_status(self.pool.statuses(), self.pool.decision(), parts.problems())
        )
        self.health = self.readiness.servicer
        self.port = 0
        self.health_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._main: asyncio.Task[None] | None = None
        self.pool.add_listener(self.readiness.changed)

    @property
    def config(self) -> GatewayConfig:
        """The configuration in force: the one given, or the last reload applied."""
        return self._parts.config

    async def __aenter__(self) -> Sidecar:
        server = grpc.aio.server(
            interceptors=self._interceptors, options=[("grpc.so_reuseport", 0)]
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        await self.readiness.start()
        self.port = _bind(server, self._listen)
        if self._listen_unix is not None:
            _bind_unix(server, self._listen_unix)
        if self._health_listen is not None:
            # Health alone on a second address: kubelet probes reach the pod IP, while
            # Detect stays on the loopback address the game calls.
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            self.health_port = _bind(health_server, self._health_listen)
            await health_server.start()
            self._health_server = health_server
        await server.start()
        self._server = server
        self._main = asyncio.create_task(self._run(), name="sidecar")
        log.info(
            "sidecar %s for table %s (%s) listening on %s; brokers: %s",
            self.instance_id,
            self.config.table.code,
            self.config.table.game,
            self.address,
            ", ".join(f"{b.id} (priority {b.priority})" for b in self.config.brokers),
        )
        return self

    def problems(self) -> tuple[str, ...]:
        """Reasons to report DEGRADED beyond the brokers: the election, failed loops."""
        return self._parts.problems()

    def snapshot(self) -> SidecarStats:
        """This sidecar's statistics right now."""
        return self._parts.snapshot()

    @property
    def unix_target(self) -> str | None:
        """The gRPC target of the Unix socket listener (``unix:PATH``), if there is one."""
        return None if self._listen_unix is None else f"unix:{self._listen_unix}"

    @property
    def address(self) -> str:
        """Where the gRPC server listens, with the port it got (``listen`` may say 0)."""
        host = self._listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _run(self) -> None:
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("broker-pool", self.pool.run),
            ("round-desk", self.desk.run),
            ("health", self.readiness.run),
        ]
        if self.stats_writer is not None:
            loops.append(("stats", self.stats_writer.run))
        if self.reloader is not None:
            loops.append(("config-reload", self.reloader.run))
        async with asyncio.TaskGroup() as tasks:
            for name, body in loops:
                tasks.create_task(self.supervisor.run(name, body), name=name)

    async def wait_serving(self) -> None:
        """Wait until a broker is ready and active (health SERVING); callers bound it."""
        await self.readiness.wait_serving()

    async def wait(self) -> None:
        """Wait until a loop crashes (raises) — normally forever."""
        assert self._main is not None
        await self._main

    async def __aexit__(self, *exc_info: object) -> None:
        await self.readiness.shutdown()
        self.hub.close()  # Subscribe streams end now rather than at the end of the grace
        if self._server is not None:
            await self._server.stop(DRAIN_GRACE_S)
        if self._health_server is not None:
            await self._health_server.stop(None)
        if self._main is not None:
            self._main.cancel()
            done, _ = await asyncio.wait({self._main}, timeout=STOP_LIMIT_S)
            if not done:  # never hang a shutdown: say what is stuck and go on
                stuck = sorted(t.get_name() for t in asyncio.all_tasks() if not t.done())
                log.error("sidecar loops still running %ss after cancel: %s", STOP_LIMIT_S, stuck)
            else:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._main
        if self.store is not None:
            await self.store.aclose()
        log.info("sidecar %s stopped", self.instance_id)


def _bind(server: grpc.aio.Server, address: str) -> int:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or not available")
    return port


def _bind_unix(server: grpc.aio.Server, path: str) -> None:
    """Listen on a Unix socket too: the game in the same pod reaches it through a shared
    volume, without the TCP stack. gRPC replaces a socket a previous run left behind."""
    _bind(server, f"unix:{path}")
    # The game's container may run as another user: connecting needs write permission.
    # Who can reach the socket at all is decided by who mounts its directory.
    os.chmod(path, 0o666)


async def serve(
    config: GatewayConfig,
    listen: str = DEFAULT_LISTEN,
    interceptors: Sequence[grpc.aio.ServerInterceptor[object, object]] = (),
    config_path: str | None = None,
    config_adjust: Callable[[GatewayConfig], GatewayConfig] | None = None,
    health_listen: str | None = None,
    listen_unix: str | None = None,
) -> None:
    """Run a sidecar until SIGTERM/SIGINT; raise if a loop crashes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sidecar = Sidecar(
        config,
        listen=listen,
        health_listen=health_listen,
        listen_unix=listen_unix,
        interceptors=interceptors,
        config_path=config_path,
        config_adjust=config_adjust,
    )
    async with sidecar:
        stopper = asyncio.create_task(stop.wait(), name="signals")
        crashed = asyncio.create_task(sidecar.wait(), name="loops")
        done, _ = await asyncio.wait({stopper, crashed}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if crashed in done:
            crashed.result()  # re-raise the crash: the process must exit non-zero
        log.info("shutting down")
