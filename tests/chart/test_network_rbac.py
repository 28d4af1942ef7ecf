"""NetworkPolicies, namespaced RBAC in production and the embedded Redis's password, as the
chart renders them offline (docs/deploy.md: enforcement itself needs a cluster and an enforcing
CNI, which these tests do not have)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import test_chart
from tests.chart.rendering import CHART, NAMESPACE, SCENARIOS, documents, helm_template
from tests.chart.test_chart import (
    FULLNAME,
    LABEL,
    Doc,
    containers,
    find,
    operator_env,
    render_error,
)

# test_chart.py's fixtures: the pinned helm, and every scenario rendered.
helm = test_chart.helm
rendered = test_chart.rendered

GAME_SELECTOR = {"matchExpressions": [{"key": LABEL, "operator": "Exists"}]}
SELECTOR = {"app.kubernetes.io/name": "studio-gateway", "app.kubernetes.io/instance": FULLNAME}
OPERATOR_POD = {
    "podSelector": {"matchLabels": {**SELECTOR, "app.kubernetes.io/component": "operator"}}
}
TEST_POD = {"podSelector": {"matchLabels": {**SELECTOR, "app.kubernetes.io/component": "test"}}}
REDIS_LABELS = {**SELECTOR, "app.kubernetes.io/component": "redis"}


def values(env: str | None) -> dict[str, Any]:
    """values.yaml with values-<env>.yaml over it, as Helm merges them."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    if env:
        merged = merge(merged, yaml.safe_load((CHART / f"values-{env}.yaml").read_text()))
    return dict(merged)


def policies(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    """The NetworkPolicies by (namespace, name)."""
    return {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d
        for d in docs
        if d["kind"] == "NetworkPolicy"
    }


def rule(policy: Doc, direction: str, port: int) -> Doc:
    """The one ingress or egress rule of a policy admitting that port."""
    matches = [
        r for r in policy["spec"].get(direction) or [] if port in {p["port"] for p in r["ports"]}
    ]
    assert len(matches) == 1, f"{policy['metadata']['name']}: {direction} rules for {port}"
    return dict(matches[0])


def ports(r: Doc) -> set[tuple[int, str]]:
    return {(p["port"], p["protocol"]) for p in r["ports"]}


def tcp(*numbers: int) -> set[tuple[int, str]]:
    return {(n, "TCP") for n in numbers}


def with_values(helm: Path, tmp_path: Path, env: str | None, extra: dict[str, Any]) -> list[Doc]:
    """Renders an environment's values with a values file of extra values over them."""
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump(extra))
    args = (["-f", str(CHART / f"values-{env}.yaml")] if env else []) + ["-f", str(override)]
    return documents(helm_template(helm, *args))


# --- NetworkPolicies -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "development", "embedded-monitoring"])
def test_no_policies_by_default_and_in_development(
    rendered: dict[str, list[Doc]], scenario: str
) -> None:
    """values.yaml and the development file render no NetworkPolicy."""
    assert not policies(rendered[scenario])


@pytest.mark.parametrize(
    ("env", "game_namespaces"),
    [("staging", ["studio-a", "studio-b"]), ("production", ["studio-a", "studio-b"])],
)
def test_staging_and_production_render_the_policies(
    rendered: dict[str, list[Doc]], env: str, game_namespaces: list[str]
) -> None:
    """The operator's policy in the release namespace and the game pods' in each game namespace;
    no Redis policy with an external Redis."""
    expected = {(NAMESPACE, f"{FULLNAME}-operator")}
    expected |= {(ns, f"{FULLNAME}-game-pods") for ns in game_namespaces}
    found = policies(rendered[env])
    assert set(found) == expected
    for policy in found.values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


@pytest.mark.parametrize("env", ["staging", "production"])
def test_operator_policy_admits_what_the_values_list(
    rendered: dict[str, list[Doc]], env: str
) -> None:
    """Webhook from the API server, health and metrics from Prometheus; DNS, API server and
    Redis out."""
    np = values(env)["networkPolicy"]
    policy = policies(rendered[env])[(NAMESPACE, f"{FULLNAME}-operator")]
    assert policy["spec"]["podSelector"] == {
        "matchLabels": OPERATOR_POD["podSelector"]["matchLabels"]
    }
    assert len(policy["spec"]["ingress"]) == 3
    webhook = rule(policy, "ingress", 9443)
    assert ports(webhook) == tcp(9443)
    assert "from" not in webhook  # apiServer.webhookPeers empty: any source, port 9443 only
    health = rule(policy, "ingress", 8080)
    assert ports(health) == tcp(8080)
    assert health["from"] == [*np["prometheus"]["peers"], TEST_POD]
    metrics = rule(policy, "ingress", values(env)["operator"]["metrics"]["port"])
    assert ports(metrics) == tcp(8081)
    assert metrics["from"] == np["prometheus"]["peers"]

    egress = policy["spec"]["egress"]
    assert len(egress) == 3
    dns = rule(policy, "egress", 53)
    assert ports(dns) == {(53, "UDP"), (53, "TCP")}
    assert dns["to"] == np["dns"]["peers"]
    api = rule(policy, "egress", np["apiServer"]["ports"][0])
    assert ports(api) == tcp(*np["apiServer"]["ports"]) == tcp(443, 6443)
    assert "to" not in api  # apiServer.peers empty: any address, these ports only
    redis = rule(policy, "egress", 6379)
    assert ports(redis) == tcp(*np["redis"]["ports"]) == tcp(6379, 26379)
    assert "to" not in redis


@pytest.mark.parametrize("env", ["staging", "production"])
def test_game_pod_policy_admits_what_the_values_list(
    rendered: dict[str, list[Doc]], env: str
) -> None:
    """Metrics from Prometheus; DNS, brokers, Redis and the OTLP collector out; nothing else."""
    merged = values(env)
    np = merged["networkPolicy"]
    policy = policies(rendered[env])[("studio-a", f"{FULLNAME}-game-pods")]
    assert policy["spec"]["podSelector"] == GAME_SELECTOR
    (metrics,) = policy["spec"]["ingress"]  # no 50052 rule: networkPolicy.nodes.peers is empty
    assert ports(metrics) == tcp(merged["sidecar"]["metricsPort"]) == tcp(9464)
    assert metrics["from"] == np["prometheus"]["peers"]
    egress = policy["spec"]["egress"]
    assert len(egress) == 4
    assert rule(policy, "egress", 53)["to"] == np["dns"]["peers"]
    brokers = rule(policy, "egress", 1883)
    assert ports(brokers) == tcp(*np["brokers"]["ports"]) == tcp(1883, 8883)
    assert ports(rule(policy, "egress", 6379)) == tcp(6379, 26379)
    assert merged["sidecar"]["otlpEndpoint"]
    assert ports(rule(policy, "egress", 4317)) == tcp(*np["otlp"]["ports"])


def test_configured_peers_and_ports_are_rendered_as_given(helm: Path, tmp_path: Path) -> None:
    """Every peer list and port list of networkPolicy reaches its rule unchanged."""
    api = [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    control_plane = [{"ipBlock": {"cidr": "172.16.0.0/28"}}]
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}}]
    nodes = [{"ipBlock": {"cidr": "192.168.0.0/16"}}]
    brokers = [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    redis = [{"ipBlock": {"cidr": "10.30.0.5/32"}}]
    otlp = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "otel"}}}]
    extra = {"to": [{"ipBlock": {"cidr": "10.40.0.0/24"}}], "ports": [{"port": 5432}]}
    docs = with_values(
        helm,
        tmp_path,
        "production",
        {
            "networkPolicy": {
                "apiServer": {"peers": api, "ports": [6443], "webhookPeers": control_plane},
                "prometheus": {"peers": prometheus},
                "nodes": {"peers": nodes},
                "brokers": {"peers": brokers, "ports": [8883]},
                "redis": {"peers": redis, "ports": [26379]},
                "otlp": {"peers": otlp, "ports": [4318]},
                "gamePods": {"namespaces": ["tables"], "extraEgress": [extra]},
            }
        },
    )
    found = policies(docs)
    assert set(found) == {(NAMESPACE, f"{FULLNAME}-operator"), ("tables", f"{FULLNAME}-game-pods")}
    op = found[(NAMESPACE, f"{FULLNAME}-operator")]
    assert rule(op, "ingress", 9443)["from"] == [*control_plane, TEST_POD, *nodes]
    assert rule(op, "ingress", 8080)["from"] == [*prometheus, TEST_POD, *nodes]
    assert rule(op, "egress", 6443) == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": api}
    assert rule(op, "egress", 26379)["to"] == redis
    game = found[("tables", f"{FULLNAME}-game-pods")]
    assert rule(game, "ingress", 9464)["from"] == prometheus
    assert rule(game, "ingress", 50052) == {
        "ports": [{"port": 50052, "protocol": "TCP"}],
        "from": nodes,
    }
    assert rule(game, "egress", 8883) == {
        "ports": [{"port": 8883, "protocol": "TCP"}],
        "to": brokers,
    }
    assert rule(game, "egress", 26379)["to"] == redis
    assert rule(game, "egress", 4318)["to"] == otlp
    assert extra in game["spec"]["egress"]
    all_ports = {p["port"] for r in game["spec"]["egress"] for p in r["ports"]}
    assert all_ports == {53, 8883, 26379, 4318, 5432}


def test_game_pods_without_known_namespaces_get_no_policy(helm: Path) -> None:
    """A cluster-wide operator with no networkPolicy.gamePods.namespaces: only the operator's."""
    docs = documents(helm_template(helm, "--set", "networkPolicy.enabled=true"))
    assert set(policies(docs)) == {(NAMESPACE, f"{FULLNAME}-operator")}
    off = documents(
        helm_template(
            helm, "-f", str(CHART / "values-production.yaml"),
            "--set", "networkPolicy.gamePods.enabled=false",
        )
    )  # fmt: skip
    assert set(policies(off)) == {(NAMESPACE, f"{FULLNAME}-operator")}


def test_no_metrics_port_and_no_sources_drop_all_ingress(helm: Path, tmp_path: Path) -> None:
    """sidecar.metricsPort 0 and no node peers: the game pods admit no ingress at all."""
    no_metrics = {"sidecar": {"metricsPort": 0}, "monitoring": {"podMonitor": {"enabled": False}}}
    docs = with_values(helm, tmp_path, "production", no_metrics)
    game = policies(docs)[("studio-a", f"{FULLNAME}-game-pods")]
    assert game["spec"]["ingress"] == []


def test_embedded_redis_admits_only_the_operator_and_game_pods(helm: Path, tmp_path: Path) -> None:
    """Port 6379 from the operator and from labelled pods of the game namespaces; no egress."""
    docs = with_values(
        helm,
        tmp_path,
        "development",
        {"networkPolicy": {"enabled": True, "gamePods": {"namespaces": ["studio-a"]}}},
    )
    found = policies(docs)
    assert set(found) == {
        (NAMESPACE, f"{FULLNAME}-operator"),
        (NAMESPACE, f"{FULLNAME}-redis"),
        ("studio-a", f"{FULLNAME}-game-pods"),
    }
    redis = found[(NAMESPACE, f"{FULLNAME}-redis")]
    assert redis["spec"]["podSelector"] == {"matchLabels": REDIS_LABELS}
    assert redis["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert redis["spec"]["egress"] == []
    (ingress,) = redis["spec"]["ingress"]
    assert ports(ingress) == tcp(6379)
    assert ingress["from"] == [
        OPERATOR_POD,
        {
            "podSelector": GAME_SELECTOR,
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["studio-a"]}
                ]
            },
        },
    ]
    operator_redis = rule(found[(NAMESPACE, f"{FULLNAME}-operator")], "egress", 6379)
    assert operator_redis["to"] == [{"podSelector": {"matchLabels": REDIS_LABELS}}]
    game_redis = rule(found[("studio-a", f"{FULLNAME}-game-pods")], "egress", 6379)
    assert ports(game_redis) == tcp(6379)
    assert game_redis["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "podSelector": {"matchLabels": REDIS_LABELS},
        }
    ]
    # The Redis Service targets the pods this policy selects.
    service = find(docs, "Service", f"{FULLNAME}-redis")
    assert service["spec"]["selector"] == REDIS_LABELS


@pytest.mark.parametrize(
    ("peer", "named"),
    [
        ({"ipBlock": {"cidr": "not-a-cidr"}}, "/networkPolicy/apiServer/peers/0/ipBlock/cidr"),
        ({"podSelector": {}, "ports": [1]}, "/networkPolicy/apiServer/peers/0"),
        ({}, "/networkPolicy/apiServer/peers/0"),
    ],
)
def test_schema_rejects_malformed_peers(helm: Path, tmp_path: Path, peer: Doc, named: str) -> None:
    """A peer that is not a NetworkPolicyPeer stops the install, naming the value."""
    override = tmp_path / "peer.yaml"
    override.write_text(yaml.safe_dump({"networkPolicy": {"apiServer": {"peers": [peer]}}}))
    message = render_error(helm, "-f", str(override))
    assert named in message


def test_schema_rejects_a_port_out_of_range(helm: Path) -> None:
    """Broker ports are TCP port numbers."""
    message = render_error(helm, "--set", "networkPolicy.brokers.ports={70000}")
    assert "/networkPolicy/brokers/ports/0" in message


# --- RBAC ------------------------------------------------------------------------------------


def test_production_operator_is_namespaced(rendered: dict[str, list[Doc]]) -> None:
    """Production: a Role per watched namespace; the ClusterRole keeps only CRD discovery."""
    docs = rendered["production"]
    watched = values("production")["operator"]["watchNamespaces"]
    assert watched
    assert operator_env(docs)["GATEWAY_OPERATOR_NAMESPACES"] == ",".join(watched)
    (cluster_rule,) = find(docs, "ClusterRole")["rules"]
    assert cluster_rule["apiGroups"] == ["apiextensions.k8s.io"]
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    for role in roles:
        granted = {(r["apiGroups"][0], res) for r in role["rules"] for res in r["resources"]}
        assert ("", "configmaps") in granted


def test_production_schema_refuses_an_empty_watch_list(helm: Path, tmp_path: Path) -> None:
    """environment production with operator.watchNamespaces [] stops the install, naming it."""
    override = tmp_path / "cluster-wide.yaml"
    override.write_text(yaml.safe_dump({"operator": {"watchNamespaces": []}}))
    production = ["-f", str(CHART / "values-production.yaml"), "-f", str(override)]
    message = render_error(helm, *production)
    assert "values don't meet the specifications of the schema" in message
    assert "/operator/watchNamespaces" in message
    # Staging may stay cluster-wide: the rule is production's only.
    staging = ["-f", str(CHART / "values-staging.yaml"), "-f", str(override)]
    assert documents(helm_template(helm, *staging))


def test_schema_rejects_an_unknown_environment(helm: Path) -> None:
    """environment is one of the three files' names (or empty)."""
    assert "/environment" in render_error(helm, "--set", "environment=prod")


@pytest.mark.parametrize("env", ["development", "staging", "production"])
def test_each_environment_file_names_its_environment(env: str) -> None:
    """The schema's production rule keys on environment, so each file must set it."""
    assert values(env)["environment"] == env


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_events_k8s_io_rule_and_core_events_kept(
    rendered: dict[str, list[Doc]], scenario: str
) -> None:
    """kopf posts core v1 events only: events.k8s.io is granted nowhere, core events still are."""
    granted = {
        (group, res, verb)
        for d in rendered[scenario]
        if d["kind"] in ("ClusterRole", "Role")
        for r in d["rules"]
        for group in r["apiGroups"]
        for res in r["resources"]
        for verb in r["verbs"]
    }
    assert not {g for g, _, _ in granted} & {"events.k8s.io"}
    assert ("", "events", "create") in granted


def test_operator_code_posts_no_events_k8s_io() -> None:
    """The premise of dropping that rule: nothing under operator/ names events.k8s.io."""
    root = Path(__file__).resolve().parents[2] / "operator"
    users = [p for p in root.rglob("*.py") if "events.k8s.io" in p.read_text()]
    assert not users


# --- the embedded Redis's password -----------------------------------------------------------


def redis_secret(docs: list[Doc]) -> dict[str, str]:
    data = find(docs, "Secret", f"{FULLNAME}-redis")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def redis_container(docs: list[Doc]) -> Doc:
    (container,) = [
        c for d, _, c in containers(docs) if d["metadata"]["name"] == f"{FULLNAME}-redis"
    ]
    return container


def test_embedded_redis_gets_a_generated_password(rendered: dict[str, list[Doc]]) -> None:
    """A random password and the URL carrying it, in the Secret the operator's URL comes from."""
    docs = rendered["development"]
    secret = redis_secret(docs)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", secret["password"])
    host = f"{FULLNAME}-redis.{NAMESPACE}.svc"
    assert secret["url"] == f"redis://:{secret['password']}@{host}:6379/0"
    ref = operator_env(docs)["GATEWAY_OPERATOR_REDIS_URL"]["secretKeyRef"]
    assert ref == {"name": f"{FULLNAME}-redis", "key": "url"}
    other = redis_secret(rendered["embedded-monitoring"])["password"]
    assert other != secret["password"]  # helm template cannot lookup: each render is new


def test_redis_requires_the_password_in_protected_mode(rendered: dict[str, list[Doc]]) -> None:
    """redis-server gets requirepass on stdin from the Secret-fed variable, protected mode on."""
    container = redis_container(rendered["development"])
    assert container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    assert script.startswith("exec redis-server - ")
    assert "--protected-mode yes" in script and "--protected-mode no" not in script
    assert 'requirepass "$REDIS_PASSWORD"' in script
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {
        "REDIS_PASSWORD": {"name": f"{FULLNAME}-redis", "key": "password"},
        "REDISCLI_AUTH": {"name": f"{FULLNAME}-redis", "key": "password"},
    }
    assert "redis-cli ping" in container["readinessProbe"]["exec"]["command"][-1]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


@pytest.mark.parametrize("scenario", ["development", "embedded-monitoring"])
def test_the_password_is_in_no_rendered_command_args_or_env(
    rendered: dict[str, list[Doc]], scenario: str
) -> None:
    """Only the Secret holds the password: no container's command, args, env or probe."""
    docs = rendered[scenario]
    password = redis_secret(docs)["password"]
    for doc, _, container in containers(docs):
        for text in _strings(container):
            assert password not in text, f"{doc['metadata']['name']}/{container['name']}"
    for doc in docs:
        if doc["kind"] != "Secret":
            assert password not in yaml.safe_dump(doc), doc["metadata"]["name"]


def test_an_existing_redis_secret_replaces_the_generated_one(helm: Path) -> None:
    """redis.embedded.auth.existingSecret: no Secret rendered; Redis and operator use that one."""
    docs = documents(
        helm_template(
            helm, "-f", str(CHART / "values-development.yaml"),
            "--set", "redis.embedded.auth.existingSecret=my-redis",
        )
    )  # fmt: skip
    assert not [d for d in docs if d["kind"] == "Secret" and "redis" in d["metadata"]["name"]]
    assert operator_env(docs)["GATEWAY_OPERATOR_REDIS_URL"]["secretKeyRef"] == {
        "name": "my-redis",
        "key": "url",
    }
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in redis_container(docs)["env"]}
    assert refs == {"my-redis"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ask(port: int, *commands: bytes) -> list[bytes]:
    """Sends RESP inline commands on one connection; returns each first reply line."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as conn,
        conn.makefile("rb") as stream,
    ):
        replies = []
        for command in commands:
            conn.sendall(command + b"\r\n")
            replies.append(stream.readline().strip())
        return replies


def test_rendered_redis_command_enforces_the_password(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """The rendered script, run with this machine's sh and redis-server: clients without the
    password are refused, and the password is not in redis-server's command line."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    container = redis_container(rendered["development"])
    port = _free_port()
    script = container["args"][0].replace("--port 6379", f"--port {port} --bind 127.0.0.1")
    script = script.replace("--dir /data", f"--dir {tmp_path}")
    password = "s3cret-" + os.urandom(8).hex()
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password}
    log = tmp_path / "redis.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [*container["command"], script], env=env, stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                if _ask(port, b"PING"):
                    break
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "redis-server did not listen within 10 s"
            time.sleep(0.05)
        assert _ask(port, b"PING")[0].startswith(b"-NOAUTH")
        assert _ask(port, b"AUTH wrong")[0].startswith(b"-WRONGPASS")
        assert _ask(port, f"AUTH {password}".encode(), b"PING") == [b"+OK", b"+PONG"]
        # The readiness probe's redis-cli, with its password from REDISCLI_AUTH as in the pod.
        probe = container["readinessProbe"]["exec"]["command"]
        probe_env = {**env, "REDISCLI_AUTH": password}
        ready = probe[-1].replace("redis-cli", f"redis-cli -p {port}")
        assert subprocess.run([*probe[:-1], ready], env=probe_env, timeout=10).returncode == 0
        wrong = {**probe_env, "REDISCLI_AUTH": "wrong"}
        assert subprocess.run([*probe[:-1], ready], env=wrong, timeout=10).returncode != 0
        mode = subprocess.run(
            ["redis-cli", "-p", str(port), "CONFIG", "GET", "protected-mode"],
            env=probe_env, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        assert mode.stdout.split() == ["protected-mode", "yes"]
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline  # exec: the shell became redis-server
        assert password.encode() not in cmdline
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("kube_version", ["1.29.0", "1.37.0"])
def test_policies_outside_the_scenarios_are_valid_manifests(
    helm: Path, tmp_path: Path, kube_version: str
) -> None:
    """The embedded Redis's policy and fully configured ones, which no scenario of
    scripts/check-chart renders, pass kubernetes-validate --strict too."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    overrides: list[tuple[str, dict[str, Any]]] = [
        ("development", {"networkPolicy": {"enabled": True, "gamePods": {"namespaces": ["a"]}}}),
        (
            "production",
            {
                "sidecar": {"metricsPort": 0},
                "monitoring": {"podMonitor": {"enabled": False}},
                "networkPolicy": {
                    "apiServer": {"peers": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]},
                    "nodes": {"peers": [{"ipBlock": {"cidr": "10.1.0.0/16", "except": []}}]},
                    "gamePods": {
                        "extraIngress": [{"ports": [{"port": 8080}]}],
                        "extraEgress": [{"to": [{"podSelector": {}}]}],
                    },
                },
            },
        ),
    ]
    seen = 0
    for env, extra in overrides:
        for doc in with_values(helm, tmp_path, env, extra):
            if doc["kind"] == "NetworkPolicy":
                kubernetes_validate.validate(doc, kube_version, strict=True)
                seen += 1
    assert seen == 6  # operator, redis, game pods in a; operator, game pods in studio-a, -b
