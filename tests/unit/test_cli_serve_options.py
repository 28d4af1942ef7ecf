"""`gateway serve` options for the game's transport and the event loop."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cli import build_parser, use_event_loop
from gateway.errors import ConfigError


def test_serve_takes_a_unix_socket_besides_tcp() -> None:
    """--listen-unix adds a socket path; the TCP address keeps its default."""
    args = build_parser().parse_args(
        ["serve", "--config", "t.json", "--listen-unix", "/run/gw.sock"]
    )
    assert args.listen_unix == "/run/gw.sock"
    assert args.listen == "127.0.0.1:50051"


def test_event_loop_defaults_to_asyncio_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --event-loop the sidecar runs asyncio's loop unless GATEWAY_EVENT_LOOP says so."""
    monkeypatch.delenv("GATEWAY_EVENT_LOOP", raising=False)
    assert build_parser().parse_args(["serve", "--config", "t.json"]).event_loop == "asyncio"
    monkeypatch.setenv("GATEWAY_EVENT_LOOP", "uvloop")
    assert build_parser().parse_args(["serve", "--config", "t.json"]).event_loop == "uvloop"


def test_uvloop_when_asked_for() -> None:
    """--event-loop uvloop makes asyncio.run use uvloop, or fails naming the option."""
    try:
        import uvloop
    except ImportError:
        with pytest.raises(ConfigError, match="--event-loop uvloop"):
            use_event_loop("uvloop")
        return
    try:
        use_event_loop("uvloop")
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(None)
