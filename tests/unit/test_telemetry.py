"""Telemetry set-up without the network: exporter choice, trace ids in logs, traced RPCs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext

from gateway.errors import ConfigError
from gateway.sidecar.telemetry import (
    JsonFormatter,
    Telemetry,
    TextFormatter,
    configure_telemetry,
    exporter_names,
    grpc_server_interceptors,
    is_traced_rpc,
)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Providers of our own (not the process-wide ones), exporting to memory only."""
    t = configure_telemetry(
        env={}, set_global=False, span_processors=[SimpleSpanProcessor(InMemorySpanExporter())]
    )
    yield t
    t.shutdown()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("none", ()),
        ("console", ("console",)),
        ("otlp", ("otlp",)),
        ("console,otlp", ("console", "otlp")),
        (" OTLP , none,otlp", ("otlp",)),
    ],
)
def test_exporter_selection(value: str, expected: tuple[str, ...]) -> None:
    """OTEL_*_EXPORTER lists pick otlp/console in order; unset or none exports nothing."""
    env = {"OTEL_TRACES_EXPORTER": value, "OTEL_METRICS_EXPORTER": value}
    assert exporter_names(env, "OTEL_TRACES_EXPORTER") == expected
    assert exporter_names(env, "OTEL_METRICS_EXPORTER") == expected
    assert exporter_names({}, "OTEL_TRACES_EXPORTER") == ()


def test_unknown_exporter_is_a_config_error() -> None:
    """A typo in OTEL_TRACES_EXPORTER stops start-up with the variable and value named."""
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_EXPORTER='console,jaeger'.*'jaeger'"):
        configure_telemetry(env={"OTEL_TRACES_EXPORTER": "console,jaeger"}, set_global=False)
    with pytest.raises(ConfigError, match=r"OTEL_METRICS_EXPORTER.*--metrics-listen"):
        configure_telemetry(env={"OTEL_METRICS_EXPORTER": "prometheus"}, set_global=False)


def test_otlp_over_http_is_a_config_error() -> None:
    """Asking for OTLP over HTTP, which this build cannot send, stops start-up."""
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'"):
        configure_telemetry(env=env, set_global=False)
    env = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL='http/json'"):
        configure_telemetry(env=env, set_global=False)


def test_bad_metrics_listen_is_a_config_error() -> None:
    """A --metrics-listen value without a port is refused before anything starts."""
    with pytest.raises(ConfigError, match="--metrics-listen: 'localhost' is not HOST:PORT"):
        configure_telemetry(env={}, metrics_listen="localhost", set_global=False)


def test_console_exporters_print_spans_and_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    """With the console exporters, spans and metrics are printed on stdout at shutdown."""
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"}
    t = configure_telemetry(env=env, set_global=False)
    assert (t.traces_exporters, t.metrics_exporters) == (("console",), ("console",))
    with t.tracer_provider.get_tracer("tests").start_as_current_span("console-span"):
        t.meter_provider.get_meter("tests").create_counter("gateway.console_probe").add(1)
    t.shutdown()
    out = capsys.readouterr().out
    assert '"name": "console-span"' in out
    assert '"name": "gateway.console_probe"' in out


def test_service_name_defaults_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """service.name is studio-gateway unless OTEL_SERVICE_NAME says otherwise."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    t = configure_telemetry(env={}, set_global=False)
    assert t.tracer_provider.resource.attributes["service.name"] == "studio-gateway"
    t.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "table-sbo-001")
    t = configure_telemetry(env={}, set_global=False)
    assert t.tracer_provider.resource.attributes["service.name"] == "table-sbo-001"
    t.shutdown()


def _log_line(formatter: logging.Formatter) -> str:
    """What one INFO record looks like through ``formatter``, right now."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.unit.telemetry")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("round %s done", "SBO-001-1")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return out.getvalue().rstrip("\n")


def test_json_log_carries_trace_ids_inside_a_span(telemetry: Telemetry) -> None:
    """A JSON log line written inside a span names its trace and span; outside it does not."""
    tracer = telemetry.tracer_provider.get_tracer("tests")
    with tracer.start_as_current_span("detect") as span:
        inside = json.loads(_log_line(JsonFormatter()))
    ctx = span.get_span_context()
    assert inside["message"] == "round SBO-001-1 done"
    assert inside["trace_id"] == f"{ctx.trace_id:032x}" and len(inside["trace_id"]) == 32
    assert inside["span_id"] == f"{ctx.span_id:016x}" and len(inside["span_id"]) == 16
    outside = json.loads(_log_line(JsonFormatter()))
    assert "trace_id" not in outside and "span_id" not in outside
    assert outside["message"] == "round SBO-001-1 done"


def test_text_log_carries_trace_ids_inside_a_span(telemetry: Telemetry) -> None:
    """A readable log line ends with the trace and span ids inside a span only."""
    tracer = telemetry.tracer_provider.get_tracer("tests")
    with tracer.start_as_current_span("detect") as span:
        inside = _log_line(TextFormatter())
    ctx = span.get_span_context()
    assert inside.endswith(
        f"tests.unit.telemetry: round SBO-001-1 done "
        f"trace_id={ctx.trace_id:032x} span_id={ctx.span_id:016x}"
    )
    assert _log_line(TextFormatter()).endswith("tests.unit.telemetry: round SBO-001-1 done")


def test_non_recording_span_adds_no_trace_ids() -> None:
    """A propagated but unsampled (non-recording) span leaves the log line without ids."""
    remote = NonRecordingSpan(SpanContext(trace_id=1, span_id=2, is_remote=True))
    with trace.use_span(remote):
        line = json.loads(_log_line(JsonFormatter()))
        text = _log_line(TextFormatter())
    assert "trace_id" not in line and "trace_id" not in text


class _Call(grpc.HandlerCallDetails):
    """What the server hands an interceptor for one incoming RPC."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


@pytest.mark.parametrize(
    ("method", "traced"),
    [
        ("/gateway.v1.GatewayService/Detect", True),
        ("/gateway.v1.GatewayService/GetStats", True),
        ("/gateway.v1.GatewayService/Health", False),
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", False),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
    ],
)
def test_only_gateway_rpcs_are_traced(method: str, traced: bool) -> None:
    """Detect and GetStats get a server span; health polls and reflection do not."""
    assert is_traced_rpc(_Call(method)) is traced


def test_interceptors_are_aio_server_interceptors(telemetry: Telemetry) -> None:
    """The interceptor list plugs into grpc.aio.server(interceptors=...)."""
    (interceptor,) = grpc_server_interceptors(telemetry.tracer_provider)
    assert isinstance(interceptor, grpc.aio.ServerInterceptor)
