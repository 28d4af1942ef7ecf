"""The simulated SicBo dice shakers: plain-text commands in, state codes out.

A shaker listens for ``/state`` (say the current state) and ``/cycle?duration=S`` (shake):
a cycle says S2 (started), S1 (shaking), then after ``duration`` (times ``time_scale``, so
demos and tests need not wait out real shakes) S0 (done) or, when a test sets ``fault``,
S90 (motion fault). With ``silent`` it stops after S2, a shaker that hangs mid-cycle. A new
cycle replaces the running one. The states go out on the table's ``shaker_says`` topic
through the broker that carried the command (or all, as the table's IDP answers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.devtools.sim.devices import SimTable
from gateway.devtools.sim.links import Origin

log = logging.getLogger(__name__)

Publish = Callable[[Origin, str, bytes, str], Awaitable[bool]]
"""Publishes ``(origin, topic, payload, answer_on)``; True if it went out."""
Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
"""Runs a coroutine as a task the simulator cancels when it stops."""


class Shakers:
    """The shakers of ``tables`` (those with shaker topics), their scripts and states.

    ``fault`` / ``silent`` (per table code) script the shakers; ``state`` holds each
    shaker's current state.
    """

    def __init__(
        self, tables: Sequence[SimTable], publish: Publish, spawn: Spawn, time_scale: float
    ) -> None:
        codes = [t.table_code for t in tables if t.shaker_listens]
        self.fault: dict[str, bool] = dict.fromkeys(codes, False)
        self.silent: dict[str, bool] = dict.fromkeys(codes, False)
        self.state: dict[str, str] = dict.fromkeys(codes, "S0")
        self.time_scale = time_scale
        self._publish = publish
        self._spawn = spawn
        self._shakes: dict[str, asyncio.Task[None]] = {}

    def on_command(self, origin: Origin, table: SimTable, text: str, answer_on: str) -> None:
        """Act on a shaker command that arrived through ``origin``."""
        code = table.table_code
        path = urlsplit(text).path.rstrip("/")
        if path == "/state":
            self._spawn(self._say(origin, table, self.state[code], answer_on))
        elif path == "/cycle":
            try:
                duration = float(parse_qs(urlsplit(text).query)["duration"][0])
            except (KeyError, ValueError):
                log.warning("shaker %s ignores cycle without duration: %r", code, text)
                return
            if (task := self._shakes.pop(code, None)) is not None:
                task.cancel()
            self._shakes[code] = self._spawn(self._shake(origin, table, duration, answer_on))
        else:
            log.warning("shaker %s ignores %r", code, text)

    async def _shake(self, origin: Origin, table: SimTable, duration: float, on: str) -> None:
        code = table.table_code
        self.state[code] = "S1"
        await self._say(origin, table, "S2", on)
        if self.silent[code]:
            log.info("shaker %s goes silent after S2", code)
            return
        await self._say(origin, table, "S1", on)
        await asyncio.sleep(duration * self.time_scale)
        self.state[code] = "S90" if self.fault[code] else "S0"
        await self._say(origin, table, self.state[code], on)

    async def _say(self, origin: Origin, table: SimTable, state: str, on: str) -> None:
        assert table.shaker_says is not None
        if await self._publish(origin, table.shaker_says, state.encode(), on):
            log.info("shaker %s says %s (via %s)", table.table_code, state, origin.broker)
