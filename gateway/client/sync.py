"""The blocking SDK: ``SyncGatewayClient``, for game loops that run in threads.

It drives a ``GatewayClient`` on an event loop of its own (``gateway.client.loopthread``),
so it raises the same errors and keeps the same deadlines.
"""

from __future__ import annotations

from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from gateway.client.aio import DEFAULT_DEADLINE_S, FROM_CLIENT, Deadline, GatewayClient
from gateway.client.channel import RetryPolicy
from gateway.client.loopthread import LoopClosed, LoopThread
from gateway.client.results import Detection
from gateway.v1 import gateway_pb2 as pb

T = TypeVar("T")


class SyncGatewayClient:
    """A blocking ``GatewayClient`` for threaded game loops.

    Runs its own event loop in one background thread; any number of threads may call it
    at once (calls run concurrently on that loop). Same errors as ``GatewayClient``.
    """

    def __init__(
        self,
        target: str,
        *,
        default_deadline_s: float | None = DEFAULT_DEADLINE_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.target = target
        self._thread = LoopThread(f"gateway-client {target}")

        async def open_client() -> GatewayClient:
            # The channel must be created on the loop that will use it.
            return GatewayClient(target, default_deadline_s=default_deadline_s, retry=retry)

        self._client = self._run(open_client())

    def __enter__(self) -> SyncGatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._thread.run(coro)
        except LoopClosed:
            raise RuntimeError(f"SyncGatewayClient for {self.target} is closed") from None

    def detect(
        self,
        round_id: str,
        *,
        input_url: str = "",
        output_url: str = "",
        deadline_s: Deadline = FROM_CLIENT,
    ) -> Detection:
        """The IDP's validated result for ``round_id``; see ``GatewayClient.detect``."""
        return self._run(
            self._client.detect(
                round_id, input_url=input_url, output_url=output_url, deadline_s=deadline_s
            )
        )

    def health(self, *, deadline_s: Deadline = FROM_CLIENT) -> pb.HealthResponse:
        """The sidecar's Health; see ``GatewayClient.health``."""
        return self._run(self._client.health(deadline_s=deadline_s))

    def wait_ready(self, deadline_s: Deadline = FROM_CLIENT, *, service: str = "") -> None:
        """Block until the sidecar serves; see ``GatewayClient.wait_ready``."""
        self._run(self._client.wait_ready(deadline_s, service=service))

    def close(self) -> None:
        """Close the channel and stop the loop thread; safe to call more than once."""
        self._thread.close(self._client.close())
