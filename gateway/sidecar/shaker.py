"""The SicBo dice shaker: one cycle, sent as plain text, watched until the shaker is idle.

The shaker listens on ``ikg/sicbo/<NAME>/listens`` and says its state on ``.../says``:
``S2`` command received, ``S1`` shaking, ``S0`` idle, ``S90`` motion fault
(``IDP-PROTOCOL.md``). A shake is done at the first ``S0`` after the cycle started (an
``S2`` or ``S1`` seen), failed on ``S90``, and timed out after the cycle's duration + 7 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from opentelemetry import metrics

from gateway.config import TableConfig
from gateway.drops import Drops
from gateway.errors import (
    InvalidRequest,
    MalformedInput,
    ShakeBusy,
    ShakeError,
    ShakeFault,
    ShakeTimeout,
    Unavailable,
)
from gateway.protocol import parse_shaker_state
from gateway.sidecar.brokers import BrokerPool
from gateway.sidecar.topics import TopicHub

log = logging.getLogger(__name__)

MARGIN_S = 7.0  # the budget is the cycle's duration plus this
STARTED = frozenset({"S1", "S2"})
MAX_STATES = 64  # states kept for the reply and the messages

_shakes = metrics.get_meter(__name__).create_counter(
    "gateway.shakes", description="Shake calls by outcome"
)


@dataclass(frozen=True)
class ShakeParams:
    """The cycle's parameters; the defaults are the studio's usual cycle."""

    pattern: int = 0
    parameter1: int = 10
    parameter2: int = 0
    amplitude: float = 0.41
    duration_s: float = 9.59

    def __post_init__(self) -> None:
        for name in ("pattern", "parameter1", "parameter2"):
            value = getattr(self, name)
            if not 0 <= value <= 1000:
                raise InvalidRequest(f"{name}: must be between 0 and 1000, got {value}")
        if not 0 < self.amplitude <= 1:
            raise InvalidRequest(f"amplitude: must be in (0, 1], got {self.amplitude:g}")
        if not 0 < self.duration_s <= 60:
            raise InvalidRequest(f"duration_s: must be in (0, 60], got {self.duration_s:g}")

    @property
    def budget_s(self) -> float:
        """How long the cycle may take before the shake counts as timed out."""
        return self.duration_s + MARGIN_S

    def command(self) -> bytes:
        """The cycle as the shaker's command payload."""
        return (
            f"/cycle/?pattern={self.pattern}&parameter1={self.parameter1}"
            f"&parameter2={self.parameter2}&amplitude={self.amplitude:g}"
            f"&duration={self.duration_s:g}"
        ).encode()


@dataclass(frozen=True)
class ShakeOutcome:
    """A completed shake: the states the shaker went through, and how long it took."""

    states: tuple[str, ...]
    elapsed_s: float
    broker_id: str
    budget_s: float


class Shaker:
    """Shakes one table's dice, one cycle at a time."""

    def __init__(
        self, table: TableConfig, pool: BrokerPool, hub: TopicHub, *, drops: Drops | None = None
    ) -> None:
        self.table = table
        self._drops = drops or Drops()
        self._pool = pool
        self._hub = hub
        self._lock = asyncio.Lock()

    async def shake(self, params: ShakeParams, limit_s: float | None = None) -> ShakeOutcome:
        """One cycle; ShakeFault, ShakeTimeout, ShakeBusy or NoBrokerAvailable otherwise.

        ``limit_s`` (the caller's deadline) shortens the cycle's budget if it is shorter."""
        outcome = "cancelled"
        try:
            result = await self._shake(params, limit_s)
            outcome = "ok"
            return result
        except ShakeError as exc:
            outcome = exc.failure
            raise
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            _shakes.add(1, {"table": self.table.code, "outcome": outcome})

    async def _shake(self, params: ShakeParams, limit_s: float | None) -> ShakeOutcome:
        listens, says = self.table.shaker_listens, self.table.shaker_says
        if listens is None or says is None:
            raise ShakeFault(f"table {self.table.code} has no shaker", failure="NO_SHAKER")
        if self._lock.locked():
            raise ShakeBusy(f"a shake is already running on table {self.table.code}")
        async with self._lock, self._hub.listen([says]) as states_heard:
            started = time.monotonic()
            receipt = await self._pool.publish(listens, params.command())
            states: list[str] = []
            started = False
            budget = params.budget_s if limit_s is None else min(params.budget_s, limit_s)
            try:
                async with asyncio.timeout(budget):
                    async for message in states_heard:
                        try:
                            state = parse_shaker_state(message.payload)
                        except MalformedInput as exc:
                            source = f"broker {message.broker_id} topic {says}"
                            self._drops.add("shaker_message", source, message.payload, exc.message)
                            continue
                        started = started or state in STARTED
                        if len(states) < MAX_STATES:  # a chatty shaker cannot grow the reply
                            states.append(state)
                        if state == "S90":
                            raise ShakeFault(
                                f"shaker on {says} reported S90 (motion fault) after "
                                f"{', '.join(states)}",
                                failure="MOTION_FAULT",
                            )
                        if state == "S0" and started:
                            break
                    else:  # the hub closed: the sidecar is stopping
                        raise Unavailable(f"sidecar stopping during the shake of {says}")
            except TimeoutError:
                last = states[-1] if states else "nothing"
                raise ShakeTimeout(
                    f"shaker on {says} not idle within {budget:.2f}s (budget: duration "
                    f"{params.duration_s:g}s + {MARGIN_S:g}s, or the caller's deadline); it "
                    f"said: {', '.join(states) or 'nothing'} (last: {last})"
                ) from None
            elapsed = time.monotonic() - started
            log.info(
                "shake table=%s states=%s elapsed_s=%.2f broker=%s",
                self.table.code, ",".join(states), elapsed, receipt.broker_id,
            )  # fmt: skip
            return ShakeOutcome(tuple(states), elapsed, receipt.broker_id, params.budget_s)
