"""``IdpSimulator``: a studio's devices on its brokers, and the log tests read.

It routes each message its :class:`BrokerLinks` receive to the table whose topic it came
on: shaker text to :class:`Shakers`, IDP JSON to the round bookkeeping here. A ``detect``
starts (or restarts) the table's round task, which plays the round script of
:mod:`~gateway.devtools.sim.rounds` on every broker that carried that round: a gateway
that re-publishes after a broker switch gets its answer on the new broker without the old
copy being able to strand it. ``timeout`` stops the round. Everything heard goes to
``commands`` and everything the IDPs published to ``sent``; tests wait on either through
``wait_for_*`` with bounded timeouts instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import aiomqtt

from gateway.devtools.sim.devices import Behaviour, ReceivedCommand, SentFrame, SimBroker, SimTable
from gateway.devtools.sim.links import BrokerLinks, Origin
from gateway.devtools.sim.rounds import describe_frame, play_round
from gateway.devtools.sim.shaker import Shakers

T = TypeVar("T")
log = logging.getLogger(__name__)


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
        self._shakers = Shakers(tables, self._publish, self._spawn, shake_time_scale)
        self.commands: list[ReceivedCommand] = []
        self.sent: list[SentFrame] = []
        self._routes: dict[str, tuple[SimTable, bool]] = {}
        for t in tables:
            for topic, is_shaker in ((t.command_topic, False), (t.shaker_listens, True)):
                if topic is not None and self._routes.setdefault(topic, (t, is_shaker))[0] != t:
                    raise ValueError(f"topic {topic!r} used by two tables")
        client_id = f"{client_prefix}-{uuid.uuid4().hex[:10]}"
        self._links = BrokerLinks(brokers, self._routes, client_id)
        self._changed = asyncio.Condition()
        self._detections: dict[str, asyncio.Task[None]] = {}
        self._origins: dict[str, list[Origin]] = {}  # brokers that carried the round, per table
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rounds: dict[str, tuple[str | None, str | None]] = {}  # (previous, current)

    @property
    def shaker_fault(self) -> dict[str, bool]:
        """Per table code: end the shaker's cycles with S90 (motion fault) instead of S0."""
        return self._shakers.fault

    @property
    def shaker_silent(self) -> dict[str, bool]:
        """Per table code: the shaker goes silent after S2."""
        return self._shakers.silent

    @property
    def shaker_state(self) -> dict[str, str]:
        """Per table code: the shaker's current state."""
        return self._shakers.state

    @property
    def shake_time_scale(self) -> float:
        """Multiplier on every shake duration (below 1 for fast demos and tests)."""
        return self._shakers.time_scale

    @shake_time_scale.setter
    def shake_time_scale(self, value: float) -> None:
        self._shakers.time_scale = value

    def set_behaviour(self, table_code: str, behaviour: Behaviour) -> None:
        """Script how ``table_code``'s IDP answers from its next ``detect`` on."""
        self.behaviours[table_code] = behaviour

    def behaviour_for(self, table_code: str) -> Behaviour:
        """The behaviour in force for a table (its override, else the default)."""
        return self.behaviours.get(table_code, self.default_behaviour)

    @property
    def connected(self) -> set[str]:
        """Ids of the brokers currently connected and subscribed."""
        return self._links.connected

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
        await self._links.wait_connected(timeout)

    async def run(self) -> None:
        """Run the devices until cancelled: one supervised connection per broker."""
        try:
            await self._links.run(self._on_message)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_message(self, origin: Origin, message: aiomqtt.Message) -> None:
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
            answer_on = self.behaviour_for(table.table_code).answer_on
            self._shakers.on_command(origin, table, payload, answer_on)
        else:
            self._on_idp(origin, table, payload)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_idp(self, origin: Origin, table: SimTable, doc: object) -> None:
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

    async def _detect(
        self, origins: list[Origin], table: SimTable, rid: str, previous: str, b: Behaviour
    ) -> None:
        """Answer the round: on every broker that carried it, each on its own, so a broker
        that hangs holds back only its own copy of the frames (or on all brokers)."""
        if b.answer_on == "all":
            await self._stream(origins, table, rid, previous, b)
            return
        await asyncio.gather(*(self._stream([o], table, rid, previous, b) for o in origins))

    async def _stream(
        self, origins: list[Origin], table: SimTable, rid: str, previous: str, b: Behaviour
    ) -> None:
        code, topic = table.table_code, table.response_topic

        async def publish(frame: bytes, final: bool) -> bool:
            return await self._publish_any(origins, topic, frame, b.answer_on, (code, final))

        via = ",".join(o.broker for o in origins)
        await play_round(publish, table, rid, previous, b, via)

    async def _publish_any(
        self,
        origins: list[Origin],
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
        origin: Origin,
        topic: str,
        payload: bytes,
        answer_on: str,
        record: tuple[str, bool] | None = None,
    ) -> bool:
        """Publish QoS 1; False when the command's broker is gone (answer_on "same").

        A frame handed to a broker is recorded in ``sent`` once acknowledged even if the
        round is stopped meanwhile (a ``timeout`` right after the gateway got the frame).
        """

        async def publish_and_record() -> list[str] | None:
            took = await self._links.publish(origin, topic, payload, answer_on)
            if record is not None and took:
                await self._record(payload, record, took)
            return took

        took = await asyncio.shield(self._spawn(publish_and_record()))
        if took is None:
            return False
        return answer_on != "same" or bool(took)

    async def _record(self, payload: bytes, record: tuple[str, bool], brokers: list[str]) -> None:
        (table_code, final), (rid, res, err) = record, describe_frame(payload)
        at = time.monotonic()
        async with self._changed:
            self.sent.extend(
                SentFrame(table_code, rid, res, err, final, broker, at) for broker in brokers
            )
            self._changed.notify_all()
