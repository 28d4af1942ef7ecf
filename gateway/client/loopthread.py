"""An asyncio event loop of its own, in a daemon thread: work callable from any thread or loop.

gRPC channels and asyncio tasks belong to the loop that made them. Callers of the SDK's
synchronous client and of the predecessor facade run many loops (``asyncio.run`` per
call, from worker threads) or none; the work itself lives on this one loop, and each
call hops onto it:

- ``run(coro)`` blocks the calling thread until the coroutine is done;
- ``await call(coro)`` from any other loop waits without blocking that loop (a
  cancellation of the caller cancels the work too);
- from this loop's own thread, ``call`` simply awaits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopClosed(RuntimeError):
    """The loop thread was closed; nothing can run on it any more."""


class LoopThread:
    """One event loop running forever in a daemon thread, until ``close``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """True once ``close`` has begun: callers must not submit work any more."""
        return self._closed

    def in_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; its future, usable from any thread."""
        with self._lock:  # nothing may reach the loop once close() has begun
            if self._closed:
                coro.close()
                raise LoopClosed(f"{self.name} is closed")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block this thread for its result."""
        if self.in_thread():
            coro.close()
            raise RuntimeError(f"{self.name}: a blocking call from the loop's own thread")
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: stop the work too
            raise

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and await its result from whatever loop is running."""
        if self.in_thread():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self, last: Coroutine[Any, Any, Any] | None = None) -> None:
        """Run ``last`` (if given) on the loop, then stop it and join the thread; once."""
        if self.in_thread():
            raise RuntimeError(f"{self.name}: close() from the loop's own thread")
        with self._lock:
            if self._closed:
                if last is not None:
                    last.close()
                return
            self._closed = True
            closing = asyncio.run_coroutine_threadsafe(last, self.loop) if last else None
        try:
            if closing is not None:
                closing.result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
