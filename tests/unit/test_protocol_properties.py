"""Property tests of the parsers of device input: whatever a device sends, they never raise."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devtools.sim import derive_result
from gateway.errors import MalformedInput
from gateway.protocol import (
    CARD_RANKS,
    CARD_SUITS,
    MAX_SHAKER_BYTES,
    Answer,
    BaccaratHand,
    Foreign,
    Game,
    IdpFailure,
    Invalid,
    NotYet,
    classify,
    parse_shaker_state,
)

FRAME_CLASSES = (Answer, IdpFailure, NotYet, Foreign, Invalid)
ROUND = "R-1"
# Deterministic and without an example database: the same examples on every run.
FAST = settings(max_examples=200, derandomize=True, database=None, deadline=None)

json_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=20,
)
cards = st.builds(lambda r, s: r + s, st.sampled_from(CARD_RANKS), st.sampled_from(CARD_SUITS))
slots = st.one_of(st.just(""), cards)
# Six slots, half of the time with the first four cards dealt (where the tableau decides).
hands = st.lists(slots, min_size=6, max_size=6) | st.builds(
    lambda four, thirds: four + thirds,
    st.lists(cards, min_size=4, max_size=4),
    st.lists(slots, min_size=2, max_size=2),
)


def frame(res: Any, round_id: Any = ROUND, err: Any = 0) -> bytes:
    """A result frame as the IDP sends it."""
    doc = {"response": "result", "arg": {"round_id": round_id, "res": res, "err": err}}
    return json.dumps(doc).encode()


def points(card: str) -> int:
    """Punto banco points of a card, by a lookup of its rank's position."""
    return min(CARD_RANKS.index(card[:-1]) + 1, 10) % 10


def dealt_by_the_rules(hand: list[str]) -> list[str]:
    """The hand a dealer following the tableau ends with, taking third cards from ``hand``.

    A third card the rules call for but ``hand`` lacks comes back as "?", so a hand
    equals its own deal exactly when it is final.
    """
    p1, b1, p2, b2, p3, b3 = hand
    player, banker = (points(p1) + points(p2)) % 10, (points(b1) + points(b2)) % 10
    if player in (8, 9) or banker in (8, 9):
        return [p1, b1, p2, b2, "", ""]
    if player in (6, 7):
        return [p1, b1, p2, b2, "", (b3 or "?") if banker < 6 else ""]
    if not p3:
        return [p1, b1, p2, b2, "?", "?"]
    # The printed tableau: banker total -> player third cards on which the banker draws.
    draws_on = ["0123456789"] * 3 + ["012345679", "234567", "4567", "67", ""]
    drawn = str(points(p3)) in draws_on[banker]
    return [p1, b1, p2, b2, p3, (b3 or "?") if drawn else ""]


@FAST
@given(st.binary(max_size=512), st.sampled_from(list(Game)), st.booleans())
def test_arbitrary_bytes_are_a_frame_class(payload: bytes, game: Game, tableau: bool) -> None:
    """Any bytes on the response topic classify as one of the frame classes."""
    assert isinstance(classify(game, payload, ROUND, baccarat_tableau=tableau), FRAME_CLASSES)


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(json_trees, st.sampled_from(list(Game)))
def test_arbitrary_json_trees_never_raise(tree: Any, game: Game) -> None:
    """A JSON tree as the whole frame, as its arg, or as its res never raises."""
    payloads = [
        json.dumps(tree).encode(),
        json.dumps({"response": "result", "arg": tree}).encode(),
        frame(tree),
        frame(tree, round_id=tree, err=tree),
    ]
    for payload in payloads:
        assert isinstance(classify(game, payload, ROUND), FRAME_CLASSES)


@settings(max_examples=20, derandomize=True, database=None, deadline=None)
@given(st.integers(min_value=33, max_value=60_000), st.sampled_from(["[", "{", '{"a":[']))
def test_deep_nesting_is_invalid(depth: int, opener: str) -> None:
    """A frame nesting far deeper than any result does is Invalid, never a RecursionError."""
    payload = (opener * depth).encode()[:60_000]
    frame_class = classify(Game.BACCARAT, payload, ROUND)
    assert isinstance(frame_class, Invalid)


def test_a_hundred_thousand_brackets_are_invalid() -> None:
    """100k opening brackets, at and above the size limit, are Invalid."""
    for payload in (b"[" * 100_000, b"[" * 65_536, b'{"response": "result", "arg": ' * 2000):
        assert isinstance(classify(Game.SICBO, payload, ROUND), Invalid)


@FAST
@given(st.text(min_size=1, max_size=128))
def test_every_simulated_hand_is_an_answer(round_id: str) -> None:
    """The simulated IDP's hand for any round id is final and legal by the tableau."""
    res = derive_result("baccarat", round_id)
    assert isinstance(res, list)
    result = classify(Game.BACCARAT, frame(res, round_id), round_id)
    assert isinstance(result, Answer) and isinstance(result.result, BaccaratHand)
    assert (result.round_id, list(result.result.cards)) == (round_id, res)


@settings(max_examples=600, derandomize=True, database=None, deadline=None)
@given(hands)
def test_an_answer_is_always_a_final_hand(hand: list[str]) -> None:
    """Random six-slot hands never raise, and are an Answer exactly when the tableau is done."""
    result = classify(Game.BACCARAT, frame(hand), ROUND)
    assert isinstance(result, FRAME_CLASSES)
    final = all(hand[:4]) and dealt_by_the_rules(hand) == hand
    assert isinstance(result, Answer) == final, (hand, result)


@FAST
@given(st.lists(cards, min_size=6, max_size=6))
def test_a_hand_dealt_by_the_rules_is_not_yet_until_final(shoe: list[str]) -> None:
    """A legally dealt hand is not yet a result at 2 and 4 cards (unless final) and then is."""
    final = dealt_by_the_rules(shoe)
    assert "?" not in final
    for shown in (2, 4, 5):
        stage = [c if i < shown else "" for i, c in enumerate(final)]
        if stage != final:
            assert isinstance(classify(Game.BACCARAT, frame(stage), ROUND), NotYet), stage
    assert isinstance(classify(Game.BACCARAT, frame(final), ROUND), Answer)


@FAST
@given(hands)
def test_without_the_tableau_four_cards_are_enough(hand: list[str]) -> None:
    """With the tableau off, a hand is an Answer exactly when the first four cards are there."""
    result = classify(Game.BACCARAT, frame(hand), ROUND, baccarat_tableau=False)
    assert isinstance(result, Answer) == all(hand[:4])


@FAST
@given(st.binary(max_size=40))
def test_shaker_state_is_text_or_malformed_input(payload: bytes) -> None:
    """Any shaker payload is read as its stripped text or raises MalformedInput, nothing else."""
    try:
        state = parse_shaker_state(payload)
    except MalformedInput:
        return
    assert len(payload) <= MAX_SHAKER_BYTES
    assert state == payload.decode("ascii").strip()
    assert state and state.isprintable()


@FAST
@given(st.sampled_from(["S0", "S1", "S2", "S90"]), st.sampled_from(["", " ", "\n", "\r\n"]))
def test_documented_shaker_states_are_read(state: str, padding: str) -> None:
    """The documented states are read back, whatever whitespace surrounds them."""
    assert parse_shaker_state((padding + state + padding).encode()) == state
