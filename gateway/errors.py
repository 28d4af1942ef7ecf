"""The gateway's error tree: one class per way a Detect (or start-up) can fail.

Every class carries the gRPC status code it maps to; `service.py` does that mapping
in one place. Foreign exceptions (MqttError, RedisError, TimeoutError) are translated
into these where the library is called, with ``raise ... from exc``.

    GatewayError                      INTERNAL       (never raised itself)
    ├── ConfigError                   FAILED_PRECONDITION  bad config file / field
    ├── InvalidRequest                INVALID_ARGUMENT     caller mistake
    ├── Unavailable                   UNAVAILABLE          temporary, retryable
    │   └── NoBrokerAvailable                              no broker could carry the command
    ├── Exhausted                     RESOURCE_EXHAUSTED   a per-sidecar limit is reached
    ├── DetectTimeout                 DEADLINE_EXCEEDED    no valid answer for the round in time
    ├── IdpError                      FAILED_PRECONDITION  the IDP reported an error for the round
    ├── RoundSuperseded               ABORTED              a newer round replaced this one
    ├── MalformedInput                INTERNAL             unreadable outside input (never sent)
    └── ShakeError                    (per failure)        a Shake did not complete
        ├── ShakeFault                FAILED_PRECONDITION  MOTION_FAULT (S90), NO_SHAKER
        ├── ShakeTimeout              DEADLINE_EXCEEDED    TIMEOUT: not idle within the budget
        └── ShakeBusy                 ABORTED              BUSY: another Shake is running
"""

from __future__ import annotations

import asyncio

import grpc


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Extra machine-readable details sent with the gRPC status."""
        return (("gateway-error", type(self).__name__),)


class ConfigError(GatewayError):
    """A configuration file or field is invalid; the message names the file and field."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class InvalidRequest(GatewayError):
    """The caller sent a request that can never succeed as it is."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(GatewayError):
    """A temporary failure: retrying later may succeed."""

    status = grpc.StatusCode.UNAVAILABLE


class NoBrokerAvailable(Unavailable):
    """No broker was ready to carry a command."""


class Exhausted(GatewayError):
    """A per-sidecar limit is reached (e.g. concurrent Subscribe streams); retry later."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class DetectTimeout(GatewayError):
    """The IDP sent no valid result for the round before the deadline."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class IdpError(GatewayError):
    """The IDP reported an error code for the round (e.g. -3 NO_SHAKE)."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, code: int, name: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC trailers: the error's name and the IDP's error code and name."""
        return (
            *super().trailing_metadata(),
            ("idp-err", str(self.code)),
            ("idp-err-name", self.name),
        )


class RoundSuperseded(GatewayError):
    """A Detect for a newer round on the same table replaced this one."""

    status = grpc.StatusCode.ABORTED

    def __init__(self, message: str, *, new_round_id: str) -> None:
        super().__init__(message)
        self.new_round_id = new_round_id


class MalformedInput(GatewayError):
    """Input from outside that cannot be read: a device's bytes (e.g. a shaker state that
    is not short text), a shared record, view or statistics hash in Redis, a Redis reply.

    Raised by the pure parsers (``protocol.py``, ``shared_state.py``, ``stats.py``) and
    handled where the input arrives, by counting and dropping it; never sent to a caller.
    """

    status = grpc.StatusCode.INTERNAL


class ShakeError(GatewayError):
    """A Shake did not complete; ``failure`` is its ShakeFailure name (``shake-err``)."""

    failure = "SHAKE_FAILURE_UNSPECIFIED"

    def __init__(self, message: str, *, failure: str | None = None) -> None:
        super().__init__(message)
        if failure is not None:
            self.failure = failure

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC trailers: the error's name and the shaker's failure."""
        return (*super().trailing_metadata(), ("shake-err", self.failure))


class ShakeFault(ShakeError):
    """The shaker reported a motion fault (S90), or the table has no shaker."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    failure = "MOTION_FAULT"


class ShakeTimeout(ShakeError):
    """The shaker was not idle again within the cycle's time budget."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED
    failure = "TIMEOUT"


class ShakeBusy(ShakeError):
    """Another Shake is running on this table."""

    status = grpc.StatusCode.ABORTED
    failure = "BUSY"


def raise_if_cancelled() -> None:
    """Honour a cancellation that Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt)
    swallows when the awaited future completes in the same loop step (fixed in 3.12).

    Every loop that runs until cancelled and awaits aiomqtt calls this on each turn."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
