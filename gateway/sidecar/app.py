"""The sidecar's lifecycle: resources opened in order, loops in one TaskGroup, ordered stop.

``Sidecar`` is an async context manager so tests and the demo run the real thing
in-process; ``serve`` wraps it for the ``gateway serve`` command with signal handling.
Shutdown order: health goes NOT_SERVING, the gRPC server drains in-flight calls, then
the round desk and the broker links stop. Every loop runs under one ``Supervisor``: a loop
that fails is restarted with backoff and shown in Health, never the process; the process
ends only for a bad config at start, a signal, or a listener that cannot bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from gateway.config import GatewayConfig
from gateway.drops import Drops
from gateway.fleet.stats import SidecarStats, read_fleet
from gateway.sidecar.brokers import BrokerPool
from gateway.sidecar.election import Decision, Elector, LocalElector
from gateway.sidecar.reload import ConfigReloader
from gateway.sidecar.rounds import RoundDesk
from gateway.sidecar.service import SERVICE_NAME, GatewayService, overall_status
from gateway.sidecar.shaker import Shaker
from gateway.sidecar.stats import StatsWriter, take_snapshot
from gateway.sidecar.supervise import Supervisor
from gateway.sidecar.topics import TopicHub
from gateway.v1 import gateway_pb2, gateway_pb2_grpc

if TYPE_CHECKING:
    import redis.asyncio as redis

log = logging.getLogger(__name__)
_meter = metrics.get_meter(__name__)
_failovers = _meter.create_counter("gateway.failovers", description="Active-broker switches")
_failover_duration = _meter.create_histogram(
    "gateway.failover.duration", unit="s", description="Active broker down -> new active broker"
)

DEFAULT_LISTEN = "127.0.0.1:50051"
# grpc.health.v1 service names: "" and SERVICE_NAME are SERVING only with a ready active
# broker (readiness); LIVENESS_SERVICE is SERVING while the process serves at all.
LIVENESS_SERVICE = "liveness"
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
        instance_id: str | None = None,
        elector: Elector | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor[object, object]] = (),
        config_path: str | None = None,
        config_adjust: Callable[[GatewayConfig], GatewayConfig] | None = None,
    ) -> None:
        self.config = config
        self.instance_id = instance_id or make_instance_id(config.table.code)
        self._listen = listen
        self._health_listen = health_listen
        self._interceptors = list(interceptors)
        self.store: redis.Redis | None = None
        labels = {"table": config.table.code}
        self.drops = Drops(labels)
        self.supervisor = Supervisor(labels=labels)
        shared = None
        if elector is None and config.redis.url:
            # Imported here: redis-py is only loaded by sidecars that use a shared store.
            from gateway.fleet import store
            from gateway.sidecar.shared_election import SharedElector

            self.store = store.connect(config.redis)
            elector = shared = SharedElector(config, self.instance_id, self.store, drops=self.drops)
        self.elector = elector or LocalElector(config.timings)
        # The pool and the desk refer to each other: frames flow pool -> desk, commands
        # desk -> pool, and the elector must know whether a round is in flight.
        table = config.table
        self.hub = TopicHub(t for t in (table.shaker_says, *table.subscribe_topics) if t)
        self.pool = BrokerPool(
            config.brokers,
            topics=[table.response_topic, *sorted(self.hub.topics)],
            instance_id=self.instance_id,
            timings=config.timings,
            elector=self.elector,
            on_message=self._route,
            busy=lambda: self.desk.busy,
            drops=self.drops,
            supervisor=self.supervisor,
            watch=[table.command_topic],
            on_late=lambda broker, topic, payload: self.desk.late_command(broker, topic, payload),
        )
        self.desk = RoundDesk(
            config.table, self.pool, on_busy_change=self.pool.busy_changed, drops=self.drops
        )
        self.shaker = Shaker(config.table, self.pool, self.hub, drops=self.drops)
        self.elector.add_listener(self.desk.on_decision)
        self.elector.add_listener(self._count_switch)
        self._observe()
        self.stats_writer: StatsWriter | None = None
        fleet = None
        if shared is not None and self.store is not None:
            keys, client = shared.keys, self.store
            self.stats_writer = StatsWriter(
                client,
                keys,
                self.snapshot,
                interval_s=config.redis.stats_interval_s,
                ttl_s=config.redis.stats_ttl_s,
                on_error=shared.on_store_error,
                drops=self.drops,
            )
            drops = self.drops

            async def fleet() -> list[SidecarStats]:
                return await read_fleet(client, keys, drops)

        self.service = GatewayService(
            config,
            self.desk,
            self.pool,
            self.instance_id,
            self.snapshot,
            fleet,
            shaker=self.shaker,
            hub=self.hub,
            drops=self.drops,
            supervisor=self.supervisor,
        )
        self.reloader: ConfigReloader | None = None
        if config_path is not None:
            self.reloader = ConfigReloader(
                config_path,
                config,
                apply=self._apply_config,
                wait_idle=self.desk.wait_idle,
                adjust=config_adjust or (lambda c: c),
                drops=self.drops,
            )
            reloader = self.reloader
            self.service.config_error = lambda: reloader.last_error
        # aio is re-exported by grpc_health.v1.health at run time; the stubs lack it.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0
        self.health_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._main: asyncio.Task[None] | None = None
        self._last_active: str | None = None
        self._health_changed = asyncio.Event()
        self._serving = asyncio.Event()
        self.pool.add_listener(self._health_changed.set)

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
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.port = _bind(server, self._listen)
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

    def _count_switch(self, decision: Decision) -> None:
        """Failovers and how long the table had no usable active broker."""
        previous = self._last_active
        self._last_active = decision.broker_id
        if previous is None or decision.broker_id is None or previous == decision.broker_id:
            return
        old = self.pool.links.get(previous)
        labels = {"table": self.config.table.code, "from": previous, "to": decision.broker_id}
        _failovers.add(1, labels)
        if old is not None and not old.status().ready:  # a failover, not a fail-back
            _failover_duration.record(time.monotonic() - old.status().since, labels)

    def _observe(self) -> None:
        """Gauges read at collection time: broker up/down and probe RTT, active broker, epoch."""
        table = self.config.table.code

        def brokers_up(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(int(s.ready), {"table": table, "broker": s.id})
                for s in self.pool.statuses()
            ]

        def probe_rtt(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(s.probe_rtt_ms / 1000, {"table": table, "broker": s.id})
                for s in self.pool.statuses()
                if s.ready
            ]

        def active(options: CallbackOptions) -> list[Observation]:
            d = self.pool.decision()
            return [
                Observation(int(s.id == d.broker_id), {"table": table, "broker": s.id})
                for s in self.pool.statuses()
            ]

        def epoch(options: CallbackOptions) -> list[Observation]:
            return [Observation(self.pool.decision().epoch, {"table": table})]

        def degraded(options: CallbackOptions) -> list[Observation]:
            overall = overall_status(self.pool.statuses(), self.pool.decision(), self.problems())
            is_degraded = overall.status == gateway_pb2.HealthResponse.DEGRADED
            return [Observation(int(is_degraded), {"table": table})]

        meter = metrics.get_meter(__name__)
        meter.create_observable_gauge("gateway.broker.up", [brokers_up], description="1 = ready")
        meter.create_observable_gauge("gateway.broker.probe_rtt", [probe_rtt], unit="s")
        meter.create_observable_gauge(
            "gateway.broker.active", [active], description="1 for the active broker"
        )
        meter.create_observable_gauge("gateway.epoch", [epoch], description="active-broker epoch")
        meter.create_observable_gauge(
            "gateway.degraded", [degraded], description="1 while Health reports DEGRADED"
        )

    def problems(self) -> tuple[str, ...]:
        """Reasons to report DEGRADED beyond the brokers: the election, failed loops."""
        return (*self.elector.status().problems, *self.supervisor.problems())

    def _route(self, broker: str, topic: str, payload: bytes) -> None:
        """The IDP's responses go to the round desk; the extra topics to their listeners."""
        if topic == self.config.table.response_topic:
            self.desk.on_message(broker, topic, payload)
        else:
            self.hub.on_message(broker, topic, payload)

    def _apply_config(self, config: GatewayConfig) -> None:
        """A reloaded configuration, between rounds: only what can change live."""
        self.config = config
        self.desk.reconfigure(config.table)
        self.shaker.table = config.table
        self.service.config = config

    def snapshot(self) -> SidecarStats:
        """This sidecar's statistics right now."""
        return take_snapshot(
            self.instance_id,
            self.config.table.code,
            self.config.generation,
            self.pool.statuses(),
            self.pool.decision(),
            self.desk.counters,
            self.reloader.last_error if self.reloader else "",
        )

    @property
    def address(self) -> str:
        host = self._listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _run(self) -> None:
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("broker-pool", self.pool.run),
            ("round-desk", self.desk.run),
            ("health", self._health_loop),
        ]
        if self.stats_writer is not None:
            loops.append(("stats", self.stats_writer.run))
        if self.reloader is not None:
            loops.append(("config-reload", self.reloader.run))
        async with asyncio.TaskGroup() as tasks:
            for name, body in loops:
                tasks.create_task(self.supervisor.run(name, body), name=name)

    async def _health_loop(self) -> None:
        """Mirror readiness into grpc.health.v1: SERVING only with a ready active broker."""
        last: int | None = None
        while True:
            self._health_changed.clear()
            overall = overall_status(self.pool.statuses(), self.pool.decision(), self.problems())
            if overall.grpc_health != last:
                last = overall.grpc_health
                for service in ("", SERVICE_NAME):
                    await self.health.set(service, last)
                if overall.serving:
                    self._serving.set()
                else:
                    self._serving.clear()
                log.info(
                    "health %s: %s", "SERVING" if overall.serving else "NOT_SERVING", overall.reason
                )
            await self._health_changed.wait()

    async def wait_serving(self) -> None:
        """Wait until a broker is ready and active (health SERVING); callers bound it."""
        await self._serving.wait()

    async def wait(self) -> None:
        """Wait until a loop crashes (raises) — normally forever."""
        assert self._main is not None
        await self._main

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.health.enter_graceful_shutdown()
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


async def serve(
    config: GatewayConfig,
    listen: str = DEFAULT_LISTEN,
    interceptors: Sequence[grpc.aio.ServerInterceptor[object, object]] = (),
    config_path: str | None = None,
    config_adjust: Callable[[GatewayConfig], GatewayConfig] | None = None,
    health_listen: str | None = None,
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
