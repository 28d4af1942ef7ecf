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

from gateway.brokers import PublishReceipt
from gateway.config import TableConfig
from gateway.election import Decision
from gateway.errors import (
    DetectTimeout,
    GatewayError,
    IdpError,
    InvalidRequest,
    NoBrokerAvailable,
    RoundSuperseded,
)
from gateway.protocol import (
    Answer,
    Foreign,
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

log = logging.getLogger(__name__)


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
    ) -> None:
        self.table = table
        self.counters = Counters()
        self._bus = bus
        self._on_busy_change = on_busy_change
        self._current: _Round | None = None
        self._answered: str | None = None  # the last round that got its answer
        self._queue: asyncio.Queue[_Command] = asyncio.Queue()
        self._decision_changed = asyncio.Event()

    @property
    def busy(self) -> bool:
        """True while a round waits for its answer (fail-back must not happen then)."""
        return self._current is not None and not self._current.closed

    def reconfigure(self, table: TableConfig) -> None:
        """Apply a new table config; only between rounds (the caller checks ``busy``)."""
        self.table = table

    async def detect(
        self, round_id: str, input_url: str | None, output_url: str | None, timeout_s: float
    ) -> DetectOutcome:
        """Wait for the IDP's validated result for ``round_id``; raise a GatewayError if none."""
        started = time.monotonic()
        rnd = self._open(round_id, input_url, output_url)
        rnd.waiters += 1
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                answer, broker_id = await asyncio.shield(rnd.future)
        except TimeoutError:
            self.counters.detects_timed_out += 1
            where = f"detect published {rnd.publishes}x" + (
                f", last on {rnd.published_on}" if rnd.published_on else ""
            )
            raise DetectTimeout(
                f"no valid result for round {round_id} within {timeout_s:.2f}s: "
                f"{rnd.tally.describe()} ({where})"
            ) from None
        except GatewayError as exc:
            self._count_failure(exc)
            raise
        finally:
            rnd.waiters -= 1
            if rnd.waiters == 0 and not rnd.closed:
                self._close(rnd)
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
        self._on_busy_change()

    # --- frames in --------------------------------------------------------------------

    def on_message(self, broker_id: str, topic: str, payload: bytes) -> None:
        """A frame arrived through a broker; complete the waiting round if it is its answer."""
        if topic != self.table.response_topic:
            return
        rnd = self._current
        frame = classify(self.table.game, payload, rnd.round_id if rnd else "")
        c = self.counters
        if rnd is None:
            if isinstance(frame, Foreign | Answer | IdpFailure) and self._round_of(frame) == (
                self._answered
            ):
                c.duplicate_frames += 1
            elif isinstance(frame, Invalid):
                c.invalid_frames += 1
            elif isinstance(frame, NotYet):
                c.not_yet_frames += 1
            else:
                c.stale_frames += 1
            return
        rnd.tally.seen += 1
        if isinstance(frame, Answer | IdpFailure):
            if rnd.future.done():
                c.duplicate_frames += 1
            elif isinstance(frame, Answer):
                rnd.future.set_result((frame, broker_id))
            else:
                rnd.future.set_exception(
                    IdpError(
                        f"IDP reported error {frame.code} {frame.name} for round {rnd.round_id}",
                        code=frame.code,
                        name=frame.name,
                    )
                )
        elif isinstance(frame, NotYet):
            rnd.tally.not_yet += 1
            c.not_yet_frames += 1
        elif isinstance(frame, Foreign):
            rnd.tally.foreign += 1
            if frame.round_id == self._answered:
                c.duplicate_frames += 1
            else:
                c.stale_frames += 1
        else:
            rnd.tally.invalid += 1
            rnd.tally.last_invalid = frame.reason
            c.invalid_frames += 1
            log.debug("invalid frame via %s on %s: %s", broker_id, topic, frame.reason)

    @staticmethod
    def _round_of(frame: Foreign | Answer | IdpFailure) -> str:
        return frame.round_id

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

    # --- commands out -----------------------------------------------------------------

    async def run(self) -> None:
        """Publish queued commands in order, until cancelled."""
        while True:
            command = await self._queue.get()
            if command.kind == "detect":
                await self._publish_detect(command.round)
            else:
                await self._publish_timeout(command.round)

    async def _publish_detect(self, rnd: _Round) -> None:
        rnd.republish_queued = False
        t = self.table
        payload = encode_detect(t.game, rnd.round_id, rnd.input_url, rnd.output_url)
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
