"""The client SDK's status-to-exception mapping and retry policy, without I/O."""

from __future__ import annotations

import json

import grpc
import grpc.aio
import pytest

from gateway.client import (
    DetectTimeout,
    GatewayError,
    GatewayUnavailable,
    IdpError,
    InvalidRound,
    RetryPolicy,
    RoundSuperseded,
    error_from_rpc,
)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRound),
        (grpc.StatusCode.UNAVAILABLE, GatewayUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DetectTimeout),
        (grpc.StatusCode.FAILED_PRECONDITION, IdpError),
        (grpc.StatusCode.ABORTED, RoundSuperseded),
        (grpc.StatusCode.INTERNAL, GatewayError),
        (grpc.StatusCode.UNIMPLEMENTED, GatewayError),
    ],
)
def test_each_status_maps_to_its_exception(code: grpc.StatusCode, cls: type) -> None:
    """A failed call's status picks the exception class, keeping code and details."""
    raw = grpc.aio.AioRpcError(code, None, None, details="why it failed")
    err = error_from_rpc(raw, "127.0.0.1:50051")
    assert type(err) is cls
    assert isinstance(err, grpc.aio.AioRpcError)  # callers catching the gRPC error still do
    assert (err.code(), err.details()) == (code, "why it failed")
    assert str(err) == f"{code.name} (sidecar 127.0.0.1:50051): why it failed"


def test_idp_error_reads_the_code_from_trailing_metadata() -> None:
    """FAILED_PRECONDITION exposes the IDP's code and name from `idp-err` metadata."""
    meta = (("gateway-error", "IdpError"), ("idp-err", "-3"), ("idp-err-name", "NO_SHAKE"))
    raw = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, None, meta, "IDP -3")
    err = error_from_rpc(raw)
    assert isinstance(err, IdpError)
    assert (err.idp_code, err.idp_name) == ("-3", "NO_SHAKE")
    assert err.trailing_metadata() == meta


def test_idp_error_without_metadata_has_empty_code() -> None:
    """An IdpError without `idp-err` metadata says so with an empty code, not a guess."""
    raw = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, None, None, "no meta")
    err = error_from_rpc(raw)
    assert isinstance(err, IdpError) and err.idp_code == "" and err.idp_name == ""


def test_an_already_mapped_error_is_returned_as_is() -> None:
    """Mapping twice does not wrap the error again."""
    err = DetectTimeout(grpc.StatusCode.DEADLINE_EXCEEDED, "late")
    assert error_from_rpc(err) is err


def test_retry_policy_retries_only_unavailable_and_detect_on_request() -> None:
    """UNAVAILABLE is retried (never DEADLINE_EXCEEDED); Detect only with retry_detect."""
    gateway = "gateway.v1.GatewayService"
    for retry_detect, detect in ((False, []), (True, [(gateway, "Detect")])):
        policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.2, retry_detect=retry_detect)
        (method,) = json.loads(policy.service_config())["methodConfig"]
        names = {(n["service"], n.get("method")) for n in method["name"]}
        assert names == {
            (gateway, "Health"),
            (gateway, "GetStats"),
            ("grpc.health.v1.Health", None),
            *detect,
        }
        retry = method["retryPolicy"]
        assert retry["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert retry["maxAttempts"] == 5 and retry["initialBackoff"] == "0.2s"
