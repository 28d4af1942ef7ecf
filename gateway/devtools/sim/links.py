"""The simulator's MQTT side: one connection per broker, kept up, and publishing through it.

The real devices are connected to every broker of the studio at once, so the simulator is
too: :class:`BrokerLinks` runs one supervised aiomqtt client per broker (reconnecting with
a short capped backoff, as a device on the studio network would), subscribes it to every
device's listening topic and hands each message to the simulator together with its
:class:`Origin`, the broker and client that carried it. Answers go back through the origin
("same": a broker that has gone since then drops the answer, as a real one would) or
through every connected broker ("all"). TLS goes through :mod:`gateway.tls`, which knows
how to verify a broker's certificate against a configured server name.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import aiomqtt

from gateway.devtools.sim.devices import SimBroker
from gateway.tls import client_context

log = logging.getLogger(__name__)

_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.05, 0.5


@dataclass(frozen=True)
class Origin:
    """The broker, and the connection to it, that carried a command to a device."""

    broker: str
    client: aiomqtt.Client


OnMessage = Callable[[Origin, aiomqtt.Message], Awaitable[None]]
"""Handles one message a device received."""


def tls_context(broker: SimBroker) -> ssl.SSLContext | None:
    """The client TLS context for ``broker``, or None for plain TCP."""
    if broker.ca_file is None:
        return None
    ctx = client_context(broker.server_name)
    ctx.load_verify_locations(cafile=broker.ca_file)
    if broker.client_cert:
        ctx.load_cert_chain(broker.client_cert, broker.client_key)
    return ctx


def raise_if_cancelled() -> None:
    """Re-raise a cancellation of the current task that a library call swallowed."""
    # Python 3.11's asyncio.wait_for (inside aiomqtt) can swallow a cancellation.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class BrokerLinks:
    """One connection per broker for the simulated devices, subscribed to ``topics``."""

    def __init__(self, brokers: Sequence[SimBroker], topics: Iterable[str], client_id: str) -> None:
        self.brokers = tuple(brokers)
        self._topics = list(topics)
        self._client_id = client_id
        self._clients: dict[str, aiomqtt.Client] = {}
        self._ready = {b.id: asyncio.Event() for b in brokers}

    @property
    def connected(self) -> set[str]:
        """Ids of the brokers currently connected and subscribed."""
        return {bid for bid, ev in self._ready.items() if ev.is_set()}

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every broker is connected and subscribed (SUBACK received)."""
        try:
            async with asyncio.timeout(timeout):
                for event in self._ready.values():
                    await event.wait()
        except TimeoutError:
            missing = sorted(set(self._ready) - self.connected)
            raise TimeoutError(f"brokers not connected after {timeout}s: {missing}") from None

    async def run(self, on_message: OnMessage) -> None:
        """Keep every link up until cancelled, handing each message to ``on_message``."""
        async with asyncio.TaskGroup() as tg:
            for index, broker in enumerate(self.brokers):
                identifier = f"{self._client_id}-{index}"
                tg.create_task(self._supervise(broker, identifier, on_message))

    async def _supervise(self, broker: SimBroker, identifier: str, on_message: OnMessage) -> None:
        backoff, tls = _BACKOFF_MIN_S, tls_context(broker)
        while True:
            client = aiomqtt.Client(
                broker.host,
                broker.port,
                username=broker.username,
                password=broker.password,
                identifier=identifier,
                tls_context=tls,
                socket_options=_NODELAY,
                keepalive=5,
                timeout=5,
            )
            try:
                async with client:
                    raise_if_cancelled()
                    if self._topics:
                        await client.subscribe([(t, 1) for t in self._topics])
                    raise_if_cancelled()
                    self._clients[broker.id] = client
                    self._ready[broker.id].set()
                    backoff = _BACKOFF_MIN_S
                    log.info("sim connected to %s as %s", broker.id, identifier)
                    async for message in client.messages:
                        await on_message(Origin(broker.id, client), message)
            except aiomqtt.MqttError as exc:
                log.warning("sim lost %s (%s); retrying in %.1fs", broker.id, exc, backoff)
            finally:
                self._ready[broker.id].clear()
                if self._clients.get(broker.id) is client:
                    del self._clients[broker.id]
            raise_if_cancelled()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def publish(
        self, origin: Origin, topic: str, payload: bytes, answer_on: str
    ) -> list[str] | None:
        """Publish QoS 1; the ids of the brokers that took it.

        None when the command's broker is gone (answer_on "same"): its link reconnected
        or is down, so the answer is dropped as a real device's would be.
        """
        if answer_on == "all":
            targets = list(self._clients.items())
        elif self._clients.get(origin.broker) is origin.client:
            targets = [(origin.broker, origin.client)]
        else:
            log.info("sim drops frame for %s: broker %s is gone", topic, origin.broker)
            return None
        results = await asyncio.gather(
            *(c.publish(topic, payload, qos=1) for _, c in targets), return_exceptions=True
        )
        took: list[str] = []
        for (bid, _), result in zip(targets, results, strict=True):
            if isinstance(result, Exception):
                log.warning("sim publish on %s via %s failed: %s", topic, bid, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                took.append(bid)
        return took
