"""The predecessor's shapes, mapped from the sidecar's answers: pure functions, no I/O.

Results as it returned them (SicBo ``[4, 2, 6]``, Roulette ``35``, Baccarat six cards),
its connection statistics and health report. Used by
``gateway.compat``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from gateway.client import (
    GatewayCallError,
    IdpFailed,
    Result,
    RouletteNumber,
    ShakeFailed,
    SicBoDice,
)
from gateway.compat.config import GameType
from gateway.v1 import gateway_pb2 as pb

LegacyResult = list[int] | int | list[str]
"""A result as the predecessor returned it: SicBo ``[d1, d2, d3]``, Roulette ``n``,
Baccarat six cards ``[p1, b1, p2, b2, p3, b3]`` (``""`` for a card not dealt)."""


GAME_TO_PROTO: Final = {
    GameType.SICBO: pb.GAME_SICBO,
    GameType.BACCARAT: pb.GAME_BACCARAT,
    GameType.ROULETTE: pb.GAME_ROULETTE,
}
PROTO_TO_GAME: Final = {v: k.value for k, v in GAME_TO_PROTO.items()}
_HEALTH: Final = {
    pb.HealthResponse.SERVING: "healthy",
    pb.HealthResponse.DEGRADED: "degraded",
}

# --- mapping --------------------------------------------------------------------


def legacy_result(result: Result) -> LegacyResult:
    """A typed result in the predecessor's shape."""
    if isinstance(result, SicBoDice):
        return list(result.dice)
    if isinstance(result, RouletteNumber):
        return result.number
    return list(result.cards)


def parse_payload(payload: str) -> Any:
    """A handler's ``data``: the JSON value, or ``{"raw": payload}`` as the predecessor gave."""
    try:
        return json.loads(payload)
    except ValueError:
        return {"raw": payload}


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching: ``+`` is one level, a trailing ``#`` any number."""
    parts, levels = pattern.split("/"), topic.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or part not in ("+", levels[i]):
            return False
    return len(parts) == len(levels)


def describe_failure(exc: GatewayCallError) -> str:
    """Why a call failed, for a log line: class, gRPC status, IDP code, details."""
    status = exc.code().name
    if isinstance(exc, IdpFailed) and exc.idp_code:
        status += f", idp err {exc.idp_code} {exc.idp_name}".rstrip()
    if isinstance(exc, ShakeFailed):
        status += f", {exc.failure}"
    return f"{type(exc).__name__} ({status}) from sidecar {exc.target}: {exc.details()}"


def connection_stats(
    stats: pb.StatsResponse | None, *, target: str, error: str = ""
) -> dict[str, Any]:
    """The predecessor's connection statistics from the sidecar's GetStats.

    One connection per broker; active = connected. With ``error`` (the last refresh
    failed, or not initialized) nothing counts as active: no detect can get through.
    """
    local = stats.local if stats is not None else pb.SidecarStats()
    brokers = {
        b.id: {
            "connected": b.connected and not error,
            "connects": b.connects,
            "disconnects": b.disconnects,
            "publishes_ok": b.publishes_ok,
            "publishes_failed": b.publishes_failed,
            "probe_rtt_ms": b.probe_rtt_ms,
            "last_error": b.last_error,
        }
        for b in local.brokers
    }
    active = sum(1 for b in brokers.values() if b["connected"])
    return {
        "total_connections": len(brokers),
        "active_connections": active,
        "failed_connections": len(brokers) - active,
        "active_broker": local.active_broker_id or None,
        "brokers": brokers,
        "counters": {
            f.name: getattr(local.counters, f.name) for f in pb.Counters.DESCRIPTOR.fields
        },
        "table_code": local.table_code,
        "sidecar": target,
        "sidecar_reachable": stats is not None and not error,
        "error": error,
        "updated_unix": local.updated_unix,
    }


def health_report(
    health: pb.HealthResponse | None, *, target: str, game: GameType, error: str = ""
) -> dict[str, Any]:
    """The predecessor's health dict (``status``, ``issues``) from the sidecar's Health.

    healthy = SERVING; degraded = serving with something to look at (a broker down, a
    configuration change refused); unhealthy = no detect can be carried, the sidecar
    cannot be reached, or it serves another game.
    """
    if health is None:
        return {
            "status": "unhealthy",
            "issues": [error],
            "sidecar": target,
            "timestamp": time.time(),
        }
    status = _HEALTH.get(health.status, "unhealthy")
    issues: list[str] = []
    served = PROTO_TO_GAME.get(health.game, "an unknown game")
    if served != game.value:
        status = "unhealthy"
        issues.append(
            f"sidecar at {target} serves {served} table {health.table_code}, not {game.value}"
        )
    if health.status != pb.HealthResponse.SERVING:
        issues.append(f"sidecar: {health.reason}")
    for b in health.brokers:
        if not b.connected:
            state = pb.BrokerState.Name(b.state).removeprefix("BROKER_STATE_")
            why = b.last_error or "no error recorded"
            issues.append(f"broker {b.id} ({b.host}:{b.port}) {state}: {why}")
    if health.config_error:
        status = "degraded" if status == "healthy" else status
        issues.append(f"configuration change not applied: {health.config_error}")
    return {
        "status": status,
        "issues": issues,
        "sidecar": target,
        "reason": health.reason,
        "table_code": health.table_code,
        "game": served,
        "active_broker": health.active_broker_id or None,
        "brokers": [
            {
                "id": b.id,
                "host": b.host,
                "port": b.port,
                "connected": b.connected,
                "active": b.active,
                "state": pb.BrokerState.Name(b.state).removeprefix("BROKER_STATE_"),
                "failures": b.failures,
                "last_error": b.last_error,
            }
            for b in health.brokers
        ],
        "timestamp": time.time(),
    }
