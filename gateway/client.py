"""An async client for game code: ``GatewayClient(target)`` with ``detect`` and ``health``.

Results come back typed per game (``SicBoDice``, ``RouletteNumber``, ``BaccaratHand``);
failures raise ``grpc.aio.AioRpcError`` with the sidecar's status and details (the IDP
error code is in the trailing metadata ``idp-err``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import grpc

from gateway.protocol import BaccaratHand, Result, RouletteNumber, SicBoDice
from gateway.v1 import gateway_pb2 as pb
from gateway.v1 import gateway_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Detection:
    """The IDP's result for one round, as the sidecar returned it."""

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


class GatewayClient:
    """A connection to one sidecar (usually ``127.0.0.1:50051``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.GatewayServiceStub(self._channel)

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

    async def detect_raw(
        self,
        round_id: str,
        *,
        input_url: str = "",
        output_url: str = "",
        deadline_s: float | None = None,
    ) -> pb.DetectResponse:
        """Detect, returning the protobuf response as it came."""
        request = pb.DetectRequest(round_id=round_id, input=input_url, output=output_url)
        return await self.stub.Detect(request, timeout=deadline_s)

    async def detect(
        self,
        round_id: str,
        *,
        input_url: str = "",
        output_url: str = "",
        deadline_s: float | None = None,
    ) -> Detection:
        """The IDP's validated result for ``round_id``."""
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

    async def health(self, *, deadline_s: float | None = 5.0) -> pb.HealthResponse:
        return await self.stub.Health(pb.HealthRequest(), timeout=deadline_s)

    async def stats(
        self, *, fleet: bool = False, deadline_s: float | None = 5.0
    ) -> pb.StatsResponse:
        """This sidecar's statistics, and with ``fleet`` its broker group's."""
        return await self.stub.GetStats(pb.StatsRequest(fleet=fleet), timeout=deadline_s)
