"""Connecting to the shared store: plain, with a password, through Redis Sentinel, and
through a TLS-only Sentinel and master (``rediss+sentinel://``)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, ConnectionError

from gateway.config import RedisConfig
from gateway.devtools.sandbox import RedisProcess, TlsMaterial, free_port, make_tls_material
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
    async with redis_server(port, str(conf), "--sentinel"):
        yield port


@contextlib.asynccontextmanager
async def redis_server(port: int, *argv: str) -> AsyncIterator[None]:
    """``redis-server ARGV`` until the context ends, once it accepts TCP on ``port``."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = await asyncio.create_subprocess_exec(
        exe, *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(5):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)  # the server is starting
                    continue
                writer.close()
                break
        yield
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


def _tls_only(tls: TlsMaterial, port: int) -> str:
    """redis.conf lines for a TLS-only server on ``port`` (no plaintext port at all)."""
    return (
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {tls.server_cert}\n"
        f"tls-key-file {tls.server_key}\ntls-ca-cert-file {tls.ca_cert}\n"
        "tls-auth-clients no\nrequirepass s3cret\n"
    )


# The plaintext attempt below leaves redis-py's refused sockets to the garbage collector.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_rediss_sentinel_speaks_tls_to_the_sentinel_and_the_master(tmp_path: Path) -> None:
    """rediss+sentinel:// finds a TLS-only master through a TLS-only Sentinel (with AUTH);
    the plaintext redis+sentinel:// URL cannot even ask that Sentinel."""
    tls = await make_tls_material(tmp_path / "tls")
    master_port, sentinel_port = free_port(), free_port()
    master_conf, sentinel_conf = tmp_path / "master.conf", tmp_path / "sentinel.conf"
    master_conf.write_text(_tls_only(tls, master_port) + f'dir {tmp_path}\nsave ""\n')
    sentinel_conf.write_text(
        _tls_only(tls, sentinel_port) + f"dir {tmp_path}\ntls-replication yes\n"
        f"sentinel monitor tables 127.0.0.1 {master_port} 1\n"
        "sentinel auth-pass tables s3cret\nsentinel down-after-milliseconds tables 1000\n"
    )
    query = f"ssl_ca_certs={tls.ca_cert}"
    async with (
        redis_server(master_port, str(master_conf)),
        redis_server(sentinel_port, str(sentinel_conf), "--sentinel"),
    ):
        url = f"rediss+sentinel://:s3cret@127.0.0.1:{sentinel_port}/tables?{query}"
        client = connect(RedisConfig(url=url))
        direct = connect(RedisConfig(url=f"rediss://:s3cret@127.0.0.1:{master_port}/0?{query}"))
        plain = connect(
            RedisConfig(url=f"redis+sentinel://:s3cret@127.0.0.1:{sentinel_port}/tables")
        )
        try:
            async with asyncio.timeout(5):
                assert await client.set("tls-probe", "1")
                assert await direct.get("tls-probe") == "1"
            with pytest.raises(ConnectionError):  # MasterNotFoundError: no Sentinel answered
                async with asyncio.timeout(5):
                    await plain.get("tls-probe")
        finally:
            for c in (client, direct, plain):
                await c.aclose()


async def test_a_restarted_redis_costs_no_failed_command() -> None:
    """Redis restarts under a client with a pooled connection: the next command is sent
    again on a new connection instead of failing (the election would call the store
    unreachable until its next refresh)."""
    async with RedisProcess() as r:
        client = connect(RedisConfig(url=f"redis://127.0.0.1:{r.port}/0"))
        try:
            assert await client.set("k", "v")
            await r.restart()  # the pooled connection is now closed by the server
            assert await client.get("k") is None  # a fresh server, reached on the first try
        finally:
            await client.aclose()
