"""Baccarat as the IDP deals it: real mosquitto, the device simulator, a real sidecar."""

from __future__ import annotations

from itertools import count

import pytest

from gateway.client import RoundTimedOut
from gateway.devtools.sandbox import MosquittoProcess
from gateway.devtools.sim import derive_result
from gateway.protocol import BaccaratHand
from tests.integration.harness import Stack, expected


def hand(cards: list[str]) -> BaccaratHand:
    """The client's view of six wire cards."""
    c = tuple(cards)
    return BaccaratHand((c[0], c[1], c[2], c[3], c[4], c[5]))


async def sent_for(s: Stack, round_id: str) -> list[tuple[object, bool]]:
    """(res, final) of every frame the simulated IDP published for ``round_id``."""
    await s.sim.wait_for_final(round_id)
    return [(f.res, f.final) for f in s.sim.sent if f.round_id == round_id]


@pytest.mark.parametrize(
    ("final", "stages"),
    [
        (
            ["2D", "2S", "3H", "2C", "5C", "QS"],  # player 5 draws a 5; banker 4 draws on it
            [
                ["2D", "2S", "", "", "", ""],
                ["2D", "2S", "3H", "2C", "", ""],
                ["2D", "2S", "3H", "2C", "5C", ""],
            ],
        ),
        (
            ["2D", "4S", "3H", "3C", "5C", ""],  # player 5 draws; banker 7 stands
            [["2D", "4S", "", "", "", ""], ["2D", "4S", "3H", "3C", "", ""]],
        ),
    ],
    ids=["both-third-cards", "player-third-card"],
)
async def test_a_dealt_hand_is_answered_only_when_final(
    broker: MosquittoProcess, final: list[str], stages: list[list[str]]
) -> None:
    """The IDP streams 2, 4, 5 cards; Detect returns the final hand, the stages count as not-yet."""
    async with Stack([broker], "baccarat") as s:
        s.behave(result=final, delay_s=0.3)
        d = await s.client.detect("BAC-001-deal-1", deadline_s=5)
        assert d.result == hand(final)
        assert d.frames_seen == len(stages) + 1
        c = (await s.client.health()).counters
        assert (c.not_yet_frames, c.invalid_frames, c.detects_ok) == (len(stages), 0, 1)
        sent = await sent_for(s, "BAC-001-deal-1")
        assert sent[: len(stages) + 1] == [*((st, False) for st in stages), (final, True)]


async def test_the_simulated_idp_deals_its_own_hands_by_the_tableau(
    broker: MosquittoProcess,
) -> None:
    """A derived hand with a player third card is answered whole, after its dealing frames."""
    round_id = next(
        r
        for r in (f"BAC-001-deal-{i}" for i in count())
        if derive_result("baccarat", r)[4]  # type: ignore[index]
    )
    async with Stack([broker], "baccarat") as s:
        s.behave(delay_s=0.2)
        d = await s.client.detect(round_id, deadline_s=5)
        assert d.result == expected("baccarat", round_id)
        dealing = [res for res, final in await sent_for(s, round_id) if not final]
        assert len(dealing) >= 2
        assert (await s.client.health()).counters.not_yet_frames == len(dealing)


async def test_a_third_card_after_a_natural_is_never_a_result(broker: MosquittoProcess) -> None:
    """A device that deals a third card after a natural gets no result, and the frame counts."""
    async with Stack([broker], "baccarat") as s:
        s.behave(result=["9H", "KD", "KS", "2C", "5D", ""], deal=False)
        with pytest.raises(RoundTimedOut) as info:
            await s.client.detect("BAC-001-natural", deadline_s=0.6)
        assert "1 invalid" in (info.value.details() or "")
        assert "third card after a natural" in (info.value.details() or "")
        assert (await s.client.health()).counters.invalid_frames == 1
        await s.sim.wait_for_command(s.code, "timeout", timeout=2)


async def test_a_banker_card_before_the_players_is_never_a_result(
    broker: MosquittoProcess,
) -> None:
    """A banker third card while the player's is due is invalid, after two not-yet stages."""
    async with Stack([broker], "baccarat") as s:
        s.behave(result=["2D", "KS", "3H", "KC", "", "5D"], delay_s=0.1)
        with pytest.raises(RoundTimedOut):
            await s.client.detect("BAC-001-early-banker", deadline_s=0.8)
        c = (await s.client.health()).counters
        assert (c.not_yet_frames, c.invalid_frames, c.detects_ok) == (2, 1, 0)


async def test_without_the_tableau_the_four_card_frame_is_the_answer(
    broker: MosquittoProcess,
) -> None:
    """A table with baccarat_tableau off answers with the first frame holding four cards."""
    async with Stack([broker], "baccarat", baccarat_tableau=False) as s:
        s.behave(result=["2D", "4S", "3H", "3C", "5C", ""], delay_s=0.3)
        d = await s.client.detect("BAC-001-four", deadline_s=5)
        assert d.result == hand(["2D", "4S", "3H", "3C", "", ""])
        assert (await s.client.health()).counters.not_yet_frames == 1
