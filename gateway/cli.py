"""The ``gateway`` command: ``serve``, ``detect``, ``health``, ``sim`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf import json_format

from gateway import sim as simulator
from gateway.app import DEFAULT_LISTEN, serve
from gateway.client import GatewayClient
from gateway.client_errors import metadata_pairs
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.telemetry import configure_logging, configure_telemetry, grpc_server_interceptors
from gateway.v1 import gateway_pb2 as pb

log = logging.getLogger("gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="gRPC sidecar that gets round results from the studio's IDPs over MQTT.",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO; WARNING for demo)")
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default="auto",
        help="auto: readable on a terminal, JSON otherwise",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the sidecar for one table")
    p.add_argument("--config", required=True, metavar="FILE", help="table config (JSON)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    p.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve grpc.health.v1 alone on HOST:PORT, for kubelet probes (off by default)",
    )
    p.add_argument("--redis-url", metavar="URL", help="shared election and statistics store")
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (off by default)",
    )

    p = sub.add_parser("detect", help="call Detect on a sidecar and print the result")
    p.add_argument("--target", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    p.add_argument("--round-id", required=True)
    p.add_argument("--input", default="", metavar="URL", help="camera stream (default: config)")
    p.add_argument("--output", default="", metavar="URL", help="annotated stream (SicBo)")
    p.add_argument("--deadline", type=float, default=None, metavar="S", help="gRPC deadline")
    p.add_argument("--json", action="store_true", help="print the response as JSON")

    p = sub.add_parser("shake", help="shake a SicBo table's dice through its sidecar")
    p.add_argument("--target", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="cycle (9.59)")
    p.add_argument("--amplitude", type=float, default=None, help="0 < A <= 1 (0.41)")
    p.add_argument("--deadline", type=float, default=None, metavar="S", help="gRPC deadline")

    p = sub.add_parser("health", help="print a sidecar's Health")
    p.add_argument("--target", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    p.add_argument("--json", action="store_true", help="print the response as JSON")
    p.add_argument(
        "--fleet", action="store_true", help="also every live sidecar of its broker group"
    )

    p = sub.add_parser("sim", help="simulate the IDPs (and SicBo shakers) of some tables")
    p.add_argument(
        "--config", required=True, action="append", metavar="FILE", help="table config; repeatable"
    )
    simulator.add_behaviour_arguments(p)

    p = sub.add_parser("demo", help="start brokers, simulator and sidecars; run real Detects")
    p.add_argument("--once", action="store_true", help="exit after the first Detects")
    p.add_argument("--port", type=int, default=50051, help="first gRPC port (one sidecar per game)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("WARNING" if args.command == "demo" else "INFO")
    configure_logging(level, args.log_format)
    try:
        return asyncio.run(_dispatch(args))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        url = args.redis_url

        def adjust(config: GatewayConfig) -> GatewayConfig:
            return _with_redis(config, url) if url else config

        config = adjust(load_config(args.config))
        telemetry = configure_telemetry(metrics_listen=args.metrics_listen)
        try:
            await serve(
                config,
                args.listen,
                grpc_server_interceptors(),
                config_path=args.config,
                config_adjust=adjust,
                health_listen=args.health_listen,
            )
        except OSError as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            return 1
        finally:
            telemetry.shutdown()
        return 0
    if args.command == "detect":
        return await _detect(args)
    if args.command == "health":
        return await _health(args)
    if args.command == "shake":
        return await _shake(args)
    if args.command == "sim":
        return await _sim(args)
    from gateway.demo import run_demo

    return await run_demo(first_port=args.port, once=args.once)


def _with_redis(config: GatewayConfig, url: str) -> GatewayConfig:
    """The config with ``--redis-url`` taking the place of any configured URL."""
    if not url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://",
                           "rediss+sentinel://")):  # fmt: skip
        raise ConfigError(f"--redis-url: {url.split('://')[0]!r} is not a Redis URL scheme")
    return replace(config, redis=replace(config.redis, url=url))


def _rpc_error(exc: grpc.aio.AioRpcError) -> int:
    code = exc.code().name if exc.code() else "UNKNOWN"
    pairs = metadata_pairs(exc.trailing_metadata())
    extra = {k: v for k, v in pairs if k.startswith(("idp-", "shake-"))}
    suffix = f" {extra}" if extra else ""
    print(f"error: {code}: {exc.details()}{suffix}", file=sys.stderr)
    return 1


def _json(message: Any) -> str:
    """A response as JSON with every field, zeros included: roulette 0 is a result."""
    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True)


def describe_response(r: pb.DetectResponse) -> str:
    kind = r.WhichOneof("result")
    if kind == "sicbo":
        value = "dice " + " ".join(str(d) for d in r.sicbo.dice)
    elif kind == "roulette":
        value = f"number {r.roulette.number}"
    else:
        value = "cards " + " ".join(c or "--" for c in r.baccarat.cards)
    return (
        f"{r.table_code} round {r.round_id}: {value}  "
        f"(via {r.broker_id}, epoch {r.epoch}, {r.elapsed_ms:.1f} ms, "
        f"{r.frames_seen} frame(s), {r.publishes} publish(es))"
    )


async def _detect(args: argparse.Namespace) -> int:
    async with GatewayClient(args.target) as client:
        try:
            r = await client.detect_raw(
                args.round_id,
                input_url=args.input,
                output_url=args.output,
                deadline_s=args.deadline,
            )
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
    print(_json(r) if args.json else describe_response(r))
    return 0


async def _shake(args: argparse.Namespace) -> int:
    async with GatewayClient(args.target) as client:
        try:
            shook = await client.shake(
                duration_s=args.duration, amplitude=args.amplitude, deadline_s=args.deadline
            )
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
    print(f"shaken: {' -> '.join(shook.states)} in {shook.elapsed_ms:.0f} ms via {shook.broker_id}")
    return 0


async def _health(args: argparse.Namespace) -> int:
    async with GatewayClient(args.target) as client:
        try:
            h = await client.health()
            stats = await client.stats(fleet=True) if args.fleet else None
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
    if args.json:
        print(_json(h))
        if stats is not None:
            print(_json(stats))
    else:
        print(describe_health(h))
        if stats is not None:
            print(describe_fleet(stats))
    return 0 if h.status in (pb.HealthResponse.SERVING, pb.HealthResponse.DEGRADED) else 3


def describe_fleet(s: pb.StatsResponse) -> str:
    if s.fleet_error:
        return f"fleet of {s.broker_group}: {s.fleet_error}"
    t = s.totals
    lines = [
        f"fleet of {s.broker_group}: {t.sidecars} sidecar(s); connections total "
        f"{t.total_connections}, active {t.active_connections}, failed {t.failed_connections}; "
        f"detects ok {t.detects_ok}, timed out {t.detects_timed_out}, failed {t.detects_failed}"
    ]
    for side in s.fleet:
        up = sum(1 for b in side.brokers if b.connected)
        lines.append(
            f"  {side.instance_id:<24} {side.table_code:<10} active {side.active_broker_id or '-'}"
            f" epoch {side.epoch}  brokers up {up}/{len(side.brokers)}"
            f"  detects ok {side.counters.detects_ok}"
        )
    return "\n".join(lines)


def describe_health(h: pb.HealthResponse) -> str:
    status = pb.HealthResponse.Status.Name(h.status)
    lines = [
        f"{status}  table {h.table_code} ({pb.Game.Name(h.game)})  instance {h.instance_id}",
        f"  active broker {h.active_broker_id or '-'}  epoch {h.epoch}: {h.reason}",
    ]
    for b in h.brokers:
        state = pb.BrokerState.Name(b.state).removeprefix("BROKER_STATE_").lower()
        mark = "*" if b.active else " "
        lines.append(
            f" {mark} {b.id:<24} prio {b.priority}  {state:<10} rtt {b.probe_rtt_ms:6.2f} ms"
            f"  failures {b.failures}" + (f"  last error: {b.last_error}" if b.last_error else "")
        )
    if h.election != "not configured":
        lines.append(
            f"  election ({h.broker_group}): {h.election}; {h.live_reporters} live sidecar(s)"
        )
    c = h.counters
    lines.append(
        f"  detects ok {c.detects_ok}, timed out {c.detects_timed_out}, failed "
        f"{c.detects_failed}; frames stale {c.stale_frames}, invalid {c.invalid_frames}, "
        f"not-yet {c.not_yet_frames}, duplicate {c.duplicate_frames}"
    )
    if h.dropped_inputs:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(h.dropped_inputs.items()))
        lines.append(f"  dropped inputs: {dropped}")
    for loop in h.loops:
        if loop.restarts:
            lines.append(f"  loop {loop.name} restarted {loop.restarts}x: {loop.last_error}")
    if h.config_error:
        lines.append(f"  config: {h.config_error}")
    return "\n".join(lines)


def sim_devices(
    configs: Sequence[GatewayConfig],
) -> tuple[list[simulator.SimBroker], list[simulator.SimTable]]:
    """The simulator's view of some table configs: every broker once, every table."""
    brokers: dict[str, simulator.SimBroker] = {}
    tables = []
    for config in configs:
        for b in config.brokers:
            tls = b.tls
            brokers.setdefault(
                b.id,
                simulator.SimBroker(
                    host=b.host,
                    port=b.port,
                    username=b.username,
                    password=b.password,
                    ca_file=tls.ca_file if tls else None,
                    client_cert=tls.cert_file if tls else None,
                    client_key=tls.key_file if tls else None,
                    server_name=tls.server_name if tls else None,
                    id=b.id,
                ),
            )
        t = config.table
        tables.append(
            simulator.SimTable(
                game=t.game.value,
                table_code=t.code,
                command_topic=t.command_topic,
                response_topic=t.response_topic,
                shaker_listens=t.shaker_listens,
                shaker_says=t.shaker_says,
            )
        )
    return list(brokers.values()), tables


async def _sim(args: argparse.Namespace) -> int:
    configs = [load_config(path) for path in args.config]
    brokers, tables = sim_devices(configs)
    sim = simulator.IdpSimulator(
        brokers,
        tables,
        simulator.behaviour_from_args(args),
        shake_time_scale=args.shake_time_scale,
    )
    for code in sim.shaker_fault:
        sim.shaker_fault[code] = args.shaker_fault
    log.info("simulating %s on %s", [t.table_code for t in tables], [b.id for b in brokers])
    await sim.run()
    return 0
