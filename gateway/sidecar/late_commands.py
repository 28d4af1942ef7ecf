"""Commands a hung broker may still deliver: remembered per link, reported when they land.

A link that gives a broker up while a command's PUBACK is outstanding (a hang, not a
crash) cannot know whether the broker took it: a hung broker keeps the command in its
socket buffer and delivers it when it resumes, maybe long after, switching the IDP to
an old round or stopping it. The link remembers such commands (a few, the latest) and
watches the command topic; one seen coming back, or assumed delivered when the link is
ready again before it could watch, is reported (``on_late``) so the round desk can
repair what it did at the IDP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

# The logger the broker links have always used (log filters and dashboards know it).
log = logging.getLogger("gateway.sidecar.brokers")

ORPHAN_MEMORY = 16  # unacknowledged commands remembered per link

LateHandler = Callable[[str, str, bytes], None]
"""Called with (broker id, topic, payload) for a command that may have reached the IDP late."""


class LateCommands:
    """The commands one link sent without an acknowledgement, until they land or it recovers."""

    def __init__(self, broker_id: str, on_late: LateHandler) -> None:
        self._broker_id = broker_id
        self._on_late = on_late
        self._orphans: list[tuple[str, bytes]] = []

    def remember(self, topic: str, payload: bytes) -> None:
        """A command was given up without its PUBACK: the broker may deliver it later."""
        self._orphans = [*self._orphans[-ORPHAN_MEMORY + 1 :], (topic, payload)]

    def seen(self, topic: str, data: bytes) -> None:
        """A command as the broker delivers it: ours, now or late (an orphan)."""
        if (topic, data) in self._orphans:
            self._orphans.remove((topic, data))
            log.warning("broker %s delivered a command it took before it hung: %.100r",
                        self._broker_id, data)  # fmt: skip
            self._on_late(self._broker_id, topic, data)

    def recovered(self) -> None:
        """Ready again: orphans may have been delivered before we could watch; assume so."""
        orphans, self._orphans = self._orphans, []
        for topic, data in orphans:
            log.warning("broker %s is back; a command it took before it hung may have reached "
                        "the IDP late: %.100r", self._broker_id, data)  # fmt: skip
            self._on_late(self._broker_id, topic, data)
