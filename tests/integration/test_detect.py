"""Detect end to end: real mosquitto, the device simulator, a real gRPC sidecar and client."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import grpc
import pytest

from gateway.client import GatewayClient
from gateway.client.errors import metadata_pairs
from gateway.devtools.sandbox import MosquittoProcess
from gateway.protocol import RouletteNumber
from tests.integration.harness import INPUT, OUTPUT, Stack, expected


async def rpc_error(coro: object) -> grpc.aio.AioRpcError:
    """Await a call that must fail and return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro  # type: ignore[misc]
    return info.value


@pytest.mark.parametrize("game", ["sicbo", "baccarat", "roulette"])
async def test_happy_path_returns_the_idps_result(broker: MosquittoProcess, game: str) -> None:
    """Each game gets exactly the result the IDP sent for the round, via the broker it used."""
    async with Stack([broker], game) as s:
        round_id = f"{s.code}-20251120-101500"
        d = await s.client.detect(round_id, deadline_s=5)
        assert d.round_id == round_id
        assert d.result == expected(game, round_id)
        assert d.broker_id == "b1"
        assert d.frames_seen >= 1 and d.publishes == 1
        detect = s.commands("detect")[0]
        assert detect["arg"]["round_id"] == round_id
        assert detect["arg"]["input"] == INPUT
        assert "input_stream" not in detect["arg"]
        if game == "sicbo":
            assert detect["arg"]["output"] == OUTPUT
        else:
            assert "output" not in detect["arg"]


async def test_request_streams_override_the_configured_ones(broker: MosquittoProcess) -> None:
    """input/output in the request are what the IDP is told to read."""
    async with Stack([broker], "sicbo") as s:
        await s.client.detect(
            "SBO-001-r1", input_url="rtmp://192.0.2.9/live/a", output_url="rtmp://192.0.2.9/o"
        )
        arg = s.commands("detect")[0]["arg"]
        assert (arg["input"], arg["output"]) == ("rtmp://192.0.2.9/live/a", "rtmp://192.0.2.9/o")


async def test_stale_and_foreign_rounds_are_skipped(broker: MosquittoProcess) -> None:
    """Answers for the previous round or another round never complete this one."""
    async with Stack([broker], "roulette") as s:
        await s.client.detect("ARO-001-r1")
        s.behave(stale=2, wrong_round=2, delay_s=0.05)
        d = await s.client.detect("ARO-001-r2")
        assert d.result == expected("roulette", "ARO-001-r2")
        c = (await s.client.health()).counters
        assert c.stale_frames >= 2  # made-up round ids
        assert c.duplicate_frames >= 2  # late repeats of the answered round r1


async def test_garbage_and_a_1mib_payload_are_counted_never_returned(
    broker: MosquittoProcess,
) -> None:
    """Malformed frames are counted as invalid, a 1 MiB one never even reaches the sidecar
    (MQTT 5 maximum packet size: the broker discards it), and the real answer still wins."""
    async with Stack([broker], "baccarat") as s:
        s.behave(garbage=5, oversize=1, delay_s=0.05)
        d = await s.client.detect("BAC-001-r1")
        assert d.result == expected("baccarat", "BAC-001-r1")
        h = await s.client.health()
        assert h.counters.invalid_frames == 5


async def test_garbage_only_ends_in_deadline_naming_what_was_seen(
    broker: MosquittoProcess,
) -> None:
    """With nothing valid, the caller gets DEADLINE_EXCEEDED saying how many invalid frames."""
    async with Stack([broker], "sicbo") as s:
        s.behave(garbage=3, answer="silence")
        err = await rpc_error(s.client.detect("SBO-001-r1", deadline_s=0.6))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "3 invalid" in (err.details() or "")


async def test_idp_error_code_is_reported_not_guessed(broker: MosquittoProcess) -> None:
    """err -3 for the round ends the call with FAILED_PRECONDITION naming NO_SHAKE."""
    async with Stack([broker], "sicbo") as s:
        s.behave(answer="error", err=-3)
        err = await rpc_error(s.client.detect("SBO-001-r1"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        meta = dict(metadata_pairs(err.trailing_metadata()))
        assert meta["idp-err"] == "-3" and meta["idp-err-name"] == "NO_SHAKE"
        assert "-3 NO_SHAKE" in (err.details() or "")
        await s.sim.wait_for_command(s.code, "timeout", timeout=2)


async def test_not_yet_frames_without_round_id_wait_for_the_answer(
    broker: MosquittoProcess,
) -> None:
    """err -1 frames (no round_id) and early empty frames mean 'not yet', then the answer."""
    async with Stack([broker], "roulette") as s:
        s.behave(not_yet=3, early_empty=1, delay_s=0.05)
        d = await s.client.detect("ARO-001-r1")
        assert d.result == expected("roulette", "ARO-001-r1")
        assert (await s.client.health()).counters.not_yet_frames == 4


async def test_silence_is_deadline_exceeded_and_stops_the_idp(broker: MosquittoProcess) -> None:
    """No answer: DEADLINE_EXCEEDED (no default result) and a timeout command to the IDP."""
    async with Stack([broker], "roulette") as s:
        s.behave(answer="silence", not_yet=2)
        err = await rpc_error(s.client.detect("ARO-001-r1", deadline_s=0.5))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "2 not-yet" in (err.details() or "")
        await s.sim.wait_for_command(s.code, "timeout", timeout=2)
        assert (await s.client.health()).counters.detects_timed_out == 1


async def test_without_grpc_deadline_the_table_timeout_applies(broker: MosquittoProcess) -> None:
    """A call with no deadline ends at the table's configured timeout."""
    async with Stack([broker], "roulette", timeout_s=0.4) as s:
        s.behave(answer="silence")
        err = await rpc_error(s.client.detect("ARO-001-r1", deadline_s=None))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "within 0.40s" in (err.details() or "")


async def test_late_answer_does_not_leak_into_the_next_round(broker: MosquittoProcess) -> None:
    """An answer for round A arriving while round B waits is not returned for B."""
    async with Stack([broker], "sicbo") as s:
        s.behave(answer="silence")
        await rpc_error(s.client.detect("SBO-001-A", deadline_s=0.3))
        s.behave(delay_s=0.5)
        b = asyncio.create_task(s.client.detect("SBO-001-B", deadline_s=5))
        await s.sim.wait_for_command(s.code, "detect", round_id="SBO-001-B")
        late = {"response": "result", "arg": {"round_id": "SBO-001-A", "res": [1, 1, 1], "err": 0}}
        await s.inject(broker, json.dumps(late).encode())
        d = await b
        assert d.result == expected("sicbo", "SBO-001-B")
        assert (await s.client.health()).counters.stale_frames >= 1


async def test_cancelled_call_sends_timeout(broker: MosquittoProcess) -> None:
    """When the caller gives up, the IDP is told to stop (timeout command) once."""
    async with Stack([broker], "roulette") as s:
        s.behave(answer="silence")
        call = asyncio.create_task(s.client.detect("ARO-001-r1", deadline_s=10))
        await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-r1")
        call.cancel()
        await s.sim.wait_for_command(s.code, "timeout", timeout=2)
        assert len(s.commands("timeout")) == 1


async def test_answer_is_followed_by_exactly_one_timeout(broker: MosquittoProcess) -> None:
    """After the answer the IDP gets one timeout command, after the detect."""
    async with Stack([broker], "roulette") as s:
        s.behave(repeats=3, delay_s=0.02)
        await s.client.detect("ARO-001-r1")
        await s.sim.wait_for_command(s.code, "timeout", timeout=2)
        names = [c["command"] for c in s.commands()]
        assert names == ["detect", "timeout"]


async def test_second_detect_for_the_same_round_joins(broker: MosquittoProcess) -> None:
    """Two concurrent Detects of one round share one publish and one answer."""
    async with Stack([broker], "baccarat") as s:
        s.behave(delay_s=0.3)
        first = asyncio.create_task(s.client.detect("BAC-001-r1"))
        await s.sim.wait_for_command(s.code, "detect", round_id="BAC-001-r1")
        second = await s.client.detect("BAC-001-r1")
        assert (await first).result == second.result == expected("baccarat", "BAC-001-r1")
        assert len(s.commands("detect")) == 1


async def test_new_round_supersedes_the_running_one(broker: MosquittoProcess) -> None:
    """A Detect for a new round aborts the running one, naming the new round."""
    async with Stack([broker], "roulette") as s:
        s.behave(delay_s=5)
        old = asyncio.create_task(s.client.detect("ARO-001-old"))
        await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-old")
        s.behave(delay_s=0.05)
        new = await s.client.detect("ARO-001-new")
        err = await rpc_error(old)
        assert err.code() == grpc.StatusCode.ABORTED
        assert "ARO-001-new" in (err.details() or "")
        assert new.result == expected("roulette", "ARO-001-new")
        # No timeout between the two detects: it would stop the new detection.
        names = [(c["command"], c["arg"].get("round_id")) for c in s.commands()]
        assert names[:2] == [("detect", "ARO-001-old"), ("detect", "ARO-001-new")]


@pytest.mark.parametrize(
    ("round_id", "input_url", "output_url", "names"),
    [
        ("", "", "", "round_id is required"),
        ("x" * 200, "", "", "round_id is 200 characters"),
        ("SBO-001\n1", "", "", "round_id must be printable"),
        ("SBO-001-1", "not a url", "", "input"),
        ("SBO-001-1", "ftp://192.0.2.1/x", "", "input must be an absolute"),
        ("SBO-001-1", "", "rtmp://bad host/x", "output"),
    ],
)
async def test_invalid_requests_are_rejected_before_publishing(
    broker: MosquittoProcess, round_id: str, input_url: str, output_url: str, names: str
) -> None:
    """Bad round ids and URLs get INVALID_ARGUMENT naming the field; nothing is published."""
    async with Stack([broker], "sicbo") as s:
        err = await rpc_error(s.client.detect(round_id, input_url=input_url, output_url=output_url))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert names in (err.details() or "")
        assert s.commands() == []


async def test_no_broker_is_unavailable_fast(broker: MosquittoProcess) -> None:
    """All brokers down: UNAVAILABLE after the retries, not at the deadline."""
    async with Stack([broker], "roulette", retry_count=2, retry_delay_s=0.1) as s:
        await broker.kill()
        err = await rpc_error(s.client.detect("ARO-001-r1", deadline_s=20))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "after 2 attempt(s)" in (err.details() or "")
        assert (await s.client.health()).counters.detects_unavailable == 1


async def test_duplicates_through_two_brokers_complete_once(
    two_brokers: list[MosquittoProcess],
) -> None:
    """The IDP answering on both brokers yields one result; the copy counts as a duplicate."""
    async with Stack(two_brokers, "roulette") as s:
        s.behave(answer_on="all", delay_s=0.02)
        d = await s.client.detect("ARO-001-r1")
        assert d.result == expected("roulette", "ARO-001-r1")
        await s.sim.wait_for_command(s.code, "timeout", timeout=2)
        h = await s.client.health()
        assert h.counters.detects_ok == 1
        assert h.counters.duplicate_frames >= 1


async def test_the_predecessors_result_forms_are_results(broker: MosquittoProcess) -> None:
    """A device answering the predecessor's way (no err, the number as "25") is heard."""
    async with Stack([broker], "roulette") as s:
        s.behave(answer="silence")
        for n, res in enumerate(('"25"', "7")):
            rid = f"ARO-001-old-{n}"
            call = asyncio.create_task(s.client.detect(rid, deadline_s=5))
            await s.sim.wait_for_command(s.code, "detect", round_id=rid)
            frame = f'{{"response": "result", "arg": {{"round_id": "{rid}", "res": {res}}}}}'
            await s.inject(broker, frame.encode())
            assert (await call).result == RouletteNumber(int(res.strip('"')))


async def test_detect_over_a_unix_socket(broker: MosquittoProcess, tmp_path: Path) -> None:
    """A game in the same pod calls Detect on the sidecar's Unix socket (``unix:PATH``),
    which any user may connect to; TCP stays open alongside."""
    path = tmp_path / "gateway.sock"
    async with Stack([broker], "roulette", listen_unix=str(path)) as s:
        assert s.sidecar.unix_target == f"unix:{path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        async with GatewayClient(f"unix:{path}") as game:
            d = await game.detect("ARO-001-uds", deadline_s=5)
            assert d.result == expected("roulette", "ARO-001-uds")
            assert (await game.health()).table_code == "ARO-001"
        assert (await s.client.detect("ARO-001-tcp", deadline_s=5)).round_id == "ARO-001-tcp"
    assert not path.exists()  # the server removes its socket when it stops
