"""What a failed call to the sidecar raises in game code: one exception per gRPC status.

Each is also a ``grpc.aio.AioRpcError``, so code written against the raw gRPC error keeps
working. They mirror the sidecar's own tree (``gateway.errors``) as seen from the caller's
side of the wire, under names of their own so that a traceback or an ``except`` never
leaves a doubt which side a class belongs to; ``gateway.client`` re-exports them.

The names these classes had until now (``GatewayError``, ``DetectTimeout``, ``IdpError``,
``RoundSuperseded``: the sidecar's own names) still import, for one release, with a
``DeprecationWarning`` naming the new one.
"""

from __future__ import annotations

import warnings
from typing import Any, Final

import grpc


class GatewayCallError(grpc.aio.AioRpcError):
    """A call to the sidecar failed; ``code()`` and ``details()`` say how."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str | None,
        *,
        target: str = "",
        trailing_metadata: Any = None,
        initial_metadata: Any = None,
        debug_error_string: str | None = None,
    ) -> None:
        super().__init__(
            code,
            initial_metadata,
            trailing_metadata,
            details=details,
            debug_error_string=debug_error_string,
        )
        self.target = target
        self.metadata = dict(metadata_pairs(trailing_metadata))

    def __str__(self) -> str:
        details = self.details() or ""
        where = f" (sidecar {self.target})" if self.target and self.target not in details else ""
        return f"{self.code().name}{where}: {details}"


class InvalidRound(GatewayCallError):
    """The request can never succeed as it is (bad round id or stream URL)."""


class GatewayUnavailable(GatewayCallError):
    """No broker could carry the command, or the sidecar is not reachable; retry later."""


class NotReady(GatewayUnavailable):
    """The sidecar did not report SERVING before ``wait_ready``'s deadline."""


class RoundTimedOut(GatewayCallError):
    """The IDP sent no valid result for the round in time (the details say what was seen)."""


class IdpFailed(GatewayCallError):
    """The IDP reported an error for the round.

    ``idp_code`` is the code from the ``idp-err`` trailing metadata (e.g. ``"-3"``) and
    ``idp_name`` its name from ``idp-err-name`` (e.g. ``"NO_SHAKE"``); "" if absent.
    """

    @property
    def idp_code(self) -> str:
        """The IDP's error code (e.g. ``"-3"``), "" if the sidecar sent none."""
        return self.metadata.get("idp-err", "")

    @property
    def idp_name(self) -> str:
        """The IDP error code's name (e.g. ``"NO_SHAKE"``), "" if the sidecar sent none."""
        return self.metadata.get("idp-err-name", "")


class RoundReplaced(GatewayCallError):
    """A Detect for a newer round on the same table replaced this one."""


class ShakeFailed(GatewayCallError):
    """A Shake did not complete. ``failure`` is its ``ShakeFailure`` name from the
    ``shake-err`` trailing metadata: ``MOTION_FAULT`` (the shaker said S90), ``TIMEOUT``
    (not idle within duration + 7 s), ``NO_SHAKER`` (the table has none), ``BUSY``
    (another Shake is running)."""

    @property
    def failure(self) -> str:
        """The ``ShakeFailure`` name, so game code can tell a fault from a busy shaker."""
        return self.metadata.get("shake-err", "SHAKE_FAILURE_UNSPECIFIED")


_BY_STATUS: Final[dict[grpc.StatusCode, type[GatewayCallError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRound,
    grpc.StatusCode.UNAVAILABLE: GatewayUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: RoundTimedOut,
    grpc.StatusCode.FAILED_PRECONDITION: IdpFailed,
    grpc.StatusCode.ABORTED: RoundReplaced,
}


def error_from_rpc(exc: grpc.aio.AioRpcError, target: str = "") -> GatewayCallError:
    """The ``GatewayCallError`` subclass for a failed call's status, keeping all its details."""
    if isinstance(exc, GatewayCallError):
        return exc
    shake = any(k == "shake-err" for k, _ in metadata_pairs(exc.trailing_metadata()))
    cls = ShakeFailed if shake else _BY_STATUS.get(exc.code(), GatewayCallError)
    return cls(
        exc.code(),
        exc.details(),
        target=target,
        trailing_metadata=exc.trailing_metadata(),
        initial_metadata=exc.initial_metadata(),
        debug_error_string=exc.debug_error_string(),
    )


def metadata_pairs(metadata: Any) -> list[tuple[str, str]]:
    """(key, value) pairs of gRPC metadata (aio yields plain tuples at run time)."""
    return [(str(k), str(v)) for k, v in (metadata or ())]


DEPRECATED_NAMES: Final[dict[str, str]] = {
    "GatewayError": "GatewayCallError",
    "DetectTimeout": "RoundTimedOut",
    "IdpError": "IdpFailed",
    "RoundSuperseded": "RoundReplaced",
}
"""Old name -> new name of the classes renamed apart from the sidecar's own errors; the
old names stay importable (with a ``DeprecationWarning``) for one release."""


def deprecated_name(module: str, name: str) -> type[GatewayCallError]:
    """The class an old name now stands for, warning the caller to use the new name; the
    module-level ``__getattr__`` of ``gateway.client`` and of this module call it."""
    new = DEPRECATED_NAMES.get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"{module}.{name} is renamed {new} (so it is not mistaken for the sidecar's "
        f"gateway.errors.{name}); the old name goes away in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    cls: type[GatewayCallError] = globals()[new]
    return cls


def __getattr__(name: str) -> type[GatewayCallError]:
    """The renamed classes under their old names, for one release (see ``DEPRECATED_NAMES``)."""
    return deprecated_name(__name__, name)
