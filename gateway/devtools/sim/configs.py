"""From gateway configs to simulated devices: the studio a set of table configs describes.

``gateway sim`` and ``gateway demo`` read the same table config files the sidecars load,
so the simulated IDPs listen where the sidecars publish: every broker once (by id, with its
credentials and TLS settings), one :class:`SimTable` per config.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import GatewayConfig
from gateway.devtools.sim.devices import SimBroker, SimTable


def sim_devices(
    configs: Sequence[GatewayConfig],
) -> tuple[list[SimBroker], list[SimTable]]:
    """The simulator's view of some table configs: every broker once, every table."""
    brokers: dict[str, SimBroker] = {}
    tables = []
    for config in configs:
        for b in config.brokers:
            tls = b.tls
            brokers.setdefault(
                b.id,
                SimBroker(
                    host=b.host,
                    port=b.port,
                    username=b.username,
                    password=b.password,
                    ca_file=tls.ca_file if tls else None,
                    client_cert=tls.cert_file if tls else None,
                    client_key=tls.key_file if tls else None,
                    server_name=tls.server_name if tls else None,
                    id=b.id,
                ),
            )
        t = config.table
        tables.append(
            SimTable(
                game=t.game.value,
                table_code=t.code,
                command_topic=t.command_topic,
                response_topic=t.response_topic,
                shaker_listens=t.shaker_listens,
                shaker_says=t.shaker_says,
            )
        )
    return list(brokers.values()), tables
