"""Messages on the table's extra topics (the shaker's ``says``, configured others), fanned
out to whoever listens: the Subscribe RPC and the shaker's own wait for its states.

Every broker link subscribes to these topics, so a message arrives through whichever broker
its publisher uses and a listener keeps receiving across a failover. Each listener has its
own bounded queue (``QUEUE_LIMIT`` messages and ``QUEUE_BYTES`` of payload): a slow
reader loses its oldest messages (the sequence numbers show the gap), never blocks the
broker links or other listeners, and never holds more than its byte cap. At most
``MAX_LISTENERS`` streams listen at once; one more is refused (``Exhausted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from opentelemetry import metrics

from gateway.errors import Exhausted

QUEUE_LIMIT = 1000
QUEUE_BYTES = 1024 * 1024  # payload bytes queued for one listener
MAX_LISTENERS = 32  # concurrent Subscribe streams and shakes of one sidecar

_dropped = metrics.get_meter(__name__).create_counter(
    "gateway.topic.dropped", description="messages dropped for a listener that fell behind"
)


@dataclass(frozen=True)
class TopicMessage:
    """One message on a subscribed topic, as a Subscribe stream sends it."""

    topic: str
    payload: bytes
    broker_id: str
    received_unix: float
    sequence: int = 0  # per listener, from 1


class Listener:
    """One reader of some topics; iterate it for their messages."""

    def __init__(self, topics: frozenset[str]) -> None:
        self.topics = topics
        self.dropped = 0
        # None marks the end: the hub closed (the sidecar is stopping).
        self._queue: asyncio.Queue[TopicMessage | None] = asyncio.Queue(QUEUE_LIMIT + 1)
        self._sequence = 0
        self._bytes = 0

    def _offer(self, message: TopicMessage) -> None:
        self._sequence += 1
        numbered = TopicMessage(
            message.topic, message.payload, message.broker_id, message.received_unix,
            self._sequence,
        )  # fmt: skip
        if len(message.payload) > QUEUE_BYTES:
            self.dropped += 1
            _dropped.add(1, {"topic": message.topic})
            return
        while self._queue.qsize() and (
            self._queue.qsize() >= QUEUE_LIMIT or self._bytes + len(message.payload) > QUEUE_BYTES
        ):
            oldest = self._queue.get_nowait()
            if oldest is None:  # the end mark stays last
                self._queue.put_nowait(None)
                return
            self._bytes -= len(oldest.payload)
            self.dropped += 1
            _dropped.add(1, {"topic": oldest.topic})
        self._bytes += len(message.payload)
        self._queue.put_nowait(numbered)

    def _end(self) -> None:
        self._queue.put_nowait(None)

    async def get(self) -> TopicMessage:
        """The next message; StopAsyncIteration once the hub is closed."""
        message = await self._queue.get()
        if message is None:
            self._queue.put_nowait(None)  # every later get ends too
            raise StopAsyncIteration
        self._bytes -= len(message.payload)
        return message

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> TopicMessage:
        return await self.get()


class TopicHub:
    """Routes frames of the extra topics to their listeners."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self._listeners: set[Listener] = set()

    def full(self) -> bool:
        """True when no further listener is allowed (``MAX_LISTENERS``)."""
        return len(self._listeners) >= MAX_LISTENERS

    def limit_text(self) -> str:
        """The listener limit in words, for the RESOURCE_EXHAUSTED message."""
        return f"{len(self._listeners)} listen already, at most {MAX_LISTENERS}; retry later"

    def close(self) -> None:
        """End every listener's iteration (the sidecar is stopping)."""
        for listener in self._listeners:
            listener._end()

    def on_message(self, broker_id: str, topic: str, payload: bytes) -> None:
        """A message a broker heard: offer it to every listener of its topic."""
        message = TopicMessage(topic, payload, broker_id, time.time())
        for listener in self._listeners:
            if topic in listener.topics:
                listener._offer(message)

    @contextlib.asynccontextmanager
    async def listen(self, topics: Iterable[str]) -> AsyncIterator[Listener]:
        """A listener for ``topics`` (each must be one of the hub's) while the block runs."""
        wanted = frozenset(topics)
        unknown = wanted - self.topics
        if unknown:
            raise ValueError(f"not subscribed: {', '.join(sorted(unknown))}")
        if self.full():
            raise Exhausted(f"too many listeners: {self.limit_text()}")
        listener = Listener(wanted)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
