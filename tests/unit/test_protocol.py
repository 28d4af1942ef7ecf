"""Unit tests of gateway.protocol: frame classification, command encoding, request checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest, MalformedInput
from gateway.protocol import (
    MAX_FRAME_BYTES,
    MAX_NESTING,
    MAX_ROUND_ID_CHARS,
    MAX_URL_CHARS,
    Answer,
    BaccaratHand,
    Foreign,
    Game,
    IdpFailure,
    Invalid,
    NotYet,
    RouletteNumber,
    SicBoDice,
    check_round_id,
    check_stream_url,
    classify,
    encode_detect,
    encode_timeout,
    parse_shaker_state,
)

SBO_ROUND = "SBO-001-20251120-101500"
BAC_ROUND = "BAC-001-20250101-120000"
ARO_ROUND = "ARO-001-64cb641c-549b-497d-a4cd-0b3376dce35f"


def _frame(round_id: Any, res: Any, err: Any = 0) -> bytes:
    """A response frame as the IDP sends it (round_id left out when None)."""
    arg: dict[str, Any] = {"res": res, "err": err}
    if round_id is not None:
        arg["round_id"] = round_id
    return json.dumps({"response": "result", "arg": arg}).encode()


# --- valid results (examples from IDP-PROTOCOL.md, verbatim) --------------------------


@pytest.mark.parametrize(
    ("game", "payload", "round_id", "expected"),
    [
        (
            Game.ROULETTE,
            b'{"response": "result", "arg": {"round_id": '
            b'"ARO-001-64cb641c-549b-497d-a4cd-0b3376dce35f", "res": 35, "err": 0}}',
            ARO_ROUND,
            RouletteNumber(35),
        ),
        (
            Game.SICBO,
            b'{"response": "result", "arg": {"round_id": "SBO-001-20251120-101500", '
            b'"res": [4, 2, 6], "err": 0}}',
            SBO_ROUND,
            SicBoDice((4, 2, 6)),
        ),
        (
            Game.BACCARAT,
            b'{"response": "result", "arg": {"round_id": "BAC-001-20250101-120000", '
            b'"res": ["KD", "8S", "10H", "AC", "", ""], "err": 0}}',
            BAC_ROUND,
            BaccaratHand(("KD", "8S", "10H", "AC", "", "")),
        ),
    ],
    ids=["roulette", "sicbo", "baccarat"],
)
def test_documented_results_are_answers(
    game: Game, payload: bytes, round_id: str, expected: Any
) -> None:
    """The documented result frames classify as the answer for the awaited round."""
    assert classify(game, payload, round_id) == Answer(round_id, expected)


@pytest.mark.parametrize(
    ("game", "res", "expected"),
    [
        (Game.ROULETTE, 0, RouletteNumber(0)),
        (Game.ROULETTE, 36, RouletteNumber(36)),
        (Game.SICBO, [1, 1, 1], SicBoDice((1, 1, 1))),
        (Game.SICBO, [6, 6, 6], SicBoDice((6, 6, 6))),
        (
            Game.BACCARAT,
            ["2D", "4S", "3H", "3C", "5C", ""],
            BaccaratHand(("2D", "4S", "3H", "3C", "5C", "")),
        ),
        (
            Game.BACCARAT,
            ["3D", "2S", "3H", "2C", "", "9D"],
            BaccaratHand(("3D", "2S", "3H", "2C", "", "9D")),
        ),
        (
            Game.BACCARAT,
            ["2D", "2S", "3H", "2C", "5C", "QS"],
            BaccaratHand(("2D", "2S", "3H", "2C", "5C", "QS")),
        ),
    ],
    ids=[
        "roulette-0",
        "roulette-36",
        "sicbo-low",
        "sicbo-high",
        "baccarat-5-cards-player3",
        "baccarat-5-cards-banker3",
        "baccarat-6-cards",
    ],
)
def test_boundary_and_full_results_are_answers(game: Game, res: Any, expected: Any) -> None:
    """Edge values and final baccarat hands with a 5th/6th card are returned as answers."""
    assert classify(game, _frame("R-1", res), "R-1") == Answer("R-1", expected)


# --- stale / foreign frames -----------------------------------------------------------


@pytest.mark.parametrize(
    "frame_round",
    [
        "SBO-001-20251120-101400",  # the previous round
        "SBO-001-20251120-1015",  # a prefix of the awaited id
        SBO_ROUND + "0",  # starts with the awaited id
        SBO_ROUND + "-retry",
        SBO_ROUND.lower(),
        " " + SBO_ROUND,
    ],
)
def test_other_rounds_are_foreign(frame_round: str) -> None:
    """A valid result for any other round id (even a near match) is never an answer."""
    frame = classify(Game.SICBO, _frame(frame_round, [4, 2, 6]), SBO_ROUND)
    assert frame == Foreign(frame_round)


@pytest.mark.parametrize("err", [0, -1, -3, -99])
def test_foreign_wins_over_error_code(err: int) -> None:
    """An error frame for another round is that round's business, not the awaited one's."""
    assert classify(Game.SICBO, _frame("OTHER", [], err), SBO_ROUND) == Foreign("OTHER")


# --- errors and not-yet -----------------------------------------------------------------


def test_documented_err_minus_1_without_round_id_is_not_yet() -> None:
    """The documented roulette `err -1` frame (no round_id, res null) means not yet."""
    payload = b'{"response": "result", "arg": {"res": null, "err": -1}}'
    assert isinstance(classify(Game.ROULETTE, payload, ARO_ROUND), NotYet)


def test_err_minus_1_for_the_round_is_not_yet() -> None:
    """`err -1` carrying the awaited round id means not yet, not a failure."""
    assert isinstance(classify(Game.ROULETTE, _frame(ARO_ROUND, None, -1), ARO_ROUND), NotYet)


def test_documented_no_shake_is_an_idp_failure() -> None:
    """The documented SicBo err -3 frame is a NO_SHAKE failure for the round."""
    payload = (
        b'{"response": "result", "arg": {"round_id": "SBO-001-20251120-101500", '
        b'"res": [], "err": -3}}'
    )
    frame = classify(Game.SICBO, payload, SBO_ROUND)
    assert frame == IdpFailure(SBO_ROUND, -3)
    assert isinstance(frame, IdpFailure)
    assert frame.name == "NO_SHAKE"


@pytest.mark.parametrize("err", [-2, -7, 1, 500])
def test_unknown_err_is_reported_with_its_code(err: int) -> None:
    """An undocumented error code for the round is reported as-is, named UNKNOWN."""
    frame = classify(Game.ROULETTE, _frame(ARO_ROUND, 17, err), ARO_ROUND)
    assert frame == IdpFailure(ARO_ROUND, err)
    assert isinstance(frame, IdpFailure)
    assert frame.name == "UNKNOWN"


@pytest.mark.parametrize(
    ("game", "res"),
    [
        (Game.SICBO, []),
        (Game.SICBO, None),
        (Game.ROULETTE, None),
        (Game.ROULETTE, []),
        (Game.BACCARAT, []),
        (Game.BACCARAT, ["", "", "", "", "", ""]),
        (Game.BACCARAT, ["KD", "", "", "", "", ""]),
        (Game.BACCARAT, ["KD", "8S", "10H", "", "", ""]),
        (Game.BACCARAT, ["2D", "4S", "3H", "3C", "", ""]),
    ],
    ids=[
        "sicbo-empty-list",
        "sicbo-null",
        "roulette-null",
        "roulette-empty-list",
        "baccarat-empty-list",
        "baccarat-no-cards",
        "baccarat-1-card",
        "baccarat-3-cards",
        "baccarat-player-third-card-due",
    ],
)
def test_early_frames_are_not_yet(game: Game, res: Any) -> None:
    """Early empty frames and baccarat hands still being dealt are not answers yet."""
    assert isinstance(classify(game, _frame("R-1", res), "R-1"), NotYet)


# --- invalid frames ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("game", "payload"),
    [
        (Game.SICBO, b"not json"),
        (Game.SICBO, b""),
        (Game.SICBO, b'{"response": "result", "arg": {"round_id": "R-1", "res": [4, 2, 6]'),
        (Game.SICBO, b"[1, 2, 3]"),
        (Game.SICBO, b'"result"'),
        (Game.SICBO, b"null"),
        (Game.SICBO, b'{"response": "result"}'),
        (Game.SICBO, b'{"response": "result", "arg": [1, 2]}'),
        (Game.SICBO, b'{"response": "status", "arg": {"round_id": "R-1", "res": [1], "err": 0}}'),
        (Game.SICBO, b'{"arg": {"round_id": "R-1", "res": [1, 2, 3], "err": 0}}'),
        (Game.SICBO, _frame("R-1", [4, 2, 6], "0")),
        (Game.SICBO, _frame("R-1", [4, 2, 6], 0.0)),
        (Game.SICBO, _frame("R-1", [4, 2, 6], None)),
        (Game.SICBO, _frame("R-1", [4, 2, 6], False)),
        (Game.SICBO, _frame("R-1", [4, 2, 6], True)),
        (Game.SICBO, b'{"response": "result", "arg": {"round_id": "R-1", "res": [4, 2, 7]}}'),
        (Game.SICBO, _frame(None, [4, 2, 6], 0)),
        (Game.SICBO, _frame(None, [], -3)),
        (Game.SICBO, _frame(12, [4, 2, 6], 0)),
        (Game.SICBO, _frame("R-1", "4,2,6")),
        (Game.SICBO, _frame("R-1", 4)),
        (Game.SICBO, _frame("R-1", {"dice": [4, 2, 6]})),
        (Game.SICBO, _frame("R-1", [0, 2, 6])),
        (Game.SICBO, _frame("R-1", [4, 2, 7])),
        (Game.SICBO, _frame("R-1", [-1, 2, 6])),
        (Game.SICBO, _frame("R-1", [True, True, True])),
        (Game.SICBO, _frame("R-1", [4.0, 2.0, 6.0])),
        (Game.SICBO, _frame("R-1", [4.5, 2, 6])),
        (Game.SICBO, _frame("R-1", ["4", "2", "6"])),
        (Game.SICBO, _frame("R-1", [None, 2, 6])),
        (Game.SICBO, _frame("R-1", [4, 2])),
        (Game.SICBO, _frame("R-1", [4, 2, 6, 1])),
        (Game.SICBO, _frame("R-1", [[4], [2], [6]])),
        (Game.ROULETTE, _frame("R-1", 37)),
        (Game.ROULETTE, _frame("R-1", -1)),
        (Game.ROULETTE, _frame("R-1", "05")),
        (Game.ROULETTE, _frame("R-1", " 5")),
        (Game.ROULETTE, _frame("R-1", "+5")),
        (Game.ROULETTE, _frame("R-1", "37")),
        (Game.ROULETTE, _frame("R-1", True)),
        (Game.ROULETTE, _frame("R-1", False)),
        (Game.ROULETTE, _frame("R-1", 5.0)),
        (Game.ROULETTE, _frame("R-1", [5])),
        (
            Game.ROULETTE,
            b'{"response": "result", "arg": {"round_id": "R-1", "res": NaN, "err": 0}}',
        ),
        (Game.BACCARAT, _frame("R-1", ["1X", "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["KZ", "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["10", "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["AC ", "8S", "10H", "KD", "", ""])),
        (Game.BACCARAT, _frame("R-1", [" AC", "8S", "10H", "KD", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["kd", "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["1C", "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["11H", "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["TH", "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", [None, "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", [13, "8S", "10H", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["KD", "8S", "10H", "AC", "5C"])),
        (Game.BACCARAT, _frame("R-1", ["KD", "8S", "10H", "AC", "5C", "QS", "2H"])),
        (Game.BACCARAT, _frame("R-1", ["KD", "8S", "10H", "AC"])),
        (Game.BACCARAT, _frame("R-1", "KD 8S 10H AC")),
        (Game.BACCARAT, _frame("R-1", 7)),
        (Game.BACCARAT, _frame("R-1", ["KD", "8S", "", "AC", "", ""])),
        (Game.BACCARAT, _frame("R-1", ["", "8S", "10H", "AC", "5C", ""])),
        (Game.BACCARAT, _frame("R-1", ["KD", "8S", "10H", "AC", "5C", ""])),
    ],
    ids=[
        "not-json",
        "empty-payload",
        "truncated-json",
        "json-list",
        "json-string",
        "json-null",
        "missing-arg",
        "arg-is-list",
        "unknown-response",
        "no-response-key",
        "err-string",
        "err-float",
        "err-null",
        "err-false",
        "err-true",
        "err-missing-bad-dice",
        "no-round-id-err-0",
        "no-round-id-err-3",
        "round-id-not-string",
        "sicbo-res-string",
        "sicbo-res-int",
        "sicbo-res-object",
        "dice-0",
        "dice-7",
        "dice-negative",
        "dice-bools",
        "dice-floats",
        "dice-fraction",
        "dice-strings",
        "dice-null",
        "2-dice",
        "4-dice",
        "dice-nested",
        "roulette-37",
        "roulette-minus-1",
        "roulette-string-leading-zero",
        "roulette-string-space",
        "roulette-string-sign",
        "roulette-string-37",
        "roulette-true",
        "roulette-false",
        "roulette-float",
        "roulette-list",
        "roulette-nan",
        "card-1X",
        "card-KZ",
        "card-10-no-suit",
        "card-trailing-space",
        "card-leading-space",
        "card-lowercase",
        "card-rank-1",
        "card-rank-11",
        "card-rank-T",
        "card-null",
        "card-int",
        "baccarat-5-slots",
        "baccarat-7-slots",
        "baccarat-4-slots",
        "baccarat-string",
        "baccarat-int",
        "baccarat-gap-in-first-4",
        "baccarat-missing-player1",
        "baccarat-third-card-after-natural",
    ],
)
def test_malformed_frames_are_invalid(game: Game, payload: bytes) -> None:
    """Anything that is not a well-formed result for the awaited round is a device fault."""
    assert isinstance(classify(game, payload, "R-1"), Invalid)


def test_card_with_trailing_newline_is_invalid() -> None:
    """A card string with a trailing newline is not a card and never reaches the game."""
    frame = classify(Game.BACCARAT, _frame("R-1", ["KD\n", "8S", "10H", "AC", "", ""]), "R-1")
    assert isinstance(frame, Invalid)


def test_oversized_frame_is_invalid_even_if_well_formed() -> None:
    """A frame larger than MAX_FRAME_BYTES is rejected, even when it is a valid result."""
    base = _frame("R-1", 17)
    padded = base[:-1] + b', "pad": "' + b"x" * MAX_FRAME_BYTES + b'"}'
    assert len(padded) > MAX_FRAME_BYTES
    assert classify(Game.ROULETTE, base, "R-1") == Answer("R-1", RouletteNumber(17))
    frame = classify(Game.ROULETTE, padded, "R-1")
    assert isinstance(frame, Invalid)
    assert str(MAX_FRAME_BYTES) in frame.reason


def test_frame_at_the_size_limit_is_accepted() -> None:
    """A valid frame of exactly MAX_FRAME_BYTES is still an answer."""
    base = b'{"response":"result","arg":{"round_id":"R-1","res":17,"err":0},"pad":""}'
    padded = base[:-2] + b"x" * (MAX_FRAME_BYTES - len(base)) + b'"}'
    assert len(padded) == MAX_FRAME_BYTES
    assert classify(Game.ROULETTE, padded, "R-1") == Answer("R-1", RouletteNumber(17))


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe\xfd",
        b"\x80\x81",
        b'{"response": "result", "arg": {"round_id": "caf\xe9", "res": 5, "err": 0}}',
        b'{"response": "result", "arg": {"round_id": "R-1", "res": 5, "err": 0}}\xc3',
    ],
    ids=["garbage", "continuation-bytes", "latin1-round-id", "truncated-utf8"],
)
def test_non_utf8_bytes_are_invalid(payload: bytes) -> None:
    """Bytes that are not UTF-8 are a device fault, not an exception in the gateway."""
    assert isinstance(classify(Game.ROULETTE, payload, "R-1"), Invalid)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 5000, "nests deeper than"),
        (b'{"response": "result", "arg": ' * 40 + b"{}" + b"}" * 40, "nests deeper than"),
        (
            b'{"response": "result", "arg": {"round_id": "R-1", "res": '
            + b"[" * 2000
            + b"]" * 2000
            + b', "err": 0}}',
            "nests deeper than",
        ),
        (
            b'{"response": "result", "arg": {"round_id": "R-1", "res": 1' + b"0" * 5000 + b"}}",
            "JSON",
        ),
    ],
    ids=["open-brackets", "nested-objects", "nested-res", "over-long-integer"],
)
def test_hostile_frames_are_invalid_not_exceptions(payload: bytes, reason: str) -> None:
    """Absurd nesting or over-long numbers come back as Invalid naming why, never an error."""
    frame = classify(Game.ROULETTE, payload, "R-1")
    assert isinstance(frame, Invalid)
    assert reason in frame.reason


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """A round id full of brackets is text, so its result is still the answer."""
    round_id = "R-[{" * 30 + '\\"]'
    payload = json.dumps(
        {"response": "result", "arg": {"round_id": round_id, "res": 7, "err": 0}}
    ).encode()
    assert payload.count(b"[") + payload.count(b"{") > MAX_NESTING
    assert classify(Game.ROULETTE, payload, round_id) == Answer(round_id, RouletteNumber(7))


# --- shaker states -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "state"),
    [(b"S0", "S0"), (b"S1", "S1"), (b"S2\n", "S2"), (b" S90\r\n", "S90")],
)
def test_shaker_states_are_read_stripped(payload: bytes, state: str) -> None:
    """The shaker's documented states come back as text without surrounding whitespace."""
    assert parse_shaker_state(payload) == state


@pytest.mark.parametrize(
    "payload",
    [b"", b"  \n", b"S0" * 9, b"S\xff", "S0\u00e9".encode(), b"S\x000", b"S\x1b[0"],
    ids=["empty", "blank", "too-long", "not-ascii", "utf8", "nul", "escape"],
)
def test_unreadable_shaker_payloads_raise_malformed_input(payload: bytes) -> None:
    """Anything but short printable ASCII text is MalformedInput, never another error."""
    with pytest.raises(MalformedInput, match="shaker payload"):
        parse_shaker_state(payload)


# --- commands ----------------------------------------------------------------------------


def test_encode_detect_sicbo_sends_input_and_output() -> None:
    """A SicBo detect carries round_id, input and output, the keys the devices read."""
    payload = encode_detect(
        Game.SICBO,
        SBO_ROUND,
        "rtmp://10.0.0.54:1935/live/r14_sb",
        "https://example.invalid/live/r456_dice.flv",
    )
    assert json.loads(payload) == {
        "command": "detect",
        "arg": {
            "round_id": SBO_ROUND,
            "input": "rtmp://10.0.0.54:1935/live/r14_sb",
            "output": "https://example.invalid/live/r456_dice.flv",
        },
    }


@pytest.mark.parametrize("game", [Game.BACCARAT, Game.ROULETTE])
def test_encode_detect_other_games_send_no_output(game: Game) -> None:
    """Baccarat and roulette detects carry only round_id and input, even if an output is set."""
    payload = encode_detect(game, "R-1", "rtmp://10.0.0.10:1935/live/r111", "rtmp://h/out")
    assert json.loads(payload) == {
        "command": "detect",
        "arg": {"round_id": "R-1", "input": "rtmp://10.0.0.10:1935/live/r111"},
    }


@pytest.mark.parametrize("output", [None, ""])
def test_encode_detect_sicbo_without_output_omits_the_key(output: str | None) -> None:
    """A SicBo detect without an output stream has no output key at all."""
    arg = json.loads(encode_detect(Game.SICBO, "R-1", "rtmp://h/in", output))["arg"]
    assert arg == {"round_id": "R-1", "input": "rtmp://h/in"}


@pytest.mark.parametrize("game", list(Game))
def test_encode_detect_never_sends_legacy_stream_keys(game: Game) -> None:
    """No detect ever uses the old input_stream/output_stream keys the devices ignore."""
    payload = encode_detect(game, "R-1", "rtmp://h/in", "rtmp://h/out")
    assert b"input_stream" not in payload
    assert b"output_stream" not in payload


def test_encode_detect_escapes_round_id() -> None:
    """A round id with JSON-special characters reaches the device intact."""
    round_id = 'A"B\\C/ü'
    arg = json.loads(encode_detect(Game.ROULETTE, round_id, "rtmp://h/in", None))["arg"]
    assert arg["round_id"] == round_id


def test_encode_timeout() -> None:
    """The timeout command is exactly the documented envelope with an empty arg."""
    assert json.loads(encode_timeout()) == {"command": "timeout", "arg": {}}


# --- request validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "round_id",
    [
        SBO_ROUND,
        ARO_ROUND,
        "x",
        "r" * MAX_ROUND_ID_CHARS,
        "table 7 round 12",  # inner spaces: the id is opaque
        "ROUND-ü-1",
    ],
)
def test_check_round_id_accepts_usable_ids(round_id: str) -> None:
    """Round ids the games use are accepted unchanged."""
    assert check_round_id(round_id) == round_id


@pytest.mark.parametrize(
    "round_id",
    [
        "",
        "r" * (MAX_ROUND_ID_CHARS + 1),
        "R-1\n",
        "R-1\x00",
        "R\x1b[31m-1",
        "R-1\t",
        " R-1",
        "R-1 ",
        "R-1\u00a0",
        "R\u2028-1",
    ],
    ids=[
        "empty",
        "too-long",
        "newline",
        "nul",
        "escape",
        "tab",
        "leading-space",
        "trailing-space",
        "nbsp",
        "line-separator",
    ],
)
def test_check_round_id_rejects_unusable_ids(round_id: str) -> None:
    """Empty, oversized, control-character or padded round ids are the caller's mistake."""
    with pytest.raises(InvalidRequest, match="round_id"):
        check_round_id(round_id)


@pytest.mark.parametrize(
    "url",
    [
        "rtmp://10.0.0.54:1935/live/r14_sb",
        "rtmps://cam.example/live/x",
        "RTSP://10.0.0.5/stream",
        "rtsps://cam:8322/x",
        "srt://10.0.0.5:9000",
        "http://example.invalid/live/r456_dice.flv",
        "https://example.invalid/live/r456_dice.flv",
        "rtmp://[::1]:1935/live",
        "rtmp://h/" + "a" * (MAX_URL_CHARS - len("rtmp://h/")),
    ],
)
def test_check_stream_url_accepts_stream_urls(url: str) -> None:
    """Absolute URLs with a streaming scheme are accepted unchanged."""
    assert check_stream_url("input", url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "rtmp://h/" + "a" * MAX_URL_CHARS,
        "rtmp://h/live\n",
        "rtmp://h/li\x00ve",
        "rtmp://h/live stream",
        " rtmp://h/live",
        "rtmp://h/live\t",
        "file:///etc/passwd",
        "ftp://h/live",
        "javascript:alert(1)",
        "mqtt://h/live",
        "rtmp://",
        "rtmp:/live",
        "/live/r14_sb",
        "10.0.0.54:1935/live",
        "http://[::1/live",
    ],
    ids=[
        "empty",
        "too-long",
        "newline",
        "nul",
        "inner-space",
        "leading-space",
        "tab",
        "file",
        "ftp",
        "javascript",
        "mqtt",
        "no-host",
        "no-netloc",
        "relative-path",
        "no-scheme",
        "broken-ipv6",
    ],
)
@pytest.mark.parametrize("field", ["input", "output"])
def test_check_stream_url_rejects_non_stream_urls(field: str, url: str) -> None:
    """Bad stream URLs raise InvalidRequest whose message names the request field."""
    with pytest.raises(InvalidRequest) as info:
        check_stream_url(field, url)
    assert info.value.message.startswith(field)


@pytest.mark.parametrize(
    ("game", "payload", "result"),
    [
        (
            Game.SICBO,
            b'{"response": "result", "arg": {"round_id": "R-1", "res": [4, 2, 6]}}',
            SicBoDice((4, 2, 6)),
        ),
        (Game.ROULETTE, _frame("R-1", "25"), RouletteNumber(25)),
        (Game.ROULETTE, _frame("R-1", "0"), RouletteNumber(0)),
        (
            Game.ROULETTE,
            b'{"response": "result", "arg": {"round_id": "R-1", "res": "36"}}',
            RouletteNumber(36),
        ),
    ],
    ids=["no-err", "roulette-decimal-string", "roulette-zero-string", "no-err-and-string"],
)
def test_the_predecessors_accepted_forms_are_results(
    game: Game, payload: bytes, result: object
) -> None:
    """A result without err, and a roulette number as a decimal string, for the right round."""
    assert classify(game, payload, "R-1") == Answer("R-1", result)  # type: ignore[arg-type]
    assert isinstance(classify(game, payload, "R-2"), Foreign)


def test_a_frame_without_err_or_round_id_is_still_invalid() -> None:
    """Without a round id there is nothing to match: err is required then (-1 = not yet)."""
    assert isinstance(
        classify(Game.ROULETTE, b'{"response":"result","arg":{"res":5}}', "R-1"), Invalid
    )
