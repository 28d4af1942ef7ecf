"""The gRPC edge: ``GatewayService`` (proto <-> domain, errors <-> status) and health.

Thin on purpose: the round logic lives in ``rounds.py``, the broker logic in
``brokers.py``. Every GatewayError maps to its gRPC status here, in one place
(``abort_on_error``, around every servicer method), with trailing metadata naming the
error (and the IDP code for IDP errors). One summary log line per Detect.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace

from gateway.drops import Drops
from gateway.errors import (
    DetectTimeout,
    Exhausted,
    GatewayError,
    IdpError,
    InvalidRequest,
    ShakeTimeout,
    Unavailable,
)
from gateway.fleet.stats import totals
from gateway.protocol import BaccaratHand, Game, RouletteNumber, SicBoDice
from gateway.sidecar.election import LinkState
from gateway.sidecar.health_verdict import overall_status
from gateway.sidecar.shaker import ShakeParams
from gateway.sidecar.supervise import Supervisor
from gateway.v1 import gateway_pb2 as pb
from gateway.v1 import gateway_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.fleet.stats import SidecarStats
    from gateway.sidecar.brokers import BrokerPool
    from gateway.sidecar.rounds import Counters, DetectOutcome, RoundDesk
    from gateway.sidecar.shaker import Shaker
    from gateway.sidecar.topics import TopicHub

log = logging.getLogger(__name__)

SERVICE_NAME = "gateway.v1.GatewayService"
MAX_SUBSCRIBE_TOPICS = 64
DEADLINE_MARGIN_S = 0.05  # answer DEADLINE_EXCEEDED ourselves, with details, before the client does

GAME_TO_PROTO = {
    Game.SICBO: pb.GAME_SICBO,
    Game.BACCARAT: pb.GAME_BACCARAT,
    Game.ROULETTE: pb.GAME_ROULETTE,
}
_STATE_TO_PROTO = {
    LinkState.CONNECTING: pb.BROKER_STATE_CONNECTING,
    LinkState.READY: pb.BROKER_STATE_READY,
    LinkState.DOWN: pb.BROKER_STATE_DOWN,
}


def detect_wait(table_timeout_s: float, remaining_s: float | None) -> float:
    """How long a Detect waits: the table's timeout, shortened by the caller's deadline
    (less the margin), never lengthened by it. A deadline that leaves no time at all is
    refused before anything is published or superseded."""
    if remaining_s is None:
        return table_timeout_s
    if remaining_s <= DEADLINE_MARGIN_S:
        raise DetectTimeout(
            f"the call's deadline ({remaining_s * 1000:.0f} ms) leaves no time to detect: "
            f"at least {DEADLINE_MARGIN_S * 1000:.0f} ms are needed; nothing was published"
        )
    return min(table_timeout_s, remaining_s - DEADLINE_MARGIN_S)


def result_to_proto(outcome: DetectOutcome, config: GatewayConfig) -> pb.DetectResponse:
    """A Detect's validated result as the wire response, with the game's result filled in."""
    response = pb.DetectResponse(
        round_id=outcome.round_id,
        broker_id=outcome.broker_id,
        epoch=outcome.epoch,
        elapsed_ms=outcome.elapsed_ms,
        frames_seen=outcome.frames_seen,
        publishes=outcome.publishes,
        table_code=config.table.code,
        game=GAME_TO_PROTO[config.table.game],
    )
    result = outcome.result
    if isinstance(result, SicBoDice):
        response.sicbo.dice.extend(result.dice)
    elif isinstance(result, RouletteNumber):
        response.roulette.number = result.number
    elif isinstance(result, BaccaratHand):
        response.baccarat.cards.extend(result.cards)
    return response


def counters_to_proto(c: Counters) -> pb.Counters:
    """The desk's totals as the wire message (the field names are the same)."""
    return pb.Counters(**vars(c))


def stats_to_proto(s: SidecarStats) -> pb.SidecarStats:
    """One sidecar's statistics as the wire message; counters this build lacks are left out."""
    return pb.SidecarStats(
        instance_id=s.instance_id,
        table_code=s.table_code,
        updated_unix=s.updated_unix,
        active_broker_id=s.active_broker_id,
        epoch=s.epoch,
        config_generation=s.config_generation,
        counters=pb.Counters(**{k: v for k, v in s.counters.items() if k in _COUNTER_FIELDS}),
        brokers=[pb.BrokerStats(**vars(b)) for b in s.brokers],
        config_error=s.config_error,
    )


_COUNTER_FIELDS = frozenset(pb.Counters.DESCRIPTOR.fields_by_name)


@contextlib.asynccontextmanager
async def abort_on_error(context: grpc.aio.ServicerContext[object, object]) -> AsyncIterator[None]:
    """End the call with the status a GatewayError carries, its message and its metadata.

    The one place errors become gRPC statuses: every servicer method runs inside it."""
    try:
        yield
    except GatewayError as exc:
        await context.abort(exc.status, exc.message, trailing_metadata=exc.trailing_metadata())
        raise  # abort() raises; this line is never reached


class GatewayService(pb_grpc.GatewayServiceServicer):
    """Detect and Health for the one table this sidecar serves."""

    def __init__(
        self,
        config: GatewayConfig,
        desk: RoundDesk,
        pool: BrokerPool,
        instance_id: str,
        snapshot: Callable[[], SidecarStats],
        fleet: Callable[[], Awaitable[list[SidecarStats]]] | None = None,
        *,
        shaker: Shaker,
        hub: TopicHub,
        drops: Drops | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self._drops = drops or Drops()
        self._supervisor = supervisor or Supervisor()
        self._shaker = shaker
        self._hub = hub
        self._desk = desk
        self._pool = pool
        self._instance_id = instance_id
        self._snapshot = snapshot
        self._fleet = fleet
        self.config_error: Callable[[], str] = lambda: ""  # set by the reloader's owner

    async def Detect(
        self, request: pb.DetectRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DetectResponse:
        """Wait for the IDP's validated result for one round; one summary log line."""
        async with abort_on_error(context):
            return await self._detect(request, context)

    async def _detect(
        self, request: pb.DetectRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DetectResponse:
        table = self._desk.table
        remaining = context.time_remaining()
        started = time.monotonic()
        outcome_name = "cancelled"
        span = trace.get_current_span()  # the gRPC server span, when tracing is on
        span.set_attributes(
            {"table": table.code, "game": table.game.value, "round_id": request.round_id}
        )
        try:
            timeout = detect_wait(table.timeout_s, remaining)
            outcome = await self._desk.detect(
                request.round_id, request.input or None, request.output or None, timeout
            )
            outcome_name = "ok"
            span.set_attributes(
                {
                    "outcome": "ok",
                    "broker": outcome.broker_id,
                    "epoch": outcome.epoch,
                    "frames_seen": outcome.frames_seen,
                }
            )
            log.info(
                "detect table=%s round=%s outcome=ok broker=%s epoch=%d elapsed_ms=%.1f "
                "frames=%d publishes=%d",
                table.code,
                request.round_id,
                outcome.broker_id,
                outcome.epoch,
                outcome.elapsed_ms,
                outcome.frames_seen,
                outcome.publishes,
            )
            return result_to_proto(outcome, self.config)
        except GatewayError as exc:
            outcome_name = type(exc).__name__
            span.set_attribute("outcome", outcome_name)
            if isinstance(exc, IdpError):
                span.set_attribute("idp.err", exc.code)
            log.info(
                "detect table=%s round=%r outcome=%s elapsed_ms=%.1f: %s",
                table.code,
                request.round_id,
                outcome_name,
                (time.monotonic() - started) * 1000,
                exc.message,
            )
            raise  # abort_on_error ends the call with the error's status
        finally:
            if outcome_name == "cancelled":
                log.info(
                    "detect table=%s round=%r outcome=cancelled by the caller",
                    table.code,
                    request.round_id,
                )

    async def Shake(
        self, request: pb.ShakeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ShakeResponse:
        """Run one shaker cycle and wait until the shaker is idle again."""
        # The optional fields the caller set; the others keep the studio's usual cycle.
        given: dict[str, Any] = {f.name: value for f, value in request.ListFields()}
        async with abort_on_error(context):
            try:
                params = ShakeParams(**given)
                remaining = context.time_remaining()
                limit = None if remaining is None else remaining - DEADLINE_MARGIN_S
                if limit is not None and limit <= 0:
                    raise ShakeTimeout(
                        f"the call's deadline ({remaining * 1000:.0f} ms) leaves no time for a "
                        f"shake; nothing was sent to the shaker"
                    )
                outcome = await self._shaker.shake(params, limit)
            except GatewayError as exc:
                log.info("shake table=%s outcome=%s: %s", self.config.table.code,
                         type(exc).__name__, exc.message)  # fmt: skip
                raise  # abort_on_error ends the call with the error's status
            return pb.ShakeResponse(
                states=outcome.states,
                elapsed_ms=outcome.elapsed_s * 1000,
                broker_id=outcome.broker_id,
                budget_s=outcome.budget_s,
            )

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.TopicMessage]:
        """Stream the messages of the table's extra topics (shaker, subscribe_topics)."""
        async with abort_on_error(context):
            configured = sorted(self._hub.topics)
            if len(request.topics) > MAX_SUBSCRIBE_TOPICS:
                raise InvalidRequest(
                    f"{len(request.topics)} topics asked for; at most {MAX_SUBSCRIBE_TOPICS}"
                )
            topics = list(dict.fromkeys(request.topics)) or configured
            unknown = [t for t in topics if t not in self._hub.topics]
            if unknown or not topics:
                have = ", ".join(configured) or "none (no shaker, no subscribe_topics)"
                raise InvalidRequest(
                    f"topics not configured for table {self.config.table.code}: "
                    f"{', '.join(unknown)}; configured: {have}"
                )
            if self._hub.full():
                raise Exhausted(f"too many streams on this sidecar; {self._hub.limit_text()}")
            async with self._hub.listen(topics) as listener:
                await context.send_initial_metadata((("subscribed", ",".join(topics)),))
                async for m in listener:
                    yield pb.TopicMessage(
                        topic=m.topic,
                        payload=m.payload,
                        broker_id=m.broker_id,
                        received_unix=m.received_unix,
                        sequence=m.sequence,
                    )

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.HealthResponse:
        """The sidecar's health in detail: brokers, election, counters, loops."""
        async with abort_on_error(context):
            return self.health()

    async def GetStats(
        self, request: pb.StatsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.StatsResponse:
        """This sidecar's statistics and, if asked, the fleet's from the shared store."""
        async with abort_on_error(context):
            return await self._stats(request)

    async def _stats(self, request: pb.StatsRequest) -> pb.StatsResponse:
        response = pb.StatsResponse(
            local=stats_to_proto(self._snapshot()), broker_group=self.config.broker_group
        )
        if not request.fleet:
            return response
        if self._fleet is None:
            response.fleet_error = "no shared store configured (--redis-url-file, redis.url_file)"
            return response
        try:
            fleet = await self._fleet()
        except Unavailable as exc:
            response.fleet_error = exc.message
            return response
        response.fleet.extend(stats_to_proto(s) for s in fleet)
        response.totals.CopyFrom(pb.FleetTotals(**vars(totals(fleet))))
        return response

    def health(self) -> pb.HealthResponse:
        """The Health response right now (the Health RPC, and tests in-process)."""
        links = self._pool.statuses()
        decision = self._pool.decision()
        election = self._pool.election_status()
        overall = overall_status(
            links, decision, (*election.problems, *self._supervisor.problems())
        )
        return pb.HealthResponse(
            status=overall.status,
            reason=overall.reason,
            table_code=self._desk.table.code,
            game=GAME_TO_PROTO[self._desk.table.game],
            active_broker_id=decision.broker_id or "",
            epoch=decision.epoch,
            brokers=[
                pb.BrokerHealth(
                    id=s.id,
                    host=s.host,
                    port=s.port,
                    priority=s.priority,
                    connected=s.ready,
                    state=_STATE_TO_PROTO[s.state],
                    state_since_unix=s.since_wall,
                    failures=s.failures,
                    probe_rtt_ms=s.probe_rtt_ms,
                    last_error=s.last_error,
                    active=s.id == decision.broker_id,
                )
                for s in links
            ],
            counters=counters_to_proto(self._desk.counters),
            instance_id=self._instance_id,
            config_generation=self.config.generation,
            election=election.state,
            live_reporters=election.live_reporters,
            broker_group=self.config.broker_group,
            config_error=self.config_error(),
            dropped_inputs=self._drops.counts,
            command_topic=self._desk.table.command_topic,
            response_topic=self._desk.table.response_topic,
            timeout_s=self._desk.table.timeout_s,
            loops=[
                pb.LoopHealth(
                    name=h.name,
                    restarts=h.restarts,
                    last_error=h.last_error,
                    last_failure_unix=h.last_failure_unix,
                )
                for h in self._supervisor.loops()
            ],
        )
