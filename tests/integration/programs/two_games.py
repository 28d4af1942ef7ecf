"""A process that runs two games, one system each, with the predecessor's own GameType
enum; only the import lines changed (marked). Prints one JSON line per game."""

import asyncio
import enum
import json
import threading

# was: from mqtt.complete_system import CompleteMQTTSystem
from gateway.compat import CompleteMQTTSystem


class GameType(enum.Enum):  # the predecessor's own enum module, kept as it was
    SICBO = "sicbo"
    BACCARAT = "baccarat"
    ROULETTE = "roulette"


systems = {
    "roulette": CompleteMQTTSystem(GameType.ROULETTE),
    "sicbo": CompleteMQTTSystem(GameType.SICBO),
}


async def start_all() -> None:
    await asyncio.gather(*(s.initialize() for s in systems.values()))


def play(game: str, code: str, out: dict[str, list[object]]) -> None:
    for n in range(3):
        round_id = f"{code}-two-{n}"
        ok, result = asyncio.run(systems[game].detect(round_id))
        out[game].append([round_id, ok, result])


def main() -> None:
    asyncio.run(start_all())
    out: dict[str, list[object]] = {"roulette": [], "sicbo": []}
    threads = [
        threading.Thread(target=play, args=("roulette", "ARO-001", out)),
        threading.Thread(target=play, args=("sicbo", "SBO-001", out)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    targets = {g: s.target for g, s in systems.items()}

    async def stop_all() -> None:
        await asyncio.gather(*(s.cleanup() for s in systems.values()))

    asyncio.run(stop_all())
    print(json.dumps({"rounds": out, "targets": targets}))


if __name__ == "__main__":
    main()
