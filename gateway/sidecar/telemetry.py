"""Process-wide observability set-up, done once at start-up by the CLI.

Library modules only call ``logging.getLogger(__name__)`` and the OpenTelemetry API; the
log format, the SDK and its exporters are chosen here:

- logs: readable lines on a terminal, one JSON object per line otherwise (containers),
  both carrying ``trace_id``/``span_id`` while a recording span is current;
- traces and metrics: the standard ``OTEL_*`` variables pick the exporters (``otlp``,
  ``console`` or ``none``, the default, so a sidecar without a collector exports
  nothing); ``--metrics-listen`` adds a Prometheus scrape endpoint;
- gRPC: one server span per ``Detect`` or ``GetStats`` call, none for the health checks
  and reflection that probes, dashboards and grpcurl call all day.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from gateway.errors import ConfigError
from gateway.redact import RedactingFilter
from gateway.sidecar.server_spans import ServerSpans
from gateway.sidecar.server_spans import is_traced_rpc as is_traced_rpc

if TYPE_CHECKING:
    import prometheus_client

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console", "none")
"""Values ``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` may list (comma-separated)."""

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Bucket bounds of every histogram in seconds (failovers take ms, a Detect seconds).

The SDK's default bounds (0, 5, 10, 25 ... 10000) are meant for milliseconds: with
them, every failover and nearly every Detect would land in the first bucket.
"""


# --- logs ---------------------------------------------------------------------------------


def _trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, if one is recording."""
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if not (span.is_recording() and ctx.is_valid):
        return None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace ids (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if ids := _trace_ids():
            doc["trace_id"], doc["span_id"] = ids
        if record.exc_info:
            doc["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, ending with the trace ids when a span is recording."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The usual line, plus the trace ids when a span is recording."""
        line = super().formatMessage(record)
        if ids := _trace_ids():
            line += f" trace_id={ids[0]} span_id={ids[1]}"
        return line


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger once: ``fmt`` is auto, json or text; every record goes
    through ``gateway.redact.RedactingFilter``, so no URL password reaches the output."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho/aiomqtt are chatty at DEBUG about every packet; keep them at WARNING.
    for noisy in ("aiomqtt", "paho", "gateway.sidecar.brokers.mqtt"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# --- traces and metrics -------------------------------------------------------------------


def exporter_names(env: Mapping[str, str], variable: str) -> tuple[str, ...]:
    """The exporters ``variable`` selects in ``env`` (default none); ConfigError if unknown."""
    names: list[str] = []
    for raw in env.get(variable, "").split(","):
        name = raw.strip().lower()
        if name and name not in EXPORTERS:
            hint = " (use --metrics-listen for Prometheus)" if name == "prometheus" else ""
            raise ConfigError(
                f"{variable}={env[variable]!r}: unknown exporter {name!r}, "
                f"expected a comma-separated list of {', '.join(EXPORTERS)}{hint}"
            )
        if name and name != "none" and name not in names:
            names.append(name)
    return tuple(names)


@dataclass
class Telemetry:
    """The SDK providers built at start-up, and the Prometheus endpoint if any."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    traces_exporters: tuple[str, ...] = ()
    metrics_exporters: tuple[str, ...] = ()
    metrics_port: int | None = None
    """The port the Prometheus endpoint is bound to (useful with port 0), else None."""
    _http: tuple[WSGIServer, threading.Thread] | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the scrape endpoint, export what is buffered, shut the providers down.

        Blocking (exports over the network): call it from a thread, or after the event
        loop's work is done. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            _stop_metrics_server(*self._http, timeout_s)
        millis = int(timeout_s * 1000)
        self.tracer_provider.force_flush(millis)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=millis)


def configure_telemetry(
    *,
    service_name: str = "studio-gateway",
    metrics_listen: str | None = None,
    env: Mapping[str, str] = os.environ,
    span_processors: Sequence[SpanProcessor] = (),
    metric_readers: Sequence[MetricReader] = (),
    set_global: bool = True,
) -> Telemetry:
    """Build the tracer and meter providers from the ``OTEL_*`` variables; call once.

    ``env`` selects the exporters (``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``);
    the SDK and the OTLP exporters read their own variables (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_TRACES_SAMPLER*``,
    ``OTEL_METRIC_EXPORT_INTERVAL``...) from the process environment. ``service_name``
    applies unless those variables name the service. ``metrics_listen`` ("HOST:PORT",
    port 0 picks one) serves Prometheus metrics on ``/metrics``. ``set_global=False``
    leaves the process-wide providers alone (they can be set only once per process).
    """
    traces = exporter_names(env, "OTEL_TRACES_EXPORTER")
    metric_names = exporter_names(env, "OTEL_METRICS_EXPORTER")
    listen = _parse_listen(metrics_listen) if metrics_listen is not None else None

    # The service name is a default: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win.
    resource = Resource.create({SERVICE_NAME: service_name}).merge(OTELResourceDetector().detect())

    for signal, chosen in (("TRACES", traces), ("METRICS", metric_names)):
        var = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
        var = var if var in env else "OTEL_EXPORTER_OTLP_PROTOCOL"
        if "otlp" in chosen and env.get(var, "grpc") != "grpc":
            raise ConfigError(f"{var}={env[var]!r}: this build exports OTLP over grpc only")

    readers = list(metric_readers)
    http: tuple[WSGIServer, threading.Thread] | None = None
    if listen is not None:
        # Imported here: only sidecars with a scrape endpoint pay for prometheus_client.
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        # A registry of our own: several configurations can live in one process (tests),
        # and the process/GC collectors of prometheus_client's default one are kept.
        registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=registry)
        prometheus_client.PlatformCollector(registry=registry)
        prometheus_client.GCCollector(registry=registry)
        try:
            http = _start_metrics_server(listen[0], listen[1], registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-listen {metrics_listen}: {exc.strerror}") from exc
        readers.append(PrometheusMetricReader(registry=registry))
    try:
        for name in metric_names:
            readers.append(PeriodicExportingMetricReader(_METRIC_EXPORTERS[name]()))
        tracer_provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
        for name in traces:
            tracer_provider.add_span_processor(BatchSpanProcessor(_SPAN_EXPORTERS[name]()))
        for processor in span_processors:
            tracer_provider.add_span_processor(processor)
        seconds = View(
            instrument_type=Histogram,
            instrument_unit="s",
            aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=[seconds])
    except BaseException:
        if http is not None:  # do not leave the scrape endpoint running
            http[0].shutdown()
            http[0].server_close()
        raise

    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    telemetry = Telemetry(
        tracer_provider,
        meter_provider,
        traces_exporters=traces,
        metrics_exporters=metric_names,
        metrics_port=http[0].server_port if http else None,
        _http=http,
    )
    log.info(
        "telemetry: service %s, traces to %s, metrics to %s%s",
        resource.attributes.get(SERVICE_NAME),
        ",".join(traces) or "none",
        ",".join(metric_names) or "none",
        f", Prometheus on {listen[0]}:{telemetry.metrics_port}/metrics" if listen else "",
    )
    return telemetry


def _otlp_span_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _otlp_metric_exporter() -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


# The OTLP exporters read their own OTEL_EXPORTER_OTLP_* variables. The console ones
# are given today's sys.stdout: their default is the one of the day they were imported.
_SPAN_EXPORTERS: dict[str, Callable[[], SpanExporter]] = {
    "otlp": _otlp_span_exporter,
    "console": lambda: ConsoleSpanExporter(out=sys.stdout),
}
_METRIC_EXPORTERS: dict[str, Callable[[], MetricExporter]] = {
    "otlp": _otlp_metric_exporter,
    "console": lambda: ConsoleMetricExporter(out=sys.stdout),
}


def _start_metrics_server(
    host: str, port: int, registry: prometheus_client.CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """prometheus_client's scrape endpoint in a daemon thread that sleeps until a request
    comes (``start_http_server``'s thread wakes twice a second to look for a shutdown)."""
    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No line per scrape."""

    server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": None}, name="metrics", daemon=True
    )
    thread.start()
    return server, thread


def _stop_metrics_server(server: WSGIServer, thread: threading.Thread, timeout_s: float) -> None:
    """Stop the scrape endpoint: its thread waits for a request, so one is sent to wake it."""
    stopper = threading.Thread(target=server.shutdown, name="metrics-stop", daemon=True)
    stopper.start()
    host, port = server.server_address[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(str(host), str(host))
    deadline = time.monotonic() + timeout_s
    while stopper.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=0.2).close()
        stopper.join(0.05)
    server.server_close()
    thread.join(timeout_s)


def _parse_listen(value: str) -> tuple[str, int]:
    """("HOST", PORT) of a "HOST:PORT" (IPv6 in brackets); an empty host means all."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--metrics-listen: {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


# --- gRPC ---------------------------------------------------------------------------------


def grpc_server_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
) -> list[grpc.aio.ServerInterceptor[object, object]]:
    """Interceptors for the aio server: a server span per traced RPC (``is_traced_rpc``).

    ``tracer_provider`` defaults to the global one, looked up when the interceptor is made.
    """
    return [ServerSpans(tracer_provider)]
