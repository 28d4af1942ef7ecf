"""The predecessor's ``get_system_status`` report, built from what a system knows (pure).

Its callers read ``config_info``, ``connection_manager``, ``message_processor`` and
``primary_client``; those keys keep their shape, filled from the sidecar's Health and
statistics instead of the predecessor's own connections.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.compat.config import Environment, GameType, MQTTConfig
from gateway.v1 import gateway_pb2 as pb


def system_status(
    *,
    game_type: GameType,
    environment: Environment,
    is_initialized: bool,
    is_running: bool,
    target: str,
    table_code: str,
    config: MQTTConfig,
    health: pb.HealthResponse | None,
    stats: dict[str, Any],
    pooling: bool,
    processing: bool,
    handlers: int,
    subscribed: Iterable[str],
    differences: Iterable[str],
) -> dict[str, Any]:
    """The status dict of one system: ``stats`` is its ``get_connection_stats()``,
    ``health`` the sidecar's last Health (None before one arrived)."""
    g = config.game_config
    topics = sorted(subscribed)
    return {
        "game_type": game_type.value,
        "environment": environment.value,
        "is_initialized": is_initialized,
        "is_running": is_running,
        "sidecar": target,
        "table_code": table_code,
        "config_info": {
            "client_id": health.instance_id if health else config.client_id,
            "game_code": table_code or g.game_code,
            "command_topic": health.command_topic if health else g.command_topic,
            "response_topic": health.response_topic if health else g.response_topic,
            "source": f"sidecar {target}" if health else config.source,
        },
        "connection_manager": {
            "enabled": pooling,
            "kind": "sidecar",
            "total_connections": stats["total_connections"],
            "active_connections": stats["active_connections"],
            "failed_connections": stats["failed_connections"],
        },
        "message_processor": {
            "enabled": processing,
            "handlers": handlers,
            "subscribed_topics": topics,
        },
        "primary_client": {
            "connected": stats["sidecar_reachable"] and stats["active_connections"] > 0,
            "broker": stats["active_broker"],
            "sidecar": target,
        },
        "subscribed_topics": list(topics),
        "message_handlers": handlers,
        "connection_stats": stats,
        "config_differences": list(differences),
    }
