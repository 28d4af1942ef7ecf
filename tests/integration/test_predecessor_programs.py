"""The predecessor's programs, with only their import lines changed, against real sidecars.

Each program in ``programs/`` runs as its own Python process the way the predecessor's
table controllers run: a global system initialised in one ``asyncio.run``, then each round
``asyncio.run(detect(...))`` from a worker thread, the ``system.config`` override block,
``send_timeout_command``, status reads, several games in one process. The sidecars are
real ``gateway serve`` processes on real mosquitto, the IDP the simulator.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.compat import legacy_result
from gateway.devtools.sandbox import MosquittoProcess
from tests.integration.harness import expected, make_config
from tests.integration.processes import studio

PROGRAMS = Path(__file__).parent / "programs"
ROOT = Path(__file__).resolve().parents[2]


async def run_program(name: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    """Run a program to its end; its one JSON line (its stderr in the message on failure)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PROGRAMS / name), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def test_a_speed_roulette_program_gets_every_real_result(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Initialised in one event loop, a detect per round from a worker thread in a loop of
    its own: every round gets the IDP's real result, the IDP is stopped after each, and
    the override block is reported (not obeyed) where it differs from the sidecar."""
    config = make_config([broker], "roulette", "ARO-001")
    async with studio([config], tmp_path) as (sim, [proc]):
        rounds = 12
        got = await run_program(
            "speed_roulette.py", str(rounds), env={"GATEWAY_TARGET": proc.address}
        )
        assert len(got["rounds"]) == rounds
        for round_id, ok, result, stopped in got["rounds"]:
            assert ok is True and stopped is True
            assert result == legacy_result(expected("roulette", round_id))
        stops = [c for c in sim.commands if c.table_code == "ARO-001" and c.command == "timeout"]
        assert len(stops) == rounds  # one stop per round: the sidecar's, not a second one
        assert got["config_info"]["game_code"] == "ARO-001"
        assert got["config_info"]["command_topic"] == "ikg/idp/ARO-001/command"
        assert {"config_info", "connection_manager", "message_processor", "primary_client"} <= set(
            got["keys"]
        )
        assert got["attributes"] == [True, True, "gateway.compat.roulette"]
        differences = " ".join(got["differences"])
        assert (
            "brokers 192.168.20.10:1883 (priority 2), 192.168.20.9:1883 (priority 1)" in differences
        )
        assert "client_id 'speed_roulette_detect' is not used" in differences
        assert "default_username, default_password" in differences
        assert "timeout 10s: the sidecar's detect timeout is 5s" in differences
        assert got["health"] == "healthy" and got["stats"] == 1
        proc.assert_alive()


async def test_two_games_in_one_process_reach_their_own_sidecars(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """GATEWAY_TARGET_<GAME> points each game's system at its sidecar, the predecessor's
    own GameType enum is accepted, and both play rounds from threads at once."""
    configs = [
        make_config([broker], "roulette", "ARO-001"),
        make_config([broker], "sicbo", "SBO-001"),
    ]
    async with studio(configs, tmp_path) as (_, procs):
        env = {
            "GATEWAY_TARGET_ROULETTE": procs[0].address,
            "GATEWAY_TARGET_SICBO": procs[1].address,
            "GATEWAY_TARGET": "127.0.0.1:1",  # the per-game variables win over this one
        }
        got = await run_program("two_games.py", env=env)
        assert got["targets"] == {"roulette": procs[0].address, "sicbo": procs[1].address}
        for game, rounds in got["rounds"].items():
            assert len(rounds) == 3
            for round_id, ok, result in rounds:
                assert ok is True
                assert result == legacy_result(expected(game, round_id))
