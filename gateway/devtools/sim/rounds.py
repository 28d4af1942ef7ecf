"""The round script: which frames a simulated IDP publishes for one ``detect``, and when.

Every round has a deterministic valid answer, :func:`derive_result`, computed from the
round id alone, so a test knows what the gateway must return without asking the simulator.
A Baccarat hand is dealt from a shoe derived from the round id by the punto banco tableau
(written out here again, independently of ``gateway.baccarat``, so the simulator checks the
gateway rather than agreeing with it). :func:`play_round` then follows the table's
:class:`Behaviour`: prelude frames (not yet, stale, wrong round, garbage, oversize, early
empty), the hand as it is dealt, and the final answer, repeated or streamed, each frame
handed to a ``publish`` callback that says whether any broker took it. The script knows
nothing of MQTT.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

from gateway.devtools.sim.devices import Behaviour, SimTable

log = logging.getLogger(__name__)

PublishFrame = Callable[[bytes, bool], Awaitable[bool]]
"""Publishes one IDP frame (``final`` or not); False once the round must stop."""

_RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
_SUITS = "CDHS"
_ZERO_POINTS = ("10", "J", "Q", "K")
_OVERSIZE_PAD = 1 << 20
# What an IDP sends for the current round before it has read anything (never a result).
_EARLY_EMPTY: dict[str, object] = {
    "sicbo": [],
    "roulette": None,
    "baccarat": ["", "", "", "", "", ""],
}
_OUT_OF_RANGE: dict[str, object] = {
    "sicbo": [0, 7, 3],
    "roulette": 37,
    "baccarat": ["1X", "KZ", "AC", "QQ", "", ""],
}


def derive_result(game: str, round_id: str) -> object:
    """The deterministic valid ``res`` the simulated IDP reports for a round.

    A Baccarat hand is dealt from a shoe derived from the round id, drawing third cards by
    the punto banco tableau, so it is always final and legal.
    """
    h = hashlib.sha256(round_id.encode()).digest()
    if game == "sicbo":
        return [b % 6 + 1 for b in h[:3]]
    if game == "roulette":
        return int.from_bytes(h[:4], "big") % 37
    shoe = [_RANKS[h[2 * i] % 13] + _SUITS[h[2 * i + 1] % 4] for i in range(6)]
    return _deal_hand(shoe)


def _card_points(card: str) -> int:
    rank = card[:-1]
    return 0 if rank in _ZERO_POINTS else 1 if rank == "A" else int(rank)


def _deal_hand(shoe: list[str]) -> list[str]:
    """Player 1, banker 1, player 2, banker 2 from the shoe, then third cards as the tableau
    says (player 3 from shoe[4], banker 3 from shoe[5])."""
    p1, b1, p2, b2, p3, b3 = shoe
    player = (_card_points(p1) + _card_points(p2)) % 10
    banker = (_card_points(b1) + _card_points(b2)) % 10
    if player >= 8 or banker >= 8:
        return [p1, b1, p2, b2, "", ""]
    third: int | None = None
    if player <= 5:
        third = _card_points(p3)
    else:
        p3 = ""
    if third is None:
        draws = banker <= 5
    else:
        draws = {
            0: True,
            1: True,
            2: True,
            3: third != 8,
            4: 2 <= third <= 7,
            5: 4 <= third <= 7,
            6: third in (6, 7),
        }.get(banker, False)
    return [p1, b1, p2, b2, p3, b3 if draws else ""]


def _deal_stages(res: object) -> list[list[str]]:
    """The frames a Baccarat IDP sends while dealing ``res``: 2 cards, 4 cards, then the
    player's third card alone; only stages that differ from ``res`` and from each other."""
    if not isinstance(res, list) or len(res) != 6 or not all(isinstance(c, str) for c in res):
        return []
    stages: list[list[str]] = []
    for shown in (2, 4, 5):
        stage = [c if i < shown else "" for i, c in enumerate(res)]
        if stage != res and stage not in stages and any(stage):
            stages.append(stage)
    return stages


def describe_frame(payload: bytes) -> tuple[str | None, object, int | None]:
    """``(round_id, res, err)`` of a published frame, None where it has no such field.

    What the simulator records of each frame in its ``sent`` log.
    """
    try:
        doc = json.loads(payload)
    except ValueError:
        return None, None, None
    arg = doc.get("arg") if isinstance(doc, dict) else None
    if not isinstance(arg, dict):
        return None, None, None
    rid, err = arg.get("round_id"), arg.get("err")
    return (
        rid if isinstance(rid, str) else None,
        arg.get("res"),
        err if isinstance(err, int) and not isinstance(err, bool) else None,
    )


def _frame(arg: dict[str, object]) -> bytes:
    return json.dumps({"response": "result", "arg": arg}).encode()


def _garbage(game: str, round_id: str, i: int) -> bytes:
    """Malformed frame number ``i``: not JSON, a list, no "arg", res mistyped, res invalid."""
    valid, kind = derive_result(game, round_id), i % 5
    if kind < 3:
        return [
            b'{"response": "result", "arg": {not json',
            json.dumps(["result", {"round_id": round_id, "res": valid}]).encode(),
            json.dumps({"response": "result", "round_id": round_id, "res": valid}).encode(),
        ][kind]
    res = json.dumps(valid) if kind == 3 else _OUT_OF_RANGE[game]
    return _frame({"round_id": round_id, "res": res, "err": 0})


def _other_result(game: str, round_id: str, final: object) -> object:
    salt = 0
    while (res := derive_result(game, f"{round_id}#other{salt}")) == final:
        salt += 1
    return res


def _prelude(game: str, rid: str, previous: str, b: Behaviour, final: object) -> Iterator[bytes]:
    yield from [_frame({"res": None, "err": -1})] * b.not_yet
    stale = {"round_id": previous, "res": derive_result(game, previous), "err": 0}
    yield from [_frame(stale)] * b.stale
    for _ in range(b.wrong_round):
        other = f"{rid}-other-{uuid.uuid4().hex[:8]}"
        yield _frame({"round_id": other, "res": derive_result(game, other), "err": 0})
    for i in range(b.garbage):
        yield _garbage(game, rid, i)
    for _ in range(b.oversize):
        yield _frame(
            {
                "round_id": rid,
                "res": _other_result(game, rid, final),
                "err": 0,
                "pad": "x" * _OVERSIZE_PAD,
            }
        )
    yield from [_frame({"round_id": rid, "res": _EARLY_EMPTY[game], "err": 0})] * b.early_empty


async def play_round(
    publish: PublishFrame, table: SimTable, rid: str, previous: str, b: Behaviour, via: str
) -> None:
    """Publish round ``rid``'s frames as ``b`` scripts them, until ``publish`` says stop.

    ``previous`` is the round id stale frames carry; ``via`` names the brokers, for the log.
    """
    start, code = time.monotonic(), table.table_code
    if b.answer == "error":
        final: dict[str, object] = {
            "round_id": rid,
            "res": [] if table.game == "sicbo" else None,
            "err": b.err,
        }
    else:
        res = derive_result(table.game, rid) if b.result is None else b.result
        final = {"round_id": rid, "res": res, "err": 0}
    for frame in _prelude(table.game, rid, previous, b, final["res"]):
        if not await publish(frame, False):
            return
    dealing = b.deal and b.answer == "result" and table.game == "baccarat"
    stages = _deal_stages(final["res"]) if dealing else []
    for i, stage in enumerate(stages, start=1):
        at = start + b.delay_s * i / (len(stages) + 1)
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if not await publish(_frame({"round_id": rid, "res": stage, "err": 0}), False):
            return
    await asyncio.sleep(max(0.0, b.delay_s - (time.monotonic() - start)))
    if b.answer == "silence":
        log.info("IDP %s stays silent on %s", code, rid)
        return
    payload, sent = _frame(final), 0
    while sent < b.repeats or b.stream_interval_s > 0:
        if sent >= b.repeats:
            await asyncio.sleep(b.stream_interval_s)
        if not await publish(payload, True):
            return
        sent += 1
        log.info(
            "IDP %s answered %s: res=%r err=%s (#%d via %s)",
            code,
            rid,
            final["res"],
            final["err"],
            sent,
            via,
        )
