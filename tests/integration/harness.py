"""A whole stack for a test: real brokers, the device simulator, a real sidecar and client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiomqtt
import grpc

from gateway.client import GatewayClient
from gateway.config import GatewayConfig, parse_config
from gateway.devtools.sandbox import MosquittoProcess
from gateway.devtools.sim import Behaviour, IdpSimulator, derive_result, sim_devices
from gateway.protocol import BaccaratHand, Result, RouletteNumber, SicBoDice
from gateway.sidecar.app import Sidecar

# Short timers so fault tests run in seconds (production defaults are in LinkTimings).
FAST_FAILOVER = {
    "keepalive_s": 2,
    "operation_timeout_s": 1.0,
    "probe_interval_s": 0.1,
    "probe_timeout_s": 0.4,
    "backoff_initial_s": 0.02,
    "backoff_max_s": 0.3,
    "holddown_s": 1.0,
    "holddown_max_s": 4.0,
}
CODES = {"sicbo": "SBO-001", "baccarat": "BAC-001", "roulette": "ARO-001"}
INPUT = "rtmp://192.0.2.50:1935/live/r10_sr"
OUTPUT = "https://example.invalid/live/r456_dice.flv"


def make_config(
    brokers: Sequence[MosquittoProcess],
    game: str = "roulette",
    code: str | None = None,
    failover: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
    ports: dict[str, int] | None = None,
    **table: Any,
) -> GatewayConfig:
    """A config in the gateway's own format for one table on the given brokers."""
    code = code or CODES[game]
    doc = {
        "version": 1,
        "table": {
            "game": game,
            "code": code,
            "input": INPUT,
            "timeout_s": 5,
            "retry_count": 3,
            "retry_delay_s": 0.2,
            **({"output": OUTPUT} if game == "sicbo" else {}),
            **table,
        },
        "brokers": [
            {
                "id": f"b{i + 1}",
                "host": b.host,
                "port": (ports or {}).get(f"b{i + 1}", b.port),
                "priority": i + 1,
            }
            for i, b in enumerate(brokers)
        ],
        "failover": {**FAST_FAILOVER, **(failover or {})},
    }
    if redis is not None:
        doc["broker_group"] = "test-group"
        doc["redis"] = redis
    return parse_config(doc, source="<test>", env={})


def expected(game: str, round_id: str) -> Result:
    """The result the simulated IDP sends for a round, as the client types it."""
    res: Any = derive_result(game, round_id)
    if game == "sicbo":
        return SicBoDice(tuple(res))
    if game == "roulette":
        return RouletteNumber(res)
    return BaccaratHand(tuple(res))


class Stack:
    """Brokers (started by the caller), simulator, sidecar and client for one table."""

    def __init__(
        self,
        brokers: Sequence[MosquittoProcess],
        game: str = "roulette",
        behaviour: Behaviour | None = None,
        *,
        config: GatewayConfig | None = None,
        sim_brokers: Sequence[MosquittoProcess] | None = None,
        all_ready: bool = True,
        interceptors: Sequence[Any] = (),
        config_path: str | None = None,
        health_listen: str | None = None,
        listen_unix: str | None = None,
        **table: Any,
    ) -> None:
        self.brokers = list(brokers)
        self.all_ready = all_ready
        self.config = config or make_config(brokers, game, **table)
        self.game = self.config.table.game.value
        self.code = self.config.table.code
        sim_configs = self.config
        if sim_brokers is not None:
            sim_configs = make_config(sim_brokers, self.game, self.code, **table)
        devices, tables = sim_devices([sim_configs])
        self.sim = IdpSimulator(devices, tables, behaviour or Behaviour(delay_s=0.02))
        self._stack = contextlib.AsyncExitStack()
        self.sidecar = Sidecar(
            self.config,
            listen="127.0.0.1:0",
            health_listen=health_listen,
            listen_unix=listen_unix,
            interceptors=interceptors,
            config_path=config_path,
        )
        self.client: GatewayClient

    async def __aenter__(self) -> Stack:
        sim_task = asyncio.create_task(self.sim.run(), name="sim")

        async def stop_sim() -> None:
            sim_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sim_task

        self._stack.push_async_callback(stop_sim)
        await self.sim.wait_connected()
        await self._stack.enter_async_context(self.sidecar)
        changed = asyncio.Event()
        self.sidecar.pool.add_listener(changed.set)
        async with asyncio.timeout(10):
            await self.sidecar.wait_serving()
            # Every broker up, so that tests start from the preferred broker being active.
            while self.all_ready:
                changed.clear()
                if all(s.ready for s in self.sidecar.pool.statuses()):
                    break
                await changed.wait()
        self.client = await self._stack.enter_async_context(GatewayClient(self.sidecar.address))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def behave(self, **kw: Any) -> None:
        """Script the table's IDP for its next detect."""
        self.sim.set_behaviour(self.code, Behaviour(**kw))

    def commands(self, name: str | None = None) -> list[Any]:
        return [
            c.payload
            for c in self.sim.commands
            if c.table_code == self.code and (name is None or c.command == name)
        ]

    async def inject(self, broker: MosquittoProcess, payload: bytes) -> None:
        """Publish a raw frame on the table's response topic, as a device would."""
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        ) as c:
            await c.publish(self.config.table.response_topic, payload, qos=1)


async def wait_health(address: str, status: str, service: str = "") -> None:
    """Wait (via grpc.health.v1 Watch, no polling) until the sidecar reports ``status``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    want = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
    async with grpc.aio.insecure_channel(address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), wait_for_ready=True
        )
        async for update in stream:
            if update.status == want:
                stream.cancel()
                return


FAST_REDIS = {
    "refresh_s": 0.2,
    "view_ttl_s": 1.0,
    "grace_s": 0.5,
    "stats_interval_s": 0.2,
    "stats_ttl_s": 1.0,
}


@contextlib.asynccontextmanager
async def fleet(
    brokers: list[MosquittoProcess],
    codes: list[str],
    behaviour: Behaviour,
    *,
    redis_url: str | None = None,
    ports: dict[str, dict[str, int]] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[IdpSimulator, list[Sidecar], list[GatewayClient]]]:
    """One simulated IDP per table and one sidecar per table, like a studio floor.

    With ``redis_url`` the sidecars share one broker group and its record; ``ports``
    re-routes a table's sidecar to a broker through another port (e.g. a TCP proxy).
    """
    redis = None if redis_url is None else {**FAST_REDIS, "url": redis_url}
    configs = [
        make_config(brokers, "roulette", code, redis=redis, ports=(ports or {}).get(code), **config)
        for code in codes
    ]
    devices, tables = sim_devices([make_config(brokers, "roulette", c) for c in codes])
    sim = IdpSimulator(devices, tables, behaviour)
    task = asyncio.create_task(sim.run())
    async with contextlib.AsyncExitStack() as stack:

        async def stop_sim() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop_sim)
        await sim.wait_connected()
        sidecars = [
            await stack.enter_async_context(Sidecar(c, listen="127.0.0.1:0")) for c in configs
        ]
        async with asyncio.timeout(10):
            for s in sidecars:
                await s.wait_serving()
        clients = [await stack.enter_async_context(GatewayClient(s.address)) for s in sidecars]
        yield sim, sidecars, clients


async def until(predicate: Any, limit_s: float, what: str) -> None:
    """Wait for a condition spread over several objects (sidecars, simulator), bounded."""
    try:
        async with asyncio.timeout(limit_s):
            while not predicate():  # noqa: ASYNC110 - state spread over objects, no one event
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {limit_s}s: {what}") from None
