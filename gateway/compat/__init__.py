"""The predecessor's API, served by the sidecar: ``CompleteMQTTSystem`` (its system
module) and ``gateway.compat.config`` (its config module). Move a program by changing its
import lines; ``docs/migration.md`` says which, and what behaves differently.

- ``system``: the predecessor's module: the facade and the ``create_complete_*_system``
  shortcuts; ``facade`` holds ``CompleteMQTTSystem``, on an event loop of its own
  (callable from any loop or thread), ``rounds`` its detect and shake, ``status`` its
  ``get_system_status`` report, ``target`` which sidecar it talks to
- ``config``: ``GameType``, ``Environment``, ``BrokerConfig``, ``MQTTConfigManager``,
  ``get_config``; the program's settings, compared with what the sidecar serves
- ``legacy``: the old result, statistics and health shapes (pure)
- ``handlers``: ``add_message_handler``, fed by one Subscribe stream
- ``broker_probe``: ``test_broker_connection``, a real MQTT connect
"""

from gateway.client import NotReady
from gateway.compat.config import (
    BrokerConfig,
    Environment,
    GameConfig,
    GameType,
    MQTTConfig,
    MQTTConfigManager,
    get_config,
)
from gateway.compat.handlers import MessageHandler
from gateway.compat.legacy import (
    LegacyResult,
    connection_stats,
    health_report,
    legacy_result,
    parse_payload,
    topic_matches,
)
from gateway.compat.system import (
    CompleteMQTTSystem,
    WrongSidecar,
    create_complete_baccarat_system,
    create_complete_roulette_system,
    create_complete_sicbo_system,
    sidecar_target,
    test_broker_connection,
)

__all__ = [
    "BrokerConfig",
    "CompleteMQTTSystem",
    "Environment",
    "GameConfig",
    "GameType",
    "LegacyResult",
    "MQTTConfig",
    "MQTTConfigManager",
    "MessageHandler",
    "NotReady",
    "WrongSidecar",
    "connection_stats",
    "create_complete_baccarat_system",
    "create_complete_roulette_system",
    "create_complete_sicbo_system",
    "get_config",
    "health_report",
    "legacy_result",
    "parse_payload",
    "sidecar_target",
    "test_broker_connection",
    "topic_matches",
]
