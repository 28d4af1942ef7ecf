"""Telemetry leaves the process: OTLP/gRPC to a collector, Prometheus to a scraper."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from prometheus_client.parser import text_string_to_metric_families

from gateway.sidecar.telemetry import SECONDS_BUCKETS, configure_telemetry


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The trace half of an OTLP collector: keeps every export request."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """The metrics half of an OTLP collector: keeps every export request."""

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    async def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: object
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Collector:
    """A minimal OTLP/gRPC collector on a free loopback port."""

    def __init__(self, port: int, traces: TraceReceiver, metrics: MetricsReceiver) -> None:
        self.port, self.traces, self.metrics = port, traces, metrics


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    server = grpc.aio.server()
    traces, metrics = TraceReceiver(), MetricsReceiver()
    # The generated *_pb2_grpc modules carry no type hints.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Collector(port, traces, metrics)
    finally:
        await server.stop(None)


def _attrs(pairs: Iterable[KeyValue]) -> dict[str, str]:
    """OTLP attributes -> {key: string value}."""
    return {kv.key: kv.value.string_value for kv in pairs}


async def test_otlp_export_reaches_the_collector(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With OTEL_*_EXPORTER=otlp, spans and metrics reach the collector, under OTEL_SERVICE_NAME."""
    for name, value in {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "test-gw",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_EXPORTER_OTLP_HEADERS"):
        monkeypatch.delenv(name, raising=False)

    telemetry = configure_telemetry(set_global=False)
    tracer = telemetry.tracer_provider.get_tracer("tests.export")
    with tracer.start_as_current_span("exported-detect") as span:
        span.set_attribute("table", "SBO-001")
    counter = telemetry.meter_provider.get_meter("tests.export").create_counter("gateway.detects")
    counter.add(3, {"table": "SBO-001", "outcome": "ok"})
    # Shutdown blocks on the export round trips that this loop's server answers.
    await asyncio.wait_for(asyncio.to_thread(telemetry.shutdown), 20)

    spans = [
        (rs, s)
        for req in collector.traces.requests
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    assert [s.name for _, s in spans] == ["exported-detect"]
    resource_spans, exported = spans[0]
    assert _attrs(resource_spans.resource.attributes)["service.name"] == "test-gw"
    assert _attrs(exported.attributes) == {"table": "SBO-001"}

    points = [
        (rm, m)
        for req in collector.metrics.requests
        for rm in req.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "gateway.detects"
    ]
    assert points, f"no gateway.detects in {collector.metrics.requests}"
    resource_metrics, metric = points[-1]
    assert _attrs(resource_metrics.resource.attributes)["service.name"] == "test-gw"
    (point,) = metric.sum.data_points
    assert point.as_int == 3 and metric.sum.is_monotonic
    assert _attrs(point.attributes) == {"table": "SBO-001", "outcome": "ok"}


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def test_prometheus_endpoint_serves_the_metrics() -> None:
    """--metrics-listen serves counters and seconds histograms, labelled, until shutdown."""
    telemetry = configure_telemetry(env={}, metrics_listen="127.0.0.1:0", set_global=False)
    try:
        assert telemetry.metrics_port
        meter = telemetry.meter_provider.get_meter("gateway.sidecar.rounds")
        detects = meter.create_counter("gateway.detects", description="Detect calls")
        duration = meter.create_histogram("gateway.detect.duration", unit="s")
        detects.add(2, {"table": "SBO-001", "outcome": "ok"})
        detects.add(1, {"table": "SBO-001", "outcome": "timeout"})
        duration.record(0.3, {"table": "SBO-001", "outcome": "ok"})
        duration.record(4.0, {"table": "SBO-001", "outcome": "ok"})
        url = f"http://127.0.0.1:{telemetry.metrics_port}/metrics"
        text = await asyncio.to_thread(_fetch, url)
    finally:
        await asyncio.wait_for(asyncio.to_thread(telemetry.shutdown), 10)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    counter = families["gateway_detects"]
    assert counter.type == "counter"
    totals = {
        s.labels["outcome"]: s.value
        for s in counter.samples
        if s.name == "gateway_detects_total" and s.labels["table"] == "SBO-001"
    }
    assert totals == {"ok": 2.0, "timeout": 1.0}

    histogram = families["gateway_detect_duration_seconds"]
    assert histogram.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in histogram.samples}
    assert samples[("gateway_detect_duration_seconds_count", None)] == 2
    assert samples[("gateway_detect_duration_seconds_sum", None)] == pytest.approx(4.3)
    assert samples[("gateway_detect_duration_seconds_bucket", "0.25")] == 0
    assert samples[("gateway_detect_duration_seconds_bucket", "0.5")] == 1
    assert samples[("gateway_detect_duration_seconds_bucket", "5.0")] == 2
    assert {le for name, le in samples if le} == {str(b) for b in SECONDS_BUCKETS} | {"+Inf"}

    (info,) = families["target_info"].samples
    assert info.labels["service_name"] == "studio-gateway"
    assert "process_cpu_seconds" in families  # process metrics, as a scraper expects

    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_fetch, url)  # the port is closed by shutdown
