"""The supervision boundary: one bad input costs one input, a failed loop costs a restart.

Two tools, one of each per sidecar:

- ``Drops`` accounts for inputs from outside that could not be used: a frame, a message
  on a subscribed topic, a shared record or view, a statistics hash, a Redis reply, a
  config file. Each is counted by kind (metric ``gateway.inputs.dropped{kind}``, Health
  ``dropped_inputs``), logged the first time per kind and source with a short excerpt,
  then at most once a minute per kind with how many more came, and dropped.
- ``Supervisor`` runs the long-running loops (broker links, the elector, the round desk,
  statistics, the config reloader, health). A loop that fails for a reason nobody foresaw
  is logged with its traceback, counted (``gateway.loop.restarts{loop}``, Health
  ``loops``) and restarted after a capped, jittered backoff; never the process. The
  process ends only for a bad config at start, a signal, or a listener that cannot bind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry import metrics

from gateway.backoff import Backoff
from gateway.errors import raise_if_cancelled

log = logging.getLogger(__name__)
_meter = metrics.get_meter(__name__)
_dropped = _meter.create_counter(
    "gateway.inputs.dropped", description="Inputs from outside that were dropped, by kind"
)
_restarts = _meter.create_counter(
    "gateway.loop.restarts", description="Supervised loops restarted after a failure"
)

EXCERPT_CHARS = 80
SUMMARY_EVERY_S = 60.0
_MAX_SOURCES = 256  # distinct (kind, source) pairs remembered for "logged once"
RECENT_FAILURE_S = 60.0  # a loop that failed this recently makes Health DEGRADED


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


@dataclass(frozen=True)
class LoopHealth:
    """One supervised loop, as Health shows it."""

    name: str
    restarts: int
    last_error: str
    last_failure_unix: float
    last_failure: float  # monotonic


class Supervisor:
    """Runs named loops until cancelled, restarting any that fails."""

    def __init__(
        self,
        *,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        labels: dict[str, str] | None = None,
    ) -> None:
        self._initial = backoff_initial_s
        self._max = backoff_max_s
        self._labels = dict(labels or {})
        self._loops: dict[str, LoopHealth] = {}

    def loops(self) -> list[LoopHealth]:
        """Every loop started so far, in start order."""
        return list(self._loops.values())

    def problems(self, now: float | None = None) -> tuple[str, ...]:
        """Loops that failed within ``RECENT_FAILURE_S``: reasons for DEGRADED."""
        now = time.monotonic() if now is None else now
        return tuple(
            f"loop {h.name} restarted {h.restarts}x, last: {h.last_error}"
            for h in self._loops.values()
            if h.restarts and now - h.last_failure < RECENT_FAILURE_S
        )

    async def run(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body()`` until cancelled; restart it with backoff whenever it fails."""
        backoff = Backoff(self._initial, self._max, stable_s=max(30.0, self._max * 3))
        self._loops.setdefault(name, LoopHealth(name, 0, "", 0.0, 0.0))
        while True:
            backoff.started()
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the boundary: anything unforeseen restarts the loop
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("loop %s failed; restarting it", name)
            else:
                error = "returned (it should run until cancelled)"
                log.error("loop %s %s; restarting it", name, error)
            previous = self._loops[name]
            self._loops[name] = LoopHealth(
                name, previous.restarts + 1, error, time.time(), time.monotonic()
            )
            _restarts.add(1, {**self._labels, "loop": name})
            raise_if_cancelled()  # a failure while being cancelled is no reason to restart
            await asyncio.sleep(backoff.next())
