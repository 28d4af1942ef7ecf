"""The predecessor's message handlers, fed by one Subscribe stream of the sidecar.

``gateway.compat`` registers ``handler(topic, payload, data)`` callables here; one stream
carries every topic the sidecar offers for the table and the handlers are matched locally
(``+``/``#`` filters allowed). The stream is reopened with capped backoff and jitter when it
fails or ends (a sidecar restart), and at once when a handler is added for a topic the open
stream does not carry (the sidecar's configuration may have gained it).

The stream runs on the facade's own loop. A handler runs on the event loop that was
running when it was registered, as long as that loop runs (so it may use that loop's
objects), else on the facade's loop; handlers may be added from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

from gateway.backoff import Backoff
from gateway.client import GatewayCallError, GatewayClient, InvalidRound, Subscription
from gateway.compat.legacy import describe_failure, parse_payload, topic_matches
from gateway.v1 import gateway_pb2 as pb

log = logging.getLogger("gateway.compat")

BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
RECHECK_S: Final = 30.0  # re-ask for the carried topics while a handler matches none

MessageHandler = Callable[[str, str, Any], object]
"""``handler(topic, payload, data)``, plain or ``async``: ``payload`` is the decoded text,
``data`` the parsed JSON or ``{"raw": payload}`` when it is not JSON (as before)."""


class MessageHandlers:
    """The handlers of one system and the stream that feeds them (``run``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.table_code = ""
        self.handlers: list[tuple[str, MessageHandler, asyncio.AbstractEventLoop | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.subscribed: frozenset[str] = frozenset()  # what the open stream carries
        self._carried: frozenset[str] = frozenset()  # topics the sidecar offers
        self._reported: set[str] = set()  # patterns already logged as matching none...
        self._reported_for: frozenset[str] = frozenset()  # ...of these carried topics
        self._running = False
        # Made again by start(), on the loop that will use them.
        self._recheck = asyncio.Event()
        self.settled = asyncio.Event()

    def start(self, table_code: str) -> None:
        """Fresh events on the running loop, before ``run`` is started."""
        self.table_code = table_code
        self._loop = asyncio.get_running_loop()
        self._recheck, self.settled = asyncio.Event(), asyncio.Event()
        self._running = True

    def stop(self) -> None:
        """The system stopped: accept no rechecks and carry nothing until ``start``."""
        self._running = False
        self.subscribed = frozenset()

    def add(
        self, topic: str, handler: MessageHandler, home: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Register ``handler`` (from any thread); ``home``: the loop it should run on."""
        if not callable(handler):
            raise TypeError(f"handler for {topic!r} is not callable: {handler!r}")
        self.handlers.append((topic, handler, home))
        loop = self._loop
        matched = any(topic_matches(topic, t) for t in self._carried)
        if self._running and loop is not None and not loop.is_closed() and not matched:
            loop.call_soon_threadsafe(self._recheck.set)  # maybe a topic added since: look

    def remove(self, topic: str) -> None:
        """Forget every handler registered for ``topic``."""
        self.handlers = [entry for entry in self.handlers if entry[0] != topic]

    async def run(self, client: GatewayClient) -> None:
        """One Subscribe stream of every topic the sidecar carries, handlers matched here;
        re-opened with capped backoff when it fails or ends (e.g. a sidecar restart)."""
        backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        while True:
            self._recheck.clear()
            try:
                async with client.subscribe() as stream:
                    self._carried = self.subscribed = frozenset(stream.topics)
                    self._report_unmatched()
                    self.settled.set()
                    backoff.reset()
                    if await self._pump(stream):
                        continue  # asked to look again: re-open now
                    log.warning("subscription to %s ended by the sidecar; re-opening", self.target)
            except InvalidRound as exc:  # the table carries no extra topic at all
                self._carried = frozenset()
                self._report_unmatched(exc.details() or "")
                self.settled.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECHECK_S if self.handlers else None):
                        await self._recheck.wait()
                continue
            except GatewayCallError as exc:
                level = logging.WARNING if self.handlers else logging.DEBUG
                log.log(
                    level, "subscription to %s: %s; retrying", self.target, describe_failure(exc)
                )
            except Exception:
                log.exception("subscription to %s failed unexpectedly; retrying", self.target)
            finally:
                self.subscribed = frozenset()
            self.settled.set()
            await asyncio.sleep(backoff.next())

    async def _pump(self, stream: Subscription) -> bool:
        """Dispatch messages until the stream ends (False) or a recheck is asked (True)."""
        recheck = asyncio.ensure_future(self._recheck.wait())
        read: asyncio.Future[pb.TopicMessage | None] | None = None
        try:
            while True:
                read = asyncio.ensure_future(_next(stream))
                await asyncio.wait({read, recheck}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    return True
                message = read.result()
                if message is None:
                    return False
                await self._dispatch(message)
        finally:
            for future in (recheck, read):
                if future is not None and not future.done():
                    future.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await future

    async def _dispatch(self, message: pb.TopicMessage) -> None:
        payload = message.payload.decode("utf-8", errors="replace")
        for pattern, handler, home in list(self.handlers):
            if not topic_matches(pattern, message.topic):
                continue
            args = (message.topic, payload, parse_payload(payload))
            try:
                if home is not None and home is not self._loop and home.is_running():
                    await _on_home(home, handler, args)
                    continue
                outcome = handler(*args)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception(
                    "message handler %r for %r failed on a message on %s",
                    handler,
                    pattern,
                    message.topic,
                )

    def _report_unmatched(self, why: str = "") -> None:
        """Log once per pattern (per set of carried topics) a handler that can get nothing."""
        if self._carried != self._reported_for:
            self._reported, self._reported_for = set(), self._carried
        carried = ", ".join(sorted(self._carried)) or "none"
        for pattern, _, _ in self.handlers:
            if pattern in self._reported or any(topic_matches(pattern, t) for t in self._carried):
                continue
            self._reported.add(pattern)
            log.error(
                "add_message_handler: topic %r is not carried by the sidecar at %s (table %s); "
                "it carries: %s. Add it to the table's subscribe_topics (or shaker) in the "
                "sidecar's configuration.%s",
                pattern,
                self.target,
                self.table_code,
                carried,
                f" ({why})" if why else "",
            )
        self._reported &= {p for p, _, _ in self.handlers}


async def _on_home(
    home: asyncio.AbstractEventLoop, handler: MessageHandler, args: tuple[str, str, Any]
) -> None:
    """Run ``handler`` on the loop it was registered from and wait for it (in order)."""
    if inspect.iscoroutinefunction(handler):
        await _wait(asyncio.run_coroutine_threadsafe(handler(*args), home), home)
        return
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def call() -> None:
        try:
            outcome = handler(*args)
        except Exception as exc:
            done.set_exception(exc)
            return
        if not inspect.isawaitable(outcome):
            done.set_result(None)
            return
        # A plain function that returned a coroutine: run it here too and wait for it.
        task = asyncio.ensure_future(outcome)

        def finished(t: asyncio.Future[Any]) -> None:
            if t.cancelled():
                done.set_exception(RuntimeError("the message handler was cancelled"))
            elif (error := t.exception()) is not None:
                done.set_exception(error)
            else:
                done.set_result(None)

        task.add_done_callback(finished)

    home.call_soon_threadsafe(call)
    await _wait(done, home)


async def _wait(done: concurrent.futures.Future[Any], home: asyncio.AbstractEventLoop) -> None:
    """Wait for a handler on its home loop; give up if that loop stops meanwhile."""
    waiting = asyncio.wrap_future(done)
    while True:
        try:
            async with asyncio.timeout(1.0):
                await asyncio.shield(waiting)
            return
        except TimeoutError:
            if not home.is_running():
                waiting.cancel()
                log.warning("a message handler's event loop stopped while it ran")
                return


async def _next(stream: Subscription) -> pb.TopicMessage | None:
    """The stream's next message, None at its end (a future cannot hold StopAsyncIteration)."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
