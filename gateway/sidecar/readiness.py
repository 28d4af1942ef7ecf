"""Readiness for probes and load balancers: grpc.health.v1, kept in step with the verdict.

Kubelet and gRPC clients ask the standard health service, not our Health RPC. The
overall service ("") and ``SERVICE_NAME`` are SERVING only while the sidecar can carry
a Detect (a ready active broker; ``health_verdict.py``); ``LIVENESS_SERVICE`` is SERVING
for as long as the process serves at all, so a table whose brokers are all down is
taken out of rotation but not restarted. The loop here waits for a change of a link
or of the decision (never polls) and says each change in one log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from grpc_health.v1 import health, health_pb2

from gateway.sidecar.service import SERVICE_NAME

if TYPE_CHECKING:
    from gateway.sidecar.health_verdict import Overall

# The logger the sidecar's lifecycle has always used (log filters and dashboards know it).
log = logging.getLogger("gateway.sidecar.app")

# grpc.health.v1 service names: "" and SERVICE_NAME are SERVING only with a ready active
# broker (readiness); LIVENESS_SERVICE is SERVING while the process serves at all.
LIVENESS_SERVICE = "liveness"


class Readiness:
    """The grpc.health.v1 servicer and the loop that mirrors the verdict into it."""

    def __init__(self, verdict: Callable[[], Overall]) -> None:
        self._verdict = verdict
        # aio is re-exported by grpc_health.v1.health at run time; the stubs lack it.
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._changed = asyncio.Event()
        self._serving = asyncio.Event()

    def changed(self) -> None:
        """A link or the decision changed: look at the verdict again."""
        self._changed.set()

    async def start(self) -> None:
        """Before the server starts: alive, not ready until the loop says otherwise."""
        for service in ("", SERVICE_NAME):
            await self.servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def run(self) -> None:
        """Mirror readiness into grpc.health.v1: SERVING only with a ready active broker."""
        last: int | None = None
        while True:
            self._changed.clear()
            overall = self._verdict()
            if overall.grpc_health != last:
                last = overall.grpc_health
                for service in ("", SERVICE_NAME):
                    await self.servicer.set(service, last)
                if overall.serving:
                    self._serving.set()
                else:
                    self._serving.clear()
                log.info(
                    "health %s: %s", "SERVING" if overall.serving else "NOT_SERVING", overall.reason
                )
            await self._changed.wait()

    async def wait_serving(self) -> None:
        """Wait until a broker is ready and active (health SERVING); callers bound it."""
        await self._serving.wait()

    async def shutdown(self) -> None:
        """Every service NOT_SERVING, for good: the first step of an ordered stop."""
        await self.servicer.enter_graceful_shutdown()
