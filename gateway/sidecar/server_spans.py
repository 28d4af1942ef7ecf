"""A server span per traced RPC, as OpenTelemetry's gRPC conventions have it, done small.

The span is named after the full method (``/gateway.v1.GatewayService/Detect``), of kind
SERVER, child of the trace the caller sent in its metadata (W3C ``traceparent``), with
``rpc.system``, ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code``. Its status is
ERROR for the codes that mean the server failed (UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), unset for the caller's own mistakes.
The service puts the round's attributes on it (``trace.get_current_span()``).

In place of ``opentelemetry-instrumentation-grpc``, which does the same with a proxy of
the servicer context per call and its instrumentor machinery: 2.7 MB of imports and a
share of every Detect's CPU (docs/performance.md, "Cost per table").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:  # generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Context = Handler = Any
    Interceptor = grpc.aio.ServerInterceptor
SCOPE = "opentelemetry.instrumentation.grpc"  # the scope these spans were reported under
HEALTH_METHODS = ("/gateway.v1.GatewayService/Health",)
UNTRACED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def is_traced_rpc(handler_call_details: grpc.HandlerCallDetails) -> bool:
    """True for the RPCs that get a server span: Detect, GetStats, Subscribe.

    Not the health checks (``grpc.health.v1`` and our own ``Health``, polled by probes
    and dashboards all day), nor server reflection (grpcurl).
    """
    method = handler_call_details.method or ""
    return method not in HEALTH_METHODS and not method.startswith(UNTRACED_PREFIXES)


class ServerSpans(Interceptor):
    """The interceptor: wraps the handler of each traced RPC in its server span."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(SCOPE)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """The RPC's handler, its behaviour wrapped in a span when the RPC is traced."""
        handler = await continuation(handler_call_details)
        if handler is None or not is_traced_rpc(handler_call_details):
            return handler
        method = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        carrier = dict(handler_call_details.invocation_metadata or ())
        tracer = self._tracer

        def started() -> Any:
            return tracer.start_as_current_span(
                method,
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )

        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary

            async def traced_unary(request: Any, context: Context) -> Any:
                with started() as span:
                    try:
                        response = await unary(request, context)
                    except Exception as exc:
                        _ended(span, context, exc)
                        raise
                    _ended(span, context, None)
                    return response

            return grpc.unary_unary_rpc_method_handler(
                traced_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream: Any = handler.unary_stream

            async def traced_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                with started() as span:
                    try:
                        async for response in stream(request, context):
                            yield response
                    except Exception as exc:
                        _ended(span, context, exc)
                        raise
                    _ended(span, context, None)

            return grpc.unary_stream_rpc_method_handler(
                traced_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming RPCs in this service


def _ended(span: trace.Span, context: Context, exc: Exception | None) -> None:
    """The RPC's outcome on its span. An abort carries its code in the context; any other
    exception out of the servicer reaches the caller as UNKNOWN."""
    code = context.code()
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        span.record_exception(exc)
        code = grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        details = context.details() or code.value[1]
        span.set_status(Status(StatusCode.ERROR, f"{code}:{details}"))
