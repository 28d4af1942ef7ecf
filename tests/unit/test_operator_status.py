"""Unit tests of the GameTable operator's status: conditions from what the sidecars report."""

from __future__ import annotations

import datetime
import itertools
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gametable_operator import status
from gametable_operator.status import Condition, Observed, Rendered
from gateway.fleet.stats import BrokerStat, SidecarStats

ROOT = Path(__file__).parents[2]
CRD = yaml.safe_load((ROOT / "operator" / "gametable_operator" / "crd.yaml").read_text())
STATUS_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
CONDITION_SCHEMA = STATUS_SCHEMA["properties"]["conditions"]["items"]
# jsonschema checks date-time only with an extra package; this one reads it as the API server
# does (RFC 3339, e.g. 2025-03-01T12:00:00Z). int64 is checked for range.
FORMATS = jsonschema.FormatChecker(formats=())
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword judges non-strings
    datetime.datetime.fromisoformat(value)  # ValueError for a day that does not exist
    return RFC3339.fullmatch(value) is not None


@FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


def _check(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(schema, format_checker=FORMATS).validate(instance)


GENERATION = 5
RENDERED = Rendered(True, "Rendered", "ConfigMap sbo-001-gateway holds generation 5")
INVALID = Rendered(False, "InvalidSpec", "GameTable studio-a/sbo-001: spec.shaker: only for sicbo")
T0 = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def _broker(broker_id: str, connected: bool = True) -> BrokerStat:
    return BrokerStat(
        id=broker_id,
        connected=connected,
        connects=1,
        disconnects=0 if connected else 1,
        publishes_ok=10,
        publishes_failed=0,
        probe_rtt_ms=1.5,
        last_error="" if connected else "connection refused",
    )


def _sidecar(
    instance: str,
    generation: int = GENERATION,
    *,
    down: tuple[str, ...] = (),
    config_error: str = "",
) -> SidecarStats:
    return SidecarStats(
        instance_id=instance,
        table_code="SBO-001",
        updated_unix=1_740_830_400.0,
        active_broker_id="mqtt-a",
        epoch=7,
        config_generation=generation,
        brokers=tuple(_broker(b, b not in down) for b in ("mqtt-a", "mqtt-b")),
        config_error=config_error,
    )


def _by_type(conditions: list[Condition]) -> dict[str, Condition]:
    return {c.type: c for c in conditions}


def _ready(seen: Observed, rendered: Rendered = RENDERED) -> Condition:
    return _by_type(status.conditions(GENERATION, rendered, seen))["Ready"]


def _degraded(seen: Observed) -> Condition:
    return _by_type(status.conditions(GENERATION, RENDERED, seen))["Degraded"]


HEALTHY = Observed(
    active_broker="mqtt-a",
    epoch=7,
    sidecars=(_sidecar("SBO-001-aaaa0001"), _sidecar("SBO-001-aaaa0002")),
)


def test_conditions_are_ready_rendered_degraded() -> None:
    """Every reconcile reports the same three condition types, in order."""
    types = [c.type for c in status.conditions(GENERATION, RENDERED, HEALTHY)]
    assert types == ["Ready", "ConfigRendered", "Degraded"]


def test_invalid_spec_is_not_ready_with_the_render_reason() -> None:
    """A spec that does not render makes Ready and ConfigRendered False with its reason."""
    by_type = _by_type(status.conditions(GENERATION, INVALID, HEALTHY))
    for kind in ("Ready", "ConfigRendered"):
        assert (by_type[kind].status, by_type[kind].reason) == ("False", "InvalidSpec")
        assert by_type[kind].message == INVALID.message


def test_rendered_config_is_reported() -> None:
    """A rendered ConfigMap makes ConfigRendered True with its message."""
    rendered = _by_type(status.conditions(GENERATION, RENDERED, HEALTHY))["ConfigRendered"]
    assert (rendered.status, rendered.reason, rendered.message) == (
        "True",
        "Rendered",
        RENDERED.message,
    )


def test_without_redis_status_is_unknown_and_clears_live_fields() -> None:
    """No Redis configured: Ready and Degraded Unknown (NoStatusSource), live fields cleared."""
    seen = Observed(configured=False)
    assert (_ready(seen).status, _ready(seen).reason) == ("Unknown", "NoStatusSource")
    assert (_degraded(seen).status, _degraded(seen).reason) == ("Unknown", "NoStatusSource")
    patch = status.status_patch(GENERATION, RENDERED, seen, None, now=T0)
    live = ("activeBroker", "epoch", "liveSidecars", "appliedSidecars")
    # None deletes in a merge patch: no stale broker or epoch survives in the status.
    assert {k: patch[k] for k in live} == dict.fromkeys(live)
    assert patch["observedGeneration"] == GENERATION


async def test_observe_without_a_client_is_unconfigured() -> None:
    """Without a Redis client, observing reports 'not configured' instead of failing."""
    assert await status.observe(None, {"spec": {}}) == Observed(configured=False)


def test_redis_error_is_unknown_and_degraded() -> None:
    """An unreadable Redis: Ready Unknown and Degraded True, both RedisUnavailable."""
    seen = Observed(error="cannot read Redis: Connection refused")
    ready, degraded = _ready(seen), _degraded(seen)
    assert (ready.status, ready.reason) == ("Unknown", "RedisUnavailable")
    assert (degraded.status, degraded.reason) == ("True", "RedisUnavailable")
    assert "Connection refused" in ready.message and "Connection refused" in degraded.message
    patch = status.status_patch(GENERATION, RENDERED, seen, None, now=T0)
    assert patch["activeBroker"] is None and patch["liveSidecars"] is None


def test_no_sidecars_is_not_ready() -> None:
    """An elected broker but no reporting sidecar is Ready False NoSidecars."""
    seen = Observed(active_broker="mqtt-a", epoch=7)
    assert (_ready(seen).status, _ready(seen).reason) == ("False", "NoSidecars")
    patch = status.status_patch(GENERATION, RENDERED, seen, None, now=T0)
    assert (patch["liveSidecars"], patch["appliedSidecars"]) == (0, 0)


def test_half_rolled_out_is_rolling() -> None:
    """One of two sidecars on the current generation is Ready False Rolling, '1 of 2'."""
    seen = Observed(
        active_broker="mqtt-a",
        epoch=7,
        sidecars=(_sidecar("SBO-001-new00001"), _sidecar("SBO-001-old00001", GENERATION - 1)),
    )
    ready = _ready(seen)
    assert (ready.status, ready.reason) == ("False", "Rolling")
    assert "1 of 2" in ready.message and f"generation {GENERATION}" in ready.message
    patch = status.status_patch(GENERATION, RENDERED, seen, None, now=T0)
    assert (patch["liveSidecars"], patch["appliedSidecars"]) == (2, 1)


def test_no_active_broker_is_not_ready() -> None:
    """Sidecars on the generation without an elected broker are Ready False NoActiveBroker."""
    seen = Observed(sidecars=HEALTHY.sidecars)
    assert (_ready(seen).status, _ready(seen).reason) == ("False", "NoActiveBroker")
    patch = status.status_patch(GENERATION, RENDERED, seen, None, now=T0)
    assert patch["activeBroker"] is None and patch["epoch"] is None
    assert patch["liveSidecars"] == 2


def test_all_good_is_ready() -> None:
    """All sidecars on the generation with an active broker: Ready True, live fields set."""
    ready = _ready(HEALTHY)
    assert (ready.status, ready.reason) == ("True", "SidecarsReady")
    assert "mqtt-a" in ready.message and "epoch 7" in ready.message
    patch = status.status_patch(GENERATION, RENDERED, HEALTHY, None, now=T0)
    assert patch["observedGeneration"] == GENERATION
    assert patch["activeBroker"] == "mqtt-a" and patch["epoch"] == 7
    assert (patch["liveSidecars"], patch["appliedSidecars"]) == (2, 2)
    degraded = _degraded(HEALTHY)
    assert (degraded.status, degraded.reason) == ("False", "Healthy")


def test_rejected_config_is_degraded_naming_the_sidecar() -> None:
    """A sidecar that kept its last good config makes Degraded ConfigRejected, naming it."""
    seen = Observed(
        active_broker="mqtt-a",
        epoch=7,
        sidecars=(
            _sidecar("SBO-001-aaaa0001"),
            _sidecar("SBO-001-bbbb0002", GENERATION - 1, config_error="brokers[0].port: too big"),
        ),
    )
    degraded = _degraded(seen)
    assert (degraded.status, degraded.reason) == ("True", "ConfigRejected")
    assert "SBO-001-bbbb0002" in degraded.message and "brokers[0].port: too big" in degraded.message


def test_disconnected_broker_is_degraded_with_counts() -> None:
    """A broker some sidecars cannot reach makes Degraded BrokerDown, naming it and counting."""
    seen = Observed(
        active_broker="mqtt-a",
        epoch=7,
        sidecars=(
            _sidecar("SBO-001-aaaa0001", down=("mqtt-b",)),
            _sidecar("SBO-001-aaaa0002", down=("mqtt-b",)),
            _sidecar("SBO-001-aaaa0003"),
        ),
    )
    degraded = _degraded(seen)
    assert (degraded.status, degraded.reason) == ("True", "BrokerDown")
    assert "mqtt-b (seen down by 2 of 3)" in degraded.message
    assert "mqtt-a" not in degraded.message
    # A standby broker being down does not stop the table from serving.
    assert _ready(seen).status == "True"


def test_first_status_stamps_every_condition_now() -> None:
    """Without previous conditions every lastTransitionTime is the given time."""
    patch = status.status_patch(GENERATION, RENDERED, HEALTHY, None, now=T0)
    assert [c["lastTransitionTime"] for c in patch["conditions"]] == ["2025-03-01T12:00:00Z"] * 3


def test_transition_time_kept_while_status_unchanged() -> None:
    """A later reconcile with the same statuses keeps the earlier transition times."""
    first = status.status_patch(GENERATION, RENDERED, HEALTHY, None, now=T0)
    later = status.status_patch(GENERATION, RENDERED, HEALTHY, first["conditions"], now=T1)
    assert later["conditions"] == first["conditions"]


def test_transition_time_moves_when_status_changes() -> None:
    """Only the conditions whose status changed get the new transition time."""
    first = status.status_patch(GENERATION, RENDERED, HEALTHY, None, now=T0)
    rolling = Observed(
        active_broker="mqtt-a",
        epoch=7,
        sidecars=(*HEALTHY.sidecars, _sidecar("SBO-001-cccc0003", GENERATION - 1)),
    )
    later = status.status_patch(GENERATION, RENDERED, rolling, first["conditions"], now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times == {
        "Ready": "2025-03-01T12:05:00Z",
        "ConfigRendered": "2025-03-01T12:00:00Z",
        "Degraded": "2025-03-01T12:00:00Z",
    }
    ready = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Rolling")


@pytest.mark.parametrize("seen", [HEALTHY, Observed(configured=False), Observed(error="down")])
def test_status_patch_fits_the_crd_status_schema(seen: Observed) -> None:
    """The patch, with nulls dropped as a merge patch does, fits the CRD's status schema."""
    patch = status.status_patch(GENERATION, RENDERED, seen, None, now=T0)
    stored = {k: v for k, v in patch.items() if v is not None}
    _check(stored, STATUS_SCHEMA)
    for condition in stored["conditions"]:
        stamp = condition["lastTransitionTime"]
        assert stamp.endswith("Z")
        assert datetime.datetime.fromisoformat(stamp) == T0


def test_format_checker_refuses_what_the_api_server_refuses() -> None:
    """The date-time check used below refuses a time the API server would refuse."""
    condition = {"type": "Ready", "status": "True", "reason": "SidecarsReady", "message": ""}
    _check({**condition, "lastTransitionTime": "2025-03-01T12:00:00Z"}, CONDITION_SCHEMA)
    for stamp in ("yesterday", "2025-03-01 12:00:00", "2025-02-30T12:00:00Z"):
        with pytest.raises(jsonschema.ValidationError):
            _check({**condition, "lastTransitionTime": stamp}, CONDITION_SCHEMA)


SEEN = {
    "healthy": HEALTHY,
    "unconfigured": Observed(configured=False),
    "redis-error": Observed(error="cannot read Redis: Connection refused"),
    "no-sidecars": Observed(active_broker="mqtt-a", epoch=7),
    "rolling": Observed(sidecars=(_sidecar("SBO-001-aaaa0001", GENERATION - 1),)),
    "no-active-broker": Observed(sidecars=HEALTHY.sidecars),
    "conflict": Observed(sidecars=HEALTHY.sidecars, conflict="no broker in common"),
    "rejected": Observed(sidecars=(_sidecar("SBO-001-aaaa0001", config_error="bad port"),)),
    "broker-down": Observed(sidecars=(_sidecar("SBO-001-aaaa0001", down=("mqtt-b",)),)),
}
RENDERINGS = {
    "rendered": RENDERED,
    "invalid": INVALID,
    "apply-failed": Rendered(False, "ApplyFailed", "configmaps is forbidden: RBAC"),
}


def test_every_reason_yields_a_metav1_condition() -> None:
    """Every condition status.py can produce validates against the CRD's condition schema."""
    reasons = set()
    for rendered, seen in itertools.product(RENDERINGS.values(), SEEN.values()):
        patch = status.status_patch(GENERATION, rendered, seen, None, now=T0)
        for condition in patch["conditions"]:
            _check(condition, CONDITION_SCHEMA)
            assert condition["observedGeneration"] == GENERATION
            reasons.add((condition["type"], condition["reason"]))
    # Every reason the code writes (a new one must be added here, and so checked).
    assert reasons == {
        *(("Ready", r) for r in ("SidecarsReady", "NoSidecars", "Rolling", "NoActiveBroker")),
        *(("Ready", r) for r in ("NoStatusSource", "RedisUnavailable", "InvalidSpec")),
        ("Ready", "ApplyFailed"),
        *(("ConfigRendered", r) for r in ("Rendered", "InvalidSpec", "ApplyFailed")),
        *(("Degraded", r) for r in ("Healthy", "NoStatusSource", "RedisUnavailable")),
        *(("Degraded", r) for r in ("BrokerListConflict", "ConfigRejected", "BrokerDown")),
    }


def test_previous_release_conditions_are_replaced_whole() -> None:
    """Conditions with only type and status (the old schema's minimum) give way to full ones."""
    previous = [
        {"type": "Ready", "status": "True"},
        {"type": "ConfigRendered", "status": "True", "lastTransitionTime": "not a time"},
        {"type": "Retired", "status": "False"},
    ]
    patch = status.status_patch(GENERATION, RENDERED, HEALTHY, previous, now=T1)
    # A merge patch replaces the list: what status_patch returns is the whole stored list.
    _check({"conditions": patch["conditions"]}, STATUS_SCHEMA)
    assert [c["type"] for c in patch["conditions"]] == ["Ready", "ConfigRendered", "Degraded"]
    # Same status, but no usable time to keep: stamped with the time of this write.
    assert {c["lastTransitionTime"] for c in patch["conditions"]} == {"2025-03-01T12:05:00Z"}


def test_reason_and_message_are_kept_within_the_schema() -> None:
    """An unusable reason falls back to a valid word; an overlong message is cut to the limit."""
    rendered = Rendered(False, "apply failed: 500", "x" * (status.MAX_MESSAGE + 10))
    patch = status.status_patch(GENERATION, rendered, HEALTHY, None, now=T0)
    config = next(c for c in patch["conditions"] if c["type"] == "ConfigRendered")
    _check(config, CONDITION_SCHEMA)
    assert config["reason"] == status.FALLBACK_REASON
    assert CONDITION_SCHEMA["properties"]["message"]["maxLength"] == status.MAX_MESSAGE
    assert len(config["message"]) == status.MAX_MESSAGE and config["message"].startswith("xxx")
