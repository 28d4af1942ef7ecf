"""A small TCP proxy between one client and a broker, to cut only that client's path."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops and refuses connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.is_cut = False
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Reset every proxied connection and refuse new ones (like a dead network path)."""
        self.is_cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.is_cut = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._writers.add(w)
        relay(self._tasks, (reader, writer), (up_reader, up_writer), self._writers.discard)


async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy ``src`` to ``dst`` until either side closes, then abort ``dst``."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    dst.transport.abort()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def relay(
    tasks: set[asyncio.Task[None]],
    client: Stream,
    upstream: Stream,
    closed: Callable[[asyncio.StreamWriter], None] = lambda writer: None,
) -> None:
    """Pipe both ways between ``client`` and ``upstream`` in tasks kept in ``tasks``;
    ``closed(writer)`` after each direction ends."""

    async def one_way(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        await pipe(src, dst)
        closed(dst)

    for src, dst in ((client[0], upstream[1]), (upstream[0], client[1])):
        task = asyncio.create_task(one_way(src, dst))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
