"""A TCP proxy in front of one MQTT broker that injects faults a process signal cannot.

Killing or stopping a broker process (``gateway.devtools.sandbox``) takes the whole broker down for
every client. Some faults are narrower: a broker whose QoS 1 path is stuck while QoS 0
still flows (publishes are never acknowledged, but probes come back), or a network path
from *one* client that hangs or resets while the broker is fine for everyone else. The
integration tests and the chaos soak (``bench/chaos.py``) put an ``MqttFaultProxy`` between
the sidecars and each broker and switch its mode at run time:

- ``heal()``: forward everything (the default).
- ``stall_acks()``: parse the broker -> client byte stream into MQTT packets and drop
  every PUBACK, forwarding everything else, so QoS 0 round trips still work while QoS 1
  publishes never complete. ``dropped_pubacks`` counts them.
- ``blackhole()``: stop forwarding in both directions but keep the sockets open, like a
  hung network path; bytes already sent wait (as TCP would retransmit them) and flow
  again after ``heal()`` unless an end gave up and closed meanwhile.
- ``cut()``: reset every connection (RST) and reset new ones at once until healed.

Loopback only, TCP_NODELAY on both legs; an async context manager::

    async with MqttFaultProxy(broker.host, broker.port) as proxy:
        client = aiomqtt.Client(proxy.host, proxy.port)
        proxy.stall_acks()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
from typing import Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PUBACK = 4  # MQTT control packet type (high nibble of the fixed header's first byte)
_READ_SIZE = 65536
_CONNECT_TIMEOUT_S = 2.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class Mode(enum.Enum):
    """What the proxy does with traffic right now."""

    FORWARD = "forward"
    STALL_ACKS = "stall_acks"
    BLACKHOLE = "blackhole"
    CUT = "cut"


class MalformedStream(Exception):
    """The broker sent bytes that are not a sequence of MQTT packets."""


class PacketSplitter:
    """Incremental splitter of an MQTT byte stream into packets, without buffering bodies.

    ``feed`` takes any chunk (packets may be split over chunks, or several in one) and
    returns the byte ranges of the chunk to keep: a packet is dropped whole when
    ``drop(packet_type)`` is true at its first byte, which is all that is needed to
    decide. A fixed header is its first byte, then a remaining length of 1-4 bytes
    (7 bits each, low first, high bit = more), then that many bytes of body.
    """

    def __init__(self) -> None:
        self._need_header = True  # at a packet boundary
        self._length = 0  # remaining length decoded so far
        self._shift = 0  # bits of remaining length decoded so far
        self._in_length = False  # reading the remaining-length bytes
        self._body_left = 0  # body bytes of the current packet still to come
        self._dropping = False  # the current packet is being dropped
        self.packets = 0  # packets started
        self.dropped = 0  # packets dropped

    def feed(self, chunk: bytes, drop_type: int | None) -> list[memoryview]:
        """The parts of ``chunk`` to forward; packets of type ``drop_type`` are left out."""
        view = memoryview(chunk)
        keep: list[memoryview] = []
        start = 0  # start of the current run of kept bytes
        i, n = 0, len(chunk)
        while i < n:
            if self._need_header:
                ptype = chunk[i] >> 4
                dropping = drop_type is not None and ptype == drop_type
                self.packets += 1
                if dropping:
                    self.dropped += 1
                    if i > start:
                        keep.append(view[start:i])
                elif self._dropping:
                    start = i  # a kept packet after a dropped one: a new run begins
                self._dropping = dropping
                self._need_header, self._in_length = False, True
                self._length = self._shift = 0
                i += 1
            elif self._in_length:
                byte = chunk[i]
                i += 1
                self._length |= (byte & 0x7F) << self._shift
                self._shift += 7
                if byte & 0x80:
                    if self._shift >= 28:
                        raise MalformedStream("remaining length longer than 4 bytes")
                    continue
                self._in_length = False
                self._body_left = self._length
                if self._body_left == 0:
                    self._need_header = True
            else:
                take = min(self._body_left, n - i)
                i += take
                self._body_left -= take
                if self._body_left == 0:
                    self._need_header = True
            if self._dropping and (self._need_header or i == n):
                start = i  # the dropped packet's bytes so far end here
        if not self._dropping and n > start:
            keep.append(view[start:n])
        return keep


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN: the peer sees a connection reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class _Connection:
    """One client connection and its upstream leg to the broker."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        broker: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.broker_reader, self.broker_writer = broker
        self.splitter = PacketSplitter()

    def reset(self) -> None:
        _reset(self.client_writer)
        _reset(self.broker_writer)

    def close(self) -> None:
        self.client_writer.close()
        self.broker_writer.close()


class MqttFaultProxy:
    """Forwards ``HOST:port`` (a free port) to one broker; the mode changes at run time."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = HOST
        self.port = port
        self._mode = Mode.FORWARD
        self._flowing = asyncio.Event()  # clear while blackholed
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped_pubacks = 0
        self.accepted = 0  # client connections accepted and forwarded
        self.refused = 0  # client connections reset at once (cut, or broker unreachable)

    # --- modes ---------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    @property
    def connections(self) -> int:
        """Client connections currently forwarded."""
        return len(self._connections)

    def heal(self) -> None:
        """Forward everything again (bytes held by a blackhole flow on)."""
        self._set(Mode.FORWARD)

    def stall_acks(self) -> None:
        """Drop every PUBACK from the broker; everything else flows."""
        self._set(Mode.STALL_ACKS)

    def blackhole(self) -> None:
        """Stop forwarding in both directions; sockets stay open."""
        self._set(Mode.BLACKHOLE)

    def cut(self) -> None:
        """Reset every connection now and every new one until ``heal()``."""
        self._set(Mode.CUT)
        for conn in list(self._connections):
            conn.reset()
        self._connections.clear()

    def _cutting(self) -> bool:
        return self._mode is Mode.CUT

    def _set(self, mode: Mode) -> None:
        if mode is not self._mode:
            log.info("proxy :%d -> %s:%d: %s", self.port, *self.target, mode.value)
        self._mode = mode
        if mode is Mode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    # --- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, HOST, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and reset every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._connections):
            conn.reset()
        self._connections.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # --- forwarding ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cutting() or self._server is None:
            self.refused += 1
            _reset(writer)
            return
        _nodelay(writer)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                upstream = await asyncio.open_connection(*self.target)
        except (OSError, TimeoutError):
            self.refused += 1  # the broker is down: the client sees its connection reset
            _reset(writer)
            return
        _nodelay(upstream[1])
        if self._cutting():  # cut while connecting upstream
            self.refused += 1
            _reset(writer)
            _reset(upstream[1])
            return
        conn = _Connection((reader, writer), upstream)
        self._connections.add(conn)
        self.accepted += 1
        for name, pipe in (("up", self._upstream), ("down", self._downstream)):
            task = asyncio.create_task(pipe(conn), name=f"proxy {self.port} {name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _upstream(self, conn: _Connection) -> None:
        """Client -> broker: forwarded as it comes (held while blackholed)."""
        await self._pipe(conn, conn.client_reader, conn.broker_writer, None)

    async def _downstream(self, conn: _Connection) -> None:
        """Broker -> client: split into packets, PUBACKs dropped while stalling acks."""
        await self._pipe(conn, conn.broker_reader, conn.client_writer, conn.splitter)

    async def _pipe(
        self,
        conn: _Connection,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        splitter: PacketSplitter | None,
    ) -> None:
        clean = False
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(_READ_SIZE)
                if not data:
                    clean = True
                    break
                await self._flowing.wait()  # blackholed while reading: hold the bytes
                if conn not in self._connections:
                    break  # cut meanwhile
                if splitter is None:
                    dst.write(data)
                else:
                    before = splitter.dropped
                    stalled = self._mode is Mode.STALL_ACKS
                    for part in splitter.feed(data, PUBACK if stalled else None):
                        dst.write(part)
                    self.dropped_pubacks += splitter.dropped - before
                await dst.drain()
        except MalformedStream as exc:
            log.warning("proxy :%d: %s; resetting the connection", self.port, exc)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if conn in self._connections:
                self._connections.discard(conn)
                if clean:  # one end closed: close the other the same way (FIN)
                    conn.close()
                else:
                    conn.reset()
