"""What the chaos soak's faults write: the catalogue of kinds and variants, hostile MQTT
frames, bad shared records, views and statistics, and config files that must be refused."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from gateway.devtools.sim import derive_result

PREFIX = "studio-gateway"
INJECTOR = "chaos-injector"  # the "by" of records written here; never a sidecar's
KINDS = (
    "broker_kill",
    "broker_stop",
    "broker_restart",
    "qos1_stall",
    "redis_kill",
    "redis_pause",
    "redis_restart",
    "corrupt_record",
    "hostile_frames",
    "config_swap",
    "sidecar_kill",
)
# The corrupt_record variants that write a bad record field (the others replace the key or
# write views and statistics).
RECORD_VARIANTS = (
    "not_json",
    "no_epoch",
    "no_by",
    "unknown_broker",
    "epoch_string",
    "epoch_1e400",
    "record_1mb",
)
VARIANTS: dict[str, tuple[str, ...]] = {
    "corrupt_record": (
        *RECORD_VARIANTS,
        "group_key_string",
        "garbage_views",
        "garbage_stats",
    ),
    "hostile_frames": (
        "deep_nesting",
        "non_utf8",
        "payload_1mb",
        "payload_300kb",
        "huge_integers",
        "made_up_round",
        "invalid_current",
        "empty",
    ),
    "config_swap": ("valid", "nested", "unknown_field", "non_utf8"),
}
_INVALID_RES: dict[str, list[object]] = {
    "sicbo": [[0, 7, 3], [1, 2], ["1", "2", "3"]],
    "roulette": [37, -1, 3.5],
    # Out-of-range cards, and a hand the tableau forbids (player 0 must draw).
    "baccarat": [["1X", "KZ", "AC", "QQ", "", ""], ["KD", "2S", "10H", "3C", "", ""]],
}


def _frame(arg: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"response": "result", "arg": {**arg, **extra}}).encode()


def _other_valid(game: str, rid: str) -> object:
    """A valid result for the game that is not the one the IDP sends for ``rid``."""
    real, n = derive_result(game, rid), 0
    while (other := derive_result(game, f"{rid}#other{n}")) == real:
        n += 1
    return other


def check_skip(names: list[str]) -> frozenset[str]:
    """``--skip`` values (``kind`` or ``kind/variant``), checked against the catalogue."""
    known = set(KINDS) | {f"{k}/{v}" for k, vs in VARIANTS.items() for v in vs}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown fault kind or variant: {', '.join(unknown)}")
    for kind, variants in VARIANTS.items():
        if all(f"{kind}/{v}" in names for v in variants):
            names = [*names, kind]
    return frozenset(names)


def hostile_payloads(variant: str, game: str, rid: str) -> list[bytes]:
    """The frames of one hostile burst for a table whose current (or next) round is ``rid``."""
    code = rid.rsplit("-", 2)[0]
    if variant == "deep_nesting":
        return [b"[" * 5000]
    if variant == "non_utf8":
        return [b"\xff\xfe\xfd" + bytes(range(0x80, 0x100)), b'{"response": "\xc3\x28"}']
    if variant in ("payload_1mb", "payload_300kb"):
        pad = "x" * ((1 << 20) if variant == "payload_1mb" else 300 * 1024)
        return [_frame({"round_id": rid, "res": _other_valid(game, rid), "err": 0}, pad=pad)]
    if variant == "huge_integers":
        head = f'{{"response": "result", "arg": {{"round_id": "{rid}", "res": '.encode()
        return [
            head + b"9" * 400 + b', "err": 0}}',
            head + b"7" * 5000 + b', "err": ' + b"1" * 5000 + b"}}",
        ]
    if variant == "made_up_round":
        other = f"{code}-madeup-{uuid.uuid4().hex[:8]}"
        return [_frame({"round_id": other, "res": derive_result(game, other), "err": 0})]
    if variant == "invalid_current":
        return [_frame({"round_id": rid, "res": res, "err": 0}) for res in _INVALID_RES[game]]
    if variant == "empty":
        return [b""]
    raise ValueError(variant)


def invalid_config(variant: str, doc: dict[str, Any]) -> bytes:
    """A config file that must be kept out (the running configuration stays)."""
    if variant == "nested":
        return b'{"version": 1, "table": ' + b"[" * 20000 + b"]" * 20000 + b"}"
    if variant == "unknown_field":
        return json.dumps({**doc, "generation": doc["generation"] + 1, "surprise": True}).encode()
    if variant == "non_utf8":
        return json.dumps({**doc, "environment": "chaos-ENV"}).encode().replace(b"ENV", b"\xff\xfe")
    raise ValueError(variant)


GARBAGE_VIEWS: dict[str, bytes] = {
    "view:chaos-1": b"not json",
    "view:chaos-2": b"\xff\xfe\x00",
    "view:chaos-3": b'{"i": "chaos-3", "e": "x", "up": [], "s": 1}',
    "view:chaos-4": b'{"i": "chaos-4", "e": 1e400, "up": {}, "f": {}, "s": 1}',
    "view:chaos-5": b'{"i": "chaos-5", "e": 3, "up": {"b1": "yesterday"}, "s": "x"}',
    "view:chaos-6": b"[" * 5000,
    "view:chaos-7": b'{"i": "chaos-7", "e": 2, "up": {"b9": 1.0}, "f": {}, "s": 1}',
}
GARBAGE_STATS: dict[bytes, bytes] = {
    b"detects_ok": b"lots",
    b"epoch": b"1e400",
    b"brokers": b"[" * 5000,
    b"\xff\xfe": b"\xff",
    b"active_broker": b"b9",
    b"generation": b"-1",
}


def record_text(variant: str, current: dict[str, Any]) -> str:
    """A bad record for a group whose record is ``current``: its epoch + 1 where it has one,
    "by" the injector (so the epoch check never counts it as a sidecar's)."""
    epoch = current.get("epoch")
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
    base = {
        "broker": str(current.get("broker", "b1")),
        "epoch": epoch + 1,
        "by": INJECTOR,
        "at": time.time(),
        "reason": "written by the chaos soak",
    }
    if variant == "not_json":
        return "{not json"
    if variant in ("no_epoch", "no_by"):
        return json.dumps({k: x for k, x in base.items() if k != variant[3:]})
    if variant == "unknown_broker":
        return json.dumps({**base, "broker": "b9"})
    if variant == "epoch_string":
        return json.dumps({**base, "epoch": str(epoch + 1)})
    if variant == "epoch_1e400":
        return json.dumps(base).replace(f'"epoch": {epoch + 1}', '"epoch": 1e400')
    if variant == "record_1mb":
        return json.dumps({**base, "reason": "r" * (1 << 20)})
    raise ValueError(variant)
