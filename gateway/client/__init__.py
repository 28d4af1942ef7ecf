"""The SDK game code uses to call its sidecar: ``GatewayClient`` (async) and ``SyncGatewayClient``.

A game calls ``detect(round_id)`` once per round and gets the IDP's validated result for
exactly that round, typed per game (``SicBoDice``, ``BaccaratHand``, ``RouletteNumber``
inside a ``Detection``), or one of the exceptions below. Every call has a deadline (per
call, defaulting to the client's), and the channel retries UNAVAILABLE, with capped
exponential backoff and jitter, through gRPC's own retry support (``RetryPolicy``: always
for Health and readiness, for Detect on request).

Failures raise a ``GatewayCallError`` subclass chosen by the gRPC status. Each is also a
``grpc.aio.AioRpcError`` (``.code()``, ``.details()``, ``.trailing_metadata()``), so code
written against the raw gRPC error keeps working::

    GatewayCallError          any other status (e.g. INTERNAL, UNIMPLEMENTED)
    ├── InvalidRound          INVALID_ARGUMENT     bad round id or stream URL: fix the call
    ├── GatewayUnavailable    UNAVAILABLE          no broker / no sidecar, after retries
    │   └── NotReady                               ``wait_ready`` ran out of time
    ├── RoundTimedOut         DEADLINE_EXCEEDED    no valid result for the round in time
    ├── IdpFailed             FAILED_PRECONDITION  the IDP reported an error (``.idp_code``)
    ├── RoundReplaced         ABORTED              a newer round on the table replaced this one
    └── ShakeFailed           (per failure)        a Shake did not complete (``.failure``)

These mirror the sidecar's own tree in ``gateway.errors`` as seen from the caller's side
of the wire, under names of their own. The old names (``GatewayError``, ``DetectTimeout``,
``IdpError``, ``RoundSuperseded``) still import from here for one release, with a
``DeprecationWarning``.

Where things live: ``aio`` (``GatewayClient``, ``Subscription``), ``sync``
(``SyncGatewayClient``), ``results`` (``Detection``, ``Shook``), ``errors``, ``channel``
(``RetryPolicy``) and ``loopthread`` (the sync client's event loop thread).
"""

from gateway.client.aio import (
    DEFAULT_DEADLINE_S,
    FROM_CLIENT,
    Deadline,
    GatewayClient,
    Subscription,
)
from gateway.client.channel import RetryPolicy
from gateway.client.errors import (
    GatewayCallError,
    GatewayUnavailable,
    IdpFailed,
    InvalidRound,
    NotReady,
    RoundReplaced,
    RoundTimedOut,
    ShakeFailed,
    deprecated_name,
    error_from_rpc,
)
from gateway.client.results import Detection, Shook, result_from_proto
from gateway.client.sync import SyncGatewayClient
from gateway.protocol import BaccaratHand, Result, RouletteNumber, SicBoDice

__all__ = [
    "DEFAULT_DEADLINE_S",
    "FROM_CLIENT",
    "BaccaratHand",
    "Deadline",
    "Detection",
    "GatewayCallError",
    "GatewayClient",
    "GatewayUnavailable",
    "IdpFailed",
    "InvalidRound",
    "NotReady",
    "Result",
    "RetryPolicy",
    "RouletteNumber",
    "RoundReplaced",
    "RoundTimedOut",
    "ShakeFailed",
    "Shook",
    "SicBoDice",
    "Subscription",
    "SyncGatewayClient",
    "error_from_rpc",
    "result_from_proto",
]


def __getattr__(name: str) -> type[GatewayCallError]:
    """The renamed error classes under their old names, for one release, with a warning."""
    return deprecated_name(__name__, name)
