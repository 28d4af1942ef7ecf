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
from redis.exceptions import RedisError

from gateway.config import GatewayConfig
from gateway.election import Decision, ElectionStatus, LinkStatus, decide, effective_holddown
from gateway.store import Keys

log = logging.getLogger(__name__)

# KEYS: record. ARGV: expected epoch ("" = must be absent), new epoch, broker, by, at,
# reason, channel. Returns {1, new} on success, {0, current or -1} otherwise.
CAS_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], 'epoch')
if ARGV[1] == '' then
  if cur then return {0, tonumber(cur)} end
elseif cur ~= ARGV[1] then
  return {0, tonumber(cur or '-1')}
end
redis.call('HSET', KEYS[1], 'broker', ARGV[3], 'epoch', ARGV[2], 'by', ARGV[4],
           'at', ARGV[5], 'reason', ARGV[6])
redis.call('PUBLISH', ARGV[7], ARGV[2])
return {1, tonumber(ARGV[2])}
"""
# KEYS: view, reporters. ARGV: view JSON, ttl ms, instance id.
REPORT_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""
# KEYS: reporters. ARGV: view key prefix. Returns the live views; prunes expired members.
VIEWS_SCRIPT = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then table.insert(out, v) else redis.call('SREM', KEYS[1], id) end
end
return out
"""


@dataclass(frozen=True)
class Record:
    broker: str
    epoch: int
    by: str
    at: float
    reason: str


@dataclass(frozen=True)
class View:
    """One sidecar's report: which brokers it sees up, since when (Unix time)."""

    instance: str
    epoch: int  # the highest epoch it has seen
    up: dict[str, float]  # broker id -> up since
    failures: dict[str, int]

    def to_json(self) -> str:
        doc = {"i": self.instance, "e": self.epoch, "up": self.up, "f": self.failures}
        return json.dumps(doc, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> View:
        d = json.loads(text)
        return View(str(d["i"]), int(d["e"]), dict(d["up"]), dict(d.get("f", {})))


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
) -> Proposal | None:
    """What, if anything, this sidecar should write to the record now (pure)."""
    live = {v.instance: v for v in views}
    live[me.instance] = me
    n = len(live)
    floor = max(v.epoch for v in live.values())
    prio = {b.id: b.priority for b in config.brokers}
    order = sorted(prio, key=lambda b: (prio[b], b))
    mine = [b for b in order if b in me.up]
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
        self._busy = False
        self._max_epoch = 0
        self._pending: Record | None = None  # a fail-back waiting for the round to end
        self._record: Record | None = None
        self._live = 0
        self._reachable = False
        self._error = "not connected yet"
        self._unreachable_since = time.monotonic()
        self._active_dead_since: float | None = None
        self._dirty = asyncio.Event()
        self._cas = client.register_script(CAS_SCRIPT)
        self._report = client.register_script(REPORT_SCRIPT)
        self._views = client.register_script(VIEWS_SCRIPT)
        self.redis_errors = 0

    # --- the Elector interface ------------------------------------------------------

    def current(self) -> Decision:
        return self._decision

    def add_listener(self, callback: Callable[[Decision], None]) -> None:
        self._listeners.append(callback)

    def update(self, links: Sequence[LinkStatus], busy: bool) -> None:
        self._links, self._busy = links, busy
        if not busy and self._pending is not None:
            record, self._pending = self._pending, None
            self._adopt(record)
        self._dirty.set()
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
        for callback in self._listeners:
            callback(decision)

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
        if cur.broker_id is not None and now - self._active_dead_since < self._r.grace_s:
            return
        broker, why, _ = decide(self._links, None, False, self._config.timings, self._clock())
        if broker is not None and broker != cur.broker_id:
            reason = f"shared store unreachable ({self._error}): local fail-over, {why}"
            self._set(Decision(broker, cur.epoch, reason))

    # --- talking to the store -------------------------------------------------------

    def _my_view(self) -> View:
        now_wall, now = time.time(), time.monotonic()
        up = {s.id: round(now_wall - (now - s.since), 3) for s in self._links if s.ready}
        return View(self._id, self._max_epoch, up, {s.id: s.failures for s in self._links})

    async def _read_record(self) -> Record | None:
        raw = await self._client.hgetall(self.keys.record)
        h = {str(k): str(v) for k, v in raw.items()}
        if not h:
            return None
        try:
            return Record(h["broker"], int(h["epoch"]), h.get("by", ""), float(h.get("at", 0)),
                          h.get("reason", ""))  # fmt: skip
        except (KeyError, ValueError) as exc:
            log.error("malformed shared record %s: %s; re-creating it", h, exc)
            return None

    async def _step(self) -> None:
        """Report our view, read the record and the views, propose if the rules say so."""
        me = self._my_view()
        ttl_ms = int(self._r.view_ttl_s * 1000)
        await self._report(
            keys=[self.keys.view(self._id), self.keys.reporters],
            args=[me.to_json(), ttl_ms, self._id],
        )
        record = await self._read_record()
        raw = await self._views(keys=[self.keys.reporters], args=[self.keys.view_prefix])
        views = []
        for text in raw:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                views.append(View.from_json(text))
        self._live = len({v.instance for v in views} | {self._id})
        if not self._reachable:
            log.warning("shared store reachable again: adopting the shared record")
        self._reachable, self._error = True, ""
        self._active_dead_since = None
        if record is not None:
            self._adopt(record)
        proposal = plan(record, views, me, self._links, self._decision.broker_id, self._busy,
                        self._config, time.time())  # fmt: skip
        if proposal is not None:
            await self._propose(proposal)

    async def _propose(self, p: Proposal) -> None:
        expected = "" if p.expected is None else str(p.expected)
        won, epoch = await self._cas(
            keys=[self.keys.record],
            args=[expected, p.epoch, p.broker, self._id, repr(time.time()), p.reason,
                  self.keys.channel],
        )  # fmt: skip
        if won:
            log.info("shared record: %s -> epoch %d (%s)", p.broker, p.epoch, p.reason)
            self._adopt(Record(p.broker, int(epoch), self._id, time.time(), p.reason))
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
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.keys.channel)
                while True:
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
