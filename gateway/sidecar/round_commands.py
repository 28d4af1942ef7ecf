"""The round desk's commands to the IDP: one ordered queue, published through the pool.

The desk decides *what* to tell the IDP (``detect`` for a round, ``timeout`` when its
last caller leaves); this module owns getting it there. Commands leave one at a time,
in order, so a round's ``timeout`` always goes out before the next round's ``detect``.
A ``timeout`` is handed to the broker link in order but its PUBACK is awaited on the
side: the next round's ``detect`` follows it on the same connection at once instead of
a broker round trip later (MQTT delivers one client's QoS 1 messages on a topic in
order; a ``timeout`` a broker never acknowledged is repaired by ``late_commands``).
A ``detect`` that finds no broker is retried ``retry_count`` times, each retry as soon
as a broker is active again (or after ``retry_delay_s``); if it never gets out, the
round fails with ``NoBrokerAvailable`` instead of waiting for a deadline. One command
failing never stops the queue behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from opentelemetry import propagate, trace

from gateway.errors import NoBrokerAvailable, raise_if_cancelled
from gateway.protocol import encode_detect, encode_timeout
from gateway.sidecar.round_state import Command

if TYPE_CHECKING:
    from gateway.config import TableConfig
    from gateway.sidecar.brokers import PublishReceipt
    from gateway.sidecar.election import Decision
    from gateway.sidecar.round_state import CommandKind, Round

# The logger and tracer names the round desk has always used (log filters, trace queries).
log = logging.getLogger("gateway.sidecar.rounds")
_tracer = trace.get_tracer("gateway.sidecar.rounds")


class CommandBus(Protocol):
    """What the desk needs from the broker pool."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> PublishReceipt:
        """Publish to the active broker and say which one took it; NoBrokerAvailable if none."""
        ...

    def decision(self) -> Decision:
        """The active broker right now (or none) and its epoch."""
        ...

    def newer_connection(self, broker_id: str | None, connection: int) -> int | None:
        """The link's connection number if ``broker_id`` is ready on a session newer than
        ``connection`` (what it carried in between is lost), else None."""
        ...


class CommandQueue:
    """The desk's outgoing commands, published in order by ``run``."""

    def __init__(
        self,
        bus: CommandBus,
        table: Callable[[], TableConfig],
        *,
        published: Callable[[Decision], None],
    ) -> None:
        self._bus = bus
        self._table = table  # the desk's current table config (it changes between rounds)
        # Told the decision right after a detect got out: the broker may have died (and the
        # active one changed) while its PUBACK was on the way.
        self._published = published
        self._queue: asyncio.Queue[Command] = asyncio.Queue()
        self._decision_changed = asyncio.Event()
        self._acks: set[asyncio.Task[None]] = set()  # timeouts waiting for their PUBACK

    def put(self, kind: CommandKind, rnd: Round) -> None:
        """Queue a command for ``rnd``; it leaves after every command queued before it."""
        self._queue.put_nowait(Command(kind, rnd))

    def decision_changed(self) -> None:
        """The active broker changed: a detect waiting to retry may go now."""
        self._decision_changed.set()

    async def run(self) -> None:
        """Publish queued commands in order, until cancelled."""
        try:
            while True:
                raise_if_cancelled()
                command = await self._queue.get()
                if command.kind == "timeout":
                    await self._start_timeout(command)
                else:
                    await self._guarded(command)
        finally:
            for task in self._acks:
                task.cancel()

    async def _start_timeout(self, command: Command) -> None:
        """Hand a ``timeout`` to the broker link, then go on without its PUBACK.

        The publish runs in a task of its own; one turn of the loop lets it reach the
        broker link, whose publish starts the hand-off to the MQTT client before it
        awaits anything, and hand-offs run in the order they started: whatever is
        published next goes out behind the ``timeout`` on the wire."""
        task = asyncio.create_task(self._guarded(command), name=f"timeout {command.round.round_id}")
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
        await asyncio.sleep(0)

    async def _guarded(self, command: Command) -> None:
        """Publish one command; a failure is logged (and fails its round), never raised."""
        try:
            await self._execute(command)
        except Exception as exc:  # one command fails, never the queue behind it
            log.exception("round %s: %s command failed", command.round.round_id, command.kind)
            rnd = command.round
            if command.kind == "detect" and not rnd.closed and not rnd.future.done():
                rnd.future.set_exception(
                    NoBrokerAvailable(
                        f"could not publish detect for round {rnd.round_id}: "
                        f"{type(exc).__name__}: {exc}"
                    )
                )

    async def _execute(self, command: Command) -> None:
        rnd = command.round
        with _tracer.start_as_current_span(
            f"gateway.publish {command.kind}",
            context=rnd.trace_context,
            attributes={"table": self._table().code, "round_id": rnd.round_id},
        ) as span:
            if command.kind == "detect":
                await self._publish_detect(rnd)
            else:
                await self._publish_timeout(rnd)
            span.set_attributes({"broker": rnd.published_on or "", "epoch": rnd.epoch})

    async def _publish_detect(self, rnd: Round) -> None:
        rnd.republish_queued = False
        t = self._table()
        carrier: dict[str, str] = {}
        if t.trace_context_in_command:
            propagate.inject(carrier)  # the current span: this round's "publish detect"
        payload = encode_detect(t.game, rnd.round_id, rnd.input_url, rnd.output_url, carrier)
        last: NoBrokerAvailable | None = None
        for attempt in range(1, t.retry_count + 1):
            if rnd.closed or rnd.future.done():
                return
            tried = self._bus.decision().broker_id
            try:
                receipt = await self._bus.publish(t.command_topic, payload)
            except NoBrokerAvailable as exc:
                last = exc
                log.info("round %s: publish attempt %d failed: %s", rnd.round_id, attempt, exc)
                if attempt < t.retry_count:
                    await self._wait_for_broker(t.retry_delay_s, tried)
                continue
            rnd.publishes += 1
            rnd.published_on, rnd.epoch = receipt.broker_id, receipt.epoch
            rnd.published_connection = receipt.connection
            log.debug("round %s: detect published on %s", rnd.round_id, receipt.broker_id)
            if rnd.timeout_owed:  # its caller left while the detect was on its way
                rnd.timeout_owed = False
                await self._publish_timeout(rnd)
            # The broker may have died (and the active one changed) while its PUBACK was
            # on the way: the desk could not re-publish a round not yet marked published.
            self._published(self._bus.decision())
            return
        if not rnd.closed and not rnd.future.done():
            rnd.future.set_exception(
                NoBrokerAvailable(
                    f"could not publish detect for round {rnd.round_id} after "
                    f"{t.retry_count} attempt(s): {last}"
                )
            )

    async def _wait_for_broker(self, delay: float, tried: str | None) -> None:
        """Sleep ``delay``, or less once a broker is active again after the failure."""
        deadline = time.monotonic() + delay
        changed = False
        while True:
            current = self._bus.decision().broker_id
            if current is not None and (changed or current != tried):
                return
            self._decision_changed.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._decision_changed.wait()
            except TimeoutError:
                return
            changed = True

    async def _publish_timeout(self, rnd: Round) -> None:
        try:
            await self._bus.publish(self._table().command_topic, encode_timeout())
        except NoBrokerAvailable as exc:
            log.warning("round %s: could not publish timeout: %s", rnd.round_id, exc)
