"""Hot reload of a configuration directory updated the way kubelet does it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from gateway.config import dump_config, load_config
from gateway.devtools.sandbox import MosquittoProcess
from tests.integration.harness import Stack, make_config, until


class KubeletDir:
    """A ConfigMap volume: files behind a ``..data`` symlink swapped atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def write(self, content: str) -> Path:
        self.n += 1
        version = self.root / f"..2026_11_28_{self.n:04d}"
        version.mkdir()
        (version / "table.json").write_text(content)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap kubelet does
        link = self.root / "table.json"
        if not link.is_symlink():
            link.symlink_to("..data/table.json")
        return link


def doc_for(broker: MosquittoProcess, generation: int, **table: Any) -> str:
    config = make_config([broker], "roulette", **table)
    doc = dump_config(config)
    doc["generation"] = generation
    return json.dumps(doc)


async def test_update_is_applied_bad_update_kept_out(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """A new generation is applied within 2 s; an invalid one is refused and reported."""
    volume = KubeletDir(tmp_path)
    path = volume.write(doc_for(broker, 1, timeout_s=5))
    config = load_config(path)
    async with Stack([broker], config=config, config_path=str(path)) as s:
        volume.write(doc_for(broker, 2, timeout_s=7))
        await until(lambda: s.sidecar.config.generation == 2, 2, "generation 2 applied")
        assert s.sidecar.desk.table.timeout_s == 7
        assert (await s.client.health()).config_generation == 2
        volume.write('{"version": 1, "table": {"game": "poker"')  # truncated, bad JSON
        await until(lambda: bool(s.sidecar.reloader and s.sidecar.reloader.last_error), 2, "")
        h = await s.client.health()
        assert h.config_generation == 2 and "not valid JSON" in h.config_error
        assert (await s.client.stats()).local.config_error == h.config_error
        d = await s.client.detect("ARO-001-still")  # the last good config keeps serving
        assert d.round_id == "ARO-001-still"
        volume.write(doc_for(broker, 3, timeout_s=9))
        await until(lambda: s.sidecar.config.generation == 3, 2, "generation 3 applied")
        assert (await s.client.health()).config_error == ""


async def test_update_during_a_detect_waits_for_it(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """A change arriving while a Detect is in flight is applied right after it, not during."""
    volume = KubeletDir(tmp_path)
    path = volume.write(doc_for(broker, 1, timeout_s=5))
    async with Stack([broker], config=load_config(path), config_path=str(path)) as s:
        s.behave(delay_s=1.5)
        call = asyncio.create_task(s.client.detect("ARO-001-long"))
        await s.sim.wait_for_command(s.code, "detect", round_id="ARO-001-long")
        volume.write(doc_for(broker, 2, timeout_s=8))
        await asyncio.sleep(1.0)  # two look-ups later, the round is still in flight
        assert not call.done() and s.sidecar.config.generation == 1
        await call
        await until(lambda: s.sidecar.config.generation == 2, 2, "applied after the round")


async def test_changes_needing_a_restart_are_reported_not_applied(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """A new broker list cannot be applied live: Health says a restart is needed."""
    volume = KubeletDir(tmp_path)
    path = volume.write(doc_for(broker, 1))
    async with Stack([broker], config=load_config(path), config_path=str(path)) as s:
        doc = json.loads(doc_for(broker, 2))
        doc["brokers"][0]["priority"] = 2
        volume.write(json.dumps(doc))
        await until(lambda: bool(s.sidecar.reloader and s.sidecar.reloader.last_error), 2, "")
        h = await s.client.health()
        assert h.config_generation == 1
        assert "needs a restart (brokers changed)" in h.config_error
