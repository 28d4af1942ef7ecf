"""The sidecar's broker metrics: gauges read at collection time, and failovers as they happen.

Gauges (broker up, probe RTT, active broker, epoch, degraded) are callbacks the metrics
SDK calls when it collects, so they cost nothing between scrapes and never go stale.
Failovers are counted when the elector names a new active broker; when the old one was
down (a failover, not a fail-back) the time the table had no usable broker is recorded
too. The names are the dashboards' and alerts' contract: they do not change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from gateway.sidecar.health_verdict import overall_status
from gateway.v1 import gateway_pb2

if TYPE_CHECKING:
    from gateway.sidecar.brokers import BrokerPool
    from gateway.sidecar.election import Decision

# The instrumentation scope these metrics have always been reported under.
_SCOPE = "gateway.sidecar.app"
_meter = metrics.get_meter(_SCOPE)
_failovers = _meter.create_counter("gateway.failovers", description="Active-broker switches")
_failover_duration = _meter.create_histogram(
    "gateway.failover.duration", unit="s", description="Active broker down -> new active broker"
)


class FailoverMeter:
    """Counts active-broker switches and how long the table had no usable active broker."""

    def __init__(self, table_code: Callable[[], str], pool: BrokerPool) -> None:
        self._table_code = table_code
        self._pool = pool
        self._last_active: str | None = None

    def on_decision(self, decision: Decision) -> None:
        """The elector decided (again): count it if the active broker changed."""
        previous = self._last_active
        self._last_active = decision.broker_id
        if previous is None or decision.broker_id is None or previous == decision.broker_id:
            return
        old = self._pool.links.get(previous)
        labels = {"table": self._table_code(), "from": previous, "to": decision.broker_id}
        _failovers.add(1, labels)
        if old is not None and not old.status().ready:  # a failover, not a fail-back
            _failover_duration.record(time.monotonic() - old.status().since, labels)


def observe_brokers(table: str, pool: BrokerPool, problems: Callable[[], tuple[str, ...]]) -> None:
    """Register the gauges: broker up/down and probe RTT, active broker, epoch, degraded."""

    def brokers_up(options: CallbackOptions) -> list[Observation]:
        return [
            Observation(int(s.ready), {"table": table, "broker": s.id}) for s in pool.statuses()
        ]

    def probe_rtt(options: CallbackOptions) -> list[Observation]:
        return [
            Observation(s.probe_rtt_ms / 1000, {"table": table, "broker": s.id})
            for s in pool.statuses()
            if s.ready
        ]

    def active(options: CallbackOptions) -> list[Observation]:
        d = pool.decision()
        return [
            Observation(int(s.id == d.broker_id), {"table": table, "broker": s.id})
            for s in pool.statuses()
        ]

    def epoch(options: CallbackOptions) -> list[Observation]:
        return [Observation(pool.decision().epoch, {"table": table})]

    def degraded(options: CallbackOptions) -> list[Observation]:
        overall = overall_status(pool.statuses(), pool.decision(), problems())
        is_degraded = overall.status == gateway_pb2.HealthResponse.DEGRADED
        return [Observation(int(is_degraded), {"table": table})]

    meter = metrics.get_meter(_SCOPE)
    meter.create_observable_gauge("gateway.broker.up", [brokers_up], description="1 = ready")
    meter.create_observable_gauge("gateway.broker.probe_rtt", [probe_rtt], unit="s")
    meter.create_observable_gauge(
        "gateway.broker.active", [active], description="1 for the active broker"
    )
    meter.create_observable_gauge("gateway.epoch", [epoch], description="active-broker epoch")
    meter.create_observable_gauge(
        "gateway.degraded", [degraded], description="1 while Health reports DEGRADED"
    )
