"""The SDK game code uses to call its sidecar: ``GatewayClient`` (async) and ``SyncGatewayClient``.

A game calls ``detect(round_id)`` once per round and gets the IDP's validated result for
exactly that round, typed per game (``SicBoDice``, ``BaccaratHand``, ``RouletteNumber``
inside a ``Detection``), or one of the exceptions below. Every call has a deadline (per
call, defaulting to the client's), and the channel retries UNAVAILABLE, with capped
exponential backoff and jitter, through gRPC's own retry support (``RetryPolicy``: always
for Health and readiness, for Detect on request).

Failures raise a ``GatewayError`` subclass chosen by the gRPC status. Each is also a
``grpc.aio.AioRpcError`` (``.code()``, ``.details()``, ``.trailing_metadata()``), so code
written against the raw gRPC error keeps working::

    GatewayError              any other status (e.g. INTERNAL, UNIMPLEMENTED)
    ├── InvalidRound          INVALID_ARGUMENT     bad round id or stream URL: fix the call
    ├── GatewayUnavailable    UNAVAILABLE          no broker / no sidecar, after retries
    │   └── NotReady                               ``wait_ready`` ran out of time
    ├── DetectTimeout         DEADLINE_EXCEEDED    no valid result for the round in time
    ├── IdpError              FAILED_PRECONDITION  the IDP reported an error (``.idp_code``)
    ├── RoundSuperseded       ABORTED              a newer round on the table replaced this one
    └── ShakeFailed           (per failure)        a Shake did not complete (``.failure``)

These mirror the sidecar's own tree in ``gateway.errors`` as seen from the caller's side
of the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.client.channel import RetryPolicy, channel_options
from gateway.client.errors import (
    DetectTimeout,
    GatewayError,
    GatewayUnavailable,
    IdpError,
    InvalidRound,
    NotReady,
    RoundSuperseded,
    ShakeFailed,
    error_from_rpc,
    metadata_pairs,
)
from gateway.client.loopthread import LoopClosed, LoopThread
from gateway.protocol import BaccaratHand, Result, RouletteNumber, SicBoDice
from gateway.v1 import gateway_pb2 as pb
from gateway.v1 import gateway_pb2_grpc as pb_grpc

__all__ = [
    "BaccaratHand",
    "DetectTimeout",
    "Detection",
    "GatewayClient",
    "GatewayError",
    "GatewayUnavailable",
    "IdpError",
    "InvalidRound",
    "NotReady",
    "Result",
    "RetryPolicy",
    "RouletteNumber",
    "RoundSuperseded",
    "ShakeFailed",
    "Shook",
    "SicBoDice",
    "Subscription",
    "SyncGatewayClient",
    "error_from_rpc",
    "result_from_proto",
]

T = TypeVar("T")

DEFAULT_DEADLINE_S: Final = 30.0
"""Default deadline of every call. Keep it at least the table's ``timeout_s``: a shorter
gRPC deadline is what the sidecar waits for instead."""


class _FromClient:
    """Marker for "use the client's default deadline" (``None`` means no deadline)."""

    def __repr__(self) -> str:
        return "FROM_CLIENT"


FROM_CLIENT: Final = _FromClient()
Deadline = float | None | _FromClient

# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """The IDP's result for one round, as the sidecar returned it.

    ``result`` is ``SicBoDice`` (three dice 1..6), ``BaccaratHand`` (six cards, player1,
    banker1, player2, banker2, player3, banker3; "" for a card not dealt) or
    ``RouletteNumber`` (0..36), by the table's game.
    """

    round_id: str
    result: Result
    broker_id: str
    epoch: int
    elapsed_ms: float
    frames_seen: int
    publishes: int


def result_from_proto(response: pb.DetectResponse) -> Result:
    """The typed result inside a DetectResponse."""
    kind = response.WhichOneof("result")
    if kind == "sicbo":
        d = list(response.sicbo.dice)
        return SicBoDice((d[0], d[1], d[2]))
    if kind == "roulette":
        return RouletteNumber(response.roulette.number)
    if kind == "baccarat":
        c = list(response.baccarat.cards)
        return BaccaratHand((c[0], c[1], c[2], c[3], c[4], c[5]))
    raise ValueError(f"DetectResponse for round {response.round_id} carries no result")


# --- async client --------------------------------------------------------------------


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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
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
        """The IDP's validated result for ``round_id``; a ``GatewayError`` subclass if none."""
        r = await self.detect_raw(
            round_id, input_url=input_url, output_url=output_url, deadline_s=deadline_s
        )
        return Detection(
            round_id=r.round_id,
            result=result_from_proto(r),
            broker_id=r.broker_id,
            epoch=r.epoch,
            elapsed_ms=r.elapsed_ms,
            frames_seen=r.frames_seen,
            publishes=r.publishes,
        )

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
        return Shook(tuple(r.states), r.elapsed_ms, r.broker_id, r.budget_s)

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
        backoff = self.retry.initial_backoff_s
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
            pause = backoff if end is None else min(backoff, max(0.0, end - loop.time()))
            await asyncio.sleep(pause)
            backoff = min(backoff * self.retry.backoff_multiplier, self.retry.max_backoff_s)
        state = self._channel.get_state().name
        raise NotReady(
            grpc.StatusCode.UNAVAILABLE,
            f"sidecar at {self.target} not ready within {limit}s "
            f"(health service {service!r}): last status: {last}; channel {state}",
            target=self.target,
        )


@dataclass(frozen=True)
class Shook:
    """A completed shake: the states the shaker said (e.g. S2, S1, S0)."""

    states: tuple[str, ...]
    elapsed_ms: float
    broker_id: str
    budget_s: float


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


# --- sync facade ---------------------------------------------------------------------


class SyncGatewayClient:
    """A blocking ``GatewayClient`` for threaded game loops.

    Runs its own event loop in one background thread; any number of threads may call it
    at once (calls run concurrently on that loop). Same errors as ``GatewayClient``.
    """

    def __init__(
        self,
        target: str,
        *,
        default_deadline_s: float | None = DEFAULT_DEADLINE_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.target = target
        self._thread = LoopThread(f"gateway-client {target}")

        async def open_client() -> GatewayClient:
            # The channel must be created on the loop that will use it.
            return GatewayClient(target, default_deadline_s=default_deadline_s, retry=retry)

        self._client = self._run(open_client())

    def __enter__(self) -> SyncGatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._thread.run(coro)
        except LoopClosed:
            raise RuntimeError(f"SyncGatewayClient for {self.target} is closed") from None

    def detect(
        self,
        round_id: str,
        *,
        input_url: str = "",
        output_url: str = "",
        deadline_s: Deadline = FROM_CLIENT,
    ) -> Detection:
        """The IDP's validated result for ``round_id``; see ``GatewayClient.detect``."""
        return self._run(
            self._client.detect(
                round_id, input_url=input_url, output_url=output_url, deadline_s=deadline_s
            )
        )

    def health(self, *, deadline_s: Deadline = FROM_CLIENT) -> pb.HealthResponse:
        """The sidecar's Health; see ``GatewayClient.health``."""
        return self._run(self._client.health(deadline_s=deadline_s))

    def wait_ready(self, deadline_s: Deadline = FROM_CLIENT, *, service: str = "") -> None:
        """Block until the sidecar serves; see ``GatewayClient.wait_ready``."""
        self._run(self._client.wait_ready(deadline_s, service=service))

    def close(self) -> None:
        """Close the channel and stop the loop thread; safe to call more than once."""
        self._thread.close(self._client.close())
