"""Unit tests of the GameTable CRD's CEL rules (x-kubernetes-validations), run with cel-python.

The API server types CEL values by the schema, not by the JSON (``type: number`` is a CEL
double even when the JSON holds ``10``), applies schema defaults before validating, and
evaluates a rule only when the object carrying it is present. A transition rule (one naming
``oldSelf``) runs only on an update, and only where the old object has the value too. The
functions below do the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

ROOT = Path(__file__).parents[2]
CRD = yaml.safe_load((ROOT / "operator" / "gametable_operator" / "crd.yaml").read_text())
SCHEMA: dict[str, Any] = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((ROOT / "examples").glob("gametable-*.yaml"))


@dataclass(frozen=True)
class Rule:
    """One CEL rule and where it sits: ``.spec.brokerGroup``, ``.spec.brokerGroup.brokers[*]``."""

    path: str
    rule: str
    message: str
    field_path: str

    @property
    def transition(self) -> bool:
        """Whether the rule compares with the stored object (runs on updates only)."""
        return "oldSelf" in self.rule


def _children(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in (schema.get("properties") or {}).items():
        yield f".{name}", sub
    if isinstance(schema.get("items"), dict):
        yield "[*]", schema["items"]
    if isinstance(schema.get("additionalProperties"), dict):
        yield "[*]", schema["additionalProperties"]


def _collect(schema: dict[str, Any], path: str = "") -> list[Rule]:
    """Every x-kubernetes-validations rule in the schema, depth first."""
    rules = [
        Rule(path, v["rule"], " ".join(v.get("message", "").split()), v.get("fieldPath", ""))
        for v in schema.get("x-kubernetes-validations") or []
    ]
    for step, sub in _children(schema):
        rules += _collect(sub, path + step)
    return rules


RULES = _collect(SCHEMA)


def _schema_at(path: str) -> dict[str, Any]:
    node = SCHEMA
    for step in path.replace("[*]", ".[*]").split(".")[1:]:
        if step == "[*]":
            node = node.get("items") or node["additionalProperties"]
        else:
            node = node["properties"][step]
    return node


def _with_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The value with schema defaults filled in where absent, as the API server does."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = _with_defaults(out[name], sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_with_defaults(v, schema["items"]) for v in value]
    return value


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """The value converted to the types the schema gives it (number -> float, integer -> int)."""
    kind = schema.get("type")
    if kind == "number" and not isinstance(value, bool):
        return float(value)
    if kind == "integer" and not isinstance(value, bool):
        return int(value)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            k: _typed(v, props.get(k) or (extra if isinstance(extra, dict) else {}))
            for k, v in value.items()
        }
    if isinstance(value, list):
        items = schema.get("items")
        return [_typed(v, items if isinstance(items, dict) else {}) for v in value]
    return value


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _nodes(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, schema, value) for every node present in the object."""
    yield path, schema, value
    for step, sub in _children(schema):
        if step == "[*]":
            items = value if isinstance(value, list) else []
            if isinstance(value, dict):
                items = list(value.values())
            for item in items:
                yield from _nodes(item, sub, path + step)
        elif isinstance(value, dict) and step[1:] in value:
            yield from _nodes(value[step[1:]], sub, path + step)


def _stored(gametable: dict[str, Any]) -> Any:
    return _typed(_with_defaults(gametable, SCHEMA), SCHEMA)


def outcomes(
    gametable: dict[str, Any], old: dict[str, Any] | None = None
) -> dict[Rule, list[bool]]:
    """Each evaluated rule's results, one per object it applies to; absent objects are skipped.

    With ``old`` this is an update: transition rules run where both objects hold the value.
    """
    before = {path: value for path, _, value in _nodes(_stored(old), SCHEMA)} if old else {}
    results: dict[Rule, list[bool]] = {}
    for path, schema, value in _nodes(_stored(gametable), SCHEMA):
        for rule in (r for r in RULES if r.path == path):
            assert schema.get("x-kubernetes-validations"), path
            context = {"self": json_to_cel(value)}
            if rule.transition:
                if path not in before:
                    continue
                context["oldSelf"] = json_to_cel(before[path])
            try:
                result = _program(rule.rule).evaluate(context)
            except CELEvalError as exc:
                pytest.fail(f"{path}: {rule.rule!r} did not evaluate: {exc}")
            assert isinstance(result, celpy.celtypes.BoolType), (path, rule.rule, result)
            results.setdefault(rule, []).append(bool(result))
    return results


def violated(gametable: dict[str, Any], old: dict[str, Any] | None = None) -> set[Rule]:
    return {rule for rule, results in outcomes(gametable, old).items() if not all(results)}


def _example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"gametable-{name}.yaml").read_text())
    return doc


def _rule(message: str) -> Rule:
    found = [r for r in RULES if message in r.message]
    assert len(found) == 1, f"{message!r} matches {len(found)} rules in crd.yaml"
    return found[0]


Edit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Case:
    """A GameTable broken for one rule, and its near-valid twin that passes every rule."""

    example: str
    message: str  # a unique part of the rule's message
    broken: Edit
    twin: Edit
    update: bool = False  # the edit updates the stored example: transition rules see oldSelf

    def build(self, edit: Edit) -> dict[str, Any]:
        gametable = _example(self.example)
        edit(gametable["spec"])
        return gametable

    def old(self) -> dict[str, Any] | None:
        """The stored object an update case changes; None for a create."""
        return _example(self.example) if self.update else None


def _brokers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    brokers: list[dict[str, Any]] = spec["brokerGroup"]["brokers"]
    return brokers


CASES = {
    "game-changed": Case(
        "roulette",
        "game cannot change on a live table",
        lambda s: s.update(game="baccarat"),
        lambda s: s["detect"].update(timeoutSeconds=5),
        update=True,
    ),
    "table-code-changed": Case(
        "sicbo",
        "tableCode cannot change on a live table",
        lambda s: s.update(tableCode="SBO-002"),
        lambda s: _brokers(s).append({**_brokers(s)[0], "id": "mqtt-third", "priority": 3}),
        update=True,
    ),
    "shaker-on-baccarat": Case(
        "baccarat",
        "shaker is only for sicbo tables",
        lambda s: s.update(shaker={"name": "Billy-III"}),
        lambda s: s.update(shaker={"name": "Billy-III"}, game="sicbo"),
    ),
    "output-stream-on-roulette": Case(
        "roulette",
        "output stream is only sent to sicbo IDPs",
        lambda s: s.update(streams={"output": "https://cdn.example.com/live/aro.flv"}),
        lambda s: s.update(streams={"input": "rtmp://10.0.0.56:1935/live/aro"}),
    ),
    "retry-delay-equals-timeout": Case(
        "sicbo",
        "retryDelaySeconds must be shorter than timeoutSeconds",
        lambda s: s["detect"].update(timeoutSeconds=2, retryDelaySeconds=2),
        lambda s: s["detect"].update(timeoutSeconds=2, retryDelaySeconds=1.5),
    ),
    "default-retry-delay-not-shorter": Case(
        "roulette",
        "retryDelaySeconds must be shorter than timeoutSeconds",
        # retryDelaySeconds is absent: its default (1) is what the rule compares.
        lambda s: s.update(detect={"timeoutSeconds": 1}),
        lambda s: s.update(detect={"timeoutSeconds": 1.5}),
    ),
    "round-longer-than-900s": Case(
        "sicbo",
        "must stay within 900 s",
        lambda s: s["detect"].update(timeoutSeconds=300, retryCount=4),
        lambda s: s["detect"].update(timeoutSeconds=300, retryCount=3),
    ),
    "default-retries-longer-than-900s": Case(
        "roulette",
        "must stay within 900 s",
        # retryCount is absent: its default (3) makes 301 s x 3 too long, 300 s x 3 fine.
        lambda s: s.update(detect={"timeoutSeconds": 301}),
        lambda s: s.update(detect={"timeoutSeconds": 300}),
    ),
}


def test_crd_has_cel_rules() -> None:
    """The walk finds the rules on spec, game, tableCode and detect."""
    paths = {".spec", ".spec.game", ".spec.tableCode", ".spec.detect"}
    assert {r.path for r in RULES} == paths
    assert len(RULES) == len({(r.path, r.rule) for r in RULES})
    assert {r.path for r in RULES if r.transition} == {".spec.game", ".spec.tableCode"}
    # outcomes() pairs old and new values by path, which a list item does not have.
    assert not [r for r in RULES if r.transition and "[*]" in r.path]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.path}:{r.message[:30]}")
def test_rule_compiles_and_points_at_a_field(rule: Rule) -> None:
    """Every rule is valid CEL with a message, and its fieldPath names a field of its object."""
    assert _program(rule.rule) is not None
    assert rule.message
    if rule.field_path:
        node = _schema_at(rule.path)
        for name in rule.field_path.split(".")[1:]:
            assert name in (node.get("properties") or {}), (rule.field_path, name)
            node = node["properties"][name]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_rule_passes_on_the_examples(path: Path) -> None:
    """Each example satisfies every rule that applies to it."""
    results = outcomes(yaml.safe_load(path.read_text()))
    assert results, "no rule was evaluated"
    assert [f"{rule.path}: {rule.message}" for rule, r in results.items() if not all(r)] == []


def test_examples_evaluate_every_rule() -> None:
    """Together the examples reach every rule when created, and updated to themselves."""
    created: set[Rule] = set()
    updated: set[Rule] = set()
    for path in EXAMPLES:
        gametable = yaml.safe_load(path.read_text())
        created |= set(outcomes(gametable))
        results = outcomes(gametable, old=gametable)
        assert all(all(r) for r in results.values()), path.name
        updated |= set(results)
    assert created == {r for r in RULES if not r.transition}
    assert updated == set(RULES)


def test_transition_rules_are_skipped_on_create() -> None:
    """A new GameTable has no oldSelf: the immutability rules do not run on create."""
    evaluated = {r.path for r in outcomes(_example("sicbo"))}
    assert ".spec.game" not in evaluated and ".spec.tableCode" not in evaluated


def test_rules_on_absent_objects_are_not_evaluated() -> None:
    """Without spec.detect its rules are skipped, as the API server does."""
    gametable = _example("baccarat")
    del gametable["spec"]["detect"]
    evaluated = {r.path for r in outcomes(gametable)}
    assert ".spec.detect" not in evaluated and ".spec" in evaluated


def test_broker_ids_are_the_keys_of_a_map_list() -> None:
    """brokers is a map list keyed by id, so the API server itself refuses a repeated id."""
    brokers = _schema_at(".spec.brokerGroup.brokers")
    assert (brokers["x-kubernetes-list-type"], brokers["x-kubernetes-list-map-keys"]) == (
        "map",
        ["id"],
    )
    assert "id" in brokers["items"]["required"]
    # No CEL rule repeats the check: comparing every pair of ids would cost O(n^2).
    assert not [r for r in RULES if "brokers" in r.rule]


def _lists(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if schema.get("type") == "array":
        yield path, schema
    for step, sub in _children(schema):
        yield from _lists(sub, path + step)


def test_every_map_list_key_is_a_required_scalar() -> None:
    """Each map list's keys are scalars the items must carry, as the API server requires."""
    maps = {p: s for p, s in _lists(SCHEMA) if s.get("x-kubernetes-list-type") == "map"}
    assert set(maps) == {".spec.brokerGroup.brokers", ".status.conditions"}
    for path, schema in maps.items():
        items = schema["items"]
        assert items["type"] == "object", path
        for key in schema["x-kubernetes-list-map-keys"]:
            assert key in items["required"], (path, key)
            assert items["properties"][key]["type"] in {"string", "integer", "boolean"}
            assert "default" not in items["properties"][key], (path, key)


def test_detect_defaults_apply_before_the_rules() -> None:
    """An empty detect object is checked with its defaults (10 s, 3 tries, 1 s) and passes."""
    gametable = _example("baccarat")
    gametable["spec"]["detect"] = {}
    results = outcomes(gametable)
    detect = {rule.message: r for rule, r in results.items() if rule.path == ".spec.detect"}
    assert len(detect) == 2 and all(r == [True] for r in detect.values())


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_broken_gametable_fails_exactly_its_rule(case: Case) -> None:
    """The broken GameTable violates the named rule and no other."""
    assert violated(case.build(case.broken), case.old()) == {_rule(case.message)}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_near_valid_twin_passes_every_rule(case: Case) -> None:
    """The twin, one small change away from broken, satisfies every rule."""
    twin = case.build(case.twin)
    assert violated(twin, case.old()) == set()
    assert _rule(case.message) in outcomes(twin, case.old())


def test_every_rule_has_a_broken_case() -> None:
    """A rule added to the CRD without a broken case here fails this test."""
    covered = {_rule(case.message) for case in CASES.values()}
    missing = [f"{r.path}: {r.rule}" for r in RULES if r not in covered]
    assert not missing, f"CEL rules without a broken case in CASES: {missing}"
