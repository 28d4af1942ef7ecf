"""The client SDK against a real sidecar: typed results, typed errors, retries, readiness."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from gateway.client import (
    BaccaratHand,
    GatewayClient,
    GatewayUnavailable,
    IdpFailed,
    InvalidRound,
    NotReady,
    RetryPolicy,
    RouletteNumber,
    RoundTimedOut,
    SicBoDice,
    SyncGatewayClient,
)
from gateway.devtools.sandbox import MosquittoProcess
from gateway.sidecar.app import Sidecar
from gateway.v1 import gateway_pb2 as pb
from tests.integration.harness import Stack, expected, make_config, wait_health

DETECT = "/gateway.v1.GatewayService/Detect"
FAST_RETRY = RetryPolicy(
    max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2, retry_detect=True
)


class DetectAttempts(grpc.aio.ServerInterceptor):
    """Counts Detect attempts reaching the server; refuses the first ``refuse`` with
    UNAVAILABLE, as a sidecar with no broker would."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.attempts = 0

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        if details.method != DETECT:
            return await continuation(details)
        self.attempts += 1
        if self.attempts > self.refuse:
            return await continuation(details)

        async def unavailable(request: pb.DetectRequest, context: Any) -> pb.DetectResponse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "refused by the test")
            raise AssertionError("abort() raises")

        return grpc.unary_unary_rpc_method_handler(
            unavailable,
            request_deserializer=pb.DetectRequest.FromString,
            response_serializer=pb.DetectResponse.SerializeToString,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("game", "kind"),
    [("sicbo", SicBoDice), ("baccarat", BaccaratHand), ("roulette", RouletteNumber)],
)
async def test_detect_returns_the_games_typed_result(
    broker: MosquittoProcess, game: str, kind: type
) -> None:
    """Each game's Detection carries its own result type holding the IDP's values."""
    async with Stack([broker], game) as s, GatewayClient(s.sidecar.address) as client:
        round_id = f"{s.code}-sdk-1"
        d = await client.detect(round_id, deadline_s=5)
        assert isinstance(d.result, kind)
        assert d.result == expected(game, round_id)
        assert d.round_id == round_id


async def test_idp_error_carries_the_idp_code(broker: MosquittoProcess) -> None:
    """err -3 from the IDP raises IdpFailed with idp_code "-3" and name NO_SHAKE."""
    async with Stack([broker], "sicbo") as s, GatewayClient(s.sidecar.address) as client:
        s.behave(answer="error", err=-3)
        with pytest.raises(IdpFailed) as info:
            await client.detect("SBO-001-sdk-err", deadline_s=5)
        err = info.value
        assert (err.idp_code, err.idp_name) == ("-3", "NO_SHAKE")
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # still an AioRpcError
        assert isinstance(err, grpc.aio.AioRpcError)
        assert s.sidecar.address in str(err)


async def test_bad_round_id_is_invalid_round(broker: MosquittoProcess) -> None:
    """A round id the sidecar rejects raises InvalidRound naming the field."""
    async with Stack([broker], "roulette") as s, GatewayClient(s.sidecar.address) as client:
        with pytest.raises(InvalidRound) as info:
            await client.detect("", deadline_s=5)
        assert "round_id" in (info.value.details() or "")


async def test_silence_is_detect_timeout_and_never_retried(broker: MosquittoProcess) -> None:
    """No answer in time raises RoundTimedOut after exactly one attempt."""
    seen = DetectAttempts()
    async with (
        Stack([broker], "roulette", interceptors=[seen]) as s,
        GatewayClient(s.sidecar.address, retry=FAST_RETRY) as client,
    ):
        s.behave(answer="silence")
        started = time.monotonic()
        with pytest.raises(RoundTimedOut) as info:
            await client.detect("ARO-001-sdk-silent", deadline_s=0.5)
        assert time.monotonic() - started < 2
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert seen.attempts == 1


async def test_unavailable_is_retried_by_the_channel(broker: MosquittoProcess) -> None:
    """Two UNAVAILABLE answers are retried by the channel's policy; the third attempt wins."""
    seen = DetectAttempts(refuse=2)
    async with (
        Stack([broker], "roulette", interceptors=[seen]) as s,
        GatewayClient(s.sidecar.address, retry=FAST_RETRY) as client,
    ):
        d = await client.detect("ARO-001-sdk-retry", deadline_s=5)
        assert d.result == expected("roulette", "ARO-001-sdk-retry")
        assert seen.attempts == 3


async def test_detect_is_not_retried_unless_asked(broker: MosquittoProcess) -> None:
    """By default an UNAVAILABLE Detect reaches the caller after one attempt."""
    seen = DetectAttempts(refuse=1)
    async with (
        Stack([broker], "roulette", interceptors=[seen]) as s,
        GatewayClient(s.sidecar.address) as client,
    ):
        with pytest.raises(GatewayUnavailable):
            await client.detect("ARO-001-sdk-once", deadline_s=5)
        assert seen.attempts == 1


async def test_no_broker_is_gateway_unavailable_after_retries(broker: MosquittoProcess) -> None:
    """With the broker gone, Detect raises GatewayUnavailable once every attempt failed."""
    seen = DetectAttempts()
    async with (
        Stack([broker], "roulette", interceptors=[seen], retry_count=1) as s,
        GatewayClient(s.sidecar.address, retry=FAST_RETRY) as client,
    ):
        await broker.kill()
        async with asyncio.timeout(5):
            await wait_health(s.sidecar.address, "NOT_SERVING")
        with pytest.raises(GatewayUnavailable) as info:
            await client.detect("ARO-001-sdk-nobroker", deadline_s=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "could not publish" in (info.value.details() or "")
        assert seen.attempts == FAST_RETRY.max_attempts
        assert (await client.health()).counters.detects_unavailable == seen.attempts


async def test_wait_ready_returns_once_a_late_sidecar_serves(broker: MosquittoProcess) -> None:
    """A client waiting before the sidecar listens returns as soon as it is SERVING."""
    port = free_port()
    async with GatewayClient(f"127.0.0.1:{port}") as client:
        waiting = asyncio.create_task(client.wait_ready(10))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done  # nobody listens yet
        async with Sidecar(make_config([broker], "roulette"), listen=f"127.0.0.1:{port}"):
            async with asyncio.timeout(8):
                await waiting
            assert (await client.health(deadline_s=5)).status == pb.HealthResponse.SERVING


async def test_wait_ready_times_out_naming_target_and_last_status() -> None:
    """Nobody serving the port: NotReady within the deadline, naming target and status."""
    target = f"127.0.0.1:{free_port()}"
    async with GatewayClient(target) as client:
        started = time.monotonic()
        with pytest.raises(NotReady) as info:
            await client.wait_ready(0.5)
        assert time.monotonic() - started < 2
    message = str(info.value)
    assert target in message and "not ready within 0.5s" in message
    assert "last status: none (never connected)" in message
    assert isinstance(info.value, GatewayUnavailable)


async def test_sync_client_from_four_threads_at_once(broker: MosquittoProcess) -> None:
    """Four threads sharing one SyncGatewayClient each get the right result per round."""
    async with Stack([broker], "baccarat") as s:
        s.behave(delay_s=0.3)  # long enough for the four calls of a round to join it
        rounds = [f"BAC-001-sdk-t{k}" for k in range(3)]
        barrier = threading.Barrier(4, timeout=10)
        results: dict[tuple[int, str], Any] = {}

        def game_loop(client: SyncGatewayClient, thread: int) -> None:
            for round_id in rounds:
                barrier.wait()
                results[(thread, round_id)] = client.detect(round_id, deadline_s=5)

        def run(address: str) -> None:
            with SyncGatewayClient(address, default_deadline_s=5) as client:
                client.wait_ready(5)
                threads = [
                    threading.Thread(target=game_loop, args=(client, t), name=f"game-{t}")
                    for t in range(4)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                assert client.health().table_code == "BAC-001"

        await asyncio.to_thread(run, s.sidecar.address)
        assert len(results) == 4 * len(rounds)
        assert len(s.commands("detect")) == len(rounds)  # the four calls of a round joined
        for (_, round_id), d in results.items():
            assert d.round_id == round_id
            assert d.result == expected("baccarat", round_id)


async def test_sync_client_raises_the_same_errors(broker: MosquittoProcess) -> None:
    """The sync facade raises IdpFailed like the async client, and refuses calls once closed."""
    async with Stack([broker], "sicbo") as s:
        s.behave(answer="error", err=-3)

        def run(address: str) -> tuple[str, bool]:
            client = SyncGatewayClient(address)
            try:
                client.detect("SBO-001-sdk-sync-err", deadline_s=5)
            except IdpFailed as exc:
                code = exc.idp_code
            finally:
                client.close()
            client.close()  # a second close does nothing
            try:
                client.health()
            except RuntimeError:
                return code, True
            return code, False

        assert await asyncio.to_thread(run, s.sidecar.address) == ("-3", True)
