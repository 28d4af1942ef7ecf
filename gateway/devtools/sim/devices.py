"""What the simulator simulates, and what it records: the devices, their scripts, the log.

A studio is a set of brokers (``SimBroker``; every device is on every broker) and tables
(``SimTable``): each table has an IDP, listening on its command topic and answering on its
response topic, and a SicBo table also a dice shaker on two plain-text topics. How an IDP
answers is its ``Behaviour``, a script a test sets per table before the round it wants to
disturb. The simulator logs what the devices heard (``ReceivedCommand``) and what the IDPs
published (``SentFrame``), so a test can check the gateway's answer against what was sent.
Plain frozen data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

GAMES = ("sicbo", "baccarat", "roulette")
ANSWERS = ("result", "error", "silence")
ANSWER_ON = ("same", "all")


@dataclass(frozen=True)
class SimBroker:
    """A broker the simulated devices connect to (every device is on every broker)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", f"{self.host}:{self.port}")


@dataclass(frozen=True)
class SimTable:
    """One table's IDP topics and, for SicBo, its shaker's plain-text topics."""

    game: str
    table_code: str
    command_topic: str
    response_topic: str
    shaker_listens: str | None = None
    shaker_says: str | None = None

    def __post_init__(self) -> None:
        if self.game not in GAMES:
            raise ValueError(f"unknown game {self.game!r}, expected one of {GAMES}")
        if (self.shaker_listens is None) != (self.shaker_says is None):
            raise ValueError("shaker_listens and shaker_says go together")


@dataclass
class Behaviour:
    """How a table's IDP answers its next ``detect`` commands.

    After the detect, prelude frames go out in field order (not_yet: err -1 without round_id;
    stale: previous round id; wrong_round: made-up id; garbage: malformed; oversize: ~1 MiB;
    early_empty: err 0 with empty res), then after ``delay_s`` the final answer (a result,
    ``err``, or nothing) ``repeats`` times, then every ``stream_interval_s`` (if > 0) until
    ``timeout`` or the next detect. ``answer_on`` "same" answers on the command's broker only,
    "all" on every connected broker.

    With ``deal`` a Baccarat IDP answering a result first publishes the hand as it is dealt
    (2 cards, 4 cards, then the player's third card if the final hand has both third
    cards), spread over ``delay_s``; each stage that differs from the final hand is sent once.
    """

    delay_s: float = 0.05
    answer: str = "result"
    err: int = -3
    result: object | None = None
    not_yet: int = 0
    stale: int = 0
    wrong_round: int = 0
    garbage: int = 0
    oversize: int = 0
    early_empty: int = 0
    repeats: int = 1
    stream_interval_s: float = 0
    answer_on: str = "same"
    deal: bool = True

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS or self.answer_on not in ANSWER_ON:
            raise ValueError(f"bad answer={self.answer!r} or answer_on={self.answer_on!r}")


@dataclass(frozen=True)
class ReceivedCommand:
    """A command a simulated device received: parsed JSON, raw bytes, or shaker text."""

    broker: str
    table_code: str
    payload: object
    at: float

    @property
    def command(self) -> str | None:
        """IDP command name, or the shaker path ("/state", "/cycle")."""
        if isinstance(self.payload, str):
            return urlsplit(self.payload).path.rstrip("/") or self.payload
        if isinstance(self.payload, dict):
            name = self.payload.get("command")
            return name if isinstance(name, str) else None
        return None

    @property
    def round_id(self) -> str | None:
        """``arg.round_id`` of an IDP command, if any."""
        arg = self.payload.get("arg") if isinstance(self.payload, dict) else None
        rid = arg.get("round_id") if isinstance(arg, dict) else None
        return rid if isinstance(rid, str) else None


@dataclass(frozen=True)
class SentFrame:
    """A frame a simulated IDP published, once per broker that took it.

    ``round_id``, ``res`` and ``err`` are read from the frame's ``arg`` (None where the frame
    is not a JSON object or has no such field); ``final`` marks the answer the IDP ends the
    round with (a result or an error code, repeats included), never prelude or deal frames.
    """

    table_code: str
    round_id: str | None
    res: object
    err: int | None
    final: bool
    broker: str
    at: float
