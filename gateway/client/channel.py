"""The client's gRPC channel: retries on UNAVAILABLE through gRPC's service config, and
quick reconnects to a sidecar on loopback."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grpc_health.v1 import health_pb2

from gateway.v1 import gateway_pb2 as pb


@dataclass(frozen=True)
class RetryPolicy:
    """How the channel retries a call that failed with UNAVAILABLE.

    gRPC applies it inside the call's deadline, with jitter (each backoff is random in
    [0, current backoff]). Only UNAVAILABLE is retried; DEADLINE_EXCEEDED never is (the
    deadline is the caller's budget, and the IDP may still be working on the round).

    Health, GetStats and ``grpc.health.v1.Health`` are always covered. Detect is covered
    with ``retry_detect``: off by default because the sidecar already tries the table's
    ``retry_count`` publishes before it answers UNAVAILABLE, and counts every Detect that
    ends so (``detects_unavailable``); a client retry multiplies both. Turn it on to ride
    out a sidecar that is restarting or not yet listening.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    retry_detect: bool = False

    def service_config(self) -> str:
        """The ``grpc.service_config`` JSON applying this policy.

        Retrying Detect on UNAVAILABLE is safe: the sidecar answers UNAVAILABLE only with
        ``NoBrokerAvailable`` (``gateway.errors``), raised once no broker acknowledged the
        detect command after the table's ``retry_count`` publishes (``detect.py``), and
        gRPC itself answers it when the call never reached the sidecar. At worst an
        unacknowledged publish did reach the IDP; the retry then asks again for the same
        round id, and results are matched by round id, so a retry can never return
        another round's result.
        """
        service = pb.DESCRIPTOR.services_by_name["GatewayService"].full_name
        methods = ["Health", "GetStats", *(["Detect"] if self.retry_detect else [])]
        names: list[dict[str, str]] = [{"service": service, "method": m} for m in methods]
        names.append({"service": health_pb2.DESCRIPTOR.services_by_name["Health"].full_name})
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


def channel_options(retry: RetryPolicy) -> list[tuple[str, Any]]:
    """Channel options: retries on, the policy, and quick reconnects to a local sidecar."""
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry.service_config()),
        # The sidecar is on loopback: reconnect soon after it starts listening instead of
        # after gRPC's default backoff (up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
