"""A broker that stops acknowledging is left like a dead one; deadlines bound, never extend.

Real mosquitto brokers, a proxy in front of one that drops its PUBACKs, the simulated IDP
and an in-process sidecar serving real gRPC.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from gateway.client import GatewayClient, RoundTimedOut
from gateway.devtools.faultproxy import MqttFaultProxy
from gateway.devtools.sandbox import MosquittoProcess
from tests.integration.harness import Stack, expected, make_config, until
from tests.integration.processes import studio


async def test_a_broker_that_stops_acknowledging_is_left_and_the_round_republished(
    two_brokers: list[MosquittoProcess],
) -> None:
    """b1 keeps relaying but drops every PUBACK: it is marked down by the QoS 1 probe, b2
    takes over, and the round in flight is published again on b2 and answered."""
    b1, _ = two_brokers
    async with MqttFaultProxy(b1.host, b1.port) as proxy:
        config = make_config(two_brokers, "roulette", ports={"b1": proxy.port})
        async with Stack(two_brokers, "roulette", config=config, sim_brokers=two_brokers) as s:
            s.behave(delay_s=1.5)  # slower than the stall is noticed
            proxy.stall_acks()
            started = time.monotonic()
            d = await s.client.detect("ARO-001-stall", deadline_s=5)
            elapsed = time.monotonic() - started
            assert d.result == expected("roulette", "ARO-001-stall")
            assert elapsed < 5  # within the deadline; bench/failover.py measures the time
            # Published on b1 (relayed, never acknowledged), then again on b2 (acknowledged).
            via = [c.broker for c in s.sim.commands if c.command == "detect"]
            assert via == ["b1", "b2"] and d.publishes == 1
            h = await s.client.health()
            assert h.active_broker_id == "b2"
            b1_health = next(b for b in h.brokers if b.id == "b1")
            assert not b1_health.connected and "PUBACK" in b1_health.last_error
            assert proxy.dropped_pubacks >= 1
            proxy.heal()
            await until(lambda: s.sidecar.pool.links["b1"].state.value == "ready", 5, "b1 back")


async def test_the_tables_timeout_bounds_a_long_caller_deadline(broker: MosquittoProcess) -> None:
    """A 300 s deadline with a silent IDP ends at the table's timeout (1 s), and the IDP
    is told to stop then, not 300 s later."""
    async with Stack([broker], "roulette", timeout_s=1) as s:
        s.behave(answer="silence")
        started = time.monotonic()
        with pytest.raises(RoundTimedOut) as timed_out:
            await s.client.detect("ARO-001-long", deadline_s=300)
        assert time.monotonic() - started < 10
        assert "within 1.00s" in str(timed_out.value)
        await s.sim.wait_for_command(s.code, "timeout", timeout=5)
        assert not s.sidecar.desk.busy


async def test_a_deadline_under_the_margin_is_refused_before_anything_is_published(
    broker: MosquittoProcess,
) -> None:
    """A call that could never succeed (30 ms) gets DEADLINE_EXCEEDED at once: nothing is
    published and the round in flight is not superseded."""
    async with Stack([broker], "roulette") as s:
        s.behave(delay_s=0.5)
        first = asyncio.create_task(s.client.detect("ARO-001-first", deadline_s=5))
        await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-first")
        with pytest.raises(RoundTimedOut) as refused:
            await s.client.detect("ARO-001-hopeless", deadline_s=0.03)
        assert "nothing was published" in str(refused.value)
        d = await first
        assert d.result == expected("roulette", "ARO-001-first")
        assert [c["arg"]["round_id"] for c in s.commands("detect")] == ["ARO-001-first"]


HOSTILE_CONFIGS = {
    "deeply nested JSON": b"[" * 100_000,
    "not UTF-8": b'{"version": 1, "table": {"game": "\xff\xfe"}}',
    "an unknown field": None,  # filled in from the running config below
}


@pytest.mark.parametrize("kind", HOSTILE_CONFIGS)
async def test_a_hostile_config_swap_is_kept_out_and_the_sidecar_lives_on(
    broker: MosquittoProcess, tmp_path: Path, kind: str
) -> None:
    """A ConfigMap swapped to nested JSON, non-UTF-8 bytes or an unknown field: the sidecar
    keeps its configuration, says why in Health, counts it, and keeps answering."""
    config = make_config([broker], "roulette")
    async with studio([config], tmp_path) as (_, [proc]):
        content = HOSTILE_CONFIGS[kind]
        if content is None:
            doc = json.loads(proc.config_path.read_text())
            doc["table"]["timeout_seconds"] = 3
            content = json.dumps(doc).encode()
        proc.write_config(content)
        async with GatewayClient(proc.address) as client:

            async def rejected() -> bool:
                return bool((await client.health()).config_error)

            async with asyncio.timeout(10):
                while not await rejected():  # noqa: ASYNC110 - the state is in the process
                    await asyncio.sleep(0.05)
            h = await client.health()
            assert "kept generation" in h.config_error
            assert h.dropped_inputs["config"] == 1
            d = await client.detect("ARO-001-after-swap", deadline_s=5)
            assert d.result == expected("roulette", "ARO-001-after-swap")
        proc.assert_alive()


async def test_a_password_file_that_is_not_utf8_is_refused_by_name(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Hot reload of a config whose password_file holds binary: refused, naming the field
    (never the content), and the sidecar lives on."""
    config = make_config([broker], "roulette")
    secret = tmp_path / "password"
    secret.write_bytes(b"\xff\xfe\x00secret")
    async with studio([config], tmp_path) as (_, [proc]):
        doc = json.loads(proc.config_path.read_text())
        doc["brokers"][0]["password_file"] = str(secret)
        doc["generation"] = 2
        proc.write_config(json.dumps(doc).encode())
        async with GatewayClient(proc.address) as client:
            async with asyncio.timeout(10):
                while not (await client.health()).config_error:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            error = (await client.health()).config_error
            assert "password_file" in error and "secret" not in error
        proc.assert_alive()


async def test_a_command_a_hung_broker_delivers_late_does_not_cost_the_round(
    two_brokers: list[MosquittoProcess],
) -> None:
    """b1 hangs with round r1's detect unread in its socket; r1 is answered via b2. While
    r2 waits, b1 resumes and hands the IDP r1's stale detect (a real IDP would switch to
    it): the sidecar publishes r2 again, and r2 is answered."""
    b1, _ = two_brokers
    async with Stack(two_brokers, "roulette") as s:
        b1.pause()
        try:
            d1 = await s.client.detect("ARO-001-r1", deadline_s=5)
            assert d1.broker_id == "b2"
            s.behave(delay_s=1.0)
            second = asyncio.create_task(s.client.detect("ARO-001-r2", deadline_s=8))
            await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-r2")
        finally:
            b1.resume()
        # The hung broker delivers r1's detect to the IDP now, after r2's.
        late = await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-r1", count=2)
        assert late.broker == "b1"
        d2 = await second
        assert d2.result == expected("roulette", "ARO-001-r2")
        assert d2.publishes >= 2  # published again after the late command


async def test_a_round_whose_answer_came_while_its_broker_was_away_is_published_again(
    broker: MosquittoProcess,
) -> None:
    """The only broker's connection drops right after the detect and the IDP answers while
    the sidecar is away (subscriptions are not persistent, so that answer is lost): once
    the link is back on a new session the detect is published again and answered."""
    async with MqttFaultProxy(broker.host, broker.port) as proxy:
        config = make_config([broker], "roulette", ports={"b1": proxy.port})
        async with Stack([broker], "roulette", config=config, sim_brokers=[broker]) as s:
            s.behave(delay_s=1.0)  # the cut comes well before the answer
            rid = "ARO-001-away"
            call = asyncio.create_task(s.client.detect(rid, deadline_s=8))
            await s.sim.wait_for_command(s.code, "detect", round_id=rid)
            # Cut only once the sidecar has the PUBACK: a detect not yet acknowledged is
            # retried by the publish path, which is not what this test is about.
            desk = s.sidecar.desk
            await until(
                lambda: desk._current is not None and desk._current.publishes > 0, 5, "PUBACK"
            )
            proxy.cut()
            await s.sim.wait_for_final(rid)  # sent to the broker while the sidecar is away
            proxy.heal()
            d = await call
            assert d.result == expected("roulette", rid)
            detects = [c["arg"]["round_id"] for c in s.commands("detect")]
            assert detects == [rid, rid]


async def test_next_detect_goes_out_while_the_last_timeout_awaits_its_puback(
    broker: MosquittoProcess,
) -> None:
    """Round 2's detect leaves behind round 1's timeout without waiting for its PUBACK:
    with every PUBACK held back, round 2 is answered, and the IDP got detect, timeout,
    detect in that order."""
    async with MqttFaultProxy(broker.host, broker.port) as proxy:
        slow = {"keepalive_s": 10, "operation_timeout_s": 4, "probe_timeout_s": 4}
        config = make_config([broker], "roulette", ports={"b1": proxy.port}, failover=slow)
        async with Stack([broker], "roulette", config=config, sim_brokers=[broker]) as s:
            s.behave(delay_s=0.3)
            first = asyncio.create_task(s.client.detect("ARO-001-one", deadline_s=5))
            await s.sim.wait_for_command(s.code, "detect", timeout=2)
            # The detect's own PUBACK is back (the round is marked published) ...
            desk = s.sidecar.desk
            await until(lambda: desk._current is not None and desk._current.publishes == 1,
                        2, "detect acknowledged")  # fmt: skip
            proxy.stall_acks()  # ... and from now on no PUBACK reaches the sidecar
            s.behave(delay_s=0)
            assert (await first).result == expected("roulette", "ARO-001-one")
            # The old queue waited up to operation_timeout_s (4 s) for the timeout's PUBACK
            # before this detect: past this call's deadline.
            second = await s.client.detect("ARO-001-two", deadline_s=2)
            assert second.result == expected("roulette", "ARO-001-two")
            assert proxy.mode.value == "stall_acks" and proxy.dropped_pubacks >= 2
            sent = [(c.command, c.payload["arg"].get("round_id")) for c in s.sim.commands]
            assert sent[:3] == [
                ("detect", "ARO-001-one"),
                ("timeout", None),
                ("detect", "ARO-001-two"),
            ]
            proxy.heal()
