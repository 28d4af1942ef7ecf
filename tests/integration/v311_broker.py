"""A broker that speaks only MQTT 3.1.1: a TCP shim in front of a real mosquitto.

An MQTT 5 CONNECT gets the 3.1.1 answer "unacceptable protocol version" (CONNACK return
code 1) and the connection is closed, as a 3.1.1-only broker does; a 3.1.1 CONNECT is
passed through to mosquitto unchanged, and so is everything after it.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.integration.proxy import relay

REFUSE_VERSION = bytes([0x20, 0x02, 0x00, 0x01])


class V311OnlyBroker:
    """Listens on 127.0.0.1:<port>; forwards 3.1.1 clients to ``target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0
        self.port = 0
        self.host = "127.0.0.1"

    async def __aenter__(self) -> V311OnlyBroker:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(2)  # CONNECT type + first length byte
            rest = b""
            length_bytes = head[1:]
            while length_bytes[-1] & 0x80:
                length_bytes += await reader.readexactly(1)
            length, mult = 0, 1
            for b in length_bytes:
                length += (b & 0x7F) * mult
                mult *= 128
            rest = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, OSError):
            writer.transport.abort()
            return
        level = rest[6] if len(rest) > 6 else 0  # after the 2-byte length and b"MQTT"
        if level != 4:
            self.refused += 1
            writer.write(REFUSE_VERSION)
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        up_writer.write(head[:1] + length_bytes + rest)
        relay(self._tasks, (reader, writer), (up_reader, up_writer))
