"""The async SDK: ``GatewayClient``, one channel to one sidecar, and its ``Subscription``.

Every call has a deadline (``deadline_s``: omitted means the client's default, a number
is seconds, ``None`` means none) and raises a ``GatewayCallError`` subclass chosen by the
gRPC status when it fails (``gateway.client.errors``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, Final, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.backoff import Backoff
from gateway.client.channel import RetryPolicy, channel_options
from gateway.client.errors import NotReady, error_from_rpc, metadata_pairs
from gateway.client.results import Detection, Shook, detection_from_proto, shook_from_proto
from gateway.v1 import gateway_pb2 as pb
from gateway.v1 import gateway_pb2_grpc as pb_grpc

T = TypeVar("T")

DEFAULT_DEADLINE_S: Final = 30.0
"""Default deadline of every call. Keep it at least the table's ``timeout_s``: a shorter
gRPC deadline is what the sidecar waits for instead."""


class _FromClient:
    """Marker for "use the client's default deadline" (``None`` means no deadline)."""

    def __repr__(self) -> str:
        return "FROM_CLIENT"


FROM_CLIENT: Final = _FromClient()
"""The default of every ``deadline_s``: the client's ``default_deadline_s``."""

Deadline = float | None | _FromClient
"""What ``deadline_s`` accepts: seconds, ``None`` (no deadline) or ``FROM_CLIENT``."""


class GatewayClient:
    """A connection to one sidecar (usually ``127.0.0.1:50051``).

    ``deadline_s`` on each call: omitted means the client's ``default_deadline_s``, a
    number is seconds, ``None`` means no gRPC deadline (the table's timeout still bounds
    a Detect on the sidecar).
    """

    def __init__(
        self,
        target: str,
        *,
        default_deadline_s: float | None = DEFAULT_DEADLINE_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.target = target
        self.default_deadline_s = default_deadline_s
        self.retry = retry or RetryPolicy()
        self._channel = grpc.aio.insecure_channel(target, options=channel_options(self.retry))
        self.stub = pb_grpc.GatewayServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still running fail (CANCELLED)."""
        await self._channel.close(None)

    def _timeout(self, deadline_s: Deadline) -> float | None:
        return self.default_deadline_s if isinstance(deadline_s, _FromClient) else deadline_s

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.target) from exc

    async def detect_raw(
        self,
        round_id: str,
        *,
        input_url: str = "",
        output_url: str = "",
        deadline_s: Deadline = FROM_CLIENT,
    ) -> pb.DetectResponse:
        """Detect, returning the protobuf response as it came."""
        request = pb.DetectRequest(round_id=round_id, input=input_url, output=output_url)
        return await self._call(self.stub.Detect(request, timeout=self._timeout(deadline_s)))

    async def detect(
        self,
        round_id: str,
        *,
        input_url: str = "",
        output_url: str = "",
        deadline_s: Deadline = FROM_CLIENT,
    ) -> Detection:
        """The IDP's validated result for ``round_id``; a ``GatewayCallError`` subclass if
        none."""
        r = await self.detect_raw(
            round_id, input_url=input_url, output_url=output_url, deadline_s=deadline_s
        )
        return detection_from_proto(r)

    async def shake(
        self,
        *,
        pattern: int | None = None,
        parameter1: int | None = None,
        parameter2: int | None = None,
        amplitude: float | None = None,
        duration_s: float | None = None,
        deadline_s: Deadline = FROM_CLIENT,
    ) -> Shook:
        """Shake the SicBo table's dice (the studio's usual cycle unless told otherwise);
        returns once the shaker is idle again, else raises ``ShakeFailed``."""
        given: dict[str, Any] = {
            "pattern": pattern,
            "parameter1": parameter1,
            "parameter2": parameter2,
            "amplitude": amplitude,
            "duration_s": duration_s,
        }
        request = pb.ShakeRequest(**{k: v for k, v in given.items() if v is not None})
        r = await self._call(self.stub.Shake(request, timeout=self._timeout(deadline_s)))
        return shook_from_proto(r)

    def subscribe(self, topics: Sequence[str] = ()) -> Subscription:
        """Messages on the table's extra topics (all configured ones if none given)::

            async with client.subscribe(["ikg/sicbo/Billy-III/says"]) as messages:
                async for m in messages:
                    print(m.topic, m.payload)

        Entering waits until the sidecar confirms the subscription (``InvalidRound`` for
        a topic it does not carry). The stream has no deadline; leaving the block ends it.
        """
        return Subscription(self, list(topics))

    async def health(self, *, deadline_s: Deadline = FROM_CLIENT) -> pb.HealthResponse:
        """The sidecar's brokers, active broker, counters and overall status."""
        timeout = self._timeout(deadline_s)
        return await self._call(self.stub.Health(pb.HealthRequest(), timeout=timeout))

    async def stats(
        self, *, fleet: bool = False, deadline_s: Deadline = FROM_CLIENT
    ) -> pb.StatsResponse:
        """This sidecar's statistics, and with ``fleet`` its broker group's."""
        request = pb.StatsRequest(fleet=fleet)
        return await self._call(self.stub.GetStats(request, timeout=self._timeout(deadline_s)))

    async def wait_ready(self, deadline_s: Deadline = FROM_CLIENT, *, service: str = "") -> None:
        """Return once the sidecar's ``grpc.health.v1`` reports SERVING for ``service``.

        Service ``""`` is SERVING only with a ready active broker, i.e. when a Detect can
        be carried. Waits for the sidecar to listen at all, then watches its status.
        Raises ``NotReady`` naming the target and the last status seen on timeout.
        """
        limit = self._timeout(deadline_s)
        loop = asyncio.get_running_loop()
        end = None if limit is None else loop.time() + limit
        last = "none (never connected)"
        request = health_pb2.HealthCheckRequest(service=service)
        # Re-watch paced like every loop here (doubling, jittered) within the policy's
        # bounds; Backoff refuses a maximum below the initial delay, which a policy may set.
        backoff = Backoff(
            self.retry.initial_backoff_s,
            max(self.retry.initial_backoff_s, self.retry.max_backoff_s),
        )
        while True:
            remaining = None if end is None else end - loop.time()
            if remaining is not None and remaining <= 0:
                break
            stream = self._health.Watch(request, timeout=remaining, wait_for_ready=True)
            try:
                async for update in stream:
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(update.status)
                    if update.status == health_pb2.HealthCheckResponse.SERVING:
                        stream.cancel()
                        return
                last = f"{last}, then the health stream ended"
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
                last = f"{exc.code().name}: {exc.details()}"
            # The stream failed or ended (e.g. the sidecar restarting): watch again soon.
            pause = backoff.next()
            await asyncio.sleep(pause if end is None else min(pause, max(0.0, end - loop.time())))
        state = self._channel.get_state().name
        raise NotReady(
            grpc.StatusCode.UNAVAILABLE,
            f"sidecar at {self.target} not ready within {limit}s "
            f"(health service {service!r}): last status: {last}; channel {state}",
            target=self.target,
        )


class Subscription:
    """A Subscribe stream: an async context manager, then an async iterator of
    ``gateway.v1.TopicMessage`` (``topic``, ``payload``, ``broker_id``, ``sequence``)."""

    def __init__(self, client: GatewayClient, topics: list[str]) -> None:
        self._client = client
        self._request = pb.SubscribeRequest(topics=topics)
        self._call: Any = None
        self.topics: list[str] = []

    async def __aenter__(self) -> Subscription:
        self._call = self._client.stub.Subscribe(self._request)
        try:
            metadata = await self._call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._client.target) from exc
        subscribed = dict(metadata_pairs(metadata)).get("subscribed")
        if subscribed is None:  # the stream ended before confirming: report its status
            code = await self._call.code()
            raise error_from_rpc(
                grpc.aio.AioRpcError(
                    code, metadata, await self._call.trailing_metadata(),
                    details=await self._call.details(),
                    debug_error_string="",
                ),
                self._client.target,
            )  # fmt: skip
        self.topics = subscribed.split(",")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None:
            self._call.cancel()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> pb.TopicMessage:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._client.target) from exc
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # missing from the stubs
            raise StopAsyncIteration
        return message  # type: ignore[no-any-return]
