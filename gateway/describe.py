"""How the command line and the demo print the sidecar's answers for a person (or as JSON).

Shared by ``gateway.cli`` and ``gateway.devtools.demo``; it depends only on the generated
messages, so neither has to import the other.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from gateway.v1 import gateway_pb2 as pb


def as_json(message: Any) -> str:
    """A response as JSON with every field, zeros included: roulette 0 is a result."""
    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True)


def response(r: pb.DetectResponse) -> str:
    """One line for a Detect answer: the result, the broker and epoch, the time it took."""
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


def fleet(s: pb.StatsResponse) -> str:
    """The broker group's fleet view: totals, then one line per live sidecar."""
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


def health(h: pb.HealthResponse) -> str:
    """A Health answer for a terminal: status, links, election, counters, problems."""
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
