"""The broker group's shared state in Redis, as bytes on the wire: record, views, scripts.

One Redis hash per broker group (``store.Keys.group_hash``) holds the ``record`` (the
active broker, epoch, who decided, when, why) and one ``view:<instance>`` field per
sidecar (which brokers it sees up, the highest epoch it has seen, its broker list).
Anything may be found there (a sidecar of another version, a hand edit, a bug, a
foreign writer), so the parsers here return a value or raise ``MalformedInput`` naming
the problem, never anything else, and the scripts never decode what they compare:

- ``STEP_SCRIPT`` writes this sidecar's view and returns the whole hash plus the SHA-1 of
  the record's raw bytes, in one round trip; a group key of the wrong type (not a hash)
  is deleted first, so the group heals instead of failing every call.
- ``CAS_SCRIPT`` replaces the record only if its raw bytes still have the SHA-1 the
  proposer read (or there still is none): a record that does not parse can be replaced
  like any other, and ten proposers racing on one record produce exactly one change.

Epochs are integers below 2**53 (exact in JSON, Lua and Redis alike).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.errors import MalformedInput
from gateway.fleet.store import RECORD_FIELD, VIEW_PREFIX, Keys

if TYPE_CHECKING:
    import redis.asyncio as redis

MAX_EPOCH = 2**53 - 1
MAX_RECORD_CHARS = 4096
MAX_VIEW_CHARS = 16384
MAX_VIEW_BROKERS = 64

# KEYS: group hash. ARGV: view field, view JSON.
# Returns {flat HGETALL, sha1 of the raw record or "", the wrong type deleted or ""}.
# Two commands when the key is a hash (HSET, HGETALL): each sidecar runs it every second.
STEP_SCRIPT = """
local deleted = ''
local wrote = redis.pcall('HSET', KEYS[1], ARGV[1], ARGV[2])
if type(wrote) == 'table' and wrote['err'] then
  if not string.find(wrote['err'], 'WRONGTYPE', 1, true) then return wrote end
  deleted = redis.call('TYPE', KEYS[1])['ok']
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local all = redis.call('HGETALL', KEYS[1])
local sha = ''
for i = 1, #all, 2 do
  if all[i] == 'record' then sha = redis.sha1hex(all[i + 1]) end
end
return {all, sha, deleted}
"""

# KEYS: group hash. ARGV: sha1 of the record the proposer read ("" = none), new record
# JSON, new epoch, channel. Returns 1 if the record was written, 0 otherwise.
CAS_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then return 0 end
local cur = redis.call('HGET', KEYS[1], 'record')
if ARGV[1] == '' then
  if cur then return 0 end
elseif (not cur) or redis.sha1hex(cur) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""


def record_sha(text: str | bytes | None) -> str:
    """The SHA-1 (hex) ``CAS_SCRIPT`` compares, of a record as stored; "" for none."""
    if text is None:
        return ""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _decode(text: str, what: str, limit: int) -> dict[str, Any]:
    if len(text) > limit:
        raise MalformedInput(f"{what} is {len(text)} characters long; at most {limit}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError, MemoryError, TypeError) as exc:
        raise MalformedInput(f"{what} is not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedInput(f"{what} is a JSON {type(doc).__name__}, not an object")
    return doc


def _int(doc: Mapping[str, Any], key: str, what: str, hi: int = MAX_EPOCH) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise MalformedInput(f"{what}: {key} must be an integer 0..{hi}, got {_short(value)}")
    return value


def _str(doc: Mapping[str, Any], key: str, what: str, *, empty: bool = True) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or (not empty and not value) or len(value) > 1024:
        raise MalformedInput(f"{what}: {key} must be a string, got {_short(value)}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedInput(f"{what} must be a number, got {_short(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise MalformedInput(f"{what} must be finite, got {_short(value)}")
    return number


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a repr can fail on hostile values (e.g. huge ints); say what it is
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Record:
    """The active broker of a group, under an epoch; changed only by ``CAS_SCRIPT``."""

    broker: str
    epoch: int
    by: str
    at: float
    reason: str

    def to_json(self) -> str:
        """The JSON the record field holds."""
        return json.dumps(vars(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Record:
        """Parse a stored record; MalformedInput (naming the problem) if it is not one."""
        what = "shared record"
        d = _decode(text, what, MAX_RECORD_CHARS)
        return Record(
            broker=_str(d, "broker", what, empty=False),
            epoch=_int(d, "epoch", what),
            by=_str(d, "by", what),
            at=_number(d.get("at"), f"{what}: at"),
            reason=_str(d, "reason", what),
        )


def epoch_hint(text: str | None) -> int:
    """The epoch a record that does not parse still carries, if any (0 otherwise), so that
    the record that replaces it is numbered above it: epochs never go backwards."""
    if text is None or len(text) > MAX_RECORD_CHARS:
        return 0
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError, MemoryError, TypeError):
        return 0
    value = doc.get("epoch") if isinstance(doc, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EPOCH:
        return 0
    return value


@dataclass(frozen=True)
class View:
    """One sidecar's report: which brokers it sees up, since when (Unix time).

    ``seq`` grows with every report; a view whose ``seq`` has not moved for
    ``view_ttl_s`` (by the reader's own clock, so clocks need not agree) is dead.
    ``brokers`` is the sidecar's configured broker list (id -> priority); None in views
    written by sidecars that do not report it.
    """

    instance: str
    epoch: int  # the highest epoch it has seen
    up: dict[str, float]  # broker id -> up since
    failures: dict[str, int]
    seq: int = 0
    brokers: dict[str, int] | None = field(default=None)

    def to_json(self) -> str:
        """The compact JSON a view field holds."""
        doc: dict[str, Any] = {
            "i": self.instance,
            "e": self.epoch,
            "up": self.up,
            "f": self.failures,
            "s": self.seq,
        }
        if self.brokers is not None:
            doc["b"] = self.brokers
        return json.dumps(doc, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> View:
        """Parse a stored view; MalformedInput (naming the problem) if it is not one."""
        what = "view"
        d = _decode(text, what, MAX_VIEW_CHARS)
        up = _mapping(d.get("up"), "view: up")
        failures = _mapping(d.get("f", {}), "view: f")
        brokers = None if d.get("b") is None else _mapping(d["b"], "view: b")
        return View(
            instance=_str(d, "i", what, empty=False),
            epoch=_int(d, "e", what),
            up={k: _number(v, f"view: up[{k!r}]") for k, v in up.items()},
            failures={k: _int(failures, k, "view: f", hi=2**31) for k in failures},
            seq=_int(d, "s", what),
            brokers=None
            if brokers is None
            else {k: _int(brokers, k, "view: b", hi=1000) for k in brokers},
        )


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedInput(f"{what} must be an object, got {_short(value)}")
    if len(value) > MAX_VIEW_BROKERS:
        raise MalformedInput(f"{what} names {len(value)} brokers; at most {MAX_VIEW_BROKERS}")
    for key in value:
        if not key or len(key) > 63:
            raise MalformedInput(f"{what}: {_short(key)} is not a broker id")
    return value


@dataclass(frozen=True)
class GroupState:
    """One read of the group hash, parsed; what could not be parsed is named, not raised."""

    record: Record | None  # None: absent or unusable (``record_problem`` says which)
    record_sha: str  # of the stored record's bytes; "" if there is none
    record_problem: str  # "" if the record is absent or fine
    epoch_floor: int  # the stored record's epoch, even if the rest of it is unusable
    views: dict[str, View]  # field name -> view, the ones that parse
    bad_views: dict[str, str]  # field name -> problem
    wrong_type: str = ""  # the group key had this type and was deleted


def parse_group(
    fields: Mapping[str, str], record_sha_hex: str | None = None, wrong_type: str = ""
) -> GroupState:
    """Parse an HGETALL of the group hash (pure; never raises)."""
    text = fields.get(RECORD_FIELD)
    record, problem = None, ""
    if text is not None:
        try:
            record = Record.from_json(text)
        except MalformedInput as exc:
            problem = exc.message
    views: dict[str, View] = {}
    bad: dict[str, str] = {}
    for name, value in fields.items():
        if not name.startswith(VIEW_PREFIX):
            continue
        try:
            views[name] = View.from_json(value)
        except MalformedInput as exc:
            bad[name] = exc.message
    floor = record.epoch if record is not None else epoch_hint(text)
    sha = record_sha(text) if record_sha_hex is None else record_sha_hex
    return GroupState(record, sha, problem, floor, views, bad, wrong_type)


def parse_step_reply(reply: Any) -> GroupState:
    """Parse ``STEP_SCRIPT``'s reply; MalformedInput if Redis answered something else."""
    if not isinstance(reply, list) or len(reply) != 3:
        raise MalformedInput(f"step script reply is not a 3-item list: {_short(reply)}")
    flat, sha, wrong = reply
    if not isinstance(flat, list) or len(flat) % 2 or not isinstance(sha, str):
        raise MalformedInput(f"step script reply has the wrong shape: {_short(reply)}")
    if not all(isinstance(x, str) for x in flat) or not isinstance(wrong, str):
        raise MalformedInput("step script reply holds values that are not strings")
    fields = dict(zip(flat[0::2], flat[1::2], strict=True))
    return parse_group(fields, sha, wrong)


def parse_cas_reply(reply: Any) -> bool:
    """True if ``CAS_SCRIPT`` wrote the record; MalformedInput for an unexpected reply."""
    if isinstance(reply, int) and not isinstance(reply, bool) and reply in (0, 1):
        return reply == 1
    raise MalformedInput(f"compare-and-set reply is not 0 or 1: {_short(reply)}")


async def compare_and_set(client: redis.Redis, keys: Keys, seen_sha: str, record: Record) -> bool:
    """Write ``record`` if the stored one still has ``seen_sha`` ("" = none); raises
    RedisError if the store does not answer, MalformedInput for a strange reply."""
    cas = client.register_script(CAS_SCRIPT)  # EVALSHA, loading the script if needed
    reply = await cas(
        keys=[keys.group_hash], args=[seen_sha, record.to_json(), record.epoch, keys.channel]
    )
    return parse_cas_reply(reply)


async def read_group(client: redis.Redis, keys: Keys) -> GroupState:
    """The group's record and views as stored (raises RedisError if the store does not
    answer). Does not write; a wrong-typed group key reads as empty."""
    from redis.exceptions import ResponseError

    try:
        raw = await client.hgetall(keys.group_hash)
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return parse_group({}, wrong_type="not a hash")
    return parse_group({str(k): str(v) for k, v in raw.items()})


async def read_record(client: redis.Redis, keys: Keys) -> Record | None:
    """The group's current record, None if absent or unusable (raises RedisError if the
    store does not answer)."""
    from redis.exceptions import ResponseError

    try:
        text = await client.hget(keys.group_hash, RECORD_FIELD)
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        return None
    if text is None:
        return None
    try:
        return Record.from_json(str(text))
    except MalformedInput:
        return None
