"""The operator's Prometheus metrics and the HTTP endpoint that serves them.

| metric | kind | labels |
|---|---|---|
| ``gateway_operator_reconciles_total`` | counter | result (``RECONCILE_RESULTS``) |
| ``gateway_operator_configmap_writes_total`` | counter | outcome (``CONFIGMAP_OUTCOMES``) |
| ``gateway_operator_admissions_total`` | counter | result (``ADMISSION_RESULTS``) |
| ``gateway_operator_status_refresh_seconds`` | histogram, s | |
| ``gateway_operator_status_refresh_errors_total`` | counter | |
| ``gateway_operator_last_active_timestamp_seconds`` | gauge, Unix time (0: never) | |
| ``gateway_operator_info`` | gauge, always 1 | version |

The metrics live in a registry of their own, not in prometheus_client's global one: the
endpoint shows exactly these, whatever else the process imports. Every labelled series
exists from the start at 0, so ``rate()`` and ``increase()`` see the first event too.

Only the replica that holds kopf's leadership runs the status timer, hence
``observe_active``: ``max()`` of the last-active timestamp over the replicas says when any
of them last did the operator's work (the chart's ``GatewayOperatorNotReconciling`` alert).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from importlib import metadata
from types import TracebackType
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RECONCILE_RESULTS = ("rendered", "invalid_spec", "apply_failed")
CONFIGMAP_OUTCOMES = ("created", "updated", "unchanged", "refused", "error")
ADMISSION_RESULTS = ("injected", "refused", "error")
# The sidecar's buckets (docs/telemetry.md), 5 ms to 30 s: a Redis read is milliseconds,
# a refresh stuck on an unreachable Redis runs into its timeout.
REFRESH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _version() -> str:
    try:
        return metadata.version("studio-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


REGISTRY = CollectorRegistry(auto_describe=True)

_reconciles = Counter(
    "gateway_operator_reconciles",
    "GameTable reconciliations by result.",
    ["result"],
    registry=REGISTRY,
)
_configmap_writes = Counter(
    "gateway_operator_configmap_writes",
    "Writes of a GameTable's ConfigMap by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
_admissions = Counter(
    "gateway_operator_admissions",
    "Pods seen by the sidecar-injecting admission webhook, by result.",
    ["result"],
    registry=REGISTRY,
)
_refresh_seconds = Histogram(
    "gateway_operator_status_refresh_seconds",
    "Duration of one GameTable status refresh from Redis.",
    buckets=REFRESH_BUCKETS,
    registry=REGISTRY,
)
_refresh_errors = Counter(
    "gateway_operator_status_refresh_errors",
    "GameTable status refreshes that failed.",
    registry=REGISTRY,
)
_last_active = Gauge(
    "gateway_operator_last_active_timestamp_seconds",
    "Unix time this replica last ran the status timer (0: never; only the leader runs it).",
    registry=REGISTRY,
)
_info = Gauge(
    "gateway_operator_info",
    "The operator's version; always 1.",
    ["version"],
    registry=REGISTRY,
)

for _result in RECONCILE_RESULTS:
    _reconciles.labels(result=_result)
for _outcome in CONFIGMAP_OUTCOMES:
    _configmap_writes.labels(outcome=_outcome)
for _result in ADMISSION_RESULTS:
    _admissions.labels(result=_result)
_info.labels(version=_version()).set(1)


def _checked(value: str, allowed: tuple[str, ...], what: str) -> str:
    """The label value, or a ValueError naming it: an unknown value is a caller's bug, and
    a free-form label would grow a series per distinct value."""
    if value not in allowed:
        raise ValueError(f"{what}: unknown value {value!r}; one of {', '.join(allowed)}")
    return value


def reconciled(result: str) -> None:
    """Count one reconciliation: ``rendered``, ``invalid_spec`` or ``apply_failed``."""
    _reconciles.labels(result=_checked(result, RECONCILE_RESULTS, "reconciled result")).inc()


def applied(outcome: str) -> None:
    """Count one ConfigMap write: ``created``, ``updated``, ``unchanged``, ``refused``
    (a ConfigMap of that name owned by something else) or ``error``."""
    _configmap_writes.labels(outcome=_checked(outcome, CONFIGMAP_OUTCOMES, "applied outcome")).inc()


def admitted(result: str) -> None:
    """Count one pod seen by the webhook: ``injected``, ``refused`` or ``error``."""
    _admissions.labels(result=_checked(result, ADMISSION_RESULTS, "admitted result")).inc()


def refreshed(ok: bool, seconds: float) -> None:
    """Record one status refresh: its duration, and an error unless ``ok``."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"refreshed seconds: must be a finite duration >= 0, got {seconds!r}")
    _refresh_seconds.observe(seconds)
    if not ok:
        _refresh_errors.inc()


def observe_active() -> None:
    """Mark this replica as doing the operator's work now (called by the status timer)."""
    _last_active.set(time.time())


class MetricsServer:
    """The running /metrics endpoint; ``close()`` (or ``await aclose()``) stops it.

    It serves from a thread of its own, so a scrape never waits for the event loop and
    the event loop never waits for a scrape.
    """

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self._closed = False

    @property
    def port(self) -> int:
        """The port the endpoint listens on."""
        return int(self._httpd.server_port)

    def close(self) -> None:
        """Stop serving and release the port; blocks up to half a second (the server's poll)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def serve(port: int, addr: str = "0.0.0.0") -> MetricsServer | None:
    """Serve the metrics at ``http://addr:port/metrics``; None, serving nothing, for port 0.

    The port is bound before this returns: a port in use raises OSError here, at startup.
    """
    if port == 0:
        return None
    httpd, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return MetricsServer(httpd, thread)
