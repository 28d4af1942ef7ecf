"""Traces of a Detect: from the gRPC call down to the MQTT commands, with real components."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway.devtools.sandbox import MosquittoProcess
from gateway.sidecar.telemetry import grpc_server_interceptors
from tests.integration.harness import Stack, until

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process-wide tracer provider (settable once) feeding an in-memory exporter."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_detect_span_tree_and_attributes(
    broker: MosquittoProcess, spans: InMemorySpanExporter
) -> None:
    """One server span per Detect, with the wait and both MQTT commands as its children."""
    async with Stack([broker], "sicbo", interceptors=grpc_server_interceptors()) as s:
        await s.client.health()  # health RPCs are not traced
        d = await s.client.detect("SBO-001-traced")
        await until(lambda: bool(by_name(spans, "gateway.publish timeout")), 3, "timeout span")
    (server,) = by_name(spans, "/gateway.v1.GatewayService/Detect")
    assert not [x for x in spans.get_finished_spans() if "Health" in x.name]
    attrs = dict(server.attributes or {})
    assert attrs["table"] == "SBO-001" and attrs["game"] == "sicbo"
    assert attrs["round_id"] == "SBO-001-traced" and attrs["outcome"] == "ok"
    assert attrs["broker"] == d.broker_id and attrs["epoch"] == 0 and attrs["frames_seen"] >= 1
    (wait,) = by_name(spans, "gateway.detect.wait")
    assert wait.parent is not None and wait.parent.span_id == server.context.span_id
    assert wait.context.trace_id == server.context.trace_id
    for name in ("gateway.publish detect", "gateway.publish timeout"):
        (child,) = by_name(spans, name)
        assert child.context.trace_id == server.context.trace_id
        assert child.parent is not None and child.parent.span_id == wait.context.span_id
        assert dict(child.attributes or {})["broker"] == "b1"


async def test_timeout_marks_the_spans_as_errors(
    broker: MosquittoProcess, spans: InMemorySpanExporter
) -> None:
    """A Detect that times out leaves error spans saying why."""
    async with Stack([broker], "roulette", interceptors=grpc_server_interceptors()) as s:
        s.behave(answer="silence")
        with pytest.raises(grpc.aio.AioRpcError):
            await s.client.detect("ARO-001-silent", deadline_s=0.4)
        await until(lambda: bool(by_name(spans, "gateway.publish timeout")), 3, "timeout span")
    (wait,) = by_name(spans, "gateway.detect.wait")
    assert wait.status.status_code is StatusCode.ERROR
    assert dict(wait.attributes or {})["outcome"] == "timeout"
    (server,) = by_name(spans, "/gateway.v1.GatewayService/Detect")
    assert server.status.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["outcome"] == "DetectTimeout"


async def test_broker_loss_and_switch_are_traced(
    two_brokers: list[MosquittoProcess], spans: InMemorySpanExporter
) -> None:
    """A broker going down and the switch it causes appear as their own short spans."""
    async with Stack(two_brokers, "roulette"):
        spans.clear()
        await two_brokers[0].kill()
        await until(lambda: bool(by_name(spans, "gateway.election.switch")), 3, "switch span")
    (switch,) = by_name(spans, "gateway.election.switch")
    assert dict(switch.attributes or {})["from"] == "b1"
    assert dict(switch.attributes or {})["to"] == "b2"
    downs = [x for x in by_name(spans, "gateway.broker.state") if x.attributes["to"] == "down"]  # type: ignore[index]
    assert downs and downs[0].attributes["broker"] == "b1"  # type: ignore[index]


async def test_trace_context_rides_in_the_command_only_when_asked(
    broker: MosquittoProcess, spans: InMemorySpanExporter
) -> None:
    """With trace_context_in_command the detect carries a W3C traceparent of this trace."""
    interceptors = grpc_server_interceptors()
    async with Stack([broker], "roulette", interceptors=interceptors) as plain:
        await plain.client.detect("ARO-001-plain")
        assert "trace" not in plain.commands("detect")[0]
    async with Stack(
        [broker], "roulette", interceptors=interceptors, trace_context_in_command=True
    ) as s:
        await s.client.detect("ARO-001-carried")
        (server,) = [
            x
            for x in by_name(spans, "/gateway.v1.GatewayService/Detect")
            if dict(x.attributes or {})["round_id"] == "ARO-001-carried"
        ]
        traceparent = s.commands("detect")[0]["trace"]["traceparent"]
        assert traceparent.split("-")[1] == f"{server.context.trace_id:032x}"


async def test_the_callers_trace_is_the_parent_and_rpc_attributes_follow_the_conventions(
    broker: MosquittoProcess, spans: InMemorySpanExporter
) -> None:
    """A traceparent in the call's metadata makes the server span its child; the span has
    the rpc.* attributes; a caller's bad argument is not a server error, a timeout is."""
    from gateway.v1 import gateway_pb2, gateway_pb2_grpc

    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    async with (
        Stack([broker], "roulette", interceptors=grpc_server_interceptors()) as s,
        grpc.aio.insecure_channel(s.sidecar.address) as channel,
    ):
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.DetectRequest(round_id="ARO-001-parented")
        await stub.Detect(request, metadata=metadata, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Detect(gateway_pb2.DetectRequest(round_id=""), timeout=5)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    ok, bad = by_name(spans, "/gateway.v1.GatewayService/Detect")
    assert ok.kind is trace.SpanKind.SERVER
    assert f"{ok.context.trace_id:032x}" == trace_id
    assert ok.parent is not None and f"{ok.parent.span_id:016x}" == parent_id
    attrs = dict(ok.attributes or {})
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.service"] == "gateway.v1.GatewayService"
    assert attrs["rpc.method"] == "Detect" and attrs["rpc.grpc.status_code"] == 0
    assert ok.status.status_code is StatusCode.UNSET
    assert dict(bad.attributes or {})["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert bad.status.status_code is StatusCode.UNSET  # the caller's mistake, not the server's
    assert f"{bad.context.trace_id:032x}" != trace_id  # no traceparent: a trace of its own
