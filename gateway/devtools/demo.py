"""``gateway demo``: the main job on an embedded default, on this machine.

Starts two local Mosquitto brokers (priority 1 and 2), the IDP/shaker simulator for a
SicBo, a Baccarat and a Roulette table, and one sidecar per table, exactly as a studio
runs them. Performs a real Detect for each game, prints the results, then keeps serving
until Ctrl-C, with a hint how to call the sidecars yourself.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from gateway import describe
from gateway.client import GatewayClient
from gateway.config import DEFAULT_PORT, GatewayConfig, parse_config
from gateway.devtools.sandbox import MosquittoProcess
from gateway.devtools.sim import Behaviour, IdpSimulator, sim_devices
from gateway.sidecar.app import Sidecar

TABLES: tuple[dict[str, Any], ...] = (
    {
        "game": "sicbo",
        "code": "SBO-001",
        "input": "rtmp://192.0.2.54:1935/live/r14_sb",
        "output": "https://example.invalid/live/r456_dice.flv",
        "shaker_listens": "ikg/sicbo/Billy-III/listens",
        "shaker_says": "ikg/sicbo/Billy-III/says",
    },
    {"game": "baccarat", "code": "BAC-001", "input": "rtmp://192.0.2.10:1935/live/r111_baccarat"},
    {"game": "roulette", "code": "ARO-001", "input": "rtmp://192.0.2.50:1935/live/r10_sr"},
)
# Like a real IDP: a "nothing yet" frame and an early empty frame, then the answer.
DEMO_BEHAVIOUR = Behaviour(delay_s=0.3, not_yet=1, early_empty=1)


def demo_configs(broker_ports: list[int]) -> list[GatewayConfig]:
    """The embedded default: three tables sharing two brokers."""
    brokers = [
        {"id": f"broker-{i + 1}", "host": "127.0.0.1", "port": port, "priority": i + 1}
        for i, port in enumerate(broker_ports)
    ]
    return [
        parse_config(
            {
                "version": 1,
                "environment": "development",
                "broker_group": "demo",
                "table": {**table, "timeout_s": 10, "retry_count": 3, "retry_delay_s": 0.5},
                "brokers": brokers,
                "failover": {"holddown_s": 5},
            },
            source=f"<demo {table['code']}>",
            env={},
        )
        for table in TABLES
    ]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def run_demo(first_port: int = DEFAULT_PORT, once: bool = False) -> int:
    """Start brokers, the simulator and one sidecar per game; run real Detects."""
    async with contextlib.AsyncExitStack() as stack:
        b1 = await stack.enter_async_context(MosquittoProcess())
        b2 = await stack.enter_async_context(MosquittoProcess())
        configs = demo_configs([b1.port, b2.port])
        brokers, tables = sim_devices(configs)
        sim = IdpSimulator(brokers, tables, DEMO_BEHAVIOUR, shake_time_scale=0.1)
        sim_task = asyncio.create_task(sim.run(), name="simulator")
        stack.callback(sim_task.cancel)
        await sim.wait_connected()
        sidecars = []
        for i, config in enumerate(configs):
            port = first_port + i if first_port and _port_free(first_port + i) else 0
            sidecar = Sidecar(config, listen=f"127.0.0.1:{port}")
            sidecars.append(await stack.enter_async_context(sidecar))
        async with asyncio.timeout(10):
            for sidecar in sidecars:
                await sidecar.wait_serving()

        print(f"\nbrokers: 127.0.0.1:{b1.port} (priority 1), 127.0.0.1:{b2.port} (priority 2)")
        for sidecar in sidecars:
            table = sidecar.config.table
            print(f"sidecar {table.code} ({table.game}) on {sidecar.address}")
        print("\nDetect, one round per game:")
        for sidecar in sidecars:
            round_id = f"{sidecar.config.table.code}-demo-1"
            async with GatewayClient(sidecar.address) as client:
                response = await client.detect_raw(round_id, deadline_s=10)
            print("  " + describe.response(response))
        if once:
            return 0
        first = sidecars[0].address
        local = Path(sys.executable).parent / "gateway"  # the venv's script, off PATH under make
        exe = shutil.which("gateway") or (str(local) if local.exists() else "python -m gateway")
        print(
            "\nServing until Ctrl-C. Try, from another terminal:\n"
            f"  {exe} detect --target {first} --round-id SBO-001-demo-2\n"
            f"  {exe} health --target {first}\n"
            f'  grpcurl -plaintext -d \'{{"round_id": "SBO-001-demo-3"}}\' {first} '
            "gateway.v1.GatewayService/Detect\n"
            f"  grpcurl -plaintext {first} grpc.health.v1.Health/Check\n",
            flush=True,
        )
        await asyncio.gather(*(sidecar.wait() for sidecar in sidecars), sim_task)
    return 0
