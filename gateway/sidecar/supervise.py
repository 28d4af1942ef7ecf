"""The supervision boundary: a failed loop costs a restart, never the process.

``Supervisor`` runs the long-running loops (broker links, the elector, the round desk,
statistics, the config reloader, health). A loop that fails for a reason nobody foresaw
is logged with its traceback, counted (``gateway.loop.restarts{loop}``, Health
``loops``) and restarted after a capped, jittered backoff; never the process. The
process ends only for a bad config at start, a signal, or a listener that cannot bind.
Its companion for single inputs is ``gateway.drops.Drops``: one bad input costs one input.
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
_restarts = metrics.get_meter(__name__).create_counter(
    "gateway.loop.restarts", description="Supervised loops restarted after a failure"
)

RECENT_FAILURE_S = 60.0  # a loop that failed this recently makes Health DEGRADED


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
