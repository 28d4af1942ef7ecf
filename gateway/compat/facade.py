"""``CompleteMQTTSystem``, the predecessor's system for one table, backed by its sidecar
(``gateway.compat.system`` re-exports it and explains the move). It owns an event loop in
a thread of its own with one ``GatewayClient``, the handlers' Subscribe stream and the
statistics refresh; each public call hops onto that loop, so any loop or thread may call.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from gateway.client import (
    GatewayCallError,
    GatewayClient,
    GatewayUnavailable,
    RetryPolicy,
)
from gateway.client.loopthread import LoopClosed, LoopThread
from gateway.compat.broker_probe import test_broker_connection
from gateway.compat.config import Environment, GameType, MQTTConfig, differences, get_config
from gateway.compat.handlers import MessageHandler, MessageHandlers
from gateway.compat.legacy import LegacyResult, connection_stats, health_report
from gateway.compat.rounds import detect_round, note_ignored, shake_table, stream_urls
from gateway.compat.status import system_status
from gateway.compat.target import WrongSidecar, check_serves, sidecar_target
from gateway.v1 import gateway_pb2 as pb

log = logging.getLogger("gateway.compat")
T = TypeVar("T")

RPC_DEADLINE_S: Final = 3.0  # Health, GetStats: local calls, answered in milliseconds
SETTLE_S: Final = 5.0  # how long initialize() waits for the handlers' subscription
NOT_INITIALIZED: Final = "not initialized: call initialize() first"


class CompleteMQTTSystem:
    """The predecessor's system for one table, backed by that table's sidecar.

    The first six arguments are the predecessor's; ``config_dir`` is where ``config``
    (``MQTTConfig``: brokers, topics, timeout, client id) is first read from, as the
    predecessor did. Those settings belong to the sidecar now: assign them as before, and
    ``initialize`` warns once naming each one the sidecar serves differently. ``target``
    is the sidecar (see ``sidecar_target``); ``detect_timeout_s`` bounds a detect (None:
    the table's ``timeout_s`` on the sidecar); ``stats_interval_s`` is how often the
    numbers behind ``get_connection_stats`` are refreshed.
    """

    def __init__(
        self,
        game_type: GameType | str | Any,
        environment: Environment | str | Any = Environment.DEVELOPMENT,
        config_dir: str = "conf",
        max_connections: int = 5,
        enable_connection_pooling: bool = True,
        enable_message_processing: bool = True,
        *,
        target: str | None = None,
        ready_timeout_s: float = 30.0,
        detect_timeout_s: float | None = None,
        stats_interval_s: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.game_type = GameType(game_type)
        self.environment = Environment(environment)
        self.target = sidecar_target(self.game_type, target)
        self.config_dir = config_dir
        self.max_connections = max_connections
        self.enable_connection_pooling = enable_connection_pooling
        self.enable_message_processing = enable_message_processing
        self.logger = logging.getLogger(f"gateway.compat.{self.game_type.value}")
        self.config: MQTTConfig = get_config(self.game_type, self.environment, config_dir)
        self._baseline = copy.deepcopy(self.config)  # what the program has not set itself
        self.ready_timeout_s = ready_timeout_s
        self.detect_timeout_s = detect_timeout_s
        self.stats_interval_s = stats_interval_s
        self.retry = retry
        self.is_initialized = False
        self.is_running = False
        self.table_code = ""
        # Why the last detect returned (False, None); None after a success.
        self.last_detect_error: GatewayCallError | None = None
        # What initialize() found the program's settings to differ in (also logged once).
        self.config_differences: list[str] = []
        self._health: pb.HealthResponse | None = None
        self._thread: LoopThread | None = None
        self._client: GatewayClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._messages = MessageHandlers(self.target)
        self._stats: pb.StatsResponse | None = None
        self._stats_error = NOT_INITIALIZED
        self._ignored: set[str] = set()

    async def __aenter__(self) -> CompleteMQTTSystem:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cleanup()

    async def _on_own_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the system's own loop, whatever loop or thread calls."""
        thread = self._thread
        if thread is None or thread.closed:
            coro.close()
            raise LoopClosed(NOT_INITIALIZED)
        return await thread.call(coro)

    # --- lifecycle -------------------------------------------------------------------

    async def initialize(self) -> bool:
        """Wait (up to ``ready_timeout_s``) until the sidecar can carry a detect, check it
        serves this game, and start the handlers' subscription and the statistics.

        Returns True. Raises ``NotReady`` (naming the target and the last status) when
        the sidecar is not ready in time, ``WrongSidecar`` when it serves another game:
        as the predecessor raised when it could not connect.
        """
        if self._thread is None or self._thread.closed:
            self._thread = LoopThread(f"compat {self.game_type.value} {self.target}")
        try:
            return await self._on_own_loop(self._initialize())
        except BaseException:
            if self._client is None:  # nothing started: do not leave the thread behind
                await asyncio.to_thread(self._stop_thread)
            raise

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.close()

    async def _initialize(self) -> bool:
        if self._client is not None:
            return True
        client = GatewayClient(self.target, default_deadline_s=RPC_DEADLINE_S, retry=self.retry)
        try:
            await client.wait_ready(self.ready_timeout_s)
            health = await client.health()
            check_serves(health, self.game_type, self.target)
        except BaseException as exc:
            if isinstance(exc, GatewayCallError | WrongSidecar):
                log.error("initialize %s: %s", self.game_type.value, exc)
            await client.close()
            raise
        self._client, self.table_code, self._health = client, health.table_code, health
        self._compare(health)
        self._messages.start(health.table_code)
        self._tasks = [
            asyncio.create_task(self._run_stats(), name=f"compat-stats {self.target}"),
            asyncio.create_task(self._messages.run(client), name=f"compat-subscribe {self.target}"),
        ]
        await self._refresh_stats()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_S):
                await self._messages.settled.wait()
        self.is_initialized = self.is_running = True
        log.info(
            "%s system ready: sidecar %s, table %s, active broker %s",
            self.game_type.value,
            self.target,
            health.table_code,
            health.active_broker_id,
        )
        return True

    def _compare(self, health: pb.HealthResponse) -> None:
        """Warn once about each of the program's settings the sidecar serves differently."""
        found = differences(self.config, health, self._baseline)
        fresh = [d for d in found if d not in self.config_differences]
        self.config_differences = found
        if fresh:
            log.warning(
                "%s system: these settings are the sidecar's at %s and differ from what the "
                "program set (the sidecar's apply; change them in its configuration): %s",
                self.game_type.value, self.target, "; ".join(fresh),
            )  # fmt: skip

    async def cleanup(self) -> None:
        """Stop the handlers and the statistics and close the connection; idempotent, from
        any loop or thread."""
        if self._thread is not None and not self._thread.closed:
            with contextlib.suppress(LoopClosed):
                await self._on_own_loop(self._cleanup())
            await asyncio.to_thread(self._stop_thread)
        self.is_initialized = self.is_running = False
        self._messages.stop()
        self._stats_error = "not running: cleanup() was called"

    async def _cleanup(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.close()
            log.info("%s system for sidecar %s cleaned up", self.game_type.value, self.target)

    # --- rounds ----------------------------------------------------------------------

    async def detect(
        self,
        round_id: str,
        input_stream: str | None = None,
        output_stream: str | None = None,
        *,
        input: str | None = None,  # the predecessor's Baccarat spelling
        output: str | None = None,
        **ignored: Any,
    ) -> tuple[bool, LegacyResult | None]:
        """``(True, result)`` with the IDP's result for exactly this round, else
        ``(False, None)`` and a log line saying why (never a made-up default). Never raises.

        Stream URLs default to the table's configured ones; ``input``/``output`` are
        accepted as the predecessor's other spelling, any other keyword is ignored (DEBUG,
        once per name). WARNING: timeout, IDP error (e.g. -3 NO_SHAKE: re-shake), no
        broker, superseded by a newer round. ERROR: a call that can never succeed (bad
        round id or URL, not initialized). ``last_detect_error`` keeps the exception.
        """
        self.last_detect_error = None
        note_ignored(ignored, self._ignored)
        streams = stream_urls(round_id, (input_stream, input), (output_stream, output))
        if streams is None:
            return False, None
        try:
            return await self._on_own_loop(self._detect(round_id, streams[0], streams[1]))
        except LoopClosed:
            log.error("detect round=%r: %s", round_id, NOT_INITIALIZED)
            return False, None
        except Exception:  # the predecessor never raised from detect; say why, loudly
            log.exception("detect round=%r failed unexpectedly", round_id)
            return False, None

    async def _detect(
        self, round_id: str, input_url: str, output_url: str
    ) -> tuple[bool, LegacyResult | None]:
        client = self._client
        if client is None:
            log.error("detect round=%r: %s", round_id, NOT_INITIALIZED)
            return False, None
        try:
            result = await detect_round(
                client, round_id, input_url, output_url, self.detect_timeout_s
            )
        except GatewayCallError as exc:
            self.last_detect_error = exc
            return False, None
        return True, result

    async def send_timeout_command(self) -> bool:
        """The predecessor's explicit stop of the IDP after a result: True. The sidecar
        already sent ``timeout`` when the round ended, so nothing more is published (a
        second one could stop the next round's detection)."""
        log.debug("send_timeout_command: the sidecar stopped the IDP when the round ended")
        return True

    async def shake(
        self,
        *,
        duration_s: float | None = None,
        amplitude: float | None = None,
        pattern: int | None = None,
        parameter1: int | None = None,
        parameter2: int | None = None,
    ) -> tuple[bool, list[str]]:
        """Shake the SicBo dice: ``(True, states)`` once the shaker is idle again (e.g.
        ``["S2", "S1", "S0"]``), else ``(False, [])`` and a WARNING saying why."""
        params = {
            "duration_s": duration_s,
            "amplitude": amplitude,
            "pattern": pattern,
            "parameter1": parameter1,
            "parameter2": parameter2,
        }
        try:
            return await self._on_own_loop(self._shake(params))
        except LoopClosed:
            log.error("shake: %s", NOT_INITIALIZED)
            return False, []

    async def _shake(self, params: dict[str, Any]) -> tuple[bool, list[str]]:
        client = self._client
        if client is None:
            log.error("shake: %s", NOT_INITIALIZED)
            return False, []
        return await shake_table(client, params)

    # --- messages --------------------------------------------------------------------

    def add_message_handler(self, topic: str, handler: MessageHandler) -> None:
        """Call ``handler(topic, payload, data)`` for each message on ``topic`` (``+``/``#``
        filters allowed), plain or ``async``, one message at a time in arrival order, on
        the event loop running where it was added (while that loop runs).

        Only the topics the sidecar carries for the table (the shaker's ``says`` topic and
        its ``subscribe_topics``) can be handled; a topic matching none of them is logged
        at ERROR with the list of those carried. A handler that raises is logged; the
        others and the stream go on.
        """
        try:
            home: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            home = None
        self._messages.add(topic, handler, home)

    def remove_message_handler(self, topic: str) -> None:
        """Forget every handler registered for ``topic``."""
        self._messages.remove(topic)

    @property
    def subscribed_topics(self) -> frozenset[str]:
        """The topics the open subscription carries (empty while there is none)."""
        return self._messages.subscribed

    # --- statistics and health -------------------------------------------------------

    def get_connection_stats(self) -> dict[str, Any]:
        """The broker connections as last seen (refreshed every ``stats_interval_s``, and
        by ``refresh_connection_stats``): ``total_connections``, ``active_connections``,
        ``failed_connections``, plus ``brokers``, ``counters``, ``error`` and more."""
        return connection_stats(self._stats, target=self.target, error=self._stats_error)

    async def refresh_connection_stats(self) -> dict[str, Any]:
        """Ask the sidecar now and return the fresh ``get_connection_stats()``."""
        with contextlib.suppress(LoopClosed):
            await self._on_own_loop(self._refresh_stats())
        return self.get_connection_stats()

    async def _refresh_stats(self) -> None:
        client = self._client
        if client is not None:
            try:
                self._stats, self._stats_error = await client.stats(), ""
            except GatewayCallError as exc:
                self._stats_error = f"sidecar at {self.target} did not answer: {exc}"

    async def _run_stats(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            await self._refresh_stats()

    async def check_health(self) -> dict[str, Any]:
        """``status`` ("healthy", "degraded", "unhealthy") and ``issues`` from the
        sidecar's Health, plus its brokers; an unreachable sidecar is "unhealthy"."""
        with contextlib.suppress(LoopClosed):
            return await self._on_own_loop(self._check_health())
        return self._health_report(None, NOT_INITIALIZED)

    def _health_report(self, health: pb.HealthResponse | None, error: str = "") -> dict[str, Any]:
        return health_report(health, target=self.target, game=self.game_type, error=error)

    async def _check_health(self) -> dict[str, Any]:
        client = self._client
        if client is None:
            return self._health_report(None, NOT_INITIALIZED)
        try:
            health = await client.health()
        except GatewayCallError as exc:
            what = "unreachable" if isinstance(exc, GatewayUnavailable) else "did not answer"
            error = f"sidecar at {self.target} {what}: {exc.code().name}: {exc.details()}"
            return self._health_report(None, error)
        self._health = health
        return self._health_report(health)

    def get_system_status(self) -> dict[str, Any]:
        """What this system is and where it stands, synchronously, with the keys the
        predecessor's callers read (``config_info``, ``connection_manager``,
        ``message_processor``, ``primary_client``)."""
        return system_status(
            game_type=self.game_type,
            environment=self.environment,
            is_initialized=self.is_initialized,
            is_running=self.is_running,
            target=self.target,
            table_code=self.table_code,
            config=self.config,
            health=self._health,
            stats=self.get_connection_stats(),
            pooling=self.enable_connection_pooling,
            processing=self.enable_message_processing,
            handlers=len(self._messages.handlers),
            subscribed=self._messages.subscribed,
            differences=self.config_differences,
        )

    async def test_broker_connection(self, host: str, port: int, **kwargs: Any) -> bool:
        """Whether an MQTT broker accepts a connection; see ``broker_probe``."""
        return await test_broker_connection(host, port, **kwargs)
