"""What the round desk knows about a round: its state while in flight, and what it reports.

A ``Round`` is one detection in flight for the table: the callers waiting on it, the
frames it has seen (``Tally``, so a timeout can say what arrived instead of just "no
answer"), and where its ``detect`` went. ``Command`` is what the desk queues for the
IDP. ``DetectOutcome`` and ``Counters`` are what leaves the desk: one Detect's answer
and the totals Health and the statistics show. Plain data, no I/O, so the desk, its
frame handling and its command queue share one vocabulary.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from opentelemetry import context as otel_context

if TYPE_CHECKING:
    from gateway.protocol import Answer, Result


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
class Tally:
    """The frames a round has seen, by kind, so a timeout can say what did arrive."""

    seen: int = 0
    invalid: int = 0
    not_yet: int = 0
    foreign: int = 0
    last_invalid: str = ""

    def describe(self) -> str:
        """One phrase for a timeout message: what the round saw instead of its answer."""
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
class Round:
    """One round in flight: its callers, its answer-to-be, and where its detect went."""

    round_id: str
    input_url: str
    output_url: str | None
    future: asyncio.Future[tuple[Answer, str]]
    started: float = field(default_factory=time.monotonic)
    waiters: int = 0
    publishes: int = 0
    published_on: str | None = None
    published_connection: int = 0  # the session of published_on that took the detect
    epoch: int = 0
    closed: bool = False
    timeout_owed: bool = False  # closed while its detect was still being published
    republish_queued: bool = False
    tally: Tally = field(default_factory=Tally)
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)


CommandKind = Literal["detect", "timeout"]
"""The two commands the desk sends the IDP: start evaluating a round, or stop."""


@dataclass(frozen=True)
class Command:
    """One command queued for the IDP, for one round."""

    kind: CommandKind
    round: Round
