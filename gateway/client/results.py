"""What a successful call returns: ``Detection`` (a round's result) and ``Shook`` (a shake).

The result inside a ``Detection`` is typed per game (``SicBoDice``, ``BaccaratHand``,
``RouletteNumber`` from ``gateway.protocol``), so game code never parses protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.protocol import BaccaratHand, Result, RouletteNumber, SicBoDice
from gateway.v1 import gateway_pb2 as pb


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


@dataclass(frozen=True)
class Shook:
    """A completed shake: the states the shaker said (e.g. S2, S1, S0)."""

    states: tuple[str, ...]
    elapsed_ms: float
    broker_id: str
    budget_s: float


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


def detection_from_proto(r: pb.DetectResponse) -> Detection:
    """The ``Detection`` a DetectResponse describes."""
    return Detection(
        round_id=r.round_id,
        result=result_from_proto(r),
        broker_id=r.broker_id,
        epoch=r.epoch,
        elapsed_ms=r.elapsed_ms,
        frames_seen=r.frames_seen,
        publishes=r.publishes,
    )


def shook_from_proto(r: pb.ShakeResponse) -> Shook:
    """The ``Shook`` a ShakeResponse describes."""
    return Shook(tuple(r.states), r.elapsed_ms, r.broker_id, r.budget_s)
