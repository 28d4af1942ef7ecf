"""The sidecar's parts, built from one config and wired to each other.

Everything a sidecar runs is made here, in dependency order, so the lifecycle in
``app.py`` only opens, runs and closes it. The parts refer to each other: frames flow
pool -> desk (and pool -> topic hub for the extra topics), commands desk -> pool, and
the elector must know whether a round is in flight, so some links are late-bound
callbacks. With a Redis URL (and no elector given) the shared store, the shared
elector and the statistics writer join; otherwise the election is local. A reloaded
configuration reaches every part that reads it live through ``apply``, and only
between rounds (the reloader waits for the desk to be idle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.drops import Drops
from gateway.fleet.stats import read_fleet
from gateway.sidecar.brokers import BrokerPool
from gateway.sidecar.election import LocalElector
from gateway.sidecar.reload import ConfigReloader
from gateway.sidecar.rounds import RoundDesk
from gateway.sidecar.service import GatewayService
from gateway.sidecar.shaker import Shaker
from gateway.sidecar.stats import StatsWriter, take_snapshot
from gateway.sidecar.supervise import Supervisor
from gateway.sidecar.topics import TopicHub

if TYPE_CHECKING:
    import redis.asyncio as redis

    from gateway.config import GatewayConfig
    from gateway.fleet.stats import SidecarStats
    from gateway.sidecar.election import Elector


class Parts:
    """One sidecar's domain objects: election, broker pool, round desk, servicer, reloader."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        instance_id: str,
        elector: Elector | None = None,
        config_path: str | None = None,
        config_adjust: Callable[[GatewayConfig], GatewayConfig] | None = None,
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.store: redis.Redis | None = None
        labels = {"table": config.table.code}
        self.drops = Drops(labels)
        self.supervisor = Supervisor(labels=labels)
        shared = None
        if elector is None and config.redis.url:
            # Imported here: redis-py is only loaded by sidecars that use a shared store.
            from gateway.fleet import store
            from gateway.sidecar.shared_election import SharedElector

            self.store = store.connect(config.redis)
            elector = shared = SharedElector(config, instance_id, self.store, drops=self.drops)
        self.elector = elector or LocalElector(config.timings)
        table = config.table
        self.hub = TopicHub(t for t in (table.shaker_says, *table.subscribe_topics) if t)
        self.pool = BrokerPool(
            config.brokers,
            topics=[table.response_topic, *sorted(self.hub.topics)],
            instance_id=instance_id,
            timings=config.timings,
            elector=self.elector,
            on_message=self.route,
            busy=lambda: self.desk.busy,
            drops=self.drops,
            supervisor=self.supervisor,
            watch=[table.command_topic],
            on_late=lambda broker, topic, payload: self.desk.late_command(broker, topic, payload),
        )
        self.desk = RoundDesk(
            config.table, self.pool, on_busy_change=self.pool.busy_changed, drops=self.drops
        )
        self.shaker = Shaker(config.table, self.pool, self.hub, drops=self.drops)
        self.elector.add_listener(self.desk.on_decision)
        self.pool.add_listener(self.desk.on_links_changed)
        self.stats_writer: StatsWriter | None = None
        fleet = None
        if shared is not None and self.store is not None:
            keys, client = shared.keys, self.store
            self.stats_writer = StatsWriter(
                client,
                keys,
                self.snapshot,
                interval_s=config.redis.stats_interval_s,
                ttl_s=config.redis.stats_ttl_s,
                on_error=shared.on_store_error,
                drops=self.drops,
            )
            drops = self.drops

            async def fleet() -> list[SidecarStats]:
                return await read_fleet(client, keys, drops)

        self.service = GatewayService(
            config,
            self.desk,
            self.pool,
            instance_id,
            self.snapshot,
            fleet,
            shaker=self.shaker,
            hub=self.hub,
            drops=self.drops,
            supervisor=self.supervisor,
        )
        self.reloader: ConfigReloader | None = None
        if config_path is not None:
            self.reloader = ConfigReloader(
                config_path,
                config,
                apply=self.apply,
                wait_idle=self.desk.wait_idle,
                adjust=config_adjust or (lambda c: c),
                drops=self.drops,
            )
            reloader = self.reloader
            self.service.config_error = lambda: reloader.last_error

    def route(self, broker: str, topic: str, payload: bytes) -> None:
        """The IDP's responses go to the round desk; the extra topics to their listeners."""
        if topic == self.config.table.response_topic:
            self.desk.on_message(broker, topic, payload)
        else:
            self.hub.on_message(broker, topic, payload)

    def apply(self, config: GatewayConfig) -> None:
        """A reloaded configuration, between rounds: only what can change live."""
        self.config = config
        self.desk.reconfigure(config.table)
        self.shaker.table = config.table
        self.service.config = config

    def problems(self) -> tuple[str, ...]:
        """Reasons to report DEGRADED beyond the brokers: the election, failed loops."""
        return (*self.elector.status().problems, *self.supervisor.problems())

    def snapshot(self) -> SidecarStats:
        """This sidecar's statistics right now."""
        return take_snapshot(
            self.instance_id,
            self.config.table.code,
            self.config.generation,
            self.pool.statuses(),
            self.pool.decision(),
            self.desk.counters,
            self.reloader.last_error if self.reloader else "",
        )
