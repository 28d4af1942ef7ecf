"""One broker link: a supervised aiomqtt connection that knows whether its broker works.

``BrokerLink`` owns one aiomqtt connection to one broker and keeps it alive: connect
(TLS, credentials, TCP_NODELAY, a packet-size limit, a client id unique to this sidecar
instance; ``connection.py``), subscribe and wait for the SUBACK, prove the round trip
with a first probe, then keep probing through the broker: every few hundred milliseconds
while it is the active broker, less often while another one is (``set_standby``).
A probe is a QoS 1 publish that must be acknowledged (PUBACK) *and* come back through the
subscription within ``probe_timeout_s``. A killed broker is noticed when the socket
drops; a hung one, or one that still relays messages but stopped acknowledging QoS 1
(inflight window full, a stuck plugin or bridge), when a probe misses its deadline; a
command publish that gets no PUBACK within ``operation_timeout_s`` counts the same. Any
failure marks the link DOWN at once, fails its in-flight publishes, and reconnects with
capped exponential backoff and jitter. Each link also watches the table's command topic
for commands it gave up on during a hang (``late_commands.py``). A message whose handling
fails is dropped and counted (``gateway.drops``), never the link; a link that fails for a
reason nobody foresaw is restarted by the pool's ``Supervisor``, never the process. A link
reports its state; it never decides which broker is active (the pool and the elector do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import aiomqtt
from opentelemetry import trace

from gateway.backoff import Backoff
from gateway.drops import Drops
from gateway.errors import NoBrokerAvailable, raise_if_cancelled
from gateway.sidecar import connection as mqtt_connection
from gateway.sidecar.connection import ProtocolChoice, describe_error, make_client, refused_code
from gateway.sidecar.election import LinkState, LinkStatus
from gateway.sidecar.late_commands import LateCommands

if TYPE_CHECKING:
    from gateway.config import BrokerConfig, LinkTimings

# The names the broker links have always logged and traced under (log filters, dashboards).
log = logging.getLogger("gateway.sidecar.brokers")
_tracer = trace.get_tracer("gateway.sidecar.brokers")
# paho packet traces, quiet by default (telemetry.py names this logger)
_mqtt_log = logging.getLogger("gateway.sidecar.brokers.mqtt")

MessageHandler = Callable[[str, str, bytes], None]
"""Called with (broker id, topic, payload) for every message on a subscribed topic."""

_FAILURE_MEMORY = 32


class ProbeMissed(Exception):
    """A probe did not come back through the broker in time."""


class PublishStalled(Exception):
    """A QoS 1 publish got no PUBACK in time: the broker takes messages but does not
    acknowledge them (inflight window full, a stuck plugin or bridge)."""


class BrokerLink:
    """One supervised connection to one broker."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        topics: Sequence[str],
        instance_id: str,
        timings: LinkTimings,
        on_message: MessageHandler,
        on_state: Callable[[], None],
        drops: Drops | None = None,
        watch: Sequence[str] = (),
        on_late: MessageHandler = lambda broker, topic, payload: None,
    ) -> None:
        self.broker = broker
        self._topics = tuple(topics)
        self._watch = tuple(t for t in watch if t not in self._topics)
        self._watching: tuple[str, ...] = ()  # the watch topics the broker granted
        # Commands sent on a connection that was then given up without their PUBACK.
        self._late = LateCommands(broker.id, on_late)
        self._timings = timings
        self._on_message = on_message
        self._on_state = on_state
        self._drops = drops or Drops()
        self._client_id = f"gw-{instance_id}-{broker.id}"
        self._probe_topic = f"studio-gateway/probe/{instance_id}/{broker.id}"
        self._protocol = ProtocolChoice()
        self._client: aiomqtt.Client | None = None
        self._state = LinkState.CONNECTING
        self._since = time.monotonic()
        self._since_wall = time.time()
        self._failures: list[float] = []
        self._failure_count = 0
        self._connects = 0
        self._publishes_ok = 0
        self._publishes_failed = 0
        self._rtt_ms = 0.0
        self._last_error = ""
        self._probe_waiter: tuple[int, asyncio.Future[None]] | None = None
        self._pending: dict[asyncio.Future[None], tuple[str, bytes]] = {}
        self._stalled: asyncio.Event | None = None  # set to end the session: no PUBACK
        self._standby = False  # another broker is active: probe every standby interval
        self._promoted = asyncio.Event()  # set when this link stops being a standby

    @property
    def id(self) -> str:
        """The broker's id from the config (names it in logs, metrics and Health)."""
        return self.broker.id

    @property
    def state(self) -> LinkState:
        """Where the connection stands now: connecting, ready (probed) or down."""
        return self._state

    @property
    def protocol(self) -> str:
        """The MQTT version this link speaks (or will try next): "5" or "3.1.1"."""
        return "5" if self._protocol.version is aiomqtt.ProtocolVersion.V5 else "3.1.1"

    @property
    def connection(self) -> int:
        """How many times this link has connected: which session carries what it sends."""
        return self._connects

    def reconnected_since(self, connection: int) -> bool:
        """Ready on a newer session than ``connection``: what the broker sent us in between
        (our subscriptions are not persistent) was lost."""
        return self._state is LinkState.READY and self._connects > connection

    def set_standby(self, standby: bool) -> None:
        """Whether another broker is active: a standby is probed less often (until it is not)."""
        self._standby = standby
        if not standby:
            self._promoted.set()

    def status(self) -> LinkStatus:
        """A snapshot of this link for the elector, Health and statistics."""
        return LinkStatus(
            id=self.broker.id,
            host=self.broker.host,
            port=self.broker.port,
            priority=self.broker.priority,
            state=self._state,
            since=self._since,
            since_wall=self._since_wall,
            failures=self._failure_count,
            failure_times=tuple(self._failures),
            probe_rtt_ms=self._rtt_ms,
            last_error=self._last_error,
            connects=self._connects,
            publishes_ok=self._publishes_ok,
            publishes_failed=self._publishes_failed,
        )

    def _set_state(self, state: LinkState) -> None:
        if state is self._state:
            return
        previous, self._state = self._state, state
        self._since, self._since_wall = time.monotonic(), time.time()
        attributes = {"broker": self.id, "from": previous.value, "to": state.value}
        if self._last_error and state is LinkState.DOWN:
            attributes["error"] = self._last_error
        _tracer.start_span("gateway.broker.state", attributes=attributes).end()
        self._on_state()

    def _mark_down(self, exc: BaseException) -> None:
        """Record the failure and fail publishes waiting on this connection, at once."""
        self._last_error = describe_error(exc)
        for fut, sent in list(self._pending.items()):
            if not fut.done():
                self._late.remember(*sent)
            fut.cancel()
        if self._state is LinkState.READY:
            self._failure_count += 1
            self._failures = [*self._failures[-_FAILURE_MEMORY + 1 :], time.monotonic()]
            log.warning("broker %s down: %s", self.id, self._last_error)
        elif self._state is LinkState.CONNECTING:
            log.info("broker %s not reachable: %s", self.id, self._last_error)
        self._set_state(LinkState.DOWN)

    def _stall(self, exc: PublishStalled) -> None:
        """No PUBACK in time: the broker is down for commands; reconnect."""
        self._mark_down(exc)
        if self._stalled is not None:
            self._stalled.set()

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait for the broker's acknowledgement (PUBACK for QoS 1)."""
        client = self._client
        if client is None or self._state is not LinkState.READY:
            raise NoBrokerAvailable(f"broker {self.id} is {self._state}")
        fut = asyncio.ensure_future(self._acknowledged(client, topic, payload, qos))
        self._pending[fut] = (topic, payload)
        try:
            await fut
        except asyncio.CancelledError:
            self._publishes_failed += 1
            task = asyncio.current_task()
            if fut.cancelled() and task is not None and not task.cancelling():
                raise NoBrokerAvailable(
                    f"broker {self.id} went down during publish: {self._last_error}"
                ) from None
            raise
        except PublishStalled as exc:
            self._publishes_failed += 1
            self._late.remember(topic, payload)
            self._stall(exc)
            raise NoBrokerAvailable(f"publish to broker {self.id} failed: {exc}") from exc
        except aiomqtt.MqttError as exc:
            self._publishes_failed += 1
            raise NoBrokerAvailable(
                f"publish to broker {self.id} failed: {describe_error(exc)}"
            ) from exc
        finally:
            self._pending.pop(fut, None)
        self._publishes_ok += 1
        raise_if_cancelled()  # the caller was cancelled but aiomqtt's wait_for ate it

    async def _acknowledged(
        self, client: aiomqtt.Client, topic: str, payload: bytes, qos: int
    ) -> None:
        limit = self._timings.operation_timeout_s
        try:
            async with asyncio.timeout(limit):
                await client.publish(topic, payload, qos=qos, timeout=math.inf)
        except TimeoutError:
            raise PublishStalled(
                f"broker unresponsive: no PUBACK within {limit:g}s (QoS 1 stalled)"
            ) from None

    async def run(self) -> None:
        """Keep the connection up until cancelled."""
        t = self._timings
        backoff = Backoff(t.backoff_initial_s, t.backoff_max_s, stable_s=t.backoff_max_s * 2)
        try:
            while True:
                backoff.started()
                try:
                    await self._session()
                except (aiomqtt.MqttError, ProbeMissed, PublishStalled, OSError) as exc:
                    self._mark_down(exc)
                raise_if_cancelled()
                await asyncio.sleep(backoff.next())
                self._set_state(LinkState.CONNECTING)
        except Exception as exc:
            # Unforeseen: the pool's supervisor restarts this link; until then it is down.
            self._mark_down(exc)
            raise
        finally:
            self._client = None

    async def _session(self) -> None:
        t = self._timings
        client = make_client(
            self.broker,
            identifier=self._client_id,
            keepalive_s=t.keepalive_s,
            timeout_s=t.operation_timeout_s,
            version=self._protocol.version,
            logger=_mqtt_log,
            on_oversize=self._oversize,
        )
        connected = False
        try:
            async with client:
                connected = True
                raise_if_cancelled()
                await self._subscribe(client)
                raise_if_cancelled()
                await self._serve(client)
        except aiomqtt.MqttError as exc:
            if not connected:
                # Reached the broker but the CONNECT failed: maybe it speaks only 3.1.1.
                self._protocol.connect_failed(exc, reached=not mqtt_connection.socket_level(exc))
            raise

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        granted = await client.subscribe(
            [(topic, 1) for topic in self._topics]
            + [(self._probe_topic, 0)]
            + [(topic, 0) for topic in self._watch]
        )
        topics = [*self._topics, self._probe_topic, *self._watch]
        refused = [t for t, code in zip(topics, granted, strict=False) if refused_code(code)]
        needed = [t for t in refused if t not in self._watch]
        if needed:
            raise aiomqtt.MqttError(f"subscription refused by the broker for {needed}")
        self._watching = tuple(t for t in self._watch if t not in refused)
        if len(self._watching) < len(self._watch):  # e.g. an ACL that allows publish only
            log.info("broker %s refused watching %s; late commands are caught on reconnect",
                     self.id, ", ".join(t for t in self._watch if t in refused))  # fmt: skip

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._stalled = stalled = asyncio.Event()
        # Not a TaskGroup: on Python 3.11 a child failing while the group waits in
        # __aexit__ leaves the parent task with a pending cancel request, which later
        # swallows a real cancellation of this long-lived loop.
        read = asyncio.create_task(self._read(client), name=f"read {self.id}")
        probe = asyncio.create_task(self._probe(client), name=f"probe {self.id}")
        stall = asyncio.create_task(stalled.wait(), name=f"stall {self.id}")
        tasks = {read, probe, stall}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._client = self._stalled = None
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        if stall in done:
            raise PublishStalled(self._last_error)
        for task in done:
            task.result()  # re-raise the failure that ended the session

    def _oversize(self, size: int) -> None:
        self._drops.add(
            "packet", f"broker {self.id}", b"", f"packet of {size} bytes over the limit"
        )

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                topic = message.topic.value
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                if topic == self._probe_topic:
                    self._probe_answered(data)
                    continue
                if topic in self._watching:
                    self._late.seen(topic, data)
                    continue
                try:
                    self._on_message(self.id, topic, data)
                except Exception as exc:  # one bad message costs that message only
                    reason = f"{type(exc).__name__}: {exc}"
                    self._drops.add("message", f"broker {self.id} topic {topic}", data, reason)
        except aiomqtt.MqttError as exc:
            self._mark_down(exc)
            raise
        raise aiomqtt.MqttError("message stream ended")

    def _probe_answered(self, data: bytes) -> None:
        waiter = self._probe_waiter
        if waiter is not None and data == str(waiter[0]).encode() and not waiter[1].done():
            waiter[1].set_result(None)

    async def _probe(self, client: aiomqtt.Client) -> None:
        """Prove the round trip through the broker, forever; the first proof makes it READY.

        QoS 1 up (the broker must acknowledge it), QoS 0 back (the subscription's QoS)."""
        t = self._timings
        seq = 0
        loop = asyncio.get_running_loop()
        while True:
            raise_if_cancelled()
            seq += 1
            fut: asyncio.Future[None] = loop.create_future()
            self._probe_waiter = (seq, fut)
            sent = time.monotonic()
            acked = False
            try:
                async with asyncio.timeout(t.probe_timeout_s):
                    await client.publish(
                        self._probe_topic, str(seq).encode(), qos=1, timeout=math.inf
                    )
                    acked = True
                    await fut
            except TimeoutError:
                missing = "answer" if acked else "PUBACK"
                exc = ProbeMissed(f"no probe {missing} within {t.probe_timeout_s:g}s")
                self._mark_down(exc)
                raise exc from None
            self._rtt_ms = (time.monotonic() - sent) * 1000
            if self._state is not LinkState.READY:
                self._connects += 1
                self._set_state(LinkState.READY)
                self._late.recovered()
                log.info(
                    "broker %s ready (MQTT %s, probe %.2f ms)", self.id, self.protocol, self._rtt_ms
                )
            await self._pause()

    async def _pause(self) -> None:
        """The time between two probes; a standby's pause ends when it is made active."""
        t = self._timings
        if not self._standby:
            await asyncio.sleep(t.probe_interval_s)
            return
        self._promoted.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(t.standby_probe_interval_s, t.probe_interval_s)):
                await self._promoted.wait()
