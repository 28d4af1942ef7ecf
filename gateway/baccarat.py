"""The punto banco tableau: when a Baccarat hand is final, still being dealt, or impossible.

Pure functions, no I/O. An IDP streams a hand as it is dealt (2 cards, 4 cards, then any
third cards), so ``protocol.classify`` asks :func:`judge` whether a frame's hand is the
final one before it calls it an answer. The rules (``IDP-PROTOCOL.md``):

- card points: A = 1, 2-9 face value, 10/J/Q/K = 0; a total is the sum mod 10;
- a natural (player or banker 8 or 9 on two cards) stands, for both sides;
- otherwise the player draws on 0-5 and stands on 6-7;
- if the player stood, the banker draws on 0-5 and stands on 6-7;
- if the player drew, the banker draws on 0-2, on 3 unless the player's third card is an
  8, on 4 if it is 2-7, on 5 if 4-7, on 6 if 6-7, and never on 7.

Cards are given in the wire order player1, banker1, player2, banker2, player3, banker3,
each already validated as rank + suit or ``""`` (not dealt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SLOTS = ("player 1", "banker 1", "player 2", "banker 2", "player 3", "banker 3")
FIRST_FOUR = 4
_FACE_POINTS = {"10": 0, "J": 0, "Q": 0, "K": 0, "A": 1}


@dataclass(frozen=True)
class Final:
    """The hand is complete: no further card may be dealt."""


@dataclass(frozen=True)
class Dealing:
    """The hand is legal so far but a card is still due; ``missing`` says which."""

    missing: str


@dataclass(frozen=True)
class Forbidden:
    """The tableau rules this hand out; ``rule`` names the rule it breaks."""

    rule: str


Verdict = Final | Dealing | Forbidden


def points(card: str) -> int:
    """The points of one card (rank + suit): A = 1, 2-9 face value, 10/J/Q/K = 0."""
    rank = card[:-1]
    return _FACE_POINTS[rank] if rank in _FACE_POINTS else int(rank)


def total(*cards: str) -> int:
    """The points of a side's cards, mod 10."""
    return sum(points(c) for c in cards) % 10


def player_draws(player_total: int) -> bool:
    """Whether the player (no natural on either side) takes a third card."""
    return player_total <= 5


def banker_draws(banker_total: int, player_third: int | None) -> bool:
    """Whether the banker (no natural on either side) takes a third card.

    ``player_third`` is the points of the player's third card, None if the player stood.
    """
    if player_third is None:
        return banker_total <= 5
    if banker_total <= 2:
        return True
    if banker_total == 3:
        return player_third != 8
    if banker_total == 4:
        return 2 <= player_third <= 7
    if banker_total == 5:
        return 4 <= player_third <= 7
    if banker_total == 6:
        return 6 <= player_third <= 7
    return False


def judge(cards: Sequence[str]) -> Verdict:
    """Whether six validated cards (wire order, "" = not dealt) are final, dealing or forbidden."""
    p1, b1, p2, b2, p3, b3 = cards
    dealt = [bool(c) for c in cards]
    if not all(dealt[:FIRST_FOUR]):
        gap = dealt.index(False)
        later = [SLOTS[i] for i in range(gap + 1, len(SLOTS)) if dealt[i]]
        if later:
            return Forbidden(
                f"card after an empty slot: {', '.join(later)} dealt before {SLOTS[gap]} "
                "(the first four are dealt player 1, banker 1, player 2, banker 2)"
            )
        missing = ", ".join(SLOTS[gap:FIRST_FOUR])
        return Dealing(f"first four cards not all dealt (missing {missing})")
    player, banker = total(p1, p2), total(b1, b2)
    if player >= 8 or banker >= 8:
        side = f"player {player}" if player >= 8 else f"banker {banker}"
        if p3 or b3:
            thirds = " and ".join(s for s, c in (("player 3", p3), ("banker 3", b3)) if c)
            return Forbidden(f"third card after a natural ({side} on two cards): {thirds} dealt")
        return Final()
    if not player_draws(player):
        if p3:
            return Forbidden(f"player third card when the player stands on {player}")
        return _banker(banker, None, b3)
    if not p3:
        if b3:
            return Forbidden(
                f"banker third card while the player's third card is due (player {player} draws)"
            )
        return Dealing(f"player's third card due (player 3): player {player} draws on 0-5")
    return _banker(banker, points(p3), b3)


def _banker(banker: int, player_third: int | None, b3: str) -> Verdict:
    against = "the player standing" if player_third is None else f"player third card {player_third}"
    if banker_draws(banker, player_third):
        if b3:
            return Final()
        return Dealing(
            f"banker's third card due (banker 3): banker {banker} draws against {against}"
        )
    if b3:
        return Forbidden(f"banker third card when the banker stands on {banker} against {against}")
    return Final()
