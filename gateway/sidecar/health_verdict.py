"""The sidecar's health verdict: SERVING, DEGRADED or NOT_SERVING, and the reason why.

One rule, read in three places that must agree: the Health RPC, the grpc.health.v1
status kubelet probes (``readiness.py``), and the ``gateway.degraded`` gauge. Without an
active broker the sidecar cannot carry a Detect (NOT_SERVING); with one, anything else
that needs attention (a broker down, an election problem, a loop that keeps failing)
makes it DEGRADED: still serving, but someone should look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpc_health.v1 import health_pb2

from gateway.v1 import gateway_pb2 as pb

if TYPE_CHECKING:
    from gateway.sidecar.election import Decision, LinkStatus


@dataclass(frozen=True)
class Overall:
    """The sidecar's overall status and why."""

    status: pb.HealthResponse.Status.ValueType
    reason: str

    @property
    def serving(self) -> bool:
        """True unless NOT_SERVING: a DEGRADED sidecar still takes Detects."""
        return bool(self.status != pb.HealthResponse.NOT_SERVING)

    @property
    def grpc_health(self) -> int:
        """The same verdict as a grpc.health.v1 status, for probes that speak only that."""
        if self.serving:
            return int(health_pb2.HealthCheckResponse.SERVING)
        return int(health_pb2.HealthCheckResponse.NOT_SERVING)


def overall_status(
    links: Sequence[LinkStatus], decision: Decision, problems: Sequence[str] = ()
) -> Overall:
    """NOT_SERVING without an active broker; DEGRADED if anything needs attention."""
    if decision.broker_id is None:
        return Overall(pb.HealthResponse.NOT_SERVING, decision.reason)
    if not any(s.ready for s in links):
        return Overall(pb.HealthResponse.NOT_SERVING, "no broker is ready")
    notes = list(problems)
    active = next((s for s in links if s.id == decision.broker_id), None)
    if active is None or not active.ready:
        notes.insert(0, f"active broker {decision.broker_id} is not reachable from this sidecar")
    down = [
        f"{s.id} {s.state}" + (f" ({s.last_error})" if s.last_error else "")
        for s in links
        if not s.ready and s is not active
    ]
    if down:
        notes.append(f"not ready: {'; '.join(down)}")
    head = f"active {decision.broker_id} (epoch {decision.epoch}): {decision.reason}"
    if notes:
        return Overall(pb.HealthResponse.DEGRADED, f"{head}; " + "; ".join(notes))
    return Overall(pb.HealthResponse.SERVING, head)
