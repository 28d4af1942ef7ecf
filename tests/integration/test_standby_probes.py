"""A standby broker is probed less often than the active one, counted on real brokers.

Each probe is a publish on ``studio-gateway/probe/<instance>/<broker>``; a subscriber of
the test on each broker counts them, so the probe rate is what the broker really carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import aiomqtt

from gateway.devtools.sandbox import MosquittoProcess
from tests.integration.harness import Stack, make_config, until

FAST = 0.1  # probe_interval_s
STANDBY = 0.5  # standby_probe_interval_s


class ProbeCounter:
    """The times of the probes one broker carried for one broker id."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def between(self, start: float, end: float) -> int:
        """How many probes the broker carried in [start, end)."""
        return sum(1 for t in self.times if start <= t < end)


@contextlib.asynccontextmanager
async def counting(broker: MosquittoProcess, broker_id: str) -> AsyncIterator[ProbeCounter]:
    """Count the probes of every sidecar instance for ``broker_id`` on ``broker``."""
    counter = ProbeCounter()
    subscribed = asyncio.Event()

    async def listen() -> None:
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        async with aiomqtt.Client(broker.host, broker.port, socket_options=nodelay) as client:
            await client.subscribe(f"studio-gateway/probe/+/{broker_id}")
            subscribed.set()
            async for _ in client.messages:
                counter.times.append(time.monotonic())

    task = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(5):
            await subscribed.wait()
        yield counter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


async def test_the_standby_is_probed_less_often_until_it_becomes_active(
    two_brokers: list[MosquittoProcess],
) -> None:
    """The active broker is probed every probe_interval_s, the standby every
    standby_probe_interval_s; once the active one dies the standby is probed fast."""
    b1, b2 = two_brokers
    timers = {"probe_interval_s": FAST, "standby_probe_interval_s": STANDBY}
    config = make_config(two_brokers, "roulette", failover=timers)
    counters = counting(b1, "b1"), counting(b2, "b2")
    async with counters[0] as on_b1, counters[1] as on_b2, Stack(two_brokers, config=config) as s:
        assert s.sidecar.pool.decision().broker_id == "b1"
        start = time.monotonic()
        await asyncio.sleep(2.0)  # a window to count probes in, not a wait for an event
        end = time.monotonic()
        active, standby = on_b1.between(start, end), on_b2.between(start, end)
        # 2 s: about 20 probes at 0.1 s (each also waits for its own round trip),
        # about 4 at 0.5 s.
        assert active >= 10, (active, standby)
        assert standby <= 6, (active, standby)
        assert active >= 2 * standby, (active, standby)

        await b1.kill()
        await until(lambda: s.sidecar.pool.decision().broker_id == "b2", 5.0, "switch to b2")
        promoted = time.monotonic()
        await asyncio.sleep(1.0)
        fast = on_b2.between(promoted, time.monotonic())
        assert fast >= 5, fast  # about 10 at 0.1 s once b2 is the active broker


async def test_a_standby_interval_below_the_probe_interval_probes_at_the_probe_interval(
    two_brokers: list[MosquittoProcess],
) -> None:
    """A standby interval shorter than probe_interval_s never makes standby probes faster."""
    _, b2 = two_brokers
    timers = {"probe_interval_s": 0.4, "standby_probe_interval_s": 0.05}
    config = make_config(two_brokers, "roulette", failover=timers)
    async with counting(b2, "b2") as on_b2, Stack(two_brokers, config=config):
        start = time.monotonic()
        await asyncio.sleep(1.6)  # a window to count probes in
        standby = on_b2.between(start, time.monotonic())
        assert 1 <= standby <= 6, standby  # about 4 at 0.4 s (32 at 0.05 s)
