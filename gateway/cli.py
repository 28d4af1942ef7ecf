"""The ``gateway`` command: ``serve``, ``detect``, ``health``, ``sim`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

import grpc

from gateway import describe
from gateway.client import GatewayClient
from gateway.client.errors import metadata_pairs
from gateway.config import (
    DEFAULT_ADDRESS,
    DEFAULT_PORT,
    GatewayConfig,
    command_line_redis_url,
    load_config,
    redis_url_file,
)
from gateway.devtools import sim as simulator
from gateway.errors import ConfigError
from gateway.sidecar.app import serve
from gateway.sidecar.telemetry import (
    configure_logging,
    configure_telemetry,
    grpc_server_interceptors,
)
from gateway.v1 import gateway_pb2 as pb

log = logging.getLogger("gateway")

EVENT_LOOP_ENV = "GATEWAY_EVENT_LOOP"
EVENT_LOOPS = ("asyncio", "uvloop")


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway`` command's arguments: serve, detect, health, shake, sim, demo."""
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
    p.add_argument("--listen", default=DEFAULT_ADDRESS, metavar="HOST:PORT")
    p.add_argument(
        "--listen-unix",
        metavar="PATH",
        help="also serve on a Unix socket at PATH, for a game in the same pod "
        "(GATEWAY_TARGET=unix:PATH); off by default",
    )
    p.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve grpc.health.v1 alone on HOST:PORT, for kubelet probes (off by default)",
    )
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=os.environ.get(EVENT_LOOP_ENV, "asyncio"),
        help=f"asyncio's own loop or uvloop (if installed); default ${EVENT_LOOP_ENV} or asyncio",
    )
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--redis-url",
        metavar="URL",
        help="shared election and statistics store, without a password (a command line "
        "is visible to every process); else --redis-url-file or GATEWAY_REDIS_URL",
    )
    store.add_argument(
        "--redis-url-file",
        metavar="PATH",
        help="file holding the Redis URL, password included (a mounted Secret); read at start",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (off by default)",
    )

    p = sub.add_parser("detect", help="call Detect on a sidecar and print the result")
    p.add_argument("--target", default=DEFAULT_ADDRESS, metavar="HOST:PORT|unix:PATH")
    p.add_argument("--round-id", required=True)
    p.add_argument("--input", default="", metavar="URL", help="camera stream (default: config)")
    p.add_argument("--output", default="", metavar="URL", help="annotated stream (SicBo)")
    p.add_argument("--deadline", type=float, default=None, metavar="S", help="gRPC deadline")
    p.add_argument("--json", action="store_true", help="print the response as JSON")

    p = sub.add_parser("shake", help="shake a SicBo table's dice through its sidecar")
    p.add_argument("--target", default=DEFAULT_ADDRESS, metavar="HOST:PORT|unix:PATH")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="cycle (9.59)")
    p.add_argument("--amplitude", type=float, default=None, help="0 < A <= 1 (0.41)")
    p.add_argument("--deadline", type=float, default=None, metavar="S", help="gRPC deadline")

    p = sub.add_parser("health", help="print a sidecar's Health")
    p.add_argument("--target", default=DEFAULT_ADDRESS, metavar="HOST:PORT|unix:PATH")
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
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="first gRPC port (one sidecar per game)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gateway`` command; its exit status."""
    args = build_parser().parse_args(argv)
    level = args.log_level or ("WARNING" if args.command == "demo" else "INFO")
    configure_logging(level, args.log_format)
    try:
        if args.command == "serve":
            use_event_loop(args.event_loop)
        return asyncio.run(_dispatch(args))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        url = _redis_override(args)

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
                listen_unix=args.listen_unix,
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
    from gateway.devtools.demo import run_demo

    return await run_demo(first_port=args.port, once=args.once)


def use_event_loop(name: str) -> None:
    """Make ``asyncio.run`` use ``name``'s event loop: ``asyncio`` (the standard one) or
    ``uvloop``, which must be installed (ConfigError otherwise)."""
    if name == "asyncio":
        return
    try:
        import uvloop
    except ImportError as exc:
        raise ConfigError(f"--event-loop {name}: uvloop is not installed") from exc
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _redis_override(args: argparse.Namespace) -> str | None:
    """The Redis URL of ``--redis-url`` (refused if it holds a password) or
    ``--redis-url-file`` (read once, at start), if either is given."""
    if args.redis_url:
        return command_line_redis_url(args.redis_url)
    if args.redis_url_file:
        return redis_url_file(args.redis_url_file)
    return None


def _with_redis(config: GatewayConfig, url: str) -> GatewayConfig:
    """The config with the command line's Redis URL taking the place of any configured one."""
    return replace(config, redis=replace(config.redis, url=url))


def _rpc_error(exc: grpc.aio.AioRpcError) -> int:
    code = exc.code().name if exc.code() else "UNKNOWN"
    pairs = metadata_pairs(exc.trailing_metadata())
    extra = {k: v for k, v in pairs if k.startswith(("idp-", "shake-"))}
    suffix = f" {extra}" if extra else ""
    print(f"error: {code}: {exc.details()}{suffix}", file=sys.stderr)
    return 1


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
    print(describe.as_json(r) if args.json else describe.response(r))
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
        print(describe.as_json(h))
        if stats is not None:
            print(describe.as_json(stats))
    else:
        print(describe.health(h))
        if stats is not None:
            print(describe.fleet(stats))
    return 0 if h.status in (pb.HealthResponse.SERVING, pb.HealthResponse.DEGRADED) else 3


async def _sim(args: argparse.Namespace) -> int:
    configs = [load_config(path) for path in args.config]
    brokers, tables = simulator.sim_devices(configs)
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
