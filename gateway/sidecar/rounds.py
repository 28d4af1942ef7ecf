"""Rounds in flight: one detection per table, matched to its round, never invented.

``RoundDesk`` serves one table. A Detect opens a round (or joins the running round with
the same id, or supersedes a running round with another id), the desk publishes the
``detect`` command through the broker pool, and the round completes on the first frame
that ``protocol.classify`` calls a valid answer for exactly that round. When the last
caller leaves (answer, IDP error, deadline, cancellation) the desk publishes ``timeout``
once, so the IDP stops evaluating the stream.

Commands leave through one ordered queue, so a round's ``timeout`` always goes out
before the next round's ``detect``. When the active broker changes while a round waits,
its ``detect`` is published again on the new broker under the same round id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Status, StatusCode

from gateway.config import TableConfig
from gateway.drops import Drops
from gateway.errors import (
    DetectTimeout,
    GatewayError,
    IdpError,
    InvalidRequest,
    NoBrokerAvailable,
    RoundSuperseded,
    raise_if_cancelled,
)
from gateway.protocol import (
    Answer,
    Foreign,
    Frame,
    IdpFailure,
    Invalid,
    NotYet,
    Result,
    check_round_id,
    check_stream_url,
    classify,
    encode_detect,
    encode_timeout,
)
from gateway.sidecar.brokers import PublishReceipt
from gateway.sidecar.election import Decision

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_meter = metrics.get_meter(__name__)
_detects = _meter.create_counter("gateway.detects", description="Detects by outcome")
_duration = _meter.create_histogram(
    "gateway.detect.duration", unit="s", description="Detect duration by outcome"
)
_frames = _meter.create_counter(
    "gateway.frames", description="Response frames that were not this round's answer, by kind"
)


def _record(labels: dict[str, str], outcome: str, started: float) -> None:
    attributes = {**labels, "outcome": outcome}
    _detects.add(1, attributes)
    _duration.record(time.monotonic() - started, attributes)


class CommandBus(Protocol):
    """What the desk needs from the broker pool."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> PublishReceipt: ...

    def decision(self) -> Decision: ...


@dataclass
class Counters:
    """Totals since start, for Health and statistics."""

    detects_ok: int = 0
    detects_timed_out: int = 0
    detects_failed: int = 0
    detects_aborted: int = 0
    detects_unavailable: int = 0
    idp_errors: int = 0
    stale_frames: int = 0
    invalid_frames: int = 0
    not_yet_frames: int = 0
    duplicate_frames: int = 0


@dataclass(frozen=True)
class DetectOutcome:
    """A validated result the IDP sent for this round, and how it got here."""

    round_id: str
    result: Result
    broker_id: str
    epoch: int
    elapsed_ms: float
    frames_seen: int
    publishes: int


@dataclass
class _Tally:
    seen: int = 0
    invalid: int = 0
    not_yet: int = 0
    foreign: int = 0
    last_invalid: str = ""

    def describe(self) -> str:
        if self.seen == 0:
            return "saw no frame for the table"
        parts = [f"saw {self.seen} frame(s)"]
        if self.not_yet:
            parts.append(f"{self.not_yet} not-yet (err -1 or empty)")
        if self.invalid:
            parts.append(f"{self.invalid} invalid (last: {self.last_invalid})")
        if self.foreign:
            parts.append(f"{self.foreign} for other rounds")
        return ", ".join(parts)


@dataclass(eq=False)
class _Round:
    round_id: str
    input_url: str
    output_url: str | None
    future: asyncio.Future[tuple[Answer, str]]
    started: float = field(default_factory=time.monotonic)
    waiters: int = 0
    publishes: int = 0
    published_on: str | None = None
    epoch: int = 0
    closed: bool = False
    timeout_owed: bool = False  # closed while its detect was still being published
    republish_queued: bool = False
    tally: _Tally = field(default_factory=_Tally)
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)


@dataclass(frozen=True)
class _Command:
    kind: str  # "detect" | "timeout"
    round: _Round


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
        self._bus = bus
        self._on_busy_change = on_busy_change
        self._current: _Round | None = None
        self._answered: str | None = None  # the last round that got its answer
        self._queue: asyncio.Queue[_Command] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._decision_changed = asyncio.Event()

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

    def _open(self, round_id: str, input_url: str | None, output_url: str | None) -> _Round:
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
        rnd = _Round(round_id, input_url, output_url, asyncio.get_running_loop().create_future())
        self._current = rnd
        self._idle.clear()
        self._queue.put_nowait(_Command("detect", rnd))
        self._on_busy_change()
        return rnd

    def _close(self, rnd: _Round, *, send_timeout: bool = True) -> None:
        rnd.closed = True
        if not rnd.future.done():
            rnd.future.cancel()
        elif not rnd.future.cancelled() and rnd.future.exception() is None:
            self._answered = rnd.round_id
        if send_timeout and rnd.publishes > 0:
            self._queue.put_nowait(_Command("timeout", rnd))
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
        kind = self._apply(rnd, frame, broker_id)
        if kind is None:
            return
        field_name = f"{kind}_frames"
        setattr(self.counters, field_name, getattr(self.counters, field_name) + 1)
        _frames.add(1, {"table": self.table.code, "kind": kind})
        if isinstance(frame, Invalid):
            self._drops.add("frame", f"broker {broker_id} topic {topic}", payload, frame.reason)

    def _apply(self, rnd: _Round | None, frame: Frame, broker_id: str) -> str | None:
        """Complete the round if ``frame`` is its answer; else say what kind of frame it is."""
        answered = (
            isinstance(frame, Foreign | Answer | IdpFailure) and frame.round_id == self._answered
        )
        if rnd is None:
            if answered:
                return "duplicate"
            if isinstance(frame, Invalid | NotYet):
                return "invalid" if isinstance(frame, Invalid) else "not_yet"
            return "stale"
        rnd.tally.seen += 1
        if isinstance(frame, Answer | IdpFailure):
            if rnd.future.done():
                return "duplicate"
            if isinstance(frame, Answer):
                rnd.future.set_result((frame, broker_id))
            else:
                rnd.future.set_exception(
                    IdpError(
                        f"IDP reported error {frame.code} {frame.name} for round {rnd.round_id}",
                        code=frame.code,
                        name=frame.name,
                    )
                )
            return None
        if isinstance(frame, NotYet):
            rnd.tally.not_yet += 1
            return "not_yet"
        if isinstance(frame, Foreign):
            rnd.tally.foreign += 1
            return "duplicate" if answered else "stale"
        rnd.tally.invalid += 1
        rnd.tally.last_invalid = frame.reason
        return "invalid"

    def on_decision(self, decision: Decision) -> None:
        """The active broker changed: re-publish a waiting round's detect on it."""
        self._decision_changed.set()
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
            self._queue.put_nowait(_Command("detect", rnd))

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
            self._queue.put_nowait(_Command("detect", rnd))
        elif rnd is None and self._answered is not None and b'"detect"' in payload:
            log.warning("a detect delivered late by %s restarted the IDP; stopping it again",
                        broker_id)  # fmt: skip
            self._queue.put_nowait(_Command("timeout", _Round(
                self._answered, "", None, asyncio.get_running_loop().create_future(),
                publishes=1, closed=True,
            )))  # fmt: skip

    # --- commands out -----------------------------------------------------------------

    async def run(self) -> None:
        """Publish queued commands in order, until cancelled."""
        while True:
            raise_if_cancelled()
            command = await self._queue.get()
            try:
                await self._execute(command)
            except Exception as exc:  # one command fails, never the queue behind it
                log.exception("round %s: %s command failed", command.round.round_id, command.kind)
                rnd = command.round
                if command.kind == "detect" and not rnd.closed and not rnd.future.done():
                    rnd.future.set_exception(
                        NoBrokerAvailable(
                            f"could not publish detect for round {rnd.round_id}: "
                            f"{type(exc).__name__}: {exc}"
                        )
                    )

    async def _execute(self, command: _Command) -> None:
        rnd = command.round
        with _tracer.start_as_current_span(
            f"gateway.publish {command.kind}",
            context=rnd.trace_context,
            attributes={"table": self.table.code, "round_id": rnd.round_id},
        ) as span:
            if command.kind == "detect":
                await self._publish_detect(rnd)
            else:
                await self._publish_timeout(rnd)
            span.set_attributes({"broker": rnd.published_on or "", "epoch": rnd.epoch})

    async def _publish_detect(self, rnd: _Round) -> None:
        rnd.republish_queued = False
        t = self.table
        carrier: dict[str, str] = {}
        if t.trace_context_in_command:
            propagate.inject(carrier)  # the current span: this round's "publish detect"
        payload = encode_detect(t.game, rnd.round_id, rnd.input_url, rnd.output_url, carrier)
        last: NoBrokerAvailable | None = None
        for attempt in range(1, t.retry_count + 1):
            if rnd.closed or rnd.future.done():
                return
            tried = self._bus.decision().broker_id
            try:
                receipt = await self._bus.publish(t.command_topic, payload)
            except NoBrokerAvailable as exc:
                last = exc
                log.info("round %s: publish attempt %d failed: %s", rnd.round_id, attempt, exc)
                if attempt < t.retry_count:
                    await self._wait_for_broker(t.retry_delay_s, tried)
                continue
            rnd.publishes += 1
            rnd.published_on, rnd.epoch = receipt.broker_id, receipt.epoch
            log.debug("round %s: detect published on %s", rnd.round_id, receipt.broker_id)
            if rnd.timeout_owed:  # its caller left while the detect was on its way
                rnd.timeout_owed = False
                await self._publish_timeout(rnd)
            # The broker may have died (and the active one changed) while its PUBACK was
            # on the way: on_decision could not re-publish a round not yet marked published.
            self.on_decision(self._bus.decision())
            return
        if not rnd.closed and not rnd.future.done():
            rnd.future.set_exception(
                NoBrokerAvailable(
                    f"could not publish detect for round {rnd.round_id} after "
                    f"{t.retry_count} attempt(s): {last}"
                )
            )

    async def _wait_for_broker(self, delay: float, tried: str | None) -> None:
        """Sleep ``delay``, or less once a broker is active again after the failure."""
        deadline = time.monotonic() + delay
        changed = False
        while True:
            current = self._bus.decision().broker_id
            if current is not None and (changed or current != tried):
                return
            self._decision_changed.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._decision_changed.wait()
            except TimeoutError:
                return
            changed = True

    async def _publish_timeout(self, rnd: _Round) -> None:
        try:
            await self._bus.publish(self.table.command_topic, encode_timeout())
        except NoBrokerAvailable as exc:
            log.warning("round %s: could not publish timeout: %s", rnd.round_id, exc)
