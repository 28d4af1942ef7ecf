"""Hot reload of the mounted configuration, between rounds.

Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and
swapping the ``..data`` symlink, so the watched path keeps its name while the file it
resolves to changes (never mount with ``subPath``: those copies are never updated). The
watcher compares the resolved file's identity every ``interval_s``, validates a changed
file with the same loader as start-up, and applies it only while no Detect is in flight.
An invalid file is kept out: the last good configuration stays, and the error is
reported (Health, statistics, logs, ``gateway.config.reloads{result="invalid"}``).

Live: the table's timeouts, retries, default stream URLs and trace flag, and the
generation. Brokers, topics, timers and the store need new connections: such a change is
reported as needing a restart and not applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from opentelemetry import metrics

from gateway.config import GatewayConfig, TableConfig, load_config
from gateway.drops import Drops
from gateway.errors import ConfigError

log = logging.getLogger(__name__)
_reloads = metrics.get_meter(__name__).create_counter(
    "gateway.config.reloads", description="Configuration changes seen, by result"
)

Signature = tuple[str, int, int, int]


def signature(path: Path) -> Signature | None:
    """The identity of the file ``path`` resolves to now (None if it cannot be read)."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_ino, st.st_mtime_ns, st.st_size


def restart_needed(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """What in ``new`` cannot be applied to a running sidecar."""
    reasons = []
    if new.brokers != old.brokers:
        reasons.append("brokers changed")

    def topics(t: TableConfig) -> tuple[object, ...]:
        return (t.command_topic, t.response_topic, t.shaker_listens, t.shaker_says,
                t.subscribe_topics)  # fmt: skip

    if topics(new.table) != topics(old.table):
        reasons.append("topics changed")
    if (new.table.game, new.table.code) != (old.table.game, old.table.code):
        reasons.append("game or table code changed")
    if new.timings != old.timings:
        reasons.append("failover timers changed")
    if new.redis != old.redis or new.broker_group != old.broker_group:
        reasons.append("shared store settings changed")
    return reasons


class ConfigReloader:
    """Watches one config file and hands valid changes to ``apply`` between rounds."""

    def __init__(
        self,
        path: str | Path,
        current: GatewayConfig,
        *,
        apply: Callable[[GatewayConfig], None],
        wait_idle: Callable[[], Awaitable[None]],
        adjust: Callable[[GatewayConfig], GatewayConfig] = lambda config: config,
        interval_s: float = 0.5,
        drops: Drops | None = None,
    ) -> None:
        self._drops = drops or Drops()
        self.path = Path(path)
        self.config = current
        self.last_error = ""
        self._apply = apply
        self._wait_idle = wait_idle
        self._adjust = adjust  # the command line's overrides (e.g. --redis-url), kept
        self._interval_s = interval_s
        self._seen = signature(self.path)

    async def run(self) -> None:
        """Look for changes until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            now = signature(self.path)
            if now is None or now == self._seen:
                continue
            self._seen = now
            await self.check()

    async def check(self) -> None:
        """Load the file as it is now; apply it between rounds, or say why not."""
        try:
            new = self._adjust(load_config(self.path))
        except ConfigError as exc:
            self._refuse("invalid", f"kept generation {self.config.generation}: {exc.message}")
            return
        except Exception as exc:  # the loader raises only ConfigError; never trust that here
            problem = f"unexpected {type(exc).__name__} while loading: {exc}"
            self._refuse("invalid", f"kept generation {self.config.generation}: {problem}")
            return
        blockers = restart_needed(self.config, new)
        if blockers:
            self._refuse(
                "restart_needed",
                f"generation {new.generation} needs a restart ({', '.join(blockers)}); "
                f"running generation {self.config.generation}",
            )
            return
        await self._wait_idle()  # never in the middle of a Detect
        self.config = replace(new, source=str(self.path))
        self.last_error = ""
        self._apply(self.config)
        _reloads.add(1, {"result": "applied"})
        log.info("configuration generation %d applied from %s", new.generation, self.path)

    def _refuse(self, result: str, message: str) -> None:
        self.last_error = message
        _reloads.add(1, {"result": result})
        if result == "invalid":
            self._drops.add("config", str(self.path), "", message, logged=True)
        log.error("configuration reload refused: %s", message)
