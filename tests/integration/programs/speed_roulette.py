"""A Speed Roulette table controller as the predecessor's programs are written; only its
two import lines changed (marked). Prints one JSON line with what it got."""

import asyncio
import json
import sys
import threading

# was: from mqtt.complete_system import CompleteMQTTSystem
from gateway.compat import CompleteMQTTSystem

# was: from mqtt.config_manager import BrokerConfig, Environment, GameType
from gateway.compat.config import BrokerConfig, Environment, GameType

INPUT = "rtmp://192.168.20.10:1935/live/r10_sr"

system = CompleteMQTTSystem(game_type=GameType.ROULETTE, environment=Environment.PRODUCTION)
# The override block the predecessor's detect module runs before initialize().
system.config.brokers = [
    BrokerConfig(broker="192.168.20.9", port=1883, username="PFC", password="wago", priority=1),
    BrokerConfig(broker="192.168.20.10", port=1883, username="PFC", password="wago", priority=2),
]
system.config.game_config.command_topic = "ikg/idp/ARO-001/command"
system.config.game_config.response_topic = "ikg/idp/ARO-001/response"
system.config.game_config.timeout = 10
system.config.client_id = "speed_roulette_detect"
system.config.default_username = "PFC"
system.config.default_password = "wago"


def initialize() -> None:
    asyncio.run(system.initialize())


def detect_round(round_id: str) -> tuple[bool, object, bool]:
    """What the serial-port thread calls: a fresh event loop per round."""
    ok, result = asyncio.run(system.detect(round_id, input_stream=INPUT, retries=3))
    stopped = asyncio.run(system.send_timeout_command()) if ok else False
    return ok, result, stopped


def main() -> None:
    rounds = int(sys.argv[1])
    initialize()
    got: list[object] = []
    for n in range(rounds):
        round_id = f"ARO-001-prog-{n}"
        worker = threading.Thread(target=lambda r=round_id: got.append([r, *detect_round(r)]))
        worker.start()
        worker.join()
    status = system.get_system_status()
    health = asyncio.run(system.check_health())
    asyncio.run(system.cleanup())
    print(
        json.dumps(
            {
                "rounds": got,
                "config_info": status["config_info"],
                "keys": sorted(status),
                "attributes": [
                    system.enable_connection_pooling,
                    system.enable_message_processing,
                    system.logger.name,
                ],
                "differences": status["config_differences"],
                "health": health["status"],
                "stats": system.get_connection_stats()["total_connections"],
            }
        )
    )


if __name__ == "__main__":
    main()
