"""Simulator of the studio devices (one IDP per table, the SicBo dice shaker) over real MQTT.

It stands on the *device* side of the brokers and speaks the wire contract of IDP-PROTOCOL.md,
so it imports nothing from the ``gateway`` package. Integration tests run it in-process as an
asyncio task; ``gateway sim`` / ``gateway demo`` run it from the CLI. Device misbehaviour (stale,
garbage, oversize frames, silence, streams, shaker faults) is scripted per table so tests can
prove the gateway survives it. A Baccarat IDP deals its hands by the punto banco tableau and,
like the real device, publishes the hand as it is dealt before the final frame. ``sent``
records every frame the IDPs published, so tests can check an answer against what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiomqtt

from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

GAMES = ("sicbo", "baccarat", "roulette")
ANSWERS = ("result", "error", "silence")
ANSWER_ON = ("same", "all")
_RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
_SUITS = "CDHS"
_ZERO_POINTS = ("10", "J", "Q", "K")
_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.05, 0.5
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


@dataclass(frozen=True)
class SimBroker:
    """A broker the simulated devices connect to (every device is on every broker)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", f"{self.host}:{self.port}")


@dataclass(frozen=True)
class SimTable:
    """One table's IDP topics and, for SicBo, its shaker's plain-text topics."""

    game: str
    table_code: str
    command_topic: str
    response_topic: str
    shaker_listens: str | None = None
    shaker_says: str | None = None

    def __post_init__(self) -> None:
        if self.game not in GAMES:
            raise ValueError(f"unknown game {self.game!r}, expected one of {GAMES}")
        if (self.shaker_listens is None) != (self.shaker_says is None):
            raise ValueError("shaker_listens and shaker_says go together")


@dataclass
class Behaviour:
    """How a table's IDP answers its next ``detect`` commands.

    After the detect, prelude frames go out in field order (not_yet: err -1 without round_id;
    stale: previous round id; wrong_round: made-up id; garbage: malformed; oversize: ~1 MiB;
    early_empty: err 0 with empty res), then after ``delay_s`` the final answer (a result,
    ``err``, or nothing) ``repeats`` times, then every ``stream_interval_s`` (if > 0) until
    ``timeout`` or the next detect. ``answer_on`` "same" answers on the command's broker only,
    "all" on every connected broker.

    With ``deal`` a Baccarat IDP answering a result first publishes the hand as it is dealt
    (2 cards, 4 cards, then the player's third card if the final hand has both third
    cards), spread over ``delay_s``; each stage that differs from the final hand is sent once.
    """

    delay_s: float = 0.05
    answer: str = "result"
    err: int = -3
    result: object | None = None
    not_yet: int = 0
    stale: int = 0
    wrong_round: int = 0
    garbage: int = 0
    oversize: int = 0
    early_empty: int = 0
    repeats: int = 1
    stream_interval_s: float = 0
    answer_on: str = "same"
    deal: bool = True

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS or self.answer_on not in ANSWER_ON:
            raise ValueError(f"bad answer={self.answer!r} or answer_on={self.answer_on!r}")


@dataclass(frozen=True)
class ReceivedCommand:
    """A command a simulated device received: parsed JSON, raw bytes, or shaker text."""

    broker: str
    table_code: str
    payload: object
    at: float

    @property
    def command(self) -> str | None:
        """IDP command name, or the shaker path ("/state", "/cycle")."""
        if isinstance(self.payload, str):
            return urlsplit(self.payload).path.rstrip("/") or self.payload
        if isinstance(self.payload, dict):
            name = self.payload.get("command")
            return name if isinstance(name, str) else None
        return None

    @property
    def round_id(self) -> str | None:
        """``arg.round_id`` of an IDP command, if any."""
        arg = self.payload.get("arg") if isinstance(self.payload, dict) else None
        rid = arg.get("round_id") if isinstance(arg, dict) else None
        return rid if isinstance(rid, str) else None


@dataclass(frozen=True)
class SentFrame:
    """A frame a simulated IDP published, once per broker that took it.

    ``round_id``, ``res`` and ``err`` are read from the frame's ``arg`` (None where the frame
    is not a JSON object or has no such field); ``final`` marks the answer the IDP ends the
    round with (a result or an error code, repeats included), never prelude or deal frames.
    """

    table_code: str
    round_id: str | None
    res: object
    err: int | None
    final: bool
    broker: str
    at: float


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


def _describe(payload: bytes) -> tuple[str | None, object, int | None]:
    """``(round_id, res, err)`` of a published frame, None where it has no such field."""
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


def _raise_if_cancelled() -> None:
    # Python 3.11's asyncio.wait_for (inside aiomqtt) can swallow a cancellation.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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


class _ServerNameContext(ssl.SSLContext):
    """Client TLS context that checks the broker certificate against ``server_name``
    instead of the dialled host (paho always passes the host as server_hostname)."""

    server_name: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            self.server_name or server_hostname,
            session,
        )


def _tls_context(broker: SimBroker) -> ssl.SSLContext | None:
    if broker.ca_file is None:
        return None
    ctx = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = broker.server_name
    ctx.load_verify_locations(cafile=broker.ca_file)
    if broker.client_cert:
        ctx.load_cert_chain(broker.client_cert, broker.client_key)
    return ctx


@dataclass(frozen=True)
class _Origin:
    broker: str
    client: aiomqtt.Client


class IdpSimulator:
    """The IDPs of ``tables`` and their shakers, connected to every broker at once.

    ``behaviours`` (per table code) overrides the default ``behaviour``;
    ``shaker_fault`` / ``shaker_silent`` (per table code) script the shakers, and
    ``shaker_state`` holds each shaker's current state. ``commands`` records every
    command received, in arrival order; ``sent`` every frame the IDPs published (not the
    shakers' states), once per broker that took it, in publish order.
    """

    def __init__(
        self,
        brokers: Sequence[SimBroker],
        tables: Sequence[SimTable],
        behaviour: Behaviour | None = None,
        *,
        client_prefix: str = "idp-sim",
        shake_time_scale: float = 1.0,
    ) -> None:
        if len({b.id for b in brokers}) != len(brokers) or not brokers:
            raise ValueError("need at least one broker, with unique ids")
        self.brokers = tuple(brokers)
        self.tables = {t.table_code: t for t in tables}
        self.default_behaviour = behaviour or Behaviour()
        self.behaviours: dict[str, Behaviour] = {}
        self.shake_time_scale = shake_time_scale
        shakers = [t.table_code for t in tables if t.shaker_listens]
        self.shaker_fault: dict[str, bool] = dict.fromkeys(shakers, False)
        self.shaker_silent: dict[str, bool] = dict.fromkeys(shakers, False)
        self.shaker_state: dict[str, str] = dict.fromkeys(shakers, "S0")
        self.commands: list[ReceivedCommand] = []
        self.sent: list[SentFrame] = []
        self._client_id = f"{client_prefix}-{uuid.uuid4().hex[:10]}"
        self._routes: dict[str, tuple[SimTable, bool]] = {}
        for t in tables:
            for topic, is_shaker in ((t.command_topic, False), (t.shaker_listens, True)):
                if topic is not None and self._routes.setdefault(topic, (t, is_shaker))[0] != t:
                    raise ValueError(f"topic {topic!r} used by two tables")
        self._clients: dict[str, aiomqtt.Client] = {}
        self._ready = {b.id: asyncio.Event() for b in brokers}
        self._changed = asyncio.Condition()
        self._detections: dict[str, asyncio.Task[None]] = {}
        self._origins: dict[str, list[_Origin]] = {}  # brokers that carried the round, per table
        self._shakes: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rounds: dict[str, tuple[str | None, str | None]] = {}  # (previous, current)

    def set_behaviour(self, table_code: str, behaviour: Behaviour) -> None:
        """Script how ``table_code``'s IDP answers from its next ``detect`` on."""
        self.behaviours[table_code] = behaviour

    def behaviour_for(self, table_code: str) -> Behaviour:
        """The behaviour in force for a table (its override, else the default)."""
        return self.behaviours.get(table_code, self.default_behaviour)

    @property
    def connected(self) -> set[str]:
        """Ids of the brokers currently connected and subscribed."""
        return {bid for bid, ev in self._ready.items() if ev.is_set()}

    async def wait_for_command(
        self,
        table_code: str,
        command: str,
        *,
        round_id: str | None = None,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> ReceivedCommand:
        """Wait until ``count`` matching commands were received (ever); return the
        ``count``-th. ``command`` is "detect"/"timeout" or a shaker path ("/cycle")."""

        def matching() -> list[ReceivedCommand]:
            return [
                c
                for c in self.commands
                if c.table_code == table_code
                and c.command == command
                and round_id in (None, c.round_id)
            ]

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(matching()) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"no {command!r} #{count} for {table_code} (round {round_id}) within {timeout}s"
            ) from None
        return matching()[count - 1]

    async def wait_for_final(self, round_id: str, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until a final frame for ``round_id`` is in ``sent``.

        A frame is recorded once its broker acknowledged it, which can be after the
        sidecar already answered with it.
        """
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(
                    lambda: any(f.round_id == round_id and f.final for f in self.sent)
                )
        except TimeoutError:
            raise TimeoutError(f"no final frame for {round_id} within {timeout}s") from None

    async def wait_connected(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until every broker is connected and subscribed (SUBACK received)."""
        try:
            async with asyncio.timeout(timeout):
                for event in self._ready.values():
                    await event.wait()
        except TimeoutError:
            missing = sorted(set(self._ready) - self.connected)
            raise TimeoutError(f"brokers not connected after {timeout}s: {missing}") from None

    async def run(self) -> None:
        """Run the devices until cancelled: one supervised connection per broker."""
        try:
            async with asyncio.TaskGroup() as tg:
                for index, broker in enumerate(self.brokers):
                    tg.create_task(self._supervise(broker, f"{self._client_id}-{index}"))
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, broker: SimBroker, identifier: str) -> None:
        backoff, tls = _BACKOFF_MIN_S, _tls_context(broker)
        while True:
            client = aiomqtt.Client(
                broker.host,
                broker.port,
                username=broker.username,
                password=broker.password,
                identifier=identifier,
                tls_context=tls,
                socket_options=_NODELAY,
                keepalive=5,
                timeout=5,
            )
            try:
                async with client:
                    _raise_if_cancelled()
                    if self._routes:
                        await client.subscribe([(t, 1) for t in self._routes])
                    _raise_if_cancelled()
                    self._clients[broker.id] = client
                    self._ready[broker.id].set()
                    backoff = _BACKOFF_MIN_S
                    log.info("sim connected to %s as %s", broker.id, identifier)
                    async for message in client.messages:
                        await self._on_message(_Origin(broker.id, client), message)
            except aiomqtt.MqttError as exc:
                log.warning("sim lost %s (%s); retrying in %.1fs", broker.id, exc, backoff)
            finally:
                self._ready[broker.id].clear()
                if self._clients.get(broker.id) is client:
                    del self._clients[broker.id]
            _raise_if_cancelled()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _on_message(self, origin: _Origin, message: aiomqtt.Message) -> None:
        route = self._routes.get(message.topic.value)
        if route is None:
            return
        table, is_shaker = route
        p = message.payload
        raw = bytes(p) if isinstance(p, bytes | bytearray) else str(p).encode()
        payload: object
        if is_shaker:
            payload = raw.decode("utf-8", "replace").strip()
        else:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw
        log.info("%s got %.200r via %s", table.table_code, payload, origin.broker)
        async with self._changed:
            self.commands.append(
                ReceivedCommand(origin.broker, table.table_code, payload, time.monotonic())
            )
            self._changed.notify_all()
        if isinstance(payload, str):
            self._on_shaker(origin, table, payload)
        else:
            self._on_idp(origin, table, payload)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_idp(self, origin: _Origin, table: SimTable, doc: object) -> None:
        code = table.table_code
        name = doc.get("command") if isinstance(doc, dict) else None
        arg = doc.get("arg") if isinstance(doc, dict) else None
        if name == "timeout":
            if (task := self._detections.pop(code, None)) is not None:
                task.cancel()
            return
        if name != "detect":
            log.warning("IDP %s ignores command %.200r", code, doc)
            return
        rid = arg.get("round_id") if isinstance(arg, dict) else None
        if not isinstance(arg, dict) or not isinstance(rid, str) or not rid:
            log.warning("IDP %s ignores detect without arg.round_id", code)
            return
        if not isinstance(arg.get("input"), str):
            log.warning("IDP %s ignores detect %s: no arg.input stream to read", code, rid)
            return
        if table.game == "sicbo" and not isinstance(arg.get("output"), str):
            log.warning("IDP %s: detect %s has no arg.output stream", code, rid)
        previous, current = self._rounds.get(code, (None, None))
        if rid != current:
            previous = current
            self._rounds[code] = (previous, rid)
            self._origins[code] = []
        # The same round again through another broker (a gateway re-publishing after a
        # broker switch, possibly delivered out of order): answer on every broker that
        # carried it, so a late copy through a dying broker cannot strand the answer.
        origins = [o for o in self._origins.get(code, []) if o.broker != origin.broker]
        self._origins[code] = [*origins, origin]
        if (task := self._detections.pop(code, None)) is not None:
            task.cancel()
        self._detections[code] = self._spawn(
            self._detect(
                self._origins[code],
                table,
                rid,
                previous or f"{code}-stale",
                self.behaviour_for(code),
            )
        )

    def _prelude(
        self, game: str, rid: str, previous: str, b: Behaviour, final: object
    ) -> Iterator[bytes]:
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

    async def _detect(
        self, origins: list[_Origin], table: SimTable, rid: str, previous: str, b: Behaviour
    ) -> None:
        """Answer the round: on every broker that carried it, each on its own, so a broker
        that hangs holds back only its own copy of the frames (or on all brokers)."""
        if b.answer_on == "all":
            await self._stream(origins, table, rid, previous, b)
            return
        await asyncio.gather(*(self._stream([o], table, rid, previous, b) for o in origins))

    async def _stream(
        self, origins: list[_Origin], table: SimTable, rid: str, previous: str, b: Behaviour
    ) -> None:
        start, code, topic = time.monotonic(), table.table_code, table.response_topic
        if b.answer == "error":
            final: dict[str, object] = {
                "round_id": rid,
                "res": [] if table.game == "sicbo" else None,
                "err": b.err,
            }
        else:
            res = derive_result(table.game, rid) if b.result is None else b.result
            final = {"round_id": rid, "res": res, "err": 0}
        for frame in self._prelude(table.game, rid, previous, b, final["res"]):
            if not await self._publish_any(origins, topic, frame, b.answer_on, (code, False)):
                return
        dealing = b.deal and b.answer == "result" and table.game == "baccarat"
        stages = _deal_stages(final["res"]) if dealing else []
        for i, stage in enumerate(stages, start=1):
            at = start + b.delay_s * i / (len(stages) + 1)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            frame = _frame({"round_id": rid, "res": stage, "err": 0})
            if not await self._publish_any(origins, topic, frame, b.answer_on, (code, False)):
                return
        await asyncio.sleep(max(0.0, b.delay_s - (time.monotonic() - start)))
        if b.answer == "silence":
            log.info("IDP %s stays silent on %s", code, rid)
            return
        payload, sent = _frame(final), 0
        while sent < b.repeats or b.stream_interval_s > 0:
            if sent >= b.repeats:
                await asyncio.sleep(b.stream_interval_s)
            if not await self._publish_any(origins, topic, payload, b.answer_on, (code, True)):
                return
            sent += 1
            log.info(
                "IDP %s answered %s: res=%r err=%s (#%d via %s)",
                code,
                rid,
                final["res"],
                final["err"],
                sent,
                ",".join(o.broker for o in origins),
            )

    def _on_shaker(self, origin: _Origin, table: SimTable, text: str) -> None:
        code = table.table_code
        on = self.behaviour_for(code).answer_on
        path = urlsplit(text).path.rstrip("/")
        if path == "/state":
            self._spawn(self._say(origin, table, self.shaker_state[code], on))
        elif path == "/cycle":
            try:
                duration = float(parse_qs(urlsplit(text).query)["duration"][0])
            except (KeyError, ValueError):
                log.warning("shaker %s ignores cycle without duration: %r", code, text)
                return
            if (task := self._shakes.pop(code, None)) is not None:
                task.cancel()
            self._shakes[code] = self._spawn(self._shake(origin, table, duration, on))
        else:
            log.warning("shaker %s ignores %r", code, text)

    async def _shake(self, origin: _Origin, table: SimTable, duration: float, on: str) -> None:
        code = table.table_code
        self.shaker_state[code] = "S1"
        await self._say(origin, table, "S2", on)
        if self.shaker_silent[code]:
            log.info("shaker %s goes silent after S2", code)
            return
        await self._say(origin, table, "S1", on)
        await asyncio.sleep(duration * self.shake_time_scale)
        self.shaker_state[code] = "S90" if self.shaker_fault[code] else "S0"
        await self._say(origin, table, self.shaker_state[code], on)

    async def _say(self, origin: _Origin, table: SimTable, state: str, on: str) -> None:
        assert table.shaker_says is not None
        if await self._publish(origin, table.shaker_says, state.encode(), on):
            log.info("shaker %s says %s (via %s)", table.table_code, state, origin.broker)

    async def _publish_any(
        self,
        origins: list[_Origin],
        topic: str,
        payload: bytes,
        answer_on: str,
        record: tuple[str, bool],
    ) -> bool:
        """Publish an IDP frame through each origin (or all brokers); True if any got it out.

        ``record`` is (table code, final) for the :class:`SentFrame` of each broker that took it.
        """
        if answer_on == "all":
            return await self._publish(origins[-1], topic, payload, answer_on, record)
        results = await asyncio.gather(
            *(self._publish(o, topic, payload, answer_on, record) for o in origins)
        )
        return any(results)

    async def _publish(
        self,
        origin: _Origin,
        topic: str,
        payload: bytes,
        answer_on: str,
        record: tuple[str, bool] | None = None,
    ) -> bool:
        """Publish QoS 1; False when the command's broker is gone (answer_on "same")."""
        if answer_on == "all":
            targets = list(self._clients.items())
        elif self._clients.get(origin.broker) is origin.client:
            targets = [(origin.broker, origin.client)]
        else:
            log.info("sim drops frame for %s: broker %s is gone", topic, origin.broker)
            return False
        results = await asyncio.gather(
            *(c.publish(topic, payload, qos=1) for _, c in targets), return_exceptions=True
        )
        took: list[str] = []
        for (bid, _), result in zip(targets, results, strict=True):
            if isinstance(result, Exception):
                log.warning("sim publish on %s via %s failed: %s", topic, bid, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                took.append(bid)
        if record is not None and took:
            await self._record(payload, record, took)
        return answer_on != "same" or bool(took)

    async def _record(self, payload: bytes, record: tuple[str, bool], brokers: list[str]) -> None:
        (table_code, final), (rid, res, err) = record, _describe(payload)
        at = time.monotonic()
        async with self._changed:
            self.sent.extend(
                SentFrame(table_code, rid, res, err, final, broker, at) for broker in brokers
            )
            self._changed.notify_all()


def _seconds(text: str) -> float:
    if (value := float(text)) < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _count(text: str) -> int:
    if (value := int(text)) < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_behaviour_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulated devices' behaviour options (``gateway sim`` / ``demo``)."""
    d = Behaviour()
    g = parser.add_argument_group("simulated device behaviour")
    g.add_argument(
        "--delay",
        type=_seconds,
        default=d.delay_s,
        metavar="S",
        help="seconds from detect to the final answer (default %(default)s)",
    )
    g.add_argument(
        "--answer",
        choices=ANSWERS,
        default=d.answer,
        help="final answer: a result, an error code, or nothing",
    )
    g.add_argument(
        "--err",
        type=int,
        default=d.err,
        help="err code sent with --answer error (default %(default)s: NO SHAKE)",
    )
    for flag, what in (
        ("--not-yet", "'nothing detected yet' frames (err -1, no round_id)"),
        ("--stale", "result frames carrying the previous round id"),
        ("--wrong-round", "result frames carrying a made-up round id"),
        ("--garbage", "malformed frames (bad JSON, wrong shape/type/range)"),
        ("--oversize", "~1 MiB frames"),
        ("--early-empty", "empty/partial result frames for the current round"),
    ):
        g.add_argument(
            flag, type=_count, default=0, metavar="N", help=f"{what} sent before the answer"
        )
    g.add_argument(
        "--repeats",
        type=_count,
        default=d.repeats,
        metavar="N",
        help="times the final answer is published (default %(default)s)",
    )
    g.add_argument(
        "--stream-interval",
        type=_seconds,
        default=d.stream_interval_s,
        metavar="S",
        help="if > 0, re-publish the answer at this interval until timeout",
    )
    g.add_argument(
        "--answer-on",
        choices=ANSWER_ON,
        default=d.answer_on,
        help="answer on the broker that carried the command, or on all",
    )
    g.add_argument(
        "--deal",
        action=argparse.BooleanOptionalAction,
        default=d.deal,
        help="Baccarat IDPs publish the hand as it is dealt before the final frame (default: on)",
    )
    g.add_argument(
        "--shaker-fault",
        action="store_true",
        help="shakers end their cycles with S90 (motion fault) instead of S0",
    )
    g.add_argument(
        "--shake-time-scale",
        type=_seconds,
        default=1.0,
        help="multiplier on the shake duration (e.g. 0.1 for fast demos)",
    )


def behaviour_from_args(args: argparse.Namespace) -> Behaviour:
    """The :class:`Behaviour` described by :func:`add_behaviour_arguments` options."""
    return Behaviour(
        delay_s=args.delay,
        answer=args.answer,
        err=args.err,
        not_yet=args.not_yet,
        stale=args.stale,
        wrong_round=args.wrong_round,
        garbage=args.garbage,
        oversize=args.oversize,
        early_empty=args.early_empty,
        repeats=args.repeats,
        stream_interval_s=args.stream_interval,
        answer_on=args.answer_on,
        deal=args.deal,
    )


def sim_devices(
    configs: Sequence[GatewayConfig],
) -> tuple[list[SimBroker], list[SimTable]]:
    """The simulator's view of some table configs: every broker once, every table."""
    brokers: dict[str, SimBroker] = {}
    tables = []
    for config in configs:
        for b in config.brokers:
            tls = b.tls
            brokers.setdefault(
                b.id,
                SimBroker(
                    host=b.host,
                    port=b.port,
                    username=b.username,
                    password=b.password,
                    ca_file=tls.ca_file if tls else None,
                    client_cert=tls.cert_file if tls else None,
                    client_key=tls.key_file if tls else None,
                    server_name=tls.server_name if tls else None,
                    id=b.id,
                ),
            )
        t = config.table
        tables.append(
            SimTable(
                game=t.game.value,
                table_code=t.code,
                command_topic=t.command_topic,
                response_topic=t.response_topic,
                shaker_listens=t.shaker_listens,
                shaker_says=t.shaker_says,
            )
        )
    return list(brokers.values()), tables
