"""Property tests of the operator's inputs: any GameTable renders or fails with
InvalidGameTable, any pod or AdmissionReview gets an answer, any settings fail with
ConfigError."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gametable_operator import webhook
from gametable_operator.render import (
    InvalidGameTable,
    render_config,
    render_configmap,
    render_document,
)
from gametable_operator.settings import SidecarDefaults, from_env, parse_sidecar
from gateway.config import ConfigError
from tests.admission import review as admission_review
from tests.unit.documents import mutations

ROOT = Path(__file__).parents[2]
UID = "6f1d2c3e-0000-4000-8000-000000000003"
GAMETABLES = {
    path.stem: yaml.safe_load(path.read_text())
    for path in sorted((ROOT / "examples").glob("gametable-*.yaml"))
}
for _doc in GAMETABLES.values():
    _doc["metadata"].update(uid=UID, generation=2)

FAST = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=10)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
    | st.sampled_from(["", "x", "sicbo", "SBO-001", "mqtt-a", "\ud800", "a\nb", "10.0.0.1"])
)

KEYS = ANY_TEXT | st.sampled_from(
    [
        "metadata",
        "spec",
        "name",
        "namespace",
        "uid",
        "game",
        "tableCode",
        "brokerGroup",
        "brokers",
        "id",
        "host",
        "port",
        "credentialsSecret",
        "tls",
        "redis",
        "urlSecret",
        "key",
        "containers",
        "initContainers",
        "volumes",
        "env",
        "request",
        "object",
        "resource",
    ]
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
)


def _mutated(doc: Any) -> st.SearchStrategy[Any]:
    return mutations(doc, TREES)


# The one failure the renderer must never need: its last line of defence.
LAST_RESORT = re.compile(r"unexpected \w+ while")


MUTATED_GAMETABLES = st.sampled_from(sorted(GAMETABLES.values(), key=str)).flatmap(
    lambda doc: mutations(doc, TREES)
)


def _rendered(gametable: Any) -> dict[str, Any] | InvalidGameTable:
    """The ConfigMap, or the InvalidGameTable: any other exception fails the test."""
    try:
        return render_configmap(gametable)
    except InvalidGameTable as exc:
        assert exc.message.startswith("GameTable "), exc.message
        assert not LAST_RESORT.search(exc.message), exc.message
        return exc


def test_examples_render() -> None:
    """The examples the mutations start from render."""
    for gametable in GAMETABLES.values():
        assert render_configmap(gametable)["kind"] == "ConfigMap"


@FAST
@given(MUTATED_GAMETABLES)
def test_one_field_replaced_renders_or_names_the_field(gametable: Any) -> None:
    """An example with any field replaced renders, or fails naming the resource and a field."""
    result = _rendered(gametable)
    if isinstance(result, InvalidGameTable):
        # "GameTable <namespace>/<name>: <field path>: <problem>"
        assert re.match(r"GameTable [^:]+: (metadata|spec|must)", result.message), result.message
    else:
        json.loads(result["data"]["table.json"])
        assert result["metadata"]["name"].endswith("-gateway")


@FAST
@given(TREES | st.dictionaries(st.sampled_from(["metadata", "spec", "kind"]), TREES))
def test_any_object_renders_or_fails_with_invalid_gametable(gametable: Any) -> None:
    """A fully random object never escapes the renderer as another exception."""
    assert isinstance(_rendered(gametable), InvalidGameTable)
    for render in (render_config, render_document):
        with pytest.raises(InvalidGameTable):
            render(gametable)


def test_deep_nesting_in_a_spec_field() -> None:
    """A spec value nested 100000 deep is named by its spec path, not a RecursionError."""
    value: Any = "x"
    for _ in range(100_000):
        value = [value]
    gametable = copy.deepcopy(GAMETABLES["gametable-sicbo"])
    gametable["spec"]["topics"] = {"subscribe": value}
    with pytest.raises(InvalidGameTable, match=r"spec\.topics\.subscribe: must be a list"):
        render_configmap(gametable)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            lambda g: g["spec"]["brokerGroup"]["brokers"][0].update(port="x"),
            "spec.brokerGroup.brokers[0].port",
        ),
        (lambda g: g["spec"].update(detect=[]), "spec.detect"),
        (lambda g: g.update(metadata=5), "metadata"),
        (lambda g: g["metadata"].update(generation="7"), "metadata.generation"),
        (lambda g: g["spec"]["redis"].update(urlSecret={"name": "r"}), "spec.redis.urlSecret.key"),
        (
            lambda g: g["spec"]["brokerGroup"]["brokers"][0]["tls"].update(caSecretKey=3),
            "spec.brokerGroup.brokers[0].tls.caSecretKey",
        ),
        (lambda g: g["spec"]["shaker"].update(name="Billy\ud800"), "spec.shaker.name"),
        (
            lambda g: g["spec"]["detect"].update(timeoutSeconds=float("nan")),
            "spec.detect.timeoutSeconds",
        ),
    ],
    ids=[
        "port-string",
        "detect-list",
        "metadata-int",
        "generation-string",
        "url-secret-key",
        "ca-key-int",
        "surrogate",
        "nan-timeout",
    ],
)
def test_hostile_fields_are_named(edit: Any, field: str) -> None:
    """Each hostile field found by the properties fails naming its spec path."""
    gametable = copy.deepcopy(GAMETABLES["gametable-sicbo"])
    edit(gametable)
    with pytest.raises(InvalidGameTable) as info:
        render_configmap(gametable)
    assert f": {field}: " in info.value.message


# --- the webhook: pods and AdmissionReviews --------------------------------------------


def _pod() -> dict[str, Any]:
    return {
        "metadata": {"labels": {webhook.LABEL: "sbo-001"}, "annotations": {"a": "b"}},
        "spec": {
            "initContainers": [{"name": "wait", "image": "busybox"}],
            "containers": [{"name": "client", "image": "c:1", "env": [{"name": "X"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


@FAST
@given(mutations(_pod(), TREES) | TREES, MUTATED_GAMETABLES)
def test_any_pod_gets_the_sidecar_or_a_refusal(pod: Any, gametable: Any) -> None:
    """For a GameTable that renders, any pod body is mutated or refused with CannotInject."""
    if isinstance(_rendered(gametable), InvalidGameTable):
        gametable = GAMETABLES["gametable-sicbo"]
    try:
        out = webhook.inject(pod, gametable, SidecarDefaults())
    except webhook.CannotInject as exc:
        assert str(exc).startswith(("pod ", "the pod")), str(exc)
    else:
        names = [c["name"] for c in out["spec"]["initContainers"]]
        assert webhook.CONTAINER in names + [c.get("name") for c in out["spec"]["containers"]]


REVIEW = admission_review(_pod(), "studio-a")


@FAST
@given(mutations(REVIEW, TREES) | TREES)
def test_any_admission_review_is_parsed_or_refused(review: Any) -> None:
    """Any body: its checked request, or BadReview; the refusal answer always serialises."""
    try:
        request = webhook.admission_request(review)
    except webhook.BadReview as exc:
        assert re.match(r"(request|the body)", str(exc)), str(exc)
        answer = webhook.refusal(review, str(exc))
        assert answer["response"]["allowed"] is False
        assert answer["response"]["status"]["code"] == 400
        json.dumps(answer)
    else:
        assert isinstance(request["uid"], str) and isinstance(request["userInfo"], dict)


def test_well_formed_review_and_its_refusal() -> None:
    """The example review parses; a refusal echoes its uid and apiVersion."""
    assert webhook.admission_request(REVIEW)["operation"] == "CREATE"
    answer = webhook.refusal(REVIEW, "no")
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["response"]["uid"] == REVIEW["request"]["uid"]  # type: ignore[index]
    assert answer["response"]["status"] == {"code": 400, "message": "no"}


# --- the operator's settings ---------------------------------------------------------------

SIDECAR = {
    "image": "registry.example.com/studio-gateway:1.2.3",
    "imagePullPolicy": "Always",
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": 1}},
    "logLevel": "debug",
    "otlpEndpoint": "http://otel-collector.observability:4317",
    "tracesSampler": "always_on",
    "tracesSamplerArg": 0.5,
    "metricsPort": 9100,
}


def _sidecar_outcome(text: str) -> SidecarDefaults | ConfigError:
    try:
        return parse_sidecar(text)
    except ConfigError as exc:
        assert exc.message.startswith("GATEWAY_OPERATOR_SIDECAR"), exc.message
        assert not LAST_RESORT.search(exc.message), exc.message
        return exc


@FAST
@given(
    mutations(SIDECAR, TREES).map(json.dumps)
    | TREES.map(json.dumps)
    | st.text(st.characters(exclude_categories=()), max_size=50)
    | st.integers(1, 50_000).map(lambda n: "[" * n)
)
def test_sidecar_json_parses_or_names_the_variable(text: str) -> None:
    """Any GATEWAY_OPERATOR_SIDECAR text: sidecar defaults, or a ConfigError naming it."""
    result = _sidecar_outcome(text)
    if isinstance(result, SidecarDefaults):
        # What the webhook copies into every pod is small, flat and JSON.
        json.dumps(result.resources)
        assert set(result.resources) <= {"requests", "limits"}


VARIABLES = st.sampled_from(
    [
        "NAMESPACES",
        "LIVENESS",
        "WEBHOOK_PORT",
        "METRICS_PORT",
        "WEBHOOK_TLS_DIR",
        "REDIS_URL",
        "STATUS_INTERVAL_S",
        "LOG_LEVEL",
        "SIDECAR",
    ]
)
VALUES = (
    st.text(st.characters(exclude_categories=()), max_size=20)
    | st.sampled_from(
        ["1", "9443", "8080", "0", "nan", "inf", "1e400", "1" * 5000, "redis://r", "INFO"]
    )
    | TREES.map(json.dumps)
)


@FAST
@given(st.dictionaries(VARIABLES.map(lambda v: f"GATEWAY_OPERATOR_{v}"), VALUES, max_size=4))
def test_any_environment_gives_settings_or_names_a_variable(env: dict[str, str]) -> None:
    """Any GATEWAY_OPERATOR_* values: settings, or a ConfigError naming a variable."""
    try:
        from_env(env)
    except ConfigError as exc:
        assert exc.message.startswith("GATEWAY_OPERATOR_"), exc.message
        assert not LAST_RESORT.search(exc.message), exc.message
        exc.message.encode("utf-8")


def test_redis_url_is_checked_without_being_shown() -> None:
    """A Redis URL without a known scheme is refused at start, its password not shown."""
    with pytest.raises(ConfigError) as info:
        from_env({"GATEWAY_OPERATOR_REDIS_URL": "http://:hunter2@redis:6379"})
    assert "GATEWAY_OPERATOR_REDIS_URL" in info.value.message
    assert "hunter2" not in info.value.message
