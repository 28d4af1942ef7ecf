"""The MQTT fault proxy against a real mosquitto, with real aiomqtt clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from gateway.devtools.faultproxy import PUBACK, MalformedStream, MqttFaultProxy, PacketSplitter
from gateway.devtools.sandbox import MosquittoProcess

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
WAIT_S = 3.0  # bound on anything that should happen
QUIET_S = 0.5  # how long "nothing arrives" is watched


@contextlib.asynccontextmanager
async def client(proxy: MqttFaultProxy) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        proxy.host, proxy.port, socket_options=NODELAY, timeout=1.0, keepalive=30
    ) as c:
        yield c


def topic() -> str:
    return f"test/faultproxy/{uuid.uuid4().hex[:8]}"


async def receive(c: aiomqtt.Client, payload: bytes, limit_s: float = WAIT_S) -> bool:
    """Whether a message with ``payload`` arrives within ``limit_s`` (others are skipped)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            async for message in c.messages:
                if message.payload == payload:
                    return True
    return False


async def test_stall_acks_times_out_qos1_but_qos0_echoes(broker: MosquittoProcess) -> None:
    """With PUBACKs stalled a QoS 1 publish times out while a QoS 0 publish echoes back."""
    t = topic()
    async with MqttFaultProxy(broker.host, broker.port) as proxy, client(proxy) as c:
        await c.subscribe(t, qos=0)
        proxy.stall_acks()
        with pytest.raises(aiomqtt.MqttError, match="timed out"):
            await c.publish(t, b"qos1", qos=1, timeout=0.5)
        assert proxy.dropped_pubacks == 1
        await c.publish(t, b"qos0", qos=0)
        assert await receive(c, b"qos0")


async def test_heal_after_stall_acknowledges_qos1_again(broker: MosquittoProcess) -> None:
    """After heal() a QoS 1 publish on the same connection is acknowledged again."""
    t = topic()
    async with MqttFaultProxy(broker.host, broker.port) as proxy, client(proxy) as c:
        await c.publish(t, b"before", qos=1)
        proxy.stall_acks()
        with pytest.raises(aiomqtt.MqttError):
            await c.publish(t, b"stalled", qos=1, timeout=0.5)
        proxy.heal()
        await c.publish(t, b"after", qos=1, timeout=WAIT_S)
        assert proxy.dropped_pubacks == 1 and proxy.accepted == 1


async def test_blackhole_stops_the_echo_and_heal_delivers_it(broker: MosquittoProcess) -> None:
    """A blackhole holds traffic both ways without closing; heal() lets it through."""
    t = topic()
    async with MqttFaultProxy(broker.host, broker.port) as proxy, client(proxy) as c:
        await c.subscribe(t, qos=0)
        await c.publish(t, b"open", qos=0)
        assert await receive(c, b"open")
        proxy.blackhole()
        await c.publish(t, b"held", qos=0)
        assert not await receive(c, b"held", QUIET_S)
        assert proxy.connections == 1
        proxy.heal()
        assert await receive(c, b"held")


async def test_cut_resets_and_refuses_until_healed(broker: MosquittoProcess) -> None:
    """cut() resets the connection at once and new ones fail until heal()."""
    t = topic()
    async with MqttFaultProxy(broker.host, broker.port) as proxy:
        async with client(proxy) as c:
            await c.subscribe(t, qos=0)
            proxy.cut()
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(WAIT_S):
                    async for _ in c.messages:
                        pass
        with pytest.raises(aiomqtt.MqttError):
            async with client(proxy):
                pass
        assert proxy.refused >= 1
        proxy.heal()
        async with client(proxy) as c:
            await c.subscribe(t, qos=0)
            await c.publish(t, b"again", qos=1)
            assert await receive(c, b"again")


def test_splitter_handles_split_and_coalesced_packets() -> None:
    """PUBACKs are cut out of a stream split at every byte or sent in one read."""
    publish = bytes([0x30, 0x83, 0x01]) + b"\x00\x01t" + b"x" * 128  # 131 body bytes
    puback = bytes([0x40, 0x02, 0x00, 0x07])
    stream = publish + puback + puback + publish + puback
    for size in (1, 2, 3, 7, len(stream)):
        splitter, out = PacketSplitter(), b""
        for i in range(0, len(stream), size):
            out += b"".join(splitter.feed(stream[i : i + size], PUBACK))
        assert out == publish + publish, size
        assert (splitter.packets, splitter.dropped) == (5, 3)
    assert b"".join(PacketSplitter().feed(stream, None)) == stream
    with pytest.raises(MalformedStream):
        PacketSplitter().feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF]), PUBACK)
