"""Unit tests of gateway.sidecar.rounds.RoundDesk against a fake CommandBus (our own seam)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config import TableConfig
from gateway.errors import (
    DetectTimeout,
    IdpError,
    InvalidRequest,
    NoBrokerAvailable,
    RoundSuperseded,
)
from gateway.protocol import Game, RouletteNumber, SicBoDice, encode_detect
from gateway.sidecar.brokers import PublishReceipt
from gateway.sidecar.election import Decision
from gateway.sidecar.rounds import Counters, DetectOutcome, RoundDesk

CMD = "test/desk/ARO-001/command"
RESP = "test/desk/ARO-001/response"
INPUT = "rtmp://10.0.0.50:1935/live/r10_sr"
TABLE = TableConfig(
    game=Game.ROULETTE,
    code="ARO-001",
    command_topic=CMD,
    response_topic=RESP,
    timeout_s=0.2,
    retry_count=3,
    retry_delay_s=0.01,
    input_url=INPUT,
)
WAIT = 1.0  # bound on waiting for something that should happen (it takes milliseconds)
DEADLINE = 0.2  # a Detect deadline for tests that expect it to expire
LONG = 5.0  # a Detect deadline that must not expire in the test


class FakeBus:
    """The broker pool as the desk sees it: records publishes, can fail or hang on demand."""

    def __init__(self, broker_id: str | None = "a") -> None:
        self.active = broker_id
        self.epoch = 1
        self.topics: list[str] = []
        self.published: list[bytes] = []  # payloads a broker accepted
        self.attempts = 0
        self.fail_next = 0  # how many upcoming publishes raise NoBrokerAvailable
        self.fail_always = False
        self.gate: asyncio.Event | None = None  # when set, publishes wait for it
        self._changed = asyncio.Event()

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> PublishReceipt:
        self.attempts += 1
        self._changed.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_always or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            raise NoBrokerAvailable("no broker is ready (fake)")
        assert self.active is not None
        self.topics.append(topic)
        self.published.append(payload)
        self._changed.set()
        return PublishReceipt(self.active, self.epoch)

    def decision(self) -> Decision:
        return Decision(self.active, self.epoch, "fake")

    async def wait_for(self, published: int = 0, attempts: int = 0, within: float = WAIT) -> None:
        """Wait (bounded) until at least this many publishes/attempts happened."""
        async with asyncio.timeout(within):
            while len(self.published) < published or self.attempts < attempts:
                self._changed.clear()
                await self._changed.wait()

    def commands(self) -> list[tuple[str, str | None]]:
        """What went out, in order: ("detect", round id) or ("timeout", None)."""
        out: list[tuple[str, str | None]] = []
        for payload in self.published:
            doc = json.loads(payload)
            out.append((doc["command"], doc["arg"].get("round_id")))
        return out


def result(round_id: str | None, res: Any, err: int = 0) -> bytes:
    arg: dict[str, Any] = {"res": res, "err": err}
    if round_id is not None:
        arg["round_id"] = round_id
    return json.dumps({"response": "result", "arg": arg}).encode()


@contextlib.asynccontextmanager
async def running(
    table: TableConfig = TABLE, bus: FakeBus | None = None
) -> AsyncIterator[tuple[RoundDesk, FakeBus]]:
    """A desk with its command loop running as a task, cancelled on exit."""
    bus = bus or FakeBus()
    desk = RoundDesk(table, bus)
    task = asyncio.create_task(desk.run(), name="desk")
    try:
        yield desk, bus
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def detect(desk: RoundDesk, round_id: str, timeout_s: float = LONG) -> asyncio.Task[DetectOutcome]:
    return asyncio.create_task(desk.detect(round_id, None, None, timeout_s), name=round_id)


async def outcome_of(task: asyncio.Task[DetectOutcome]) -> DetectOutcome:
    async with asyncio.timeout(WAIT):
        return await task


async def stop(task: asyncio.Task[DetectOutcome]) -> None:
    """Cancel a Detect the test no longer needs, and wait until it is gone."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def counters(**nonzero: int) -> Counters:
    """The counters expected when only the given ones moved."""
    return dataclasses.replace(Counters(), **nonzero)


# --- answers --------------------------------------------------------------------------------


async def test_valid_answer_completes_detect() -> None:
    """A valid frame for the round completes the Detect with the IDP's result."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        assert bus.topics == [CMD]
        assert bus.published == [encode_detect(Game.ROULETTE, "R-1", INPUT, None)]
        desk.on_message("b", RESP, result("R-1", 17))
        outcome = await outcome_of(task)
    assert outcome.round_id == "R-1"
    assert outcome.result == RouletteNumber(17)
    assert outcome.broker_id == "b"  # the broker the answer came through
    assert (outcome.publishes, outcome.frames_seen) == (1, 1)
    assert desk.counters == counters(detects_ok=1)


async def test_answer_after_not_yet_frames() -> None:
    """Early not-yet frames are skipped and the later answer is returned."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        desk.on_message("a", RESP, result(None, None, -1))
        desk.on_message("a", RESP, result("R-1", None))
        desk.on_message("a", RESP, result("R-1", 0))
        outcome = await outcome_of(task)
    assert outcome.result == RouletteNumber(0)
    assert outcome.frames_seen == 3
    assert desk.counters == counters(detects_ok=1, not_yet_frames=2)


async def test_frames_on_other_topics_are_ignored() -> None:
    """A result on a topic other than the table's response topic never completes a Detect."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1", DEADLINE)
        await bus.wait_for(published=1)
        desk.on_message("a", "test/desk/ARO-002/response", result("R-1", 17))
        with pytest.raises(DetectTimeout, match="saw no frame"):
            await outcome_of(task)


async def test_frame_for_another_round_never_completes_detect() -> None:
    """Results for other rounds (even a prefix or extension of the id) are never returned."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1", DEADLINE)
        await bus.wait_for(published=1)
        for other in ("R-0", "R-10", "R-", "r-1"):
            desk.on_message("a", RESP, result(other, 17))
        with pytest.raises(DetectTimeout) as info:
            await outcome_of(task)
    assert "4 for other rounds" in info.value.message
    assert desk.counters == counters(detects_timed_out=1, stale_frames=4)


async def test_idp_error_raises_with_code() -> None:
    """An err -3 for the round ends the Detect with IdpError carrying -3 NO_SHAKE."""
    table = dataclasses.replace(TABLE, game=Game.SICBO)
    async with running(table) as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        desk.on_message("a", RESP, result("R-1", [], -3))
        with pytest.raises(IdpError) as info:
            await outcome_of(task)
        await bus.wait_for(published=2)
    assert (info.value.code, info.value.name) == (-3, "NO_SHAKE")
    assert "R-1" in info.value.message
    assert bus.commands() == [("detect", "R-1"), ("timeout", None)]
    assert desk.counters == counters(detects_failed=1, idp_errors=1)


async def test_sicbo_answer() -> None:
    """A SicBo desk returns the three dice the IDP reported."""
    table = dataclasses.replace(TABLE, game=Game.SICBO, output_url="https://example.invalid/o.flv")
    async with running(table) as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        assert json.loads(bus.published[0])["arg"]["output"] == "https://example.invalid/o.flv"
        desk.on_message("a", RESP, result("R-1", [4, 2, 6]))
        outcome = await outcome_of(task)
    assert outcome.result == SicBoDice((4, 2, 6))


# --- deadline ---------------------------------------------------------------------------------


async def test_deadline_says_what_was_seen() -> None:
    """A missed deadline raises DetectTimeout saying how many invalid frames came, and why."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1", DEADLINE)
        await bus.wait_for(published=1)
        desk.on_message("a", RESP, b"not json")
        desk.on_message("a", RESP, result("R-1", 37))
        with pytest.raises(DetectTimeout) as info:
            await outcome_of(task)
        await bus.wait_for(published=2)
    message = info.value.message
    assert "R-1" in message
    assert "saw 2 frame(s)" in message
    assert "2 invalid" in message
    assert "0..36" in message  # the last invalid frame's reason
    assert "published 1x, last on a" in message
    assert bus.commands() == [("detect", "R-1"), ("timeout", None)]  # the caller gave up
    assert desk.counters == counters(detects_timed_out=1, invalid_frames=2)


async def test_deadline_with_silence() -> None:
    """A silent IDP ends in DetectTimeout saying no frame was seen, never a made-up result."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1", DEADLINE)
        with pytest.raises(DetectTimeout, match="saw no frame for the table"):
            await outcome_of(task)
        assert bus.commands()[0] == ("detect", "R-1")


async def test_cancelled_caller_stops_the_detection() -> None:
    """A caller that goes away (cancelled RPC) gets the IDP told to stop with one timeout."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outcome_of(task)
        await bus.wait_for(published=2)
        assert bus.commands() == [("detect", "R-1"), ("timeout", None)]
        assert not desk.busy


async def test_timeout_sent_when_caller_leaves_during_publish() -> None:
    """A detect that reaches the IDP after its caller gave up is still followed by a timeout."""
    bus = FakeBus()
    bus.gate = gate = asyncio.Event()  # the broker is slow to PUBACK
    async with running(bus=bus) as (desk, bus):
        task = detect(desk, "R-1", DEADLINE)
        await bus.wait_for(attempts=1)
        with pytest.raises(DetectTimeout):
            await outcome_of(task)
        gate.set()
        await bus.wait_for(published=2, within=DEADLINE)
        assert bus.commands() == [("detect", "R-1"), ("timeout", None)]


# --- command ordering ----------------------------------------------------------------------


async def test_exactly_one_timeout_after_answer() -> None:
    """After an answer exactly one timeout goes out, after the detect and before the next."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        desk.on_message("a", RESP, result("R-1", 17))
        desk.on_message("a", RESP, result("R-1", 17))  # the IDP repeats itself
        await outcome_of(task)
        desk.on_message("a", RESP, result("R-1", 17))  # ... and again after the answer
        await bus.wait_for(published=2)
        # The queue is ordered: anything extra for R-1 would come before R-2's detect.
        task2 = detect(desk, "R-2")
        await bus.wait_for(published=3)
        sent = bus.commands()
        await stop(task2)
    assert sent == [("detect", "R-1"), ("timeout", None), ("detect", "R-2")]
    assert desk.counters.duplicate_frames == 2
    assert desk.counters.detects_ok == 1


async def test_second_detect_for_same_round_joins() -> None:
    """Two Detects for the same round share one detect command and both get the answer."""
    async with running() as (desk, bus):
        first, second = detect(desk, "R-1"), detect(desk, "R-1")
        await bus.wait_for(published=1)
        desk.on_message("a", RESP, result("R-1", 17))
        outcomes = [await outcome_of(first), await outcome_of(second)]
        await bus.wait_for(published=2)
        task = detect(desk, "R-2")
        await bus.wait_for(published=3)
        sent = bus.commands()
        await stop(task)
    assert [o.result for o in outcomes] == [RouletteNumber(17)] * 2
    assert sent == [("detect", "R-1"), ("timeout", None), ("detect", "R-2")]
    assert desk.counters.detects_ok == 2


async def test_joined_round_survives_first_caller_deadline() -> None:
    """When one of two joined callers times out, the other still gets the answer."""
    async with running() as (desk, bus):
        impatient, patient = detect(desk, "R-1", DEADLINE), detect(desk, "R-1")
        await bus.wait_for(published=1)
        with pytest.raises(DetectTimeout):
            await outcome_of(impatient)
        desk.on_message("a", RESP, result("R-1", 9))
        outcome = await outcome_of(patient)
        await bus.wait_for(published=2)
    assert outcome.result == RouletteNumber(9)
    assert bus.commands() == [("detect", "R-1"), ("timeout", None)]


async def test_new_round_supersedes_waiting_round() -> None:
    """A Detect for a new round aborts the waiting one, naming the new round; no timeout for it."""
    async with running() as (desk, bus):
        old = detect(desk, "R-1")
        await bus.wait_for(published=1)
        new = detect(desk, "R-2")
        with pytest.raises(RoundSuperseded) as info:
            await outcome_of(old)
        await bus.wait_for(published=2)
        desk.on_message("a", RESP, result("R-2", 3))
        outcome = await outcome_of(new)
        await bus.wait_for(published=3)
    assert info.value.new_round_id == "R-2"
    assert "R-2" in info.value.message and "R-1" in info.value.message
    assert outcome.result == RouletteNumber(3)
    assert bus.commands() == [("detect", "R-1"), ("detect", "R-2"), ("timeout", None)]
    assert desk.counters == counters(detects_ok=1, detects_failed=1, detects_aborted=1)


async def test_late_answer_for_previous_round_does_not_complete_next() -> None:
    """A late answer for round A that arrives while round B waits is never B's result."""
    async with running() as (desk, bus):
        a = detect(desk, "R-A")
        await bus.wait_for(published=1)
        desk.on_message("a", RESP, result("R-A", 5))
        assert (await outcome_of(a)).result == RouletteNumber(5)
        b = detect(desk, "R-B")
        await bus.wait_for(published=3)
        desk.on_message("a", RESP, result("R-A", 5))  # late repeat for A
        desk.on_message("a", RESP, result("R-B", 22))
        outcome = await outcome_of(b)
    assert outcome.result == RouletteNumber(22)
    assert outcome.frames_seen == 2
    assert desk.counters.duplicate_frames == 1
    assert desk.counters.stale_frames == 0


async def test_next_round_right_after_answer() -> None:
    """A Detect for the next round that arrives just after the answer does not break either."""
    async with running() as (desk, bus):
        a = detect(desk, "R-A")
        await bus.wait_for(published=1)
        desk.on_message("a", RESP, result("R-A", 5))
        b = detect(desk, "R-B")  # runs before R-A's caller has resumed
        assert (await outcome_of(a)).result == RouletteNumber(5)
        if b.done():
            b.result()  # surface an error raised while opening round R-B
        await bus.wait_for(published=3)
        desk.on_message("a", RESP, result("R-B", 22))
        assert (await outcome_of(b)).result == RouletteNumber(22)


# --- publish failures and failover ---------------------------------------------------------


async def test_publish_failures_end_in_no_broker_available() -> None:
    """When no broker takes the detect, the Detect fails UNAVAILABLE after retry_count tries."""
    bus = FakeBus(broker_id=None)
    bus.fail_always = True
    async with running(bus=bus) as (desk, bus):
        task = detect(desk, "R-1")
        with pytest.raises(NoBrokerAvailable, match="3 attempt"):
            await outcome_of(task)
        assert bus.attempts == TABLE.retry_count
        # Nothing else is pending for R-1: the next round's detect is the next attempt.
        bus.fail_always, bus.active = False, "a"
        task2 = detect(desk, "R-2")
        await bus.wait_for(published=1)
        attempts, sent = bus.attempts, bus.commands()
        await stop(task2)
    assert attempts == TABLE.retry_count + 1
    assert sent == [("detect", "R-2")]
    assert desk.counters.detects_unavailable == 1
    assert desk.counters.detects_failed == 1


async def test_publish_retried_until_a_broker_takes_it() -> None:
    """A failed publish is retried, and the Detect succeeds once a broker accepts it."""
    bus = FakeBus()
    bus.fail_next = 2
    async with running(bus=bus) as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        attempts = bus.attempts
        desk.on_message("a", RESP, result("R-1", 8))
        outcome = await outcome_of(task)
    assert attempts == 3
    assert outcome.result == RouletteNumber(8)
    assert outcome.publishes == 1


async def test_new_active_broker_gets_the_detect_again() -> None:
    """When the active broker changes while a round waits, its detect is re-published there."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        bus.active, bus.epoch = "b", 2
        desk.on_decision(Decision("b", 2, "a is down"))
        await bus.wait_for(published=2)
        assert bus.published[1] == bus.published[0]  # same round, same command
        desk.on_message("b", RESP, result("R-1", 30))
        outcome = await outcome_of(task)
        await bus.wait_for(published=3)
    assert outcome.result == RouletteNumber(30)
    assert (outcome.publishes, outcome.epoch) == (2, 2)
    assert bus.commands() == [("detect", "R-1"), ("detect", "R-1"), ("timeout", None)]


@pytest.mark.parametrize("broker_id", ["a", None])
async def test_decision_without_a_new_broker_does_not_republish(broker_id: str | None) -> None:
    """A decision naming the same broker, or none, does not send the detect again."""
    async with running() as (desk, bus):
        task = detect(desk, "R-1")
        await bus.wait_for(published=1)
        desk.on_decision(Decision(broker_id, 1, "reason changed"))
        desk.on_message("a", RESP, result("R-1", 1))
        await outcome_of(task)
        await bus.wait_for(published=2)
    assert bus.commands() == [("detect", "R-1"), ("timeout", None)]


# --- requests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("round_id", "input_url", "field"),
    [("", None, "round_id"), ("R 1 ", None, "round_id"), ("R-1", "file:///x", "input")],
)
async def test_bad_request_publishes_nothing(
    round_id: str, input_url: str | None, field: str
) -> None:
    """A bad round id or stream URL is refused before anything is sent to the IDP."""
    async with running() as (desk, bus):
        with pytest.raises(InvalidRequest, match=field):
            await desk.detect(round_id, input_url, None, LONG)
        assert not desk.busy
        task = detect(desk, "R-ok")
        await bus.wait_for(published=1)
        sent = bus.commands()
        await stop(task)
    assert sent == [("detect", "R-ok")]


async def test_missing_input_without_table_default() -> None:
    """Without an input in the request or the table config, the Detect is refused clearly."""
    table = dataclasses.replace(TABLE, input_url=None)
    async with running(table) as (desk, _):
        with pytest.raises(InvalidRequest, match="input is required"):
            await desk.detect("R-1", None, None, LONG)


async def test_request_input_overrides_table_default() -> None:
    """An input URL in the request is the one the IDP is told to read."""
    async with running() as (desk, bus):
        task = asyncio.create_task(desk.detect("R-1", "rtsp://cam/7", None, LONG))
        await bus.wait_for(published=1)
        await stop(task)
    assert json.loads(bus.published[0])["arg"]["input"] == "rtsp://cam/7"
