"""The fleet's shared active-broker record in Redis: epoch, quorum, degraded mode, healing.

Every sidecar of a broker group must publish to the same broker (an IDP listens on one).
``SharedElector`` implements the ``Elector`` seam with one Redis hash per group (the wire
format and scripts are in ``shared_state.py``, the rules in ``shared_plan.py``, the
design in ``docs/election.md``):

- Each sidecar reports its view of every broker, and its broker list, on every change and
  every ``refresh_s``: one script writes the view and reads the whole group back.
- The record changes only through a compare-and-set on the stored bytes; every change
  increments the epoch and is announced on a pub/sub channel. Epochs never go backwards.
- **Bad shared state heals.** A record that does not parse, lacks a field, names a broker
  no sidecar has, or a group key of the wrong type, is treated as absent and replaced by
  a proper record at a higher epoch; a view that does not parse is removed. Each is
  counted and logged once (``supervise.Drops``), never raised. A lost compare-and-set
  backs off (jittered) before the next try, so racing sidecars cannot storm.
- A record naming a broker this sidecar does not have is never adopted: the sidecar
  decides locally by priority and says so (DEGRADED) until the group moves to a broker
  every sidecar has.
- Store unreachable: keep the last decision and say DEGRADED; if the active broker is
  also locally dead for ``grace_s``, fail over locally by priority and say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as redis
from opentelemetry import metrics
from redis.exceptions import RedisError

from gateway.backoff import Backoff
from gateway.config import GatewayConfig
from gateway.drops import Drops
from gateway.errors import MalformedInput, raise_if_cancelled
from gateway.fleet.membership import Membership, membership
from gateway.fleet.records import (
    CAS_SCRIPT,
    STEP_SCRIPT,
    GroupState,
    Record,
    View,
    parse_cas_reply,
    parse_step_reply,
    read_record,
)
from gateway.fleet.store import VIEW_PREFIX, Keys
from gateway.sidecar.election import (
    Decision,
    ElectionStatus,
    LinkState,
    LinkStatus,
    announce,
    decide,
)
from gateway.sidecar.shared_plan import Proposal, plan

__all__ = ["CAS_SCRIPT", "Proposal", "Record", "SharedElector", "View", "plan", "read_record"]

log = logging.getLogger(__name__)
_redis_errors = metrics.get_meter(__name__).create_counter(
    "gateway.redis.errors", description="Failed calls to the shared store"
)


class SharedElector:
    """Decides through the group's shared record; degrades to local rules without it."""

    def __init__(
        self,
        config: GatewayConfig,
        instance_id: str,
        client: redis.Redis,
        *,
        local_timings_clock: Callable[[], float] = time.monotonic,
        drops: Drops | None = None,
    ) -> None:
        self._config = config
        self._r = config.redis
        self._id = instance_id
        self._client = client
        self._drops = drops or Drops()
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
        self._foreign: str = ""  # the record names a broker we do not have: why
        self._group: Membership | None = None
        self._live = 0
        self._reachable = False
        self._error = "not connected yet"
        self._started = self._unreachable_since = time.monotonic()
        self._active_dead_since: float | None = None
        self._dirty = asyncio.Event()
        self._step_script = client.register_script(STEP_SCRIPT)
        self._cas = client.register_script(CAS_SCRIPT)
        lost = max(0.01, self._r.refresh_s / 20)
        self._lost = Backoff(lost, max(lost, self._r.refresh_s), jitter=0.9)
        self._hold_until = 0.0  # after a lost compare-and-set: no new proposal before
        self._seq = 0
        self._seen: dict[str, tuple[int, float]] = {}  # view field -> (seq, when it last moved)
        self._brokers = {b.id: b.priority for b in config.brokers}
        self.redis_errors = 0

    # --- the Elector interface ------------------------------------------------------

    def current(self) -> Decision:
        """The active broker the shared record names (or the local fallback's choice)."""
        return self._decision

    def add_listener(self, callback: Callable[[Decision], None]) -> None:
        """Call ``callback`` with every new decision."""
        self._listeners.append(callback)

    def update(self, links: Sequence[LinkStatus], busy: bool) -> None:
        """The links or the round changed: report the view, adopt a deferred record."""
        view = tuple((s.id, s.ready) for s in links)
        changed, self._view_key = view != self._view_key, view
        self._links, self._busy = links, busy
        if not busy and self._pending is not None:
            record, self._pending = self._pending, None
            self._adopt(record)
        if changed or not busy:
            self._dirty.set()  # report the new view now; a round's end may allow a fail-back
        if not self._reachable or self._foreign:
            self._local_fallback()

    def status(self) -> ElectionStatus:
        """How the shared election stands, with the problems Health should show."""
        if not self._reachable:
            return ElectionStatus(
                f"unreachable: {self._error}",
                self._live,
                (f"shared store unreachable ({self._error}); deciding locally",),
            )
        rec = self._record
        state = f"connected: epoch {rec.epoch} by {rec.by}" if rec else "connected: no record"
        problems: list[str] = []
        group = self._group
        if group is not None:
            if conflict := group.conflict():
                problems.append(f"broker lists conflict: {conflict}")
            elif differ := group.differ():
                state += f"; broker lists differ ({differ})"
        if self._foreign:
            problems.append(self._foreign)
        return ElectionStatus(state, self._live, tuple(problems))

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
        if record.broker not in self._brokers:
            self._foreign = (
                f"shared record (epoch {record.epoch}) names broker {record.broker}, which "
                f"is not one of this sidecar's brokers ({', '.join(self._brokers)}); "
                "deciding locally"
            )
            self._local_fallback(at_once=True)
            return
        self._foreign = ""
        cur = self._decision
        if record.epoch < cur.epoch and cur.broker_id is not None:
            return  # an older record (a lost write): the planner re-creates it higher
        failback = cur.broker_id is not None and self._ready(cur.broker_id)
        if failback and self._busy and record.broker != cur.broker_id:
            self._pending = record  # never switch mid-round when the old broker still works
            return
        reason = f"{record.reason} (epoch {record.epoch}, decided by {record.by})"
        self._set(Decision(record.broker, record.epoch, reason))

    def _local_fallback(self, *, at_once: bool = False) -> None:
        """No usable shared record: keep the decision unless its broker stays dead for
        grace_s (at once when the record names a broker we do not have)."""
        cur = self._decision
        usable = cur.broker_id in self._brokers
        if usable and self._ready(cur.broker_id):
            self._active_dead_since = None
            return
        now = time.monotonic()
        if not (at_once or self._foreign):
            if self._active_dead_since is None:
                self._active_dead_since = now
            if now - self._active_dead_since < self._r.grace_s:
                return
            if cur.broker_id is None and now - self._started < self._r.grace_s:
                return  # at start, give the store its chance first
        broker, why, _ = decide(self._links, None, False, self._config.timings, self._clock())
        if broker is not None and broker != cur.broker_id:
            cause = self._foreign or f"shared store unreachable ({self._error})"
            self._set(Decision(broker, cur.epoch, f"{cause}: local fail-over, {why}"))

    # --- talking to the store -------------------------------------------------------

    def _my_view(self) -> View:
        now_wall, now = time.time(), time.monotonic()
        up = {s.id: round(now_wall - (now - s.since), 3) for s in self._links if s.ready}
        self._seq += 1
        failures = {s.id: s.failures for s in self._links}
        return View(self._id, self._max_epoch, up, failures, self._seq, dict(self._brokers))

    def _live_views(self, state: GroupState) -> tuple[list[View], list[str]]:
        """The views whose ``seq`` moved within ``view_ttl_s``, and the fields to remove."""
        now = time.monotonic()
        views, dead = [], []
        for name, problem in state.bad_views.items():
            self._drops.add("view", f"{self.keys.group_hash} {name}", "", problem)
            dead.append(name)
        for name, view in state.views.items():
            if name == VIEW_PREFIX + self._id:
                continue
            if view.instance == self._id or name != VIEW_PREFIX + view.instance:
                problem = f"field {name} holds the view of {view.instance!r}"
                self._drops.add("view", f"{self.keys.group_hash} {name}", "", problem)
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
        """Report our view and read the group back (one script), propose if the rules say so."""
        me = self._my_view()
        reply = await self._step_script(
            keys=[self.keys.group_hash], args=[VIEW_PREFIX + self._id, me.to_json()]
        )
        try:
            state = parse_step_reply(reply)
        except MalformedInput as exc:
            self._drops.add("redis_reply", "step script", "", exc.message)
            return
        if state.wrong_type:
            problem = f"the group key was a {state.wrong_type}, not a hash; deleted"
            self._drops.add("record", self.keys.group_hash, "", problem)
        if state.record_problem:
            self._drops.add("record", f"{self.keys.group_hash} record", "", state.record_problem)
        views, dead = self._live_views(state)
        if dead:  # a sidecar that stopped reporting, or a field that is not a view
            await self._client.hdel(self.keys.group_hash, *dead)
        self._live = len(views) + 1
        self._group = membership(me, views, self._config)
        if not self._reachable:
            log.warning("shared store reachable again: adopting the shared record")
        self._reachable, self._error = True, ""
        self._active_dead_since = None
        record = state.record
        known = self._group.known
        if record is not None and known is not None and record.broker not in known:
            problem = f"it names broker {record.broker}, which no sidecar of the group has"
            self._drops.add("record", f"{self.keys.group_hash} record", "", problem)
        self._max_epoch = max(self._max_epoch, state.epoch_floor)
        if record is not None:
            self._adopt(record)
        else:
            self._record = None
            self._foreign = ""
        settled = all(s.state is not LinkState.CONNECTING for s in self._links) or (
            time.monotonic() - self._started >= self._r.grace_s
        )
        if time.monotonic() < self._hold_until:
            return  # we just lost a race: let the winner's record settle first
        proposal = plan(record, views, me, self._links, self._decision.broker_id, self._busy,
                        self._config, time.time(), settled, problem=state.record_problem,
                        floor=state.epoch_floor)  # fmt: skip
        if proposal is None:
            self._lost.reset()
        else:
            await self._propose(proposal, state.record_sha)

    async def _propose(self, p: Proposal, seen_sha: str) -> None:
        record = Record(p.broker, p.epoch, self._id, time.time(), p.reason)
        reply = await self._cas(
            keys=[self.keys.group_hash],
            args=[seen_sha, record.to_json(), p.epoch, self.keys.channel],
        )
        try:
            won = parse_cas_reply(reply)
        except MalformedInput as exc:
            self._drops.add("redis_reply", "compare-and-set script", "", exc.message)
            won = False
        if won:
            self._lost.reset()
            log.info("shared record: %s -> epoch %d (%s)", p.broker, p.epoch, p.reason)
            self._adopt(record)
            return
        # Lost the race (or the record changed under us): read what won, after a pause.
        self._hold_until = time.monotonic() + self._lost.next()
        self._dirty.set()

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
            pause = self._r.refresh_s
            if self._hold_until > time.monotonic():
                await asyncio.sleep(self._hold_until - time.monotonic())
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
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
                        record = await read_record(self._client, self.keys)
                        if record is not None:
                            self._adopt(record)
                        else:
                            self._dirty.set()  # unusable: the reporter heals it
            except RedisError as exc:
                self.on_store_error(exc)
                await asyncio.sleep(self._r.refresh_s)
            finally:
                with contextlib.suppress(RedisError):
                    close: Any = pubsub.aclose  # unannotated before redis-py 8.2
                    await close()
