"""The predecessor's ``CompleteMQTTSystem``, served by the sidecar: change the imports.

::

    from gateway.compat import CompleteMQTTSystem                   # was mqtt.complete_system
    from gateway.compat.config import BrokerConfig, Environment, GameType  # its config module

    system = CompleteMQTTSystem(GameType.SICBO, Environment.PRODUCTION)
    await system.initialize()
    ok, dice = await system.detect("SBO-001-20251120-101500")  # (True, [4, 2, 6])
    await system.send_timeout_command()  # True: the sidecar has stopped the IDP already
    await system.cleanup()

Game code keeps its calls and result shapes (SicBo ``[4, 2, 6]``, Roulette ``35``,
Baccarat ``["KD", "8S", "10H", "AC", "", ""]``); the brokers, failover and round matching
live in the sidecar (``gateway.client`` talks to it: ``target=``, else
``GATEWAY_TARGET_<GAME>``, else ``GATEWAY_TARGET``, else ``127.0.0.1:50051``).

The system does its work on an event loop of its own, in a thread of its own, so it may
be called from any loop and any thread: ``asyncio.run(system.initialize())`` once, then
``asyncio.run(system.detect(...))`` per round from a worker thread, as the predecessor's
production programs do. One deliberate difference: ``detect`` answers ``(False, None)``
when there is no real result (timeout, IDP error, no broker), where the predecessor
answered ``(True, <made-up default>)``. ``docs/migration.md`` has every call side by side.

This module is the predecessor's ``complete_system``: the facade lives in ``facade``,
the sidecar's address in ``target``, ``test_broker_connection`` in ``broker_probe``; the
``create_complete_*_system`` shortcuts are here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.compat.broker_probe import test_broker_connection
from gateway.compat.config import Environment, GameType
from gateway.compat.facade import NOT_INITIALIZED, RPC_DEADLINE_S, SETTLE_S, CompleteMQTTSystem
from gateway.compat.target import DEFAULT_TARGET, TARGET_ENV, WrongSidecar, sidecar_target

__all__ = [
    "DEFAULT_TARGET",
    "NOT_INITIALIZED",
    "RPC_DEADLINE_S",
    "SETTLE_S",
    "TARGET_ENV",
    "CompleteMQTTSystem",
    "WrongSidecar",
    "create_complete_baccarat_system",
    "create_complete_roulette_system",
    "create_complete_sicbo_system",
    "sidecar_target",
    "test_broker_connection",
]


async def _create(
    game: GameType,
    environment: Environment | str,
    pooling: bool,
    processing: bool,
    target: str | None,
) -> CompleteMQTTSystem:
    system = CompleteMQTTSystem(
        game,
        environment,
        enable_connection_pooling=pooling,
        enable_message_processing=processing,
        target=target,
    )
    await system.initialize()
    return system


def _shortcut(game: GameType, label: str) -> Callable[..., Awaitable[CompleteMQTTSystem]]:
    async def create(
        environment: Environment | str = Environment.DEVELOPMENT,
        enable_connection_pooling: bool = True,
        enable_message_processing: bool = True,
        *,
        target: str | None = None,
    ) -> CompleteMQTTSystem:
        return await _create(
            game, environment, enable_connection_pooling, enable_message_processing, target
        )

    create.__name__ = create.__qualname__ = f"create_complete_{game.value}_system"
    create.__doc__ = f"An initialized {label} system (the predecessor's shortcut)."
    return create


create_complete_sicbo_system = _shortcut(GameType.SICBO, "SicBo")
create_complete_baccarat_system = _shortcut(GameType.BACCARAT, "Baccarat")
create_complete_roulette_system = _shortcut(GameType.ROULETTE, "Roulette")
