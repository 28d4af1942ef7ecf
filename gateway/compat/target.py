"""Which sidecar a predecessor system talks to, and the error for finding the wrong one.

One sidecar serves one table. A process that runs several games (one system each) points
each at its own sidecar with ``GATEWAY_TARGET_<GAME>``; a process with one game sets
``GATEWAY_TARGET`` or passes ``target=``.
"""

from __future__ import annotations

import os
from typing import Final

from gateway.compat.config import GameType
from gateway.compat.legacy import PROTO_TO_GAME
from gateway.config import DEFAULT_ADDRESS
from gateway.v1 import gateway_pb2 as pb

DEFAULT_TARGET: Final = DEFAULT_ADDRESS
"""The sidecar's usual address: on loopback next to the game, gRPC's port 50051."""

TARGET_ENV: Final = "GATEWAY_TARGET"
"""The environment variable naming the sidecar (``_<GAME>`` appended for one game)."""


class WrongSidecar(RuntimeError):
    """The sidecar at the target serves another game than the system was created for."""


def sidecar_target(game: GameType, target: str | None = None) -> str:
    """Where a game's sidecar is: ``target``, ``GATEWAY_TARGET_<GAME>`` (one sidecar per
    game in a process that runs several), ``GATEWAY_TARGET``, or ``127.0.0.1:50051``."""
    return (
        target
        or os.environ.get(f"{TARGET_ENV}_{game.value.upper()}")
        or os.environ.get(TARGET_ENV)
        or DEFAULT_TARGET
    )


def check_serves(health: pb.HealthResponse, game: GameType, target: str) -> None:
    """Raise ``WrongSidecar`` unless the sidecar's Health says it serves ``game``, so a
    program pointed at another game's sidecar fails at start-up, not on its first round."""
    served = PROTO_TO_GAME.get(health.game, "an unknown game")
    if served != game.value:
        raise WrongSidecar(
            f"sidecar at {target} serves {served} table {health.table_code}, "
            f"not {game.value}: check GATEWAY_TARGET / target="
        )
