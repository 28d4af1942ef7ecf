"""The fleet's shared active-broker record in Redis: epoch, quorum, degraded mode.

Every sidecar of a broker group must publish to the same broker (an IDP listens on one).
``SharedElector`` implements the ``Elector`` seam with one Redis hash per group
(``Keys.record``: broker, epoch, by, at, reason) that changes only through a Lua
compare-and-set on the epoch; every change increments the epoch and is announced on a
pub/sub channel. Design and keys: ``docs/election.md``.

- Each sidecar reports its view of every broker (``Keys.view``, TTL ``view_ttl_s``) on
  every change and every ``refresh_s``.
- Moving away from the active broker needs a majority of the live reporters to see it
  down (a lone reporter may decide alone); otherwise this sidecar only says it is
  degraded. Fail-back needs a majority to have seen the preferred broker up for the
  hold-down, and is applied by each sidecar between its rounds.
- A new record is learnt from the channel (within milliseconds), or by the re-read every
  ``refresh_s``. Epochs never go backwards: a lost record is re-created above every
  epoch the live sidecars have seen.
- Store unreachable: keep the last decision and say DEGRADED; if the active broker is
  also locally dead for ``grace_s``, fail over locally by priority and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as redis
from opentelemetry import metrics
from redis.exceptions import RedisError

from gateway.config import GatewayConfig
from gateway.election import (
    Decision,
    ElectionStatus,
    LinkState,
    LinkStatus,
    announce,
    decide,
    effective_holddown,
)
from gateway.errors import raise_if_cancelled
from gateway.store import RECORD_FIELD, VIEW_PREFIX, Keys

log = logging.getLogger(__name__)
_redis_errors = metrics.get_meter(__name__).create_counter(
    "gateway.redis.errors", description="Failed calls to the shared store"
)

# KEYS: group hash. ARGV: expected epoch ("" = no record yet), record JSON, new epoch,
# channel. Returns {1, new epoch} on success, {0, current epoch or -1} otherwise.
CAS_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], 'record')
local epoch = -1
if cur then epoch = tonumber(cjson.decode(cur)['epoch']) end
if ARGV[1] == '' then
  if cur then return {0, epoch} end
elseif epoch ~= tonumber(ARGV[1]) then
  return {0, epoch}
end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return {1, tonumber(ARGV[3])}
"""


@dataclass(frozen=True)
class Record:
    broker: str
    epoch: int
    by: str
    at: float
    reason: str

    def to_json(self) -> str:
        return json.dumps(vars(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Record:
        d = json.loads(text)
        return Record(str(d["broker"]), int(d["epoch"]), str(d["by"]), float(d["at"]),
                      str(d["reason"]))  # fmt: skip


def parse_record(text: str | None) -> Record | None:
    """The record from its JSON; None (and an error logged) if absent or malformed."""
    if text is None:
        return None
    try:
        return Record.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("malformed shared record %r: %s; it will be re-created", text, exc)
        return None


async def read_record(client: redis.Redis, keys: Keys) -> Record | None:
    """The group's current record (raises RedisError if the store does not answer)."""
    text = await client.hget(keys.group_hash, RECORD_FIELD)
    return parse_record(None if text is None else str(text))


@dataclass(frozen=True)
class View:
    """One sidecar's report: which brokers it sees up, since when (Unix time).

    ``seq`` grows with every report; a view whose ``seq`` has not moved for
    ``view_ttl_s`` (by the reader's own clock, so clocks need not agree) is dead.
    """

    instance: str
    epoch: int  # the highest epoch it has seen
    up: dict[str, float]  # broker id -> up since
    failures: dict[str, int]
    seq: int = 0

    def to_json(self) -> str:
        doc = {
            "i": self.instance,
            "e": self.epoch,
            "up": self.up,
            "f": self.failures,
            "s": self.seq,
        }
        return json.dumps(doc, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> View:
        d = json.loads(text)
        return View(str(d["i"]), int(d["e"]), dict(d["up"]), dict(d.get("f", {})), int(d["s"]))


@dataclass(frozen=True)
class Proposal:
    broker: str
    expected: int | None  # None: the record must be absent
    epoch: int
    reason: str


def majority(count: int, live: int) -> bool:
    return 2 * count > live


def plan(
    record: Record | None,
    views: Sequence[View],
    me: View,
    links: Sequence[LinkStatus],
    current: str | None,
    busy: bool,
    config: GatewayConfig,
    now: float,
    settled: bool = True,
) -> Proposal | None:
    """What, if anything, this sidecar should write to the record now (pure)."""
    live = {v.instance: v for v in views}
    live[me.instance] = me
    n = len(live)
    floor = max(v.epoch for v in live.values())
    prio = {b.id: b.priority for b in config.brokers}
    order = sorted(prio, key=lambda b: (prio[b], b))
    mine = [b for b in order if b in me.up]
    if record is None and not settled:
        return None  # let every link finish connecting before the first record
    if record is None or record.epoch < floor:
        keep = record.broker if record and record.broker in me.up else current
        broker = keep if keep in me.up else (mine[0] if mine else None)
        if broker is None:
            return None
        lost = "record missing" if record is None else f"record epoch {record.epoch} < {floor}"
        expected = None if record is None else record.epoch
        return Proposal(broker, expected, floor + 1, f"{lost}: re-created on {broker}")
    active = record.broker
    up_count = {b: sum(1 for v in live.values() if b in v.up) for b in order}
    if active not in me.up:
        down = n - up_count.get(active, 0)
        if not (majority(down, n) or n == 1):
            return None  # our own problem: the fleet stays, this sidecar is degraded
        candidates = [b for b in mine if majority(up_count[b], n) or n == 1]
        if not candidates:
            return None
        why = f"{active} down for {down}/{n} sidecars"
        return Proposal(candidates[0], record.epoch, record.epoch + 1, why)
    if busy:
        return None
    for b in order:
        if prio[b] >= prio.get(active, 1 << 30) or b not in me.up:
            continue
        ups = sorted(v.up[b] for v in live.values() if b in v.up)
        k = n // 2 + 1
        if len(ups) < k:
            continue
        since = ups[k - 1]  # a majority has seen it up at least since then
        status = next((s for s in links if s.id == b), None)
        hold = effective_holddown(status, config.timings, time.monotonic()) if status else 0.0
        if now - since >= hold:
            why = f"fail-back to preferred {b}: up for a majority for {now - since:.1f}s"
            return Proposal(b, record.epoch, record.epoch + 1, why)
    return None


class SharedElector:
    """Decides through the group's shared record; degrades to local rules without it."""

    def __init__(
        self,
        config: GatewayConfig,
        instance_id: str,
        client: redis.Redis,
        *,
        local_timings_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._r = config.redis
        self._id = instance_id
        self._client = client
        self.keys = Keys(self._r.key_prefix, config.broker_group)
        self._clock = local_timings_clock
        self._decision = Decision(None, 0, "waiting for the shared record")
        self._listeners: list[Callable[[Decision], None]] = []
        self._links: Sequence[LinkStatus] = ()
        self._view_key: tuple[tuple[str, bool], ...] = ()
        self._busy = False
        self._max_epoch = 0
        self._pending: Record | None = None  # a fail-back waiting for the round to end
        self._record: Record | None = None
        self._live = 0
        self._reachable = False
        self._error = "not connected yet"
        self._started = self._unreachable_since = time.monotonic()
        self._active_dead_since: float | None = None
        self._dirty = asyncio.Event()
        self._cas = client.register_script(CAS_SCRIPT)
        self._seq = 0
        self._seen: dict[str, tuple[int, float]] = {}  # view field -> (seq, when it last moved)
        self.redis_errors = 0

    # --- the Elector interface ------------------------------------------------------

    def current(self) -> Decision:
        return self._decision

    def add_listener(self, callback: Callable[[Decision], None]) -> None:
        self._listeners.append(callback)

    def update(self, links: Sequence[LinkStatus], busy: bool) -> None:
        view = tuple((s.id, s.ready) for s in links)
        changed, self._view_key = view != self._view_key, view
        self._links, self._busy = links, busy
        if not busy and self._pending is not None:
            record, self._pending = self._pending, None
            self._adopt(record)
        if changed or not busy:
            self._dirty.set()  # report the new view now; a round's end may allow a fail-back
        if not self._reachable:
            self._local_fallback()

    def status(self) -> ElectionStatus:
        if not self._reachable:
            return ElectionStatus(
                f"unreachable: {self._error}",
                self._live,
                (f"shared store unreachable ({self._error}); deciding locally",),
            )
        rec = self._record
        state = f"connected: epoch {rec.epoch} by {rec.by}" if rec else "connected: no record"
        return ElectionStatus(state, self._live)

    def on_store_error(self, exc: BaseException) -> None:
        """Any Redis failure (also from the statistics writer) marks the store unreachable."""
        self.redis_errors += 1
        _redis_errors.add(1, {"group": self._config.broker_group})
        if self._reachable:
            log.warning("shared store unreachable: %s", exc)
            self._unreachable_since = time.monotonic()
        self._reachable = False
        self._error = str(exc) or type(exc).__name__
        self._local_fallback()

    # --- applying decisions ---------------------------------------------------------

    def _set(self, decision: Decision) -> None:
        if (decision.broker_id, decision.epoch) == (self._decision.broker_id, self._decision.epoch):
            self._decision = decision
            return
        previous = self._decision
        self._decision = decision
        log.warning(
            "active broker %s -> %s (epoch %d -> %d): %s",
            previous.broker_id, decision.broker_id, previous.epoch, decision.epoch, decision.reason,
        )  # fmt: skip
        announce(previous.broker_id, decision, self._listeners)

    def _ready(self, broker: str | None) -> bool:
        return any(s.id == broker and s.ready for s in self._links)

    def _adopt(self, record: Record) -> None:
        self._record = record
        self._max_epoch = max(self._max_epoch, record.epoch)
        cur = self._decision
        if record.epoch < cur.epoch and cur.broker_id is not None:
            return  # an older record (a lost write): the planner re-creates it higher
        failback = cur.broker_id is not None and self._ready(cur.broker_id)
        if failback and self._busy and record.broker != cur.broker_id:
            self._pending = record  # never switch mid-round when the old broker still works
            return
        reason = f"{record.reason} (epoch {record.epoch}, decided by {record.by})"
        self._set(Decision(record.broker, record.epoch, reason))

    def _local_fallback(self) -> None:
        """Store unreachable: keep the decision unless its broker stays dead for grace_s."""
        cur = self._decision
        if cur.broker_id is not None and self._ready(cur.broker_id):
            self._active_dead_since = None
            return
        now = time.monotonic()
        if self._active_dead_since is None:
            self._active_dead_since = now
        if now - self._active_dead_since < self._r.grace_s:
            return
        if cur.broker_id is None and now - self._started < self._r.grace_s:
            return  # at start, give the store its chance first
        broker, why, _ = decide(self._links, None, False, self._config.timings, self._clock())
        if broker is not None and broker != cur.broker_id:
            reason = f"shared store unreachable ({self._error}): local fail-over, {why}"
            self._set(Decision(broker, cur.epoch, reason))

    # --- talking to the store -------------------------------------------------------

    def _my_view(self) -> View:
        now_wall, now = time.time(), time.monotonic()
        up = {s.id: round(now_wall - (now - s.since), 3) for s in self._links if s.ready}
        self._seq += 1
        failures = {s.id: s.failures for s in self._links}
        return View(self._id, self._max_epoch, up, failures, self._seq)

    def _parse_record(self, text: str | None) -> Record | None:
        return parse_record(text)

    async def _read_record(self) -> Record | None:
        return await read_record(self._client, self.keys)

    def _live_views(self, fields: dict[str, str]) -> tuple[list[View], list[str]]:
        """The views whose ``seq`` moved within ``view_ttl_s``, and the dead fields."""
        now = time.monotonic()
        views, dead = [], []
        for name, text in fields.items():
            if not name.startswith(VIEW_PREFIX) or name == VIEW_PREFIX + self._id:
                continue
            try:
                view = View.from_json(text)
            except (ValueError, KeyError, TypeError):
                dead.append(name)
                continue
            seen = self._seen.get(name)
            if seen is None or seen[0] != view.seq:
                self._seen[name] = (view.seq, now)
            elif now - seen[1] > self._r.view_ttl_s:
                dead.append(name)
                continue
            views.append(view)
        for name in dead:
            self._seen.pop(name, None)
        return views, dead

    async def _step(self) -> None:
        """Report our view, read the shared state (one HGETALL), propose if the rules say so."""
        me = self._my_view()
        await self._client.hset(self.keys.group_hash, VIEW_PREFIX + self._id, me.to_json())
        raw = await self._client.hgetall(self.keys.group_hash)
        fields = {str(k): str(v) for k, v in raw.items()}
        record = self._parse_record(fields.get(RECORD_FIELD))
        views, dead = self._live_views(fields)
        if dead:  # a sidecar that stopped reporting: drop it for everyone
            await self._client.hdel(self.keys.group_hash, *dead)
        self._live = len(views) + 1
        if not self._reachable:
            log.warning("shared store reachable again: adopting the shared record")
        self._reachable, self._error = True, ""
        self._active_dead_since = None
        if record is not None:
            self._adopt(record)
        settled = all(s.state is not LinkState.CONNECTING for s in self._links) or (
            time.monotonic() - self._started >= self._r.grace_s
        )
        proposal = plan(record, views, me, self._links, self._decision.broker_id, self._busy,
                        self._config, time.time(), settled)  # fmt: skip
        if proposal is not None:
            await self._propose(proposal)

    async def _propose(self, p: Proposal) -> None:
        expected = "" if p.expected is None else str(p.expected)
        record = Record(p.broker, p.epoch, self._id, time.time(), p.reason)
        won, _ = await self._cas(
            keys=[self.keys.group_hash],
            args=[expected, record.to_json(), p.epoch, self.keys.channel],
        )
        if won:
            log.info("shared record: %s -> epoch %d (%s)", p.broker, p.epoch, p.reason)
            self._adopt(record)
        else:
            self._dirty.set()  # lost the race: read what won and look again

    # --- loops ----------------------------------------------------------------------

    async def run(self) -> None:
        """Report/plan on every change and every refresh; watch the channel."""
        watcher = asyncio.create_task(self._watch(), name="record-watch")
        try:
            await self._reporter()
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})

    async def _reporter(self) -> None:
        while True:
            raise_if_cancelled()  # redis-py's connect may swallow one on Python 3.11
            self._dirty.clear()
            try:
                await self._step()
            except RedisError as exc:
                self.on_store_error(exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._r.refresh_s):
                    await self._dirty.wait()

    async def _watch(self) -> None:
        """Learn new records within milliseconds of their write."""
        while True:
            raise_if_cancelled()
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.keys.channel)
                while True:
                    raise_if_cancelled()
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._r.refresh_s
                    )
                    if message is not None:
                        record = await self._read_record()
                        if record is not None:
                            self._adopt(record)
            except RedisError as exc:
                self.on_store_error(exc)
                await asyncio.sleep(self._r.refresh_s)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
