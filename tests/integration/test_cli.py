"""The ``gateway`` command and standard tools (grpcurl) against a real sidecar."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.devtools.sandbox import MosquittoProcess
from gateway.protocol import RouletteNumber
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.harness import Stack, expected, until, wait_health

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def run(*argv: str, limit_s: float = 30) -> tuple[int, str, str]:
    """Run a command; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def gateway(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


async def test_grpcurl_uses_reflection_and_health_with_no_proto_files(
    broker: MosquittoProcess,
) -> None:
    """grpcurl lists the services, calls Detect and grpc.health.v1 with no .proto at hand."""
    async with Stack([broker], "roulette") as s:
        addr = s.sidecar.address
        code, out, _ = await run(GRPCURL, "-plaintext", addr, "list")
        assert code == 0
        assert {"gateway.v1.GatewayService", "grpc.health.v1.Health"} <= set(out.split())
        for service in ("", "gateway.v1.GatewayService"):
            body = json.dumps({"service": service})
            code, out, _ = await run(
                GRPCURL, "-plaintext", "-d", body, addr, "grpc.health.v1.Health/Check"
            )
            assert code == 0 and json.loads(out)["status"] == "SERVING"
        body = json.dumps({"round_id": "ARO-001-grpcurl"})
        code, out, err = await run(
            GRPCURL, "-plaintext", "-d", body, addr, "gateway.v1.GatewayService/Detect"
        )
        assert code == 0, err
        doc = json.loads(out)
        assert doc["round_id"] == "ARO-001-grpcurl"  # grpcurl prints proto field names
        assert doc["roulette"].get("number", 0) == expected("roulette", "ARO-001-grpcurl").number  # type: ignore[union-attr]


async def test_standard_health_follows_the_brokers(broker: MosquittoProcess) -> None:
    """grpc.health.v1 says NOT_SERVING while no broker is ready and SERVING once one is."""
    async with Stack([broker], "roulette") as s:
        addr = s.sidecar.address
        await broker.kill()
        async with asyncio.timeout(5):
            await wait_health(addr, "NOT_SERVING")
        _, out, _ = await run(GRPCURL, "-plaintext", addr, "grpc.health.v1.Health/Check")
        assert json.loads(out)["status"] == "NOT_SERVING"
        await broker.restart()
        async with asyncio.timeout(10):
            await wait_health(addr, "SERVING")
        _, out, _ = await run(GRPCURL, "-plaintext", addr, "grpc.health.v1.Health/Check")
        assert json.loads(out)["status"] == "SERVING"
        # The simulated IDP reconnects on its own backoff, maybe after the sidecar did.
        await until(lambda: "b1" in s.sim.connected, 5, "the simulated IDP is back on b1")
        d = await s.client.detect("ARO-001-after-restart")
        assert d.result == expected("roulette", "ARO-001-after-restart")


async def test_probe_port_serves_health_alone(broker: MosquittoProcess) -> None:
    """--health-listen: kubelet's port has readiness ("") and liveness, and no Detect."""
    async with Stack([broker], "roulette", health_listen="127.0.0.1:0") as s:
        probe = f"127.0.0.1:{s.sidecar.health_port}"
        assert s.sidecar.health_port not in (0, s.sidecar.port)
        async with asyncio.timeout(5):
            await wait_health(probe, "SERVING")
        await broker.kill()
        async with asyncio.timeout(5):
            await wait_health(probe, "NOT_SERVING")  # not ready: no broker
        async with grpc.aio.insecure_channel(probe) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            alive = await check(health_pb2.HealthCheckRequest(service="liveness"))
            assert alive.status == health_pb2.HealthCheckResponse.SERVING  # but alive
            detect = gateway_pb2_grpc.GatewayServiceStub(channel).Detect
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await detect(gateway_pb2.DetectRequest(round_id="ARO-001-probe"))
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_cli_detect_and_health(broker: MosquittoProcess) -> None:
    """`gateway detect` prints the result; `gateway health` the brokers and counters."""
    async with Stack([broker], "sicbo") as s:
        addr = s.sidecar.address
        code, out, err = await run(*gateway("detect", "--target", addr, "--round-id", "SBO-001-c1"))
        assert code == 0, err
        dice = " ".join(str(d) for d in expected("sicbo", "SBO-001-c1").dice)  # type: ignore[union-attr]
        assert f"dice {dice}" in out
        code, out, _ = await run(
            *gateway("detect", "--target", addr, "--round-id", "SBO-001-c2", "--json")
        )
        assert code == 0 and len(json.loads(out)["sicbo"]["dice"]) == 3
        code, out, _ = await run(*gateway("health", "--target", addr))
        assert code == 0
        assert "SERVING" in out and "detects ok 2" in out
        code, out, _ = await run(*gateway("health", "--target", addr, "--json"))
        assert json.loads(out)["activeBrokerId"] == "b1"


async def test_cli_detect_json_prints_a_zero_as_a_result(broker: MosquittoProcess) -> None:
    """Roulette 0 is a result: --json prints "number": 0, not an empty object."""
    round_id = "ARO-001-zero-46"
    assert expected("roulette", round_id) == RouletteNumber(0)
    async with Stack([broker], "roulette") as s:
        code, out, err = await run(
            *gateway("detect", "--target", s.sidecar.address, "--round-id", round_id, "--json")
        )
        assert code == 0, err
        assert json.loads(out)["roulette"] == {"number": 0}


async def test_cli_detect_reports_errors_with_a_nonzero_exit(broker: MosquittoProcess) -> None:
    """A failing Detect prints the status and the IDP code and exits non-zero."""
    async with Stack([broker], "sicbo") as s:
        s.behave(answer="error", err=-3)
        code, _, err = await run(
            *gateway("detect", "--target", s.sidecar.address, "--round-id", "SBO-001-e1")
        )
        assert code == 1
        assert "FAILED_PRECONDITION" in err and "'idp-err': '-3'" in err


async def test_cli_shake(broker: MosquittoProcess) -> None:
    """`gateway shake` prints the shaker's states; a motion fault exits 1 naming it."""
    shaker = {"shaker_listens": "ikg/sicbo/B/listens", "shaker_says": "ikg/sicbo/B/says"}
    async with Stack([broker], "sicbo", **shaker) as s:
        addr = s.sidecar.address
        code, out, err = await run(*gateway("shake", "--target", addr, "--duration", "0.1"))
        assert code == 0, err
        assert "shaken: S2 -> S1 -> S0" in out and "via b1" in out
        s.sim.shaker_fault[s.code] = True
        code, _, err = await run(*gateway("shake", "--target", addr, "--duration", "0.1"))
        assert code == 1
        assert "FAILED_PRECONDITION" in err and "'shake-err': 'MOTION_FAULT'" in err


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ("{not json", "not valid JSON"),
        (
            '{"brokers": [], "game_config": {"game_type": "sicbo", "game_code": "SBO-001"}}',
            "brokers: at least one broker",
        ),
        (
            '{"brokers": [{"broker": "h", "port": 99999}], "game_config": '
            '{"game_type": "sicbo", "game_code": "SBO-001"}}',
            "brokers[0].port",
        ),
        (
            '{"brokers": [{"broker": "h"}], "game_config": {"game_type": "poker", '
            '"game_code": "X-1"}}',
            "game_config.game_type: unknown game 'poker'",
        ),
    ],
)
async def test_serve_with_a_bad_config_names_file_and_field(
    tmp_path: Path, content: str, names: str
) -> None:
    """`gateway serve` refuses a bad file at start, naming the file and the field."""
    path = tmp_path / "table.json"
    path.write_text(content)
    code, _, err = await run(*gateway("serve", "--config", str(path)))
    assert code == 2
    assert str(path) in err and names in err


async def test_serve_runs_the_predecessor_file_unchanged(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """`gateway serve` on the predecessor's per-table file serves Detect over gRPC."""
    legacy = {
        "brokers": [
            {
                "broker": "127.0.0.1",
                "port": broker.port,
                "username": "PFC",
                "password": "wago",
                "priority": 1,
            }
        ],
        "game_config": {
            "game_type": "roulette",
            "game_code": "ARO-001",
            "command_topic": "ikg/idp/ARO-001/command",
            "response_topic": "ikg/idp/ARO-001/response",
            "timeout": 10,
            "retry_count": 3,
            "retry_delay": 1.0,
        },
        "environment": "development",
    }
    path = tmp_path / "aro.json"
    path.write_text(json.dumps(legacy))
    from gateway.devtools.sandbox import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *gateway(
            "--log-format", "json", "serve", "--config", str(path), "--listen", f"127.0.0.1:{port}"
        ),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with Stack([broker], "roulette") as s:  # the simulator; its own sidecar too
            async with asyncio.timeout(10):
                await wait_health(f"127.0.0.1:{port}", "SERVING")
            code, out, err = await run(
                *gateway(
                    "detect",
                    "--target",
                    f"127.0.0.1:{port}",
                    "--round-id",
                    "ARO-001-x",
                    "--input",
                    "rtmp://192.0.2.50/live/x",
                )
            )
            assert code == 0, err
            assert f"number {expected('roulette', 'ARO-001-x').number}" in out  # type: ignore[union-attr]
            assert s.sim.commands  # the simulated IDP really saw the command
    finally:
        proc.terminate()
        _, logs = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0  # SIGTERM is an orderly shutdown
    lines = [json.loads(line) for line in logs.decode().splitlines() if line.startswith("{")]
    assert any("password written in the config file" in rec["message"] for rec in lines)
    assert not any("wago" in line for line in logs.decode().splitlines())


async def test_serve_takes_a_redis_password_from_a_file_never_the_command_line(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """--redis-url with a password exits 2 naming the alternatives; --redis-url-file works,
    and the password is in neither the process's command line nor its logs."""
    from gateway.config import RedisConfig
    from gateway.devtools.sandbox import RedisProcess, free_port
    from gateway.fleet.store import connect

    path = tmp_path / "table.json"
    path.write_text(json.dumps({
        "version": 1, "table": {"game": "roulette", "code": "ARO-SECRET"},
        "brokers": [{"host": "127.0.0.1", "port": broker.port}],
    }))  # fmt: skip
    async with RedisProcess(password="s3cret-redis") as r:
        code, _, err = await run(*gateway("serve", "--config", str(path), "--redis-url", r.url))
        assert code == 2
        assert "--redis-url-file" in err and "GATEWAY_REDIS_URL" in err
        assert "s3cret-redis" not in err
        url_file = tmp_path / "redis-url"
        url_file.write_text(r.url + "\n")
        address = f"127.0.0.1:{free_port()}"
        proc = await asyncio.create_subprocess_exec(
            *gateway("--log-format", "json", "serve", "--config", str(path), "--listen",
                     address, "--redis-url-file", str(url_file)),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        store = connect(RedisConfig(url=r.url))
        try:
            async with asyncio.timeout(15):
                await wait_health(address, "SERVING")
                # The sidecar's view of the brokers in Redis: seen only by asking Redis.
                while not await store.keys("studio-gateway:*"):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            cmdline = await asyncio.to_thread(Path(f"/proc/{proc.pid}/cmdline").read_bytes)
            assert b"s3cret-redis" not in cmdline
        finally:
            await store.aclose()
            proc.terminate()
            _, logs = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    assert b"s3cret-redis" not in logs


async def test_serve_on_a_busy_port_says_so(broker: MosquittoProcess, tmp_path: Path) -> None:
    """A second sidecar on a port already in use exits non-zero with a clear message."""
    async with Stack([broker], "roulette") as s:
        path = tmp_path / "table.json"
        path.write_text(
            json.dumps(
                {
                    "brokers": [{"broker": "127.0.0.1", "port": broker.port}],
                    "game_config": {"game_type": "roulette", "game_code": "ARO-001"},
                }
            )
        )
        code, _, err = await run(
            *gateway("serve", "--config", str(path), "--listen", s.sidecar.address)
        )
        assert code == 1
        assert f"cannot listen on {s.sidecar.address}" in err


async def test_demo_runs_detects_for_all_three_games() -> None:
    """`gateway demo --once` starts its own brokers and prints one real result per game."""
    code, out, err = await run(*gateway("demo", "--once", "--port", "0"), limit_s=60)
    assert code == 0, err
    for marker in (
        "SBO-001 round SBO-001-demo-1: dice",
        "BAC-001 round BAC-001-demo-1: cards",
        "ARO-001 round ARO-001-demo-1: number",
    ):
        assert marker in out


async def test_serve_on_a_unix_socket_and_uvloop(broker: MosquittoProcess, tmp_path: Path) -> None:
    """`gateway serve --listen-unix PATH --event-loop uvloop` answers `gateway detect
    --target unix:PATH`, and keeps its TCP listener."""
    pytest.importorskip("uvloop")
    from gateway.devtools.sandbox import free_port

    doc = {
        "brokers": [{"broker": "127.0.0.1", "port": broker.port, "priority": 1}],
        "game_config": {"game_type": "roulette", "game_code": "ARO-001", "timeout": 5},
    }
    path, sock, port = tmp_path / "aro.json", tmp_path / "gw.sock", free_port()
    path.write_text(json.dumps(doc))
    proc = await asyncio.create_subprocess_exec(
        *gateway("serve", "--config", str(path), "--listen", f"127.0.0.1:{port}",
                 "--listen-unix", str(sock), "--event-loop", "uvloop"),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with Stack([broker], "roulette"):  # the simulator; its own sidecar too
            async with asyncio.timeout(10):
                await wait_health(f"unix:{sock}", "SERVING")
                await wait_health(f"127.0.0.1:{port}", "SERVING")
            code, out, err = await run(
                *gateway("detect", "--target", f"unix:{sock}", "--round-id", "ARO-001-uds",
                         "--input", "rtmp://192.0.2.50/live/x")
            )  # fmt: skip
            assert code == 0, err
            assert f"number {expected('roulette', 'ARO-001-uds').number}" in out  # type: ignore[union-attr]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
