"""Unit tests of the punto banco tableau as Detect applies it to Baccarat frames."""

from __future__ import annotations

import json
from itertools import cycle

import pytest

from gateway.protocol import Answer, BaccaratHand, Frame, Game, Invalid, NotYet, classify

ROUND = "BAC-001-20250101-120000"
# The banker's third-card rule when the player drew: banker total -> the points of the
# player's third card on which the banker draws (the printed tableau, row by row).
BANKER_DRAWS_ON = {
    0: "0123456789",
    1: "0123456789",
    2: "0123456789",
    3: "012345679",
    4: "234567",
    5: "4567",
    6: "67",
    7: "",
}


def rank(points: int) -> str:
    """A rank worth ``points`` (0 -> K, 1 -> A, 2-9 face value)."""
    return {0: "K", 1: "A"}.get(points, str(points))


def hand(*ranks: str) -> list[str]:
    """Six wire cards from up to six ranks ("" = not dealt), suits assigned in turn."""
    suits = cycle("CDHS")
    cards = [r + next(suits) if r else "" for r in ranks]
    return cards + [""] * (6 - len(cards))


def two(total: int) -> tuple[str, str]:
    """Two ranks whose points add up to ``total`` (mod 10)."""
    return "10", rank(total)


def deal(player: int, banker: int, p3: str = "", b3: str = "") -> list[str]:
    """A hand whose sides total ``player`` and ``banker`` on two cards, plus third cards."""
    (p1, p2), (b1, b2) = two(player), two(banker)
    return hand(p1, b1, p2, b2, p3, b3)


def judge(cards: list[str], *, tableau: bool = True) -> Frame:
    """Classify ``cards`` as the result frame of the awaited round."""
    payload = json.dumps(
        {"response": "result", "arg": {"round_id": ROUND, "res": cards, "err": 0}}
    ).encode()
    return classify(Game.BACCARAT, payload, ROUND, baccarat_tableau=tableau)


def answer(cards: list[str]) -> Answer:
    """The Answer a final hand is."""
    c = tuple(cards)
    return Answer(ROUND, BaccaratHand((c[0], c[1], c[2], c[3], c[4], c[5])))


def reason(frame: Frame) -> str:
    """The reason of a NotYet or Invalid frame (fails the test for anything else)."""
    assert isinstance(frame, NotYet | Invalid), frame
    return frame.reason


# --- naturals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("player", "banker"),
    [(8, 0), (9, 5), (9, 7), (0, 8), (6, 9), (5, 9), (8, 8), (9, 8), (8, 9), (9, 9)],
)
def test_a_natural_stands_for_both_sides(player: int, banker: int) -> None:
    """A player or banker 8 or 9 on two cards ends the hand on four cards."""
    cards = deal(player, banker)
    assert judge(cards) == answer(cards)


@pytest.mark.parametrize(
    ("p3", "b3", "named"),
    [("5", "", "player 3"), ("", "5", "banker 3"), ("5", "5", "player 3 and banker 3")],
)
@pytest.mark.parametrize(("player", "banker"), [(8, 2), (1, 9), (9, 9)])
def test_a_third_card_after_a_natural_is_invalid(
    player: int, banker: int, p3: str, b3: str, named: str
) -> None:
    """Any third card dealt after a natural breaks the tableau and is never an answer."""
    frame = judge(deal(player, banker, p3, b3))
    assert isinstance(frame, Invalid)
    assert "third card after a natural" in frame.reason
    assert named in frame.reason


# --- the player's rule ----------------------------------------------------------------------


@pytest.mark.parametrize("player", range(6))
def test_the_player_draws_on_0_to_5(player: int) -> None:
    """Four cards with the player on 0-5 are not yet the result: player 3 is due."""
    frame = judge(deal(player, 7))
    assert isinstance(frame, NotYet)
    assert "player's third card due (player 3)" in frame.reason


@pytest.mark.parametrize("player", [6, 7])
def test_the_player_stands_on_6_and_7(player: int) -> None:
    """The player stands on 6-7; with the banker standing on 7 the four cards are final."""
    cards = deal(player, 7)
    assert judge(cards) == answer(cards)


@pytest.mark.parametrize("player", [6, 7])
@pytest.mark.parametrize("banker", [0, 6, 7])
def test_a_player_third_card_when_the_player_stands_is_invalid(player: int, banker: int) -> None:
    """A player third card on 6-7 breaks the tableau."""
    frame = judge(deal(player, banker, "4"))
    assert isinstance(frame, Invalid)
    assert "player third card when the player stands" in frame.reason


# --- the banker's rule when the player stood --------------------------------------------


@pytest.mark.parametrize("player", [6, 7])
@pytest.mark.parametrize("banker", range(6))
def test_after_the_player_stood_the_banker_draws_on_0_to_5(player: int, banker: int) -> None:
    """The player stood and the banker has 0-5: banker 3 is due, then the hand is final."""
    frame = judge(deal(player, banker))
    assert isinstance(frame, NotYet)
    assert "banker's third card due (banker 3)" in frame.reason
    cards = deal(player, banker, "", "9")
    assert judge(cards) == answer(cards)


@pytest.mark.parametrize("player", [6, 7])
@pytest.mark.parametrize("banker", [6, 7])
def test_after_the_player_stood_the_banker_stands_on_6_and_7(player: int, banker: int) -> None:
    """Both standing: four cards are final and a banker third card breaks the tableau."""
    cards = deal(player, banker)
    assert judge(cards) == answer(cards)
    frame = judge(deal(player, banker, "", "2"))
    assert isinstance(frame, Invalid)
    assert "banker third card when the banker stands" in frame.reason


# --- the banker's rule when the player drew ---------------------------------------------


@pytest.mark.parametrize("third", range(10))
@pytest.mark.parametrize("banker", range(8))
def test_the_banker_follows_the_tableau_against_the_players_third_card(
    banker: int, third: int
) -> None:
    """For each banker total and player third card, banker 3 is due or forbidden as printed."""
    without, with_b3 = deal(4, banker, rank(third)), deal(4, banker, rank(third), "Q")
    if str(third) in BANKER_DRAWS_ON[banker]:
        assert "banker's third card due (banker 3)" in reason(judge(without))
        assert isinstance(judge(without), NotYet)
        assert judge(with_b3) == answer(with_b3)
    else:
        assert judge(without) == answer(without)
        frame = judge(with_b3)
        assert isinstance(frame, Invalid)
        assert "banker third card when the banker stands" in frame.reason


def test_the_banker_third_card_before_the_players_is_invalid() -> None:
    """A banker third card while the player's third card is still due breaks the tableau."""
    frame = judge(deal(3, 2, "", "5"))
    assert isinstance(frame, Invalid)
    assert "banker third card while the player's third card is due" in frame.reason


# --- the first four cards ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cards", "missing"),
    [
        (hand("K"), "banker 1"),
        (hand("K", "8"), "player 2"),
        (hand("K", "8", "10"), "banker 2"),
    ],
    ids=["1-card", "2-cards", "3-cards"],
)
def test_a_hand_short_of_four_cards_is_not_yet(cards: list[str], missing: str) -> None:
    """Fewer than the first four cards, dealt in order, is not yet a result; names what is due."""
    frame = judge(cards)
    assert isinstance(frame, NotYet)
    assert missing in frame.reason


def test_no_cards_is_not_yet() -> None:
    """An empty table (six empty slots) is not yet a result."""
    assert isinstance(judge(hand()), NotYet)


@pytest.mark.parametrize(
    "cards",
    [
        hand("", "8", "10", "A"),
        hand("K", "", "10", "A"),
        hand("K", "8", "", "A"),
        hand("K", "8", "10", "", "5"),
        hand("K", "8", "10", "", "", "5"),
        hand("", "", "", "", "5"),
    ],
    ids=[
        "no-player-1",
        "no-banker-1",
        "no-player-2",
        "player-3-before-banker-2",
        "banker-3-before-banker-2",
        "only-player-3",
    ],
)
def test_a_card_after_an_empty_slot_is_invalid(cards: list[str]) -> None:
    """A card dealt after a gap in P1, B1, P2, B2 order breaks the dealing order."""
    frame = judge(cards)
    assert isinstance(frame, Invalid)
    assert "card after an empty slot" in frame.reason


# --- a hand as the IDP streams it -------------------------------------------------------


@pytest.mark.parametrize(
    "final",
    [
        hand("2", "2", "3", "2", "5", "Q"),  # player 5 draws a 5; banker 4 draws on it
        hand("2", "4", "3", "3", "5"),  # player 5 draws; banker 7 stands
        hand("3", "2", "3", "2", "", "9"),  # player 6 stands; banker 4 draws
        hand("10", "6", "J", "2"),  # banker natural 8
    ],
    ids=["both-third-cards", "player-third-only", "banker-third-only", "natural"],
)
def test_the_stages_of_a_dealt_hand_are_not_yet_then_the_answer(final: list[str]) -> None:
    """2 cards, 4 cards, then the player's third card are not yet; the final hand is the answer."""
    stages = [final[:n] + [""] * (6 - n) for n in (2, 4, 5)]
    for stage in (s for s in stages if s != final):
        assert isinstance(judge(stage), NotYet), stage
    assert judge(final) == answer(final)


def test_the_documented_example_hand_is_final() -> None:
    """The protocol notes' example (banker natural 9) is an answer."""
    cards = ["KD", "8S", "10H", "AC", "", ""]
    assert judge(cards) == answer(cards)


# --- tables that deal by other rules ------------------------------------------------------


def test_without_the_tableau_four_cards_are_the_answer() -> None:
    """With the tableau off, the first frame with the four first cards is the answer."""
    cards = deal(4, 3)
    assert isinstance(judge(cards), NotYet)
    assert judge(cards, tableau=False) == answer(cards)


@pytest.mark.parametrize(
    "cards",
    [deal(9, 1, "5"), deal(6, 7, "3", "3"), deal(3, 2, "", "5")],
    ids=["third-after-natural", "both-stand-both-draw", "banker-before-player"],
)
def test_without_the_tableau_any_hand_with_four_cards_is_the_answer(cards: list[str]) -> None:
    """With the tableau off, hands the tableau forbids are answers, as before."""
    assert isinstance(judge(cards), Invalid)
    assert judge(cards, tableau=False) == answer(cards)


@pytest.mark.parametrize(
    "cards",
    [hand(), hand("K", "8", "10"), hand("K", "", "10", "A")],
    ids=["no-cards", "3-cards", "gap"],
)
def test_without_the_tableau_fewer_than_four_cards_are_not_yet(cards: list[str]) -> None:
    """With the tableau off, a hand without all of the first four cards is not yet a result."""
    assert isinstance(judge(cards, tableau=False), NotYet)


def test_without_the_tableau_bad_cards_are_still_invalid() -> None:
    """With the tableau off, a card that is not rank+suit is still a device fault."""
    assert isinstance(judge(["KD", "8S", "10H", "1X", "", ""], tableau=False), Invalid)
