"""Inputs from outside that could not be used: counted, logged once, dropped.

A frame, a message on a subscribed topic, a shared record or view, a statistics hash, a
Redis reply, a config file: each that fails to parse or validate is counted by kind
(metric ``gateway.inputs.dropped{kind}``, Health ``dropped_inputs``), logged the first
time per kind and source with a short excerpt, then at most once a minute per kind with
how many more came, and dropped. One bad input costs one input.

Shared by the sidecar and by the readers of the fleet's shared state (the operator), so it
lives in the core.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import metrics

log = logging.getLogger(__name__)
_dropped = metrics.get_meter(__name__).create_counter(
    "gateway.inputs.dropped", description="Inputs from outside that were dropped, by kind"
)

EXCERPT_CHARS = 80
SUMMARY_EVERY_S = 60.0
_MAX_SOURCES = 256  # distinct (kind, source) pairs remembered for "logged once"


def excerpt(data: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable, safe-to-log rendering of an input, with its size."""
    size = len(data)
    head = data[:limit]
    text = repr(head) if isinstance(head, bytes) else repr(str(head))
    unit = "bytes" if isinstance(data, bytes) else "chars"
    return text + ("..." if size > limit else "") + f" ({size} {unit})"


class Drops:
    """Dropped inputs of one sidecar, by kind."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.counts: dict[str, int] = {}
        self._labels = dict(labels or {})
        self._logged: set[tuple[str, str]] = set()
        self._summary: dict[str, tuple[float, int]] = {}  # kind -> (last log, count then)

    def add(
        self, kind: str, source: str, data: bytes | str, reason: str, *, logged: bool = False
    ) -> None:
        """Count one dropped input; log it if it is the first of its kind from ``source``
        (``logged``: the caller has logged it already)."""
        total = self.counts.get(kind, 0) + 1
        self.counts[kind] = total
        _dropped.add(1, {**self._labels, "kind": kind})
        if logged:
            return
        key = (kind, source if len(self._logged) < _MAX_SOURCES else "*")
        now = time.monotonic()
        if key not in self._logged:
            self._logged.add(key)
            self._summary.setdefault(kind, (now, total))
            log.warning("dropped %s from %s: %s; input %s", kind, source, reason, excerpt(data))
            return
        last, then = self._summary.get(kind, (now, total))
        if now - last >= SUMMARY_EVERY_S:
            self._summary[kind] = (now, total)
            log.warning(
                "dropped %d more %s input(s) in the last %.0fs (%d in all); latest from %s: %s",
                total - then, kind, now - last, total, source, reason,
            )  # fmt: skip
