"""The client SDK's status-to-exception mapping and retry policy, without I/O."""

from __future__ import annotations

import importlib
import json

import grpc
import grpc.aio
import pytest

from gateway.client import (
    GatewayCallError,
    GatewayUnavailable,
    IdpFailed,
    InvalidRound,
    RetryPolicy,
    RoundReplaced,
    RoundTimedOut,
    error_from_rpc,
)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRound),
        (grpc.StatusCode.UNAVAILABLE, GatewayUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, RoundTimedOut),
        (grpc.StatusCode.FAILED_PRECONDITION, IdpFailed),
        (grpc.StatusCode.ABORTED, RoundReplaced),
        (grpc.StatusCode.INTERNAL, GatewayCallError),
        (grpc.StatusCode.UNIMPLEMENTED, GatewayCallError),
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
    assert isinstance(err, IdpFailed)
    assert (err.idp_code, err.idp_name) == ("-3", "NO_SHAKE")
    assert err.trailing_metadata() == meta


def test_idp_error_without_metadata_has_empty_code() -> None:
    """An IdpFailed without `idp-err` metadata says so with an empty code, not a guess."""
    raw = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, None, None, "no meta")
    err = error_from_rpc(raw)
    assert isinstance(err, IdpFailed) and err.idp_code == "" and err.idp_name == ""


def test_an_already_mapped_error_is_returned_as_is() -> None:
    """Mapping twice does not wrap the error again."""
    err = RoundTimedOut(grpc.StatusCode.DEADLINE_EXCEEDED, "late")
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


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("GatewayError", GatewayCallError),
        ("DetectTimeout", RoundTimedOut),
        ("IdpError", IdpFailed),
        ("RoundSuperseded", RoundReplaced),
    ],
)
@pytest.mark.parametrize("module", ["gateway.client", "gateway.client.errors"])
def test_old_error_names_still_import_with_a_deprecation_warning(
    module: str, old: str, new: type[GatewayCallError]
) -> None:
    """An old class name gives the renamed class for one release, warning with the new name."""
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{old} is renamed {new.__name__}"):
        cls = getattr(importlib.import_module(module), old)
    assert cls is new


def test_an_old_name_in_a_from_import_warns_at_the_import_line() -> None:
    """``from gateway.client import DetectTimeout`` works, and the warning points at it."""
    with pytest.warns(DeprecationWarning, match="renamed RoundTimedOut") as caught:
        from gateway.client import DetectTimeout
    assert DetectTimeout is RoundTimedOut
    assert caught[0].filename == __file__


def test_client_names_no_class_like_the_sidecars_errors() -> None:
    """No public class of gateway.client shares a name with one in gateway.errors."""
    import gateway.client
    import gateway.errors

    def classes(module: object) -> set[str]:
        return {n for n, v in vars(module).items() if isinstance(v, type) and n[0] != "_"}

    core = classes(gateway.errors)
    assert classes(gateway.client) & core == set()
    assert classes(gateway.client.errors) & core == set()
    with pytest.raises(AttributeError, match="NoSuchName"):
        gateway.client.NoSuchName  # noqa: B018
