"""Rounds in flight: one detection per table, matched to its round, never invented.

``RoundDesk`` serves one table. A Detect opens a round (or joins the running round with
the same id, or supersedes a running round with another id), the desk publishes the
``detect`` command through the broker pool, and the round completes on the first frame
that ``protocol.classify`` calls a valid answer for exactly that round. When the last
caller leaves (answer, IDP error, deadline, cancellation) the desk publishes ``timeout``
once, so the IDP stops evaluating the stream. When the active broker changes while a
round waits, its ``detect`` is published again on the new broker under the same round id.

The desk is the state machine and the waiting; its helpers each own one job: the round
and outcome types (``round_state``), how a frame meets the round (``round_frames``), and
the ordered command queue that publishes through the pool (``round_commands``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from gateway.drops import Drops
from gateway.errors import (
    DetectTimeout,
    GatewayError,
    IdpError,
    InvalidRequest,
    NoBrokerAvailable,
    RoundSuperseded,
)
from gateway.protocol import Invalid, check_round_id, check_stream_url, classify
from gateway.sidecar import round_frames
from gateway.sidecar.round_commands import CommandBus, CommandQueue
from gateway.sidecar.round_state import Counters, DetectOutcome, Round

if TYPE_CHECKING:
    from gateway.config import TableConfig
    from gateway.sidecar.election import Decision

__all__ = ["CommandBus", "Counters", "DetectOutcome", "RoundDesk"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_meter = metrics.get_meter(__name__)
_detects = _meter.create_counter("gateway.detects", description="Detects by outcome")
_duration = _meter.create_histogram(
    "gateway.detect.duration", unit="s", description="Detect duration by outcome"
)


def _record(labels: dict[str, str], outcome: str, started: float) -> None:
    attributes = {**labels, "outcome": outcome}
    _detects.add(1, attributes)
    _duration.record(time.monotonic() - started, attributes)


class RoundDesk:
    """The rounds of one table: waiters, join, supersede, deadline, re-publish."""

    def __init__(
        self,
        table: TableConfig,
        bus: CommandBus,
        *,
        on_busy_change: Callable[[], None] = lambda: None,
        drops: Drops | None = None,
    ) -> None:
        self.table = table
        self.counters = Counters()
        self._drops = drops or Drops()
        self._on_busy_change = on_busy_change
        self._current: Round | None = None
        self._answered: str | None = None  # the last round that got its answer
        self._idle = asyncio.Event()
        self._idle.set()
        self._bus = bus
        self._commands = CommandQueue(bus, lambda: self.table, published=self.on_decision)

    @property
    def busy(self) -> bool:
        """True while a round waits for its answer (fail-back must not happen then)."""
        return self._current is not None and not self._current.closed

    async def wait_idle(self) -> None:
        """Return once no round is in flight (configuration changes wait for this)."""
        while self.busy:
            await self._idle.wait()

    def reconfigure(self, table: TableConfig) -> None:
        """Apply a new table config; only between rounds (the caller checks ``busy``)."""
        self.table = table

    async def detect(
        self, round_id: str, input_url: str | None, output_url: str | None, timeout_s: float
    ) -> DetectOutcome:
        """Wait for the IDP's validated result for ``round_id``; raise a GatewayError if none."""
        started = time.monotonic()
        table = self.table
        labels = {"game": table.game.value, "table": table.code}
        outcome = "cancelled"
        with _tracer.start_as_current_span("gateway.detect.wait") as span:
            span.set_attributes({**labels, "round_id": round_id})
            try:
                rnd = self._open(round_id, input_url, output_url)
            except GatewayError as exc:
                outcome = type(exc).__name__
                _record(labels, outcome, started)
                raise
            rnd.waiters += 1
            try:
                async with asyncio.timeout(max(0.0, timeout_s)):
                    answer, broker_id = await asyncio.shield(rnd.future)
                outcome = "ok"
            except TimeoutError:
                outcome = "timeout"
                self.counters.detects_timed_out += 1
                where = f"detect published {rnd.publishes}x" + (
                    f", last on {rnd.published_on}" if rnd.published_on else ""
                )
                raise DetectTimeout(
                    f"no valid result for round {round_id} within {timeout_s:.2f}s: "
                    f"{rnd.tally.describe()} ({where})"
                ) from None
            except GatewayError as exc:
                outcome = "idp_error" if isinstance(exc, IdpError) else type(exc).__name__
                if isinstance(exc, IdpError):
                    span.set_attribute("idp.err", exc.code)
                self._count_failure(exc)
                raise
            finally:
                rnd.waiters -= 1
                if rnd.waiters == 0 and not rnd.closed:
                    self._close(rnd)
                span.set_attributes(
                    {
                        "outcome": outcome,
                        "frames_seen": rnd.tally.seen,
                        "publishes": rnd.publishes,
                        "epoch": rnd.epoch,
                        "broker": rnd.published_on or "",
                    }
                )
                if outcome != "ok":
                    span.set_status(Status(StatusCode.ERROR, outcome))
                _record(labels, outcome, started)
        self.counters.detects_ok += 1
        return DetectOutcome(
            round_id=round_id,
            result=answer.result,
            broker_id=broker_id,
            epoch=rnd.epoch,
            elapsed_ms=(time.monotonic() - started) * 1000,
            frames_seen=rnd.tally.seen,
            publishes=rnd.publishes,
        )

    def _count_failure(self, exc: GatewayError) -> None:
        self.counters.detects_failed += 1
        if isinstance(exc, IdpError):
            self.counters.idp_errors += 1
        elif isinstance(exc, RoundSuperseded):
            self.counters.detects_aborted += 1
        elif isinstance(exc, NoBrokerAvailable):
            self.counters.detects_unavailable += 1

    def _open(self, round_id: str, input_url: str | None, output_url: str | None) -> Round:
        check_round_id(round_id)
        input_url = input_url or self.table.input_url
        if not input_url:
            raise InvalidRequest(
                f"input is required: table {self.table.code} has no default input stream"
            )
        check_stream_url("input", input_url)
        output_url = output_url or self.table.output_url
        if output_url:
            check_stream_url("output", output_url)
        cur = self._current
        if cur is not None and not cur.closed and cur.future.done():
            self._close(cur)  # answered; its callers have not resumed yet
        elif cur is not None and not cur.closed:
            if cur.round_id == round_id:
                return cur  # a second Detect for the same round joins the first
            cur.future.set_exception(
                RoundSuperseded(
                    f"round {cur.round_id} was superseded by round {round_id} on table "
                    f"{self.table.code}",
                    new_round_id=round_id,
                )
            )
            # The new detect replaces the old one at the IDP: no timeout for the old round.
            self._close(cur, send_timeout=False)
        rnd = Round(round_id, input_url, output_url, asyncio.get_running_loop().create_future())
        self._current = rnd
        self._idle.clear()
        self._commands.put("detect", rnd)
        self._on_busy_change()
        return rnd

    def _close(self, rnd: Round, *, send_timeout: bool = True) -> None:
        rnd.closed = True
        if not rnd.future.done():
            rnd.future.cancel()
        elif not rnd.future.cancelled() and rnd.future.exception() is None:
            self._answered = rnd.round_id
        if send_timeout and rnd.publishes > 0:
            self._commands.put("timeout", rnd)
        elif send_timeout:
            rnd.timeout_owed = True  # the worker sends it if the detect gets out after all
        if self._current is rnd:
            self._current = None
            self._idle.set()
        self._on_busy_change()

    # --- frames in --------------------------------------------------------------------

    def on_message(self, broker_id: str, topic: str, payload: bytes) -> None:
        """A frame arrived through a broker; complete the waiting round if it is its answer."""
        if topic != self.table.response_topic:
            return
        rnd = self._current
        frame = classify(
            self.table.game,
            payload,
            rnd.round_id if rnd else "",
            baccarat_tableau=self.table.baccarat_tableau,
        )
        kind = round_frames.settle(rnd, frame, broker_id, self._answered)
        if kind is None:
            return
        round_frames.count(self.counters, kind, self.table.code)
        if isinstance(frame, Invalid):
            self._drops.add("frame", f"broker {broker_id} topic {topic}", payload, frame.reason)

    def on_decision(self, decision: Decision) -> None:
        """The active broker changed: re-publish a waiting round's detect on it."""
        self._commands.decision_changed()
        rnd = self._current
        if (
            decision.broker_id is not None
            and rnd is not None
            and not rnd.closed
            and not rnd.future.done()
            and rnd.published_on is not None
            and rnd.published_on != decision.broker_id
            and not rnd.republish_queued
        ):
            log.warning(
                "round %s: active broker is now %s; publishing detect again",
                rnd.round_id,
                decision.broker_id,
            )
            rnd.republish_queued = True
            self._commands.put("detect", rnd)

    def on_links_changed(self) -> None:
        """A link changed state. If the broker that took the waiting round's detect is back
        on a new session, whatever the IDP answered while it was away is lost (the
        subscriptions are not persistent): publish the detect again so the IDP answers
        again, under the same round id."""
        rnd = self._current
        if rnd is None or rnd.closed or rnd.future.done() or rnd.republish_queued:
            return
        now = self._bus.newer_connection(rnd.published_on, rnd.published_connection)
        if now is None:
            return
        log.warning(
            "round %s: broker %s reconnected while the round waited; publishing detect again",
            rnd.round_id,
            rnd.published_on,
        )
        rnd.published_connection = now  # once per reconnection
        rnd.republish_queued = True
        self._commands.put("detect", rnd)

    def late_command(self, broker_id: str, topic: str, payload: bytes) -> None:
        """A command sent on a broker before it hung reached the IDP late, or may have: it
        may have switched the IDP to an old round or stopped it. Publish the round in
        flight again on the active broker; with none in flight, stop the IDP again."""
        if topic != self.table.command_topic:
            return
        rnd = self._current
        if rnd is not None and not rnd.closed and not rnd.future.done():
            if rnd.republish_queued:
                return
            log.warning("round %s: a command delivered late by %s may have disturbed the "
                        "IDP; publishing detect again", rnd.round_id, broker_id)  # fmt: skip
            rnd.republish_queued = True
            self._commands.put("detect", rnd)
        elif rnd is None and self._answered is not None and b'"detect"' in payload:
            log.warning("a detect delivered late by %s restarted the IDP; stopping it again",
                        broker_id)  # fmt: skip
            self._commands.put("timeout", Round(
                self._answered, "", None, asyncio.get_running_loop().create_future(),
                publishes=1, closed=True,
            ))  # fmt: skip

    # --- commands out -----------------------------------------------------------------

    async def run(self) -> None:
        """Publish queued commands in order, until cancelled."""
        await self._commands.run()
