"""The predecessor's ``test_broker_connection``: can a program reach an MQTT broker itself?

The sidecar owns the brokers now; this stays for the programs' own start-up checks and
tools. Its name starts with ``test_`` because the predecessor's did; the test suite keeps
pytest from collecting it (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import aiomqtt

log = logging.getLogger("gateway.compat")


async def test_broker_connection(
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 3.0,
) -> bool:
    """True if the MQTT broker at ``host:port`` accepts a connection (CONNACK) within
    ``timeout_s``: a real MQTT connect with TCP_NODELAY, then a clean disconnect."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiomqtt.Client(
                host,
                port,
                username=username,
                password=password,
                timeout=timeout_s,
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            ),
        ):
            return True
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        log.info(
            "broker %s:%s does not accept a connection: %s", host, port, exc or type(exc).__name__
        )
        return False
