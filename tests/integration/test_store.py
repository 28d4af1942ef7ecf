"""Connecting to the shared store: plain, with a password, and through Redis Sentinel."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, ConnectionError

from gateway.config import RedisConfig
from gateway.devtools.sandbox import RedisProcess, free_port
from gateway.fleet.store import connect


@contextlib.asynccontextmanager
async def sentinel_for(master: RedisProcess, workdir: Path) -> AsyncIterator[int]:
    """A real Sentinel (redis-server --sentinel) monitoring ``master`` as 'tables'."""
    port = free_port()
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor tables 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds tables 1000\n"
    )
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = await asyncio.create_subprocess_exec(
        exe, str(conf), "--sentinel", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(5):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)  # the sentinel is starting
                    continue
                writer.close()
                break
        yield port
    finally:
        proc.kill()
        await proc.wait()


async def test_store_through_sentinel_reaches_the_master(tmp_path: Path) -> None:
    """A redis+sentinel:// URL finds the master through a real Sentinel and writes to it."""
    async with RedisProcess() as master, sentinel_for(master, tmp_path) as port:
        client = connect(RedisConfig(url=f"redis+sentinel://127.0.0.1:{port}/tables"))
        try:
            assert await client.set("probe", "1")
            direct = connect(RedisConfig(url=master.url))
            assert await direct.get("probe") == "1"
            await direct.aclose()
        finally:
            await client.aclose()


# redis-py leaves the socket of a connection whose AUTH was refused to the garbage collector.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_store_with_a_password() -> None:
    """AUTH in the URL works; a wrong password is an authentication error, quickly."""
    async with RedisProcess(password="s3cret") as r:
        good = connect(RedisConfig(url=f"redis://:s3cret@127.0.0.1:{r.port}/0"))
        bad = connect(RedisConfig(url=f"redis://:wrong@127.0.0.1:{r.port}/0"))
        try:
            assert await good.ping()
            with pytest.raises((AuthenticationError, ConnectionError)):
                async with asyncio.timeout(2):
                    await bad.ping()
        finally:
            await good.aclose()
            await bad.aclose()
