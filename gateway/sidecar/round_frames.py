"""Frames meeting the round in flight: complete it with its answer, or say what they were.

``protocol.classify`` has already parsed a frame and said what it is for the round the
desk waits on (its answer, an IDP error, not yet, another round's, garbage). Here the
frame meets that round: an answer or an IDP error completes the round's future (the
first one wins); anything else is tallied on the round and named by kind, so the desk
counts it (``Counters`` and the ``gateway.frames`` metric) and a timeout can say what
did arrive. No I/O: the desk's frame handling is testable without brokers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from opentelemetry import metrics

from gateway.errors import IdpError
from gateway.protocol import Answer, Foreign, IdpFailure, Invalid, NotYet

if TYPE_CHECKING:
    from gateway.protocol import Frame
    from gateway.sidecar.round_state import Counters, Round

# The instrumentation scope the round desk has always reported under.
_meter = metrics.get_meter("gateway.sidecar.rounds")
_frames = _meter.create_counter(
    "gateway.frames", description="Response frames that were not this round's answer, by kind"
)

FrameKind = Literal["duplicate", "invalid", "not_yet", "stale"]
"""A frame that was not the answer of the round in flight: each has a counter."""


def settle(
    rnd: Round | None, frame: Frame, broker_id: str, answered: str | None
) -> FrameKind | None:
    """Complete ``rnd`` if ``frame`` is its answer (None); else say what kind of frame it is.

    ``answered`` is the last round that got its answer: frames for it are duplicates
    (another broker relaying the same answer), not stale."""
    was_answered = isinstance(frame, Foreign | Answer | IdpFailure) and frame.round_id == answered
    if rnd is None:
        if was_answered:
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
        return "duplicate" if was_answered else "stale"
    rnd.tally.invalid += 1
    rnd.tally.last_invalid = frame.reason
    return "invalid"


def count(counters: Counters, kind: FrameKind, table_code: str) -> None:
    """Count a frame that was not an answer, in the totals and in the metric."""
    field_name = f"{kind}_frames"
    setattr(counters, field_name, getattr(counters, field_name) + 1)
    _frames.add(1, {"table": table_code, "kind": kind})
