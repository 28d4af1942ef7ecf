"""Integration tests of gateway.devtools.sandbox against real mosquitto and redis-server."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.devtools.sandbox import (
    MosquittoProcess,
    RedisProcess,
    SandboxError,
    find_executable,
    free_port,
    make_tls_material,
)

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
BOUND = 20.0  # upper bound on any single test, in seconds


def _client(broker: MosquittoProcess, *, timeout: float = 2.0, **kwargs: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host, broker.port, socket_options=NODELAY, timeout=timeout, **kwargs
    )


def _topic() -> str:
    return f"test/sandbox/{uuid.uuid4().hex}"


async def _round_trip(client: aiomqtt.Client, payload: bytes = b"hello") -> None:
    topic = _topic()
    await client.subscribe(topic, qos=1)
    await client.publish(topic, payload, qos=1)
    async with asyncio.timeout(2):
        message = await anext(aiter(client.messages))
    assert message.topic.matches(topic)
    assert message.payload == payload


def test_find_executable_names_the_package() -> None:
    """A missing executable raises SandboxError telling how to install it."""
    with pytest.raises(SandboxError, match=r"apt-get install -y some-package"):
        find_executable("no-such-binary-for-sandbox-tests", "some-package")


@pytest.mark.asyncio
async def test_mosquitto_round_trip() -> None:
    """A started broker listens on its port and carries a QoS 1 publish/subscribe round trip."""
    async with asyncio.timeout(BOUND), MosquittoProcess() as broker:
        assert broker.running and broker.pid is not None and broker.log_path.exists()
        async with _client(broker) as client:
            await _round_trip(client)
    assert not broker.running


@pytest.mark.asyncio
async def test_kill_is_noticed_and_restart_reuses_port() -> None:
    """kill() breaks connected clients at once; restart() accepts again on the same port."""
    async with asyncio.timeout(BOUND), MosquittoProcess() as broker:
        port, first_pid = broker.port, broker.pid
        async with _client(broker) as client:
            await client.subscribe(_topic())
            reader = asyncio.ensure_future(anext(aiter(client.messages)))
            await asyncio.sleep(0.05)
            await broker.kill()
            assert not broker.running
            with pytest.raises(aiomqtt.MqttError, match="Disconnected during message iteration"):
                await asyncio.wait_for(reader, 1.0)
            with pytest.raises(aiomqtt.MqttError, match="not currently connected"):
                await client.publish(_topic(), b"x", qos=1)
        with pytest.raises(aiomqtt.MqttError, match="Connection refused"):
            async with _client(broker):
                pass
        await broker.restart()
        assert broker.port == port and broker.pid != first_pid
        async with _client(broker) as client:
            await _round_trip(client)


@pytest.mark.asyncio
async def test_pause_times_out_publish_and_resume_recovers() -> None:
    """A SIGSTOPped broker makes a QoS 1 publish time out; after SIGCONT the same client works."""
    async with (
        asyncio.timeout(BOUND),
        MosquittoProcess() as broker,
        _client(broker, timeout=0.5) as client,
    ):
        broker.pause()
        assert broker.paused
        with pytest.raises(aiomqtt.MqttError, match="Operation timed out"):
            await client.publish(_topic(), b"lost?", qos=1)
        broker.resume()
        assert not broker.paused
        await _round_trip(client)


@pytest.mark.asyncio
async def test_stop_of_paused_broker_and_cleanup() -> None:
    """stop() ends a paused broker, and closing removes the temporary workdir it created."""
    async with asyncio.timeout(BOUND):
        broker = MosquittoProcess()
        async with broker:
            workdir = broker.log_path.parent
            broker.pause()
            await broker.stop()
            assert not broker.running
        assert not workdir.exists()
        with pytest.raises(SandboxError, match="closed"):
            await broker.start()


@pytest.mark.asyncio
async def test_password_auth() -> None:
    """A broker with users rejects a wrong password and anonymous clients, accepts the right one."""
    async with asyncio.timeout(BOUND), MosquittoProcess(users={"alice": "s3cret:x"}) as broker:
        with pytest.raises(aiomqtt.MqttCodeError, match=r"\[code:135\] Not authorized"):
            async with _client(broker, username="alice", password="wrong"):
                pass
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with _client(broker):
                pass
        async with _client(broker, username="alice", password="s3cret:x") as client:
            await _round_trip(client)


@pytest.mark.asyncio
async def test_tls_with_ca_and_unknown_ca(tmp_path: Path) -> None:
    """A TLS broker accepts a client trusting its CA (by IP and by name) and rejects another CA."""
    async with asyncio.timeout(BOUND):
        tls = await make_tls_material(tmp_path / "good")
        other = await make_tls_material(tmp_path / "other")
        assert oct(tls.server_key.stat().st_mode & 0o777) == "0o644"
        async with MosquittoProcess(tls=tls) as broker:
            trusted = aiomqtt.TLSParameters(ca_certs=str(tls.ca_cert))
            async with _client(broker, tls_params=trusted) as client:
                await _round_trip(client)
            by_name = aiomqtt.Client("localhost", broker.port, tls_params=trusted, timeout=2)
            async with by_name as client:
                await _round_trip(client)
            untrusted = aiomqtt.TLSParameters(ca_certs=str(other.ca_cert))
            with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
                async with _client(broker, tls_params=untrusted):
                    pass


@pytest.mark.asyncio
async def test_mutual_tls(tmp_path: Path) -> None:
    """With require_client_cert a client certificate is needed; without one CONNECT times out."""
    async with asyncio.timeout(BOUND):
        tls = await make_tls_material(tmp_path)
        async with MosquittoProcess(tls=tls, require_client_cert=True) as broker:
            with_cert = aiomqtt.TLSParameters(
                ca_certs=str(tls.ca_cert),
                certfile=str(tls.client_cert),
                keyfile=str(tls.client_key),
            )
            async with _client(broker, tls_params=with_cert) as client:
                await _round_trip(client)
            without = aiomqtt.TLSParameters(ca_certs=str(tls.ca_cert))
            with pytest.raises(aiomqtt.MqttError, match="Operation timed out"):
                async with _client(broker, tls_params=without, timeout=0.5):
                    pass


@pytest.mark.asyncio
async def test_start_fails_loudly_on_a_busy_port() -> None:
    """Starting on a port that something already listens on raises SandboxError."""
    async with asyncio.timeout(BOUND), MosquittoProcess() as broker:
        with pytest.raises(SandboxError, match="already in use"):
            await RedisProcess(port=broker.port).start()


@pytest.mark.asyncio
async def test_redis_ping_kill_restart() -> None:
    """RedisProcess answers PING, refuses connections after kill() and answers after restart()."""
    async with asyncio.timeout(BOUND), RedisProcess() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = aioredis.from_url(server.url, socket_timeout=1.0)
        try:
            assert await client.ping()
            await server.kill()
            with pytest.raises(ConnectionError):
                await client.ping()
            await server.restart()
            assert await client.ping()
        finally:
            await client.aclose()


@pytest.mark.asyncio
async def test_redis_password_and_pause() -> None:
    """requirepass is enforced, and a paused Redis makes commands time out until resumed."""
    async with asyncio.timeout(BOUND), RedisProcess(password="p@ss word") as server:
        no_retry = Retry(NoBackoff(), retries=0)  # redis-py retries even auth errors, for ~4 s
        anonymous = aioredis.Redis(host=server.host, port=server.port, retry=no_retry)
        authed = aioredis.from_url(server.url, socket_timeout=0.3, retry=no_retry)
        try:
            with pytest.raises(AuthenticationError):
                await anonymous.set("k", "v")
            assert await authed.set("k", "v")
            server.pause()
            with pytest.raises(RedisTimeoutError):
                await authed.get("k")
            server.resume()
            assert await authed.get("k") == b"v"
        finally:
            await anonymous.aclose()
            await authed.aclose()


def test_free_port_is_bindable() -> None:
    """free_port() returns a loopback port that can be bound right away."""
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
