"""The studio IDP wire format: encode commands, decode and classify response frames.

Pure functions, no I/O. Every frame on a table's response topic is classified against
the round being waited for, so the round logic in ``detect.py`` only ever sees one of:

- ``Answer``: a valid, complete result for exactly this round;
- ``IdpFailure``: the IDP reported an error code (other than -1) for this round;
- ``NotYet``: ``err -1`` (with or without a round id), an early empty frame, or a
  Baccarat hand still being dealt;
- ``Foreign``: a frame for another or an earlier round;
- ``Invalid``: anything else (bad JSON, wrong types, out-of-range values, oversized or
  absurdly nested frames, a Baccarat hand the tableau forbids).

The contract is in the IDP protocol notes: a result is returned only when the IDP sent
it for the round being waited for. ``classify`` never raises: whatever bytes a device
publishes, the answer is one of the frame classes above. ``parse_shaker_state`` reads the
SicBo shaker's plain-text state messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from gateway import baccarat
from gateway.errors import InvalidRequest, MalformedInput
from gateway.redact import redact_url

MAX_FRAME_BYTES = 64 * 1024
MAX_NESTING = 32  # a result frame nests 3 deep; anything far deeper is hostile
MAX_SHAKER_BYTES = 16
MAX_ROUND_ID_CHARS = 128
MAX_URL_CHARS = 2048
STREAM_SCHEMES = frozenset({"rtmp", "rtmps", "rtsp", "rtsps", "http", "https", "srt"})

ERR_OK = 0
ERR_NOT_YET = -1
ERR_NAMES = {ERR_OK: "OK", ERR_NOT_YET: "NOT_YET", -3: "NO_SHAKE"}

CARD_RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
CARD_SUITS = ("C", "D", "H", "S")
_CARD = re.compile(r"(A|[2-9]|10|J|Q|K)[CDHS]")  # used with fullmatch
BACCARAT_CARDS = 6
BACCARAT_REQUIRED = 4


class Game(StrEnum):
    """The games the studio runs; the value is the spelling used in config files."""

    SICBO = "sicbo"
    BACCARAT = "baccarat"
    ROULETTE = "roulette"


def err_name(code: int) -> str:
    """The documented name of an IDP error code, or UNKNOWN."""
    return ERR_NAMES.get(code, "UNKNOWN")


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class SicBoDice:
    """A SicBo result: three dice, 1..6 each."""

    dice: tuple[int, int, int]


@dataclass(frozen=True)
class RouletteNumber:
    """A Speed Roulette result: the pocket number, 0..36."""

    number: int


@dataclass(frozen=True)
class BaccaratHand:
    """Cards in the order player1, banker1, player2, banker2, player3, banker3; "" = not dealt."""

    cards: tuple[str, str, str, str, str, str]


Result = SicBoDice | RouletteNumber | BaccaratHand


# --- frame classes -------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A final, validated result for this round."""

    round_id: str
    result: Result


@dataclass(frozen=True)
class IdpFailure:
    """The IDP reported an error for this round."""

    round_id: str
    code: int

    @property
    def name(self) -> str:
        """The error code's name (e.g. ``NO_SHAKE``), or the number if it has none."""
        return err_name(self.code)


@dataclass(frozen=True)
class NotYet:
    """A frame that says the IDP has nothing yet (err -1, or no result)."""

    reason: str


@dataclass(frozen=True)
class Foreign:
    """A frame for another round: stale or foreign, never this round's result."""

    round_id: str


@dataclass(frozen=True)
class Invalid:
    """A frame for this round that does not validate: counted, never a result."""

    reason: str


Frame = Answer | IdpFailure | NotYet | Foreign | Invalid


# --- commands ------------------------------------------------------------------------


def encode_detect(
    game: Game,
    round_id: str,
    input_url: str,
    output_url: str | None,
    trace_context: dict[str, str] | None = None,
) -> bytes:
    """The ``detect`` command, with the keys the production devices read.

    ``output`` is sent for SicBo only, as the devices expect. ``trace_context`` (W3C
    ``traceparent``/``tracestate``), when given, rides in a top-level ``trace`` object that
    devices which do not know it ignore.
    """
    arg: dict[str, str] = {"round_id": round_id, "input": input_url}
    if game is Game.SICBO and output_url:
        arg["output"] = output_url
    doc: dict[str, object] = {"command": "detect", "arg": arg}
    if trace_context:
        doc["trace"] = trace_context
    return json.dumps(doc, separators=(",", ":")).encode()


def encode_timeout() -> bytes:
    """The ``timeout`` command that stops the running detection."""
    return b'{"command":"timeout","arg":{}}'


# --- request validation --------------------------------------------------------------


def check_round_id(round_id: str) -> str:
    """Return the round id if it is usable on the wire, else raise InvalidRequest."""
    if not round_id:
        raise InvalidRequest("round_id is required")
    if len(round_id) > MAX_ROUND_ID_CHARS:
        raise InvalidRequest(
            f"round_id is {len(round_id)} characters long; at most {MAX_ROUND_ID_CHARS} allowed"
        )
    if not round_id.isprintable() or round_id != round_id.strip():
        raise InvalidRequest(
            "round_id must be printable characters without leading/trailing whitespace: "
            f"{round_id!r}"
        )
    return round_id


def check_stream_url(field: str, url: str) -> str:
    """Return the stream URL if it is plausible, else raise InvalidRequest naming the field.

    The message shows the URL with its password masked (``rtmp://user:***@host/...``): it
    reaches the caller, Health and log lines.
    """
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"{field} is {len(url)} characters long; at most {MAX_URL_CHARS}")
    shown = redact_url(url)
    if not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidRequest(f"{field} contains whitespace or control characters: {shown!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidRequest(f"{field} is not a URL: {shown!r} ({exc})") from exc
    if parts.scheme.lower() not in STREAM_SCHEMES or not parts.netloc:
        schemes = ", ".join(sorted(STREAM_SCHEMES))
        raise InvalidRequest(f"{field} must be an absolute {schemes} URL, got {shown!r}")
    return url


# --- frame classification ------------------------------------------------------------


def classify(game: Game, payload: bytes, round_id: str, *, baccarat_tableau: bool = True) -> Frame:
    """Classify one response frame against the round being waited for.

    With ``baccarat_tableau`` (the default) a Baccarat hand is an answer only once it is
    final by the punto banco tableau; without it, the first frame with the first four
    cards is (for variants that deal differently). Never raises: a frame that cannot be
    read, whatever the bytes, is ``Invalid`` with the reason.
    """
    try:
        return _classify(game, payload, round_id, baccarat_tableau)
    except RecursionError:
        return Invalid("frame nests too deeply to decode")
    except MemoryError:
        return Invalid("frame too large to decode")
    except Exception as exc:  # a device's bytes must never end the process
        return Invalid(f"unreadable frame: {_describe(exc)}")


def _classify(game: Game, payload: bytes, round_id: str, baccarat_tableau: bool) -> Frame:
    if len(payload) > MAX_FRAME_BYTES:
        return Invalid(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    if _nests_deeper_than(payload, MAX_NESTING):
        return Invalid(f"frame nests deeper than {MAX_NESTING} levels")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return Invalid(f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return Invalid(f"frame is a JSON {type(doc).__name__}, not an object")
    if doc.get("response") != "result":
        return Invalid(f"unknown response {_short(doc.get('response'))}")
    arg = doc.get("arg")
    if not isinstance(arg, dict):
        return Invalid("arg is missing or not an object")
    # The predecessor's documents write a good result without "err" ({"round_id", "res"}),
    # and it accepted that: a frame without "err" is a result if its round and value are.
    err = arg.get("err", ERR_OK) if "round_id" in arg else arg.get("err")
    if isinstance(err, bool) or not isinstance(err, int):
        return Invalid(f"err is not an integer: {_short(err)}")
    frame_round = arg.get("round_id")
    if frame_round is None:
        if err == ERR_NOT_YET:
            return NotYet("err -1 without round_id")
        return Invalid(f"frame with err {_short(err)} has no round_id")
    if not isinstance(frame_round, str):
        return Invalid(f"round_id is not a string: {_short(frame_round)}")
    if frame_round != round_id:
        return Foreign(frame_round)
    if err == ERR_NOT_YET:
        return NotYet("err -1")
    if err != ERR_OK:
        return IdpFailure(round_id, err)
    return _classify_result(game, round_id, arg.get("res"), baccarat_tableau)


_DECIMAL = re.compile(r"0|[1-9][0-9]?")  # "0".."99", no sign, space or leading zero
_STRUCTURE = re.compile(rb'["\\\[\]{}]')


def _nests_deeper_than(payload: bytes, limit: int) -> bool:
    """Whether the JSON text opens more than ``limit`` arrays/objects at once.

    Checked before decoding, so a frame like ``[[[[...`` costs a scan, not a recursion.
    Frames with few brackets (every real one) skip the scan.
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    depth, in_string, skip = 0, False, -1
    for match in _STRUCTURE.finditer(payload):
        at = match.start()
        if at == skip:
            continue
        char = payload[at]
        if in_string:
            if char == 0x5C:  # backslash: the next byte is escaped
                skip = at + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif char in b"]}":
            depth -= 1
    return False


def _classify_result(game: Game, round_id: str, res: Any, baccarat_tableau: bool) -> Frame:
    if res is None or res == []:
        return NotYet("empty result")
    if game is Game.SICBO:
        return _sicbo(round_id, res)
    if game is Game.ROULETTE:
        return _roulette(round_id, res)
    return _baccarat(round_id, res, baccarat_tableau)


def _sicbo(round_id: str, res: Any) -> Frame:
    if not isinstance(res, list) or len(res) != 3:
        return Invalid(f"sicbo res must be 3 dice, got {_short(res)}")
    if not all(_is_int(d) and 1 <= d <= 6 for d in res):
        return Invalid(f"sicbo dice must be integers 1..6, got {_short(res)}")
    return Answer(round_id, SicBoDice((res[0], res[1], res[2])))


def _roulette(round_id: str, res: Any) -> Frame:
    if isinstance(res, str) and _DECIMAL.fullmatch(res):
        res = int(res)  # "25": the predecessor's tests treat a decimal string as the number
    if not _is_int(res) or not 0 <= res <= 36:
        return Invalid(f"roulette res must be an integer 0..36, got {_short(res)}")
    return Answer(round_id, RouletteNumber(res))


def _baccarat(round_id: str, res: Any, tableau: bool) -> Frame:
    if not isinstance(res, list) or len(res) != BACCARAT_CARDS:
        return Invalid(f"baccarat res must be {BACCARAT_CARDS} cards, got {_short(res)}")
    if not all(isinstance(c, str) and (c == "" or _CARD.fullmatch(c)) for c in res):
        return Invalid(f'baccarat cards must be rank+suit or "", got {_short(res)}')
    if not any(res):
        return NotYet("no cards yet")
    c = tuple(res)
    hand = BaccaratHand((c[0], c[1], c[2], c[3], c[4], c[5]))
    if not tableau:
        if not all(res[:BACCARAT_REQUIRED]):
            return NotYet("fewer than the first 4 cards")
        return Answer(round_id, hand)
    verdict = baccarat.judge(hand.cards)
    if isinstance(verdict, baccarat.Dealing):
        return NotYet(verdict.missing)
    if isinstance(verdict, baccarat.Forbidden):
        return Invalid(f"baccarat hand the tableau forbids: {verdict.rule}: {_short(res)}")
    return Answer(round_id, hand)


def parse_shaker_state(payload: bytes) -> str:
    """The state a SicBo shaker says on its ``says`` topic (``S0``, ``S1``, ``S2``, ``S90``).

    Returns the stripped text; raises MalformedInput (and nothing else) for a payload that
    is not short printable ASCII text.
    """
    try:
        if not isinstance(payload, bytes | bytearray):
            raise MalformedInput(f"shaker payload is {type(payload).__name__}, not bytes")
        if len(payload) > MAX_SHAKER_BYTES:
            raise MalformedInput(
                f"shaker payload of {len(payload)} bytes exceeds {MAX_SHAKER_BYTES}"
            )
        if not payload.isascii():
            raise MalformedInput(f"shaker payload is not ASCII: {_short(bytes(payload))}")
        state = payload.decode("ascii").strip()
        if not state:
            raise MalformedInput("shaker payload is empty")
        if not state.isprintable():
            raise MalformedInput(f"shaker payload has control characters: {_short(state)}")
        return state
    except MalformedInput:
        raise
    except Exception as exc:  # a device's bytes must never end the process
        raise MalformedInput(f"unreadable shaker payload: {_describe(exc)}") from exc


def _is_int(value: Any) -> bool:
    # JSON true/false decode to bool, which is an int subclass: not a valid number here.
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(exc: Exception) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose message cannot be built still has a type
        text = ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
