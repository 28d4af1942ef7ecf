"""Simulator of the studio devices (one IDP per table, the SicBo dice shaker) over real MQTT.

It stands on the *device* side of the brokers and speaks the wire contract of IDP-PROTOCOL.md,
never through the sidecar's code: from the gateway it takes only the config model (to find
the devices a set of table configs describes) and :mod:`gateway.tls`. Integration tests run it
in-process as an asyncio task; ``gateway sim`` / ``gateway demo`` run it from the CLI. Device
misbehaviour (stale, garbage, oversize frames, silence, streams, shaker faults) is scripted per
table so tests can prove the gateway survives it. A Baccarat IDP deals its hands by the punto
banco tableau and, like the real device, publishes the hand as it is dealt before the final
frame. ``sent`` records every frame the IDPs published, so tests can check an answer against
what was sent.

The modules, by job:

- :mod:`~gateway.devtools.sim.devices`: brokers, tables, behaviours and the records kept;
- :mod:`~gateway.devtools.sim.rounds`: the round script and the answer each round has;
- :mod:`~gateway.devtools.sim.links`: one MQTT connection per broker;
- :mod:`~gateway.devtools.sim.shaker`: the dice shakers;
- :mod:`~gateway.devtools.sim.simulator`: ``IdpSimulator``, which ties them together;
- :mod:`~gateway.devtools.sim.configs` and :mod:`~gateway.devtools.sim.options`: devices
  from gateway configs, behaviour from command-line options.
"""

from gateway.devtools.sim.configs import sim_devices
from gateway.devtools.sim.devices import (
    ANSWER_ON,
    ANSWERS,
    GAMES,
    Behaviour,
    ReceivedCommand,
    SentFrame,
    SimBroker,
    SimTable,
)
from gateway.devtools.sim.options import add_behaviour_arguments, behaviour_from_args
from gateway.devtools.sim.rounds import derive_result
from gateway.devtools.sim.simulator import IdpSimulator

__all__ = [
    "ANSWERS",
    "ANSWER_ON",
    "GAMES",
    "Behaviour",
    "IdpSimulator",
    "ReceivedCommand",
    "SentFrame",
    "SimBroker",
    "SimTable",
    "add_behaviour_arguments",
    "behaviour_from_args",
    "derive_result",
    "sim_devices",
]
