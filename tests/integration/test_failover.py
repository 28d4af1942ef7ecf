"""Runtime failover and fail-back between independent brokers, with real faults.

The tests kill (SIGKILL) and hang (SIGSTOP) real mosquitto processes under Detect load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.client import GatewayClient
from gateway.config import parse_config
from gateway.devtools.sandbox import MosquittoProcess, make_tls_material
from gateway.devtools.sim import Behaviour, IdpSimulator, sim_devices
from gateway.sidecar.app import Sidecar
from gateway.sidecar.election import Decision
from gateway.v1 import gateway_pb2 as pb
from tests.integration.harness import (
    FAST_FAILOVER,
    Stack,
    expected,
    fleet,
    make_config,
    until,
    wait_health,
)


def watch_decisions(sidecar: Sidecar) -> list[tuple[float, Decision]]:
    """Record every active-broker decision of a sidecar with its time."""
    seen: list[tuple[float, Decision]] = []
    sidecar.elector.add_listener(lambda d: seen.append((time.monotonic(), d)))
    return seen


async def run_rounds(
    client: GatewayClient, code: str, stop: asyncio.Event, results: list[Any], failures: list[str]
) -> None:
    """Rounds back to back, as a table does, each with a 5 s deadline."""
    n = 0
    while not stop.is_set():
        n += 1
        round_id = f"{code}-{n}"
        try:
            d = await client.detect(round_id, deadline_s=5)
        except grpc.aio.AioRpcError as exc:
            failures.append(f"{round_id}: {exc.code().name} {exc.details()}")
            continue
        assert d.result == expected("roulette", round_id)
        results.append((time.monotonic(), d))


async def test_kill_of_the_active_broker_under_load_loses_no_round(
    two_brokers: list[MosquittoProcess],
) -> None:
    """SIGKILL of the active broker while three tables run rounds: zero failed Detects."""
    b1, _ = two_brokers
    codes = ["ARO-005", "ARO-006", "ARO-007"]
    async with fleet(two_brokers, codes, Behaviour(delay_s=0.05)) as (_, sidecars, clients):
        stop = asyncio.Event()
        results: list[Any] = []
        failures: list[str] = []
        tasks = [
            asyncio.create_task(run_rounds(c, code, stop, results, failures))
            for c, code in zip(clients, codes, strict=True)
        ]
        try:
            await until(lambda: len(results) >= 15, 10, "rounds before the fault")
            killed_at = time.monotonic()
            await b1.kill()
            await until(
                lambda: sum(1 for t, d in results if t > killed_at and d.broker_id == "b2") >= 15,
                10,
                "rounds through b2 after the kill",
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert failures == []
        for s in sidecars:
            assert s.pool.decision().broker_id == "b2"
            health = s.service.health()
            b1_health = next(b for b in health.brokers if b.id == "b1")
            assert b1_health.state == pb.BROKER_STATE_DOWN and b1_health.failures == 1
            assert health.status == pb.HealthResponse.DEGRADED


async def test_hung_broker_is_declared_down_within_a_second(
    two_brokers: list[MosquittoProcess],
) -> None:
    """SIGSTOP of the active broker (default timers): switched within 1 s, the round survives."""
    b1, _ = two_brokers
    config = make_config(
        two_brokers,
        "roulette",
        failover={"probe_interval_s": 0.2, "probe_timeout_s": 0.6, "operation_timeout_s": 2.0},
    )
    async with Stack(two_brokers, config=config) as s:
        decisions = watch_decisions(s.sidecar)
        s.behave(delay_s=0.3)
        call = asyncio.create_task(s.client.detect("ARO-001-hang", deadline_s=5))
        await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-hang")
        paused_at = time.monotonic()
        b1.pause()
        try:
            await until(lambda: any(d.broker_id == "b2" for _, d in decisions), 1.0, "switch")
            switched_at = next(t for t, d in decisions if d.broker_id == "b2")
            assert switched_at - paused_at <= 1.0
            d = await call
            assert d.result == expected("roulette", "ARO-001-hang")
            assert d.broker_id == "b2" and d.publishes == 2
            b1_health = next(b for b in s.sidecar.service.health().brokers if b.id == "b1")
            assert "unresponsive" in b1_health.last_error
        finally:
            b1.resume()


async def test_fail_back_waits_for_the_hold_down_and_for_the_round(
    two_brokers: list[MosquittoProcess],
) -> None:
    """A restarted preferred broker is taken back only after the hold-down, never mid-round."""
    b1, _ = two_brokers
    async with Stack(two_brokers, "roulette", failover={"holddown_s": 1.0}) as s:
        decisions = watch_decisions(s.sidecar)
        await b1.kill()
        await until(lambda: s.sidecar.pool.decision().broker_id == "b2", 2, "failover")
        await b1.restart()
        link = s.sidecar.pool.links["b1"]
        await until(lambda: link.status().ready, 5, "b1 ready again")
        ready_at = time.monotonic()
        # A round starts inside the hold-down and lasts past its end.
        s.behave(delay_s=1.5)
        call = asyncio.create_task(s.client.detect("ARO-001-long", deadline_s=5))
        await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-long")
        await asyncio.sleep(1.2)  # past the hold-down, the round still in flight
        assert s.sidecar.pool.decision().broker_id == "b2"
        assert "waits for the round" in s.sidecar.pool.decision().reason
        d = await call
        assert d.broker_id == "b2" and d.publishes == 1
        await until(lambda: s.sidecar.pool.decision().broker_id == "b1", 2, "fail-back")
        back_at = next(t for t, dec in decisions if dec.broker_id == "b1" and t > ready_at)
        assert back_at - ready_at >= 1.0
        s.behave(delay_s=0.02)
        d = await s.client.detect("ARO-001-after")  # re-subscribed on b1: the answer arrives
        assert d.broker_id == "b1"
        assert d.result == expected("roulette", "ARO-001-after")


async def test_all_brokers_down_then_one_back(two_brokers: list[MosquittoProcess]) -> None:
    """No broker: UNAVAILABLE at once and NOT_SERVING; one broker back: serving by itself."""
    b1, b2 = two_brokers
    async with Stack(two_brokers, "roulette", retry_count=1) as s:
        await b1.kill()
        await b2.kill()
        async with asyncio.timeout(5):
            await wait_health(s.sidecar.address, "NOT_SERVING")
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.client.detect("ARO-001-none", deadline_s=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5  # far from the 10 s deadline
        assert (await s.client.health()).status == pb.HealthResponse.NOT_SERVING
        await until(lambda: not s.sim.connected, 5, "the simulated IDP lost both brokers")
        await b2.restart()
        async with asyncio.timeout(10):
            await wait_health(s.sidecar.address, "SERVING")
        await until(lambda: "b2" in s.sim.connected, 5, "the simulated IDP is back on b2")
        d = await s.client.detect("ARO-001-back")
        assert d.broker_id == "b2" and d.result == expected("roulette", "ARO-001-back")


async def test_wrong_credentials_are_named_in_health() -> None:
    """A broker refusing our password is reported 'not authorised'; the other one serves."""
    async with MosquittoProcess(users={"gw": "right"}) as secured, MosquittoProcess() as open_:
        doc = {
            "version": 1,
            "table": {"game": "roulette", "code": "ARO-001", "input": "rtmp://192.0.2.1/l"},
            "brokers": [
                {
                    "id": "secured",
                    "host": secured.host,
                    "port": secured.port,
                    "priority": 1,
                    "username": "gw",
                    "password_env": "PW",
                },
                {"id": "open", "host": open_.host, "port": open_.port, "priority": 2},
            ],
            "failover": FAST_FAILOVER,
        }
        config = parse_config(doc, source="<test>", env={"PW": "wrong"})
        async with Stack(
            [secured, open_], config=config, sim_brokers=[open_], all_ready=False
        ) as s:
            link = s.sidecar.pool.links["secured"]
            await until(lambda: bool(link.status().last_error), 5, "auth error recorded")
            health = await s.client.health()
            entry = next(b for b in health.brokers if b.id == "secured")
            assert not entry.connected
            assert entry.last_error.startswith("not authorised: bad username or password")
            assert "wrong" not in str(health)  # never the secret
            assert health.active_broker_id == "open"
            assert (await s.client.detect("ARO-001-r1")).broker_id == "open"


async def test_tls_broker_serves_and_an_unknown_ca_is_named(tmp_path: Path) -> None:
    """A TLS broker with our CA carries Detects; one signed by another CA is reported as TLS."""
    ours = await make_tls_material(tmp_path / "ours")
    theirs = await make_tls_material(tmp_path / "theirs")
    async with MosquittoProcess(tls=ours) as good, MosquittoProcess(tls=theirs) as bad:
        brokers = [
            {
                "id": "tls-good",
                "host": good.host,
                "port": good.port,
                "priority": 1,
                "tls": {"ca_file": str(ours.ca_cert)},
            },
            {
                "id": "tls-bad",
                "host": bad.host,
                "port": bad.port,
                "priority": 2,
                "tls": {"ca_file": str(ours.ca_cert)},
            },
        ]
        doc = {
            "version": 1,
            "table": {"game": "sicbo", "code": "SBO-001", "input": "rtmp://192.0.2.1/l"},
            "brokers": brokers,
            "failover": FAST_FAILOVER,
        }
        config = parse_config(doc, source="<test>", env={})
        sim_doc = {**doc, "brokers": brokers[:1]}
        sim_config = parse_config(sim_doc, source="<test>", env={})
        devices, tables = sim_devices([sim_config])
        sim = IdpSimulator(devices, tables, Behaviour(delay_s=0.02))
        task = asyncio.create_task(sim.run())
        try:
            await sim.wait_connected()
            async with Sidecar(config, listen="127.0.0.1:0") as sidecar:
                async with asyncio.timeout(10):
                    await sidecar.wait_serving()
                bad_link = sidecar.pool.links["tls-bad"]
                await until(lambda: bool(bad_link.status().last_error), 5, "TLS error recorded")
                async with GatewayClient(sidecar.address) as client:
                    d = await client.detect("SBO-001-tls")
                    assert d.broker_id == "tls-good"
                    assert d.result == expected("sicbo", "SBO-001-tls")
                    health = await client.health()
                entry = next(b for b in health.brokers if b.id == "tls-bad")
                assert entry.last_error.startswith("TLS handshake failed")
                assert "CERTIFICATE_VERIFY_FAILED" in entry.last_error
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_two_sidecars_of_one_table_do_not_evict_each_other(
    broker: MosquittoProcess,
) -> None:
    """Each sidecar instance has its own MQTT client id: both stay connected."""
    config = make_config([broker], "roulette")
    async with (
        Sidecar(config, listen="127.0.0.1:0") as a,
        Sidecar(config, listen="127.0.0.1:0") as b,
    ):
        async with asyncio.timeout(5):
            await a.wait_serving()
            await b.wait_serving()
        await asyncio.sleep(0.5)  # several probe rounds: an eviction would show up here
        for s in (a, b):
            link = s.pool.links["b1"]
            assert link.status().ready and link.status().failures == 0


async def test_mutual_tls_with_a_server_name(tmp_path: Path) -> None:
    """A broker requiring client certificates, dialled by IP, verified against its DNS name."""
    tls = await make_tls_material(tmp_path / "pki", hosts=("localhost",))
    async with MosquittoProcess(tls=tls, require_client_cert=True) as broker:
        entry = {
            "id": "mtls",
            "host": broker.host,  # 127.0.0.1, which the certificate does not name
            "port": broker.port,
            "tls": {
                "ca_file": str(tls.ca_cert),
                "cert_file": str(tls.client_cert),
                "key_file": str(tls.client_key),
                "server_name": "localhost",
            },
        }
        doc = {
            "version": 1,
            "table": {"game": "baccarat", "code": "BAC-001", "input": "rtmp://192.0.2.1/l"},
            "brokers": [entry],
            "failover": FAST_FAILOVER,
        }
        config = parse_config(doc, source="<test>", env={})
        async with Stack([broker], config=config) as s:
            d = await s.client.detect("BAC-001-mtls")
            assert d.broker_id == "mtls"
            assert d.result == expected("baccarat", "BAC-001-mtls")
        # Without the server name, the same certificate is rejected for 127.0.0.1.
        unnamed = {**entry, "tls": {k: v for k, v in entry["tls"].items() if k != "server_name"}}
        config = parse_config({**doc, "brokers": [unnamed]}, source="<test>", env={})
        async with Sidecar(config, listen="127.0.0.1:0") as sidecar:
            link = sidecar.pool.links["mtls"]
            await until(lambda: bool(link.status().last_error), 5, "TLS error recorded")
            assert link.status().last_error.startswith("TLS handshake failed")
            assert not link.status().ready
