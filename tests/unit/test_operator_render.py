"""Unit tests of the GameTable operator's pure slice: CRD schema, rendering, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gametable_operator import cli
from gametable_operator.render import (
    InvalidGameTable,
    render_config,
    render_configmap,
)
from gametable_operator.settings import SidecarDefaults
from gametable_operator.webhook import inject
from gateway.config import load_config

ROOT = Path(__file__).parents[2]

EXAMPLES = sorted((ROOT / "examples").glob("gametable-*.yaml"))
CRD = yaml.safe_load((ROOT / "operator" / "gametable_operator" / "crd.yaml").read_text())
UID = "6f1d2c3e-0000-4000-8000-000000000001"


def _strip_k8s(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_k8s(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_strip_k8s(v) for v in node]
    return node


SCHEMA = _strip_k8s(CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"gametable-{name}.yaml").read_text())
    return doc


def _applied(name: str, generation: int = 4) -> dict[str, Any]:
    """An example as the API server returns it: with uid and generation."""
    doc = _example(name)
    doc["metadata"].update(uid=UID, generation=generation)
    return doc


def _load_table_json(configmap: dict[str, Any], tmp_path: Path) -> Any:
    path = tmp_path / "table.json"
    path.write_text(configmap["data"]["table.json"])
    return load_config(path, env={})


def test_examples_exist_for_every_game() -> None:
    """There is one example GameTable per game."""
    assert [p.name for p in EXAMPLES] == [
        "gametable-baccarat.yaml",
        "gametable-roulette.yaml",
        "gametable-sicbo.yaml",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_validate_against_the_crd_schema(path: Path) -> None:
    """Every example GameTable passes the CRD's OpenAPI schema."""
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)


def test_crd_names_and_printer_columns() -> None:
    """The CRD is namespaced, short-named gt, with status and a Ready column."""
    spec = CRD["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "studio.gateway.dev",
        "Namespaced",
        "GameTable",
    )
    assert spec["names"]["plural"] == "gametables" and spec["names"]["shortNames"] == ["gt"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert list(columns) == ["Game", "Table", "Active Broker", "Epoch", "Ready", "Age"]


def test_crd_carries_the_cel_rules() -> None:
    """The CEL rules and list keys that jsonschema cannot evaluate are present in the CRD."""
    spec = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    brokers = spec["properties"]["brokerGroup"]["properties"]["brokers"]
    assert brokers["x-kubernetes-list-map-keys"] == ["id"]  # the API server refuses repeats
    for field in ("game", "tableCode"):
        rules = [r["rule"] for r in spec["properties"][field]["x-kubernetes-validations"]]
        assert rules == ["self == oldSelf"], field
    spec_rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "has(self.shaker)" in spec_rules and "has(self.streams.output)" in spec_rules


def test_sicbo_renders_a_loadable_configmap(tmp_path: Path) -> None:
    """The SicBo example renders to a ConfigMap the sidecar loads, with shaker and streams."""
    configmap = render_configmap(_applied("sicbo", generation=7))
    assert configmap["metadata"]["name"] == "sbo-001-gateway"
    assert configmap["metadata"]["namespace"] == "studio-a"
    assert configmap["metadata"]["labels"] == {
        "app.kubernetes.io/name": "studio-gateway",
        "app.kubernetes.io/component": "sidecar-config",
        "studio.gateway.dev/gametable": "sbo-001",
    }
    assert configmap["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "studio.gateway.dev/v1alpha1",
            "kind": "GameTable",
            "name": "sbo-001",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    doc = json.loads(configmap["data"]["table.json"])
    assert doc["redis"]["url_file"] == "/etc/gateway/secrets/redis/url"
    # The URL file exists only in the sidecar; point it at a stand-in to load the rest.
    url_file = tmp_path / "redis-url"
    url_file.write_text("redis://redis.studio-a:6379/0\n")
    doc["redis"]["url_file"] = str(url_file)
    configmap["data"]["table.json"] = json.dumps(doc)
    config = _load_table_json(configmap, tmp_path)
    assert config.generation == 7 and config.broker_group == "studio-a"
    assert (config.table.command_topic, config.table.response_topic) == (
        "ikg/idp/SBO-001/command",
        "ikg/idp/SBO-001/response",
    )
    assert config.table.shaker_listens == "ikg/sicbo/Billy-III/listens"
    assert config.table.shaker_says == "ikg/sicbo/Billy-III/says"
    assert config.table.output_url == "https://cdn.example.com/live/r456_dice.flv"
    assert config.redis.url == "redis://redis.studio-a:6379/0"
    assert [(b.id, b.port, b.priority) for b in config.brokers] == [
        ("mqtt-a", 8883, 1),
        ("mqtt-b", 1883, 2),
    ]
    tls = config.broker("mqtt-a").tls
    assert tls is not None and tls.ca_file == "/etc/gateway/secrets/tls/mqtt-a/ca.crt"
    assert tls.server_name == "mqtt-a.studio.internal"


@pytest.mark.parametrize("name", ["baccarat", "roulette"])
def test_other_games_render_loadable_configmaps(name: str, tmp_path: Path) -> None:
    """Baccarat and roulette examples load in the sidecar with default-derived topics."""
    gametable = _applied(name)
    config = _load_table_json(render_configmap(gametable), tmp_path)
    code = gametable["spec"]["tableCode"]
    assert config.table.code == code and config.generation == 4
    assert config.table.command_topic == f"ikg/idp/{code}/command"
    assert config.table.response_topic == f"ikg/idp/{code}/response"
    assert config.table.shaker_listens is None and config.table.output_url is None
    assert config.redis.url is None
    assert len(config.brokers) == 2
    rendered = render_config(gametable)
    assert (rendered.table, rendered.brokers) == (config.table, config.brokers)


@pytest.mark.parametrize("name", ["sicbo", "baccarat", "roulette"])
def test_credentials_stay_out_of_the_configmap(name: str) -> None:
    """Brokers point at their mounted Secret; no username or password is in the ConfigMap."""
    configmap = render_configmap(_applied(name))
    doc = json.loads(configmap["data"]["table.json"])
    for broker in doc["brokers"]:
        assert broker["credentials_dir"] == f"/etc/gateway/secrets/brokers/{broker['id']}"
    text = json.dumps(configmap).lower()
    assert "password" not in text and "username" not in text
    assert "credentials-secret" not in text and "urlsecret" not in text


def _broken(name: str, edit: Any) -> dict[str, Any]:
    gametable = copy.deepcopy(_applied(name))
    edit(gametable["spec"])
    return gametable


SCHEMA_BREAKS = {
    "bad-table-code": lambda s: s.update(tableCode="sbo-1"),
    "unknown-game": lambda s: s.update(game="blackjack"),
    "port-0": lambda s: s["brokerGroup"]["brokers"][0].update(port=0),
    "missing-brokers": lambda s: s["brokerGroup"].pop("brokers"),
    "no-brokers": lambda s: s["brokerGroup"].update(brokers=[]),
}


@pytest.mark.parametrize("edit", SCHEMA_BREAKS.values(), ids=SCHEMA_BREAKS.keys())
def test_broken_gametables_fail_the_schema(edit: Any) -> None:
    """Bad code, unknown game, port 0 and missing brokers are rejected by the CRD schema."""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_broken("sicbo", edit), SCHEMA)


RENDER_BREAKS = {
    "duplicate-broker-id": (
        lambda s: s["brokerGroup"]["brokers"][1].update(id="mqtt-a"),
        "spec.brokerGroup.brokers[1]: duplicate broker id 'mqtt-a'",
    ),
    "shaker-on-baccarat": (
        lambda s: s.update(game="baccarat", streams={}),
        "spec.shaker: only for sicbo tables",
    ),
    "bad-stream-url": (
        lambda s: s["streams"].update(input="not a url"),
        "spec.streams.input:",
    ),
    "missing-brokers": (
        lambda s: s["brokerGroup"].pop("brokers"),
        "spec.brokerGroup.brokers: at least one broker is required",
    ),
}


@pytest.mark.parametrize("edit,expected", RENDER_BREAKS.values(), ids=RENDER_BREAKS.keys())
def test_broken_gametables_fail_to_render(edit: Any, expected: str) -> None:
    """Rendering rejects what only CEL or the gateway's parser catch, naming the spec field."""
    gametable = _broken("sicbo", edit)
    with pytest.raises(InvalidGameTable) as info:
        render_configmap(gametable)
    assert info.value.message.startswith("GameTable studio-a/sbo-001: ")
    assert expected in info.value.message


def test_repeated_broker_id_is_refused_by_render_config() -> None:
    """A repeated broker id is refused when rendering too, naming both brokers and the id.

    The CRD leaves the check to the API server (brokers is a map list keyed by id); a
    GameTable that reaches the operator another way is still caught here.
    """
    gametable = _applied("roulette")
    brokers = gametable["spec"]["brokerGroup"]["brokers"]
    brokers.append({**brokers[0], "priority": 3})
    with pytest.raises(InvalidGameTable) as info:
        render_config(gametable)
    assert info.value.message == (
        f"GameTable studio-b/aro-001: spec.brokerGroup.brokers[{len(brokers) - 1}]: "
        f"duplicate broker id {brokers[0]['id']!r} (also brokers[0])"
    )


def test_cli_prints_the_configmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway-operator render` prints the ConfigMap as YAML."""
    assert cli.main(["render", str(ROOT / "examples" / "gametable-baccarat.yaml")]) == 0
    configmap = yaml.safe_load(capsys.readouterr().out)
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == "bac-001-gateway"
    assert json.loads(configmap["data"]["table.json"])["table"]["code"] == "BAC-001"


def test_cli_rejects_an_invalid_gametable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid GameTable exits 2 with a message naming the file and the field."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_broken("roulette", lambda s: s.update(shaker={"name": "x"}))))
    assert cli.main(["render", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "spec.shaker" in err


def test_cli_prints_the_sidecar_fragment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway-operator sidecar` prints what the webhook adds, with the configured defaults."""
    monkeypatch.setenv("GATEWAY_OPERATOR_SIDECAR", '{"image": "r.example/gw:1", "metricsPort": 0}')
    assert cli.main(["sidecar", str(ROOT / "examples" / "gametable-sicbo.yaml")]) == 0
    fragment = yaml.safe_load(capsys.readouterr().out)
    defaults = SidecarDefaults(image="r.example/gw:1", metrics_port=0)
    pod = inject({"spec": {"containers": []}}, _example("sicbo"), defaults)
    assert fragment == {
        "spec": {"initContainers": pod["spec"]["initContainers"], "volumes": pod["spec"]["volumes"]}
    }
    assert fragment["spec"]["initContainers"][0]["image"] == "r.example/gw:1"


def test_cli_sidecar_names_bad_settings_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad sidecar defaults or a file that is not a GameTable: exit 2, the problem named."""
    example = str(ROOT / "examples" / "gametable-sicbo.yaml")
    monkeypatch.setenv("GATEWAY_OPERATOR_SIDECAR", '{"image": "x", "metricsPort": "nine"}')
    assert cli.main(["sidecar", example]) == 2
    assert "GATEWAY_OPERATOR_SIDECAR.metricsPort" in capsys.readouterr().err
    monkeypatch.delenv("GATEWAY_OPERATOR_SIDECAR")
    path = tmp_path / "cm.yaml"
    path.write_text("kind: ConfigMap\n")
    assert cli.main(["sidecar", str(path)]) == 2
    assert "not a GameTable" in capsys.readouterr().err


def test_extra_topics_render_and_are_checked_by_the_sidecars_rules() -> None:
    """spec.topics.subscribe becomes subscribe_topics; a clash is named by its spec path."""
    gametable = _applied("sicbo")
    gametable["spec"]["topics"] = {"subscribe": ["studio/SBO-001/announcements"]}
    config = render_config(gametable)
    assert config.table.subscribe_topics == ("studio/SBO-001/announcements",)
    gametable["spec"]["topics"] = {"subscribe": ["ikg/idp/SBO-001/response"]}
    with pytest.raises(InvalidGameTable, match=r"spec\.topics\.subscribe\[0\]: .*response topic"):
        render_config(gametable)
