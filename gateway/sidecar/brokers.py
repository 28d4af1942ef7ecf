"""The broker pool: every broker at once, frames fanned in, commands out to the active one.

``BrokerPool`` runs one ``BrokerLink`` (``broker_link.py``) per configured broker, all
at once, each under the pool's ``Supervisor``. Every ready link hears the response
topics (the IDP may answer on any broker) and passes each frame to one handler; commands
go to the broker the ``Elector`` names, and the caller learns which broker took them
under which epoch (``PublishReceipt``). Links report their state and the pool tells the
elector; links never decide which broker is active, but the pool tells every link other
than the active one that it is a standby, which is probed less often.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import NoBrokerAvailable
from gateway.sidecar.broker_link import BrokerLink, MessageHandler
from gateway.sidecar.supervise import Supervisor

if TYPE_CHECKING:
    from gateway.config import BrokerConfig, LinkTimings
    from gateway.drops import Drops
    from gateway.sidecar.election import Decision, ElectionStatus, Elector, LinkStatus

__all__ = ["BrokerLink", "BrokerPool", "MessageHandler", "PublishReceipt"]


@dataclass(frozen=True)
class PublishReceipt:
    """Which broker accepted a command (PUBACK), under which epoch, on which connection."""

    broker_id: str
    epoch: int
    connection: int = 0  # the link's connect count: a higher one later means a new session


class BrokerPool:
    """All brokers at once: frames in from every ready broker, commands out to the active one."""

    def __init__(
        self,
        brokers: Sequence[BrokerConfig],
        *,
        topics: Sequence[str],
        instance_id: str,
        timings: LinkTimings,
        elector: Elector,
        on_message: MessageHandler,
        busy: Callable[[], bool] = lambda: False,
        drops: Drops | None = None,
        supervisor: Supervisor | None = None,
        watch: Sequence[str] = (),
        on_late: MessageHandler = lambda broker, topic, payload: None,
    ) -> None:
        self._elector = elector
        self._busy = busy
        self._supervisor = supervisor or Supervisor()
        self._listeners: list[Callable[[], None]] = []
        self.links = {
            b.id: BrokerLink(
                b,
                topics=topics,
                instance_id=instance_id,
                timings=timings,
                on_message=on_message,
                on_state=self.reevaluate,
                drops=drops,
                watch=watch,
                on_late=on_late,
            )
            for b in brokers
        }
        elector.add_listener(self._on_decision)
        self._standbys(elector.current().broker_id)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after any change of a link state or of the decision."""
        self._listeners.append(callback)

    def _on_decision(self, decision: Decision) -> None:
        self._standbys(decision.broker_id)
        self._notify()

    def _standbys(self, active: str | None) -> None:
        """Every link but the active one is a standby (none is while no broker is active)."""
        for link in self.links.values():
            link.set_standby(active is not None and link.id != active)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def reevaluate(self) -> None:
        """A link changed state: tell the elector and the listeners."""
        self._elector.update(self.statuses(), self._busy())
        self._notify()

    def busy_changed(self) -> None:
        """A round started or ended: a deferred fail-back may be due now."""
        self._elector.update(self.statuses(), self._busy())

    def statuses(self) -> list[LinkStatus]:
        """Every link's status, in configuration order."""
        return [link.status() for link in self.links.values()]

    def decision(self) -> Decision:
        """The elector's current choice of active broker, with its epoch."""
        return self._elector.current()

    def election_status(self) -> ElectionStatus:
        """How the election stands (shared or local, reporters, problems), for Health."""
        return self._elector.status()

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> PublishReceipt:
        """Publish to the active broker; NoBrokerAvailable at once if there is none."""
        decision = self._elector.current()
        link = self.links.get(decision.broker_id) if decision.broker_id is not None else None
        if link is None:
            if decision.broker_id is not None:  # the elector never names one; be safe
                raise NoBrokerAvailable(
                    f"active broker {decision.broker_id} is not one of this sidecar's brokers"
                )
            raise NoBrokerAvailable(f"no broker is ready ({self._summary()})")
        await link.publish(topic, payload, qos)
        return PublishReceipt(decision.broker_id or link.id, decision.epoch, link.connection)

    def newer_connection(self, broker_id: str | None, connection: int) -> int | None:
        """The link's connection number if ``broker_id`` is ready on a session newer than
        ``connection`` (what it carried in between is lost), else None."""
        link = self.links.get(broker_id) if broker_id is not None else None
        if link is None or not link.reconnected_since(connection):
            return None
        return link.connection

    def _summary(self) -> str:
        parts = []
        for link in self.links.values():
            error = link.status().last_error
            parts.append(f"{link.id}: {link.state}" + (f" ({error})" if error else ""))
        return "; ".join(parts)

    async def run(self) -> None:
        """Run every link and the elector until cancelled, each restarted if it fails."""
        self.reevaluate()
        supervise = self._supervisor.run
        async with asyncio.TaskGroup() as tasks:
            for link in self.links.values():
                tasks.create_task(supervise(f"link {link.id}", link.run), name=f"link {link.id}")
            tasks.create_task(supervise("elector", self._elector.run), name="elector")
