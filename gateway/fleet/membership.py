"""Which brokers the live sidecars of a broker group have configured: pure, no I/O.

Two GameTables of one group can list different brokers (during a broker rollout); each
sidecar reports its list in its view. ``membership()`` reads them the way a sidecar
deciding the group's record needs them, ``lists_conflict()`` the way an outside reader (the
operator's status) sees them. The rules that use them are in ``gateway.sidecar.shared_plan``
and ``docs/election.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.fleet.records import View


def majority(count: int, live: int) -> bool:
    """More than half of ``live``."""
    return 2 * count > live


@dataclass(frozen=True)
class Membership:
    """Which brokers the live sidecars of a group have configured."""

    mine: dict[str, int]  # this sidecar's brokers -> priority
    lists: dict[str, dict[str, int] | None]  # instance -> its brokers (None: not reported)
    common: tuple[str, ...]  # configured on every sidecar that reports, in group order

    @property
    def known(self) -> frozenset[str] | None:
        """Brokers some live sidecar has; None if a sidecar does not report its list."""
        if any(brokers is None for brokers in self.lists.values()):
            return None
        return frozenset(b for brokers in self.lists.values() if brokers for b in brokers)

    def has(self, instance: str, broker: str) -> bool:
        """Whether ``instance`` has ``broker`` configured (True if it does not report)."""
        brokers = self.lists.get(instance)
        return brokers is None or broker in brokers

    def differ(self) -> str:
        """Empty if every reported list is the same; else which sidecar lacks which broker."""
        reported = {i: b for i, b in self.lists.items() if b is not None}
        every = set().union(*(set(b) for b in reported.values())) if reported else set()
        missing = [
            f"{i} lacks {', '.join(sorted(every - set(b)))}"
            for i, b in sorted(reported.items())
            if every - set(b)
        ]
        return "; ".join(missing)

    def conflict(self) -> str:
        """Empty while some broker is configured on every sidecar; else the conflict."""
        if self.common:
            return ""
        lists = "; ".join(
            f"{i}: {', '.join(sorted(b)) if b else '?'}" for i, b in sorted(self.lists.items())
        )
        return f"no broker is configured on every sidecar of the group ({lists})"


def membership(me: View, views: Iterable[View], config: GatewayConfig) -> Membership:
    """The group's broker lists as the live views report them (pure)."""
    mine = {b.id: b.priority for b in config.brokers}
    lists: dict[str, dict[str, int] | None] = {v.instance: v.brokers for v in views}
    lists[me.instance] = mine
    reported = [b for b in lists.values() if b is not None]
    common = set(mine).intersection(*(set(b) for b in reported))

    def rank(broker: str) -> tuple[int, str]:
        return max(b.get(broker, 0) for b in reported), broker

    return Membership(mine, lists, tuple(sorted(common, key=rank)))


def lists_conflict(views: Iterable[View]) -> str:
    """The group's broker-list conflict as an outside reader (the operator) sees it from
    the views alone: "" unless the reported lists share no broker."""
    lists = {v.instance: v.brokers for v in views if v.brokers is not None}
    if not lists or set.intersection(*(set(b) for b in lists.values())):
        return ""
    return Membership({}, dict(lists), ()).conflict()
