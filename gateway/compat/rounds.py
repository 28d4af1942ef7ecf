"""A round through the sidecar in the predecessor's shapes: the detect result and the shake.

The facade (``CompleteMQTTSystem``) runs these on its own loop with its client. Each
failure is logged on ``gateway.compat`` saying why: WARNING when a later round may
succeed (timeout, IDP error, no broker, a newer round), ERROR for a call that never can
(bad round id or URL).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from gateway.client import GatewayCallError, GatewayClient, InvalidRound
from gateway.compat.legacy import LegacyResult, describe_failure, legacy_result
from gateway.redact import redact_url

log = logging.getLogger("gateway.compat")


def note_ignored(keywords: Iterable[str], seen: set[str]) -> None:
    """Log (DEBUG) once per name each detect keyword the sidecar has no setting for."""
    for name in sorted(set(keywords) - seen):
        seen.add(name)
        log.debug("detect: keyword %r is ignored (the sidecar has no such setting)", name)


def stream_urls(round_id: str, *spellings: tuple[str | None, str | None]) -> tuple[str, ...] | None:
    """One URL per ``(predecessor's name, other spelling)`` pair ("" for the table's
    configured stream); None, logged at ERROR, when a pair names two different URLs."""
    urls = []
    for old, new in spellings:
        if old and new and old != new:
            log.error(
                "detect round=%r: two different stream URLs %r, %r",
                round_id,
                redact_url(old),
                redact_url(new),
            )
            return None
        urls.append(old or new or "")
    return tuple(urls)


async def detect_round(
    client: GatewayClient,
    round_id: str,
    input_url: str,
    output_url: str,
    deadline_s: float | None,
) -> LegacyResult:
    """The IDP's result for exactly this round in the predecessor's shape; a failure is
    logged, then raised as the client's ``GatewayCallError`` for the caller to keep."""
    try:
        d = await client.detect(
            round_id, input_url=input_url, output_url=output_url, deadline_s=deadline_s
        )
    except GatewayCallError as exc:
        level = logging.ERROR if isinstance(exc, InvalidRound) else logging.WARNING
        log.log(level, "detect round=%r: no result, %s", round_id, describe_failure(exc))
        raise
    result = legacy_result(d.result)
    log.info(
        "detect round=%s result=%s broker=%s elapsed_ms=%.0f",
        round_id,
        result,
        d.broker_id,
        d.elapsed_ms,
    )
    return result


async def shake_table(client: GatewayClient, params: dict[str, Any]) -> tuple[bool, list[str]]:
    """``(True, states)`` once the shaker is idle again, else ``(False, [])`` and a
    WARNING saying why; a shake has no gRPC deadline (the sidecar bounds the cycle)."""
    try:
        shook = await client.shake(**params, deadline_s=None)
    except GatewayCallError as exc:
        log.warning("shake: not done, %s", describe_failure(exc))
        return False, []
    return True, list(shook.states)
