"""The Helm chart, rendered offline with a real helm (scripts/fetch-helm): what a cluster
would receive from `helm install`, checked against the operator's contract and the
project's secure defaults. No cluster is involved (docs/deploy.md)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import (
    CHART,
    CHART_CRD,
    KUBE_VERSIONS,
    NAMESPACE,
    OPERATOR_CRD,
    ROOT,
    SCENARIOS,
    documents,
    helm_template,
    pod_spec,
)

Doc = dict[str, Any]
FULLNAME = "studio-gateway"  # the release name contains the chart name
IMAGE = (
    "registry.example.com/studio/studio-gateway:"
    + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
)
WEBHOOK_HOST = f"{FULLNAME}-webhook.{NAMESPACE}.svc"
LABEL = "studio.gateway.dev/gametable"


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary, fetched once into .cache/tools/ (CI must get it: no skip)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "fetch-helm")], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        reason = f"helm could not be obtained (scripts/fetch-helm): {result.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(result.stdout.strip())


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, list[Doc]]:
    """Every scenario of tests/chart/rendering.py, rendered for the newest supported version."""
    return {name: documents(helm_template(helm, *args)) for name, args in SCENARIOS.items()}


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(docs: list[Doc]) -> set[str]:
    return {d["kind"] for d in docs}


def operator(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", f"{FULLNAME}-operator")


def operator_env(docs: list[Doc]) -> dict[str, Any]:
    container = operator(docs)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def webhook(docs: list[Doc]) -> Doc:
    (hook,) = find(docs, "MutatingWebhookConfiguration")["webhooks"]
    return dict(hook)


def render_error(helm: Path, *args: str) -> str:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        helm_template(helm, *args)
    return str(failed.value.stderr)


def containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, Doc]]:
    """(workload, pod spec, container) for every container and init container."""
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield doc, spec, container


# --- secure defaults -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_container_runs_locked_down(rendered: dict[str, list[Doc]], scenario: str) -> None:
    """Every container is non-root, read-only, unprivileged, seccomp-confined and sized."""
    seen = 0
    for doc, spec, container in containers(rendered[scenario]):
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        where = f"{scenario}: {doc['kind']} {doc['metadata']['name']} container {container['name']}"
        effective = {**pod_sc, **sc}
        assert effective.get("runAsNonRoot") is True, where
        assert effective.get("runAsUser") == 65532 and effective.get("runAsGroup") == 65532, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert sc.get("privileged") is not True, where
        assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        resources = container.get("resources", {})
        assert resources.get("requests", {}).get("cpu"), where
        assert resources.get("requests", {}).get("memory"), where
        assert resources.get("limits", {}).get("memory"), where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        seen += 1
    assert seen, f"{scenario} renders no workload"


def test_the_checks_above_cover_every_workload(rendered: dict[str, list[Doc]]) -> None:
    """The scenarios render the operator, the embedded Redis and both helm test pods."""
    names = {
        (doc["metadata"]["name"], container["name"])
        for docs in rendered.values()
        for doc, _, container in containers(docs)
    }
    assert names == {
        (f"{FULLNAME}-operator", "operator"),
        (f"{FULLNAME}-redis", "redis"),
        (f"{FULLNAME}-test-operator", "check"),
        (f"{FULLNAME}-test-sidecar", "health"),
    }


def test_only_the_operator_gets_an_api_token(rendered: dict[str, list[Doc]]) -> None:
    """Redis and the test pods run without a service account token."""
    for doc in rendered["embedded-monitoring"]:
        spec = pod_spec(doc)
        if spec is not None and doc["metadata"]["name"] != f"{FULLNAME}-operator":
            assert spec.get("automountServiceAccountToken") is False, doc["metadata"]["name"]


# --- the operator ----------------------------------------------------------------------------


def test_operator_replicas_roll_without_a_gap(rendered: dict[str, list[Doc]]) -> None:
    """Two replicas, rolled one new before one old: the webhook is served throughout."""
    for name in ("defaults", "production", "namespaced-certmanager"):
        deployment = operator(rendered[name])
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert [c["whenUnsatisfiable"] for c in spread] == ["ScheduleAnyway"]
        assert spread[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
            "operator"
        )
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == IMAGE
        assert container["command"] == ["gateway-operator"] and container["args"] == ["run"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"health": 8080, "webhook": 9443, "metrics": 8081}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_environment_is_the_operator_contract(rendered: dict[str, list[Doc]]) -> None:
    """The variables the operator reads, with the values the chart's wiring needs."""
    env = operator_env(rendered["defaults"])
    assert env["GATEWAY_OPERATOR_NAMESPACES"] == ""
    assert env["GATEWAY_OPERATOR_LIVENESS"] == "http://0.0.0.0:8080/healthz"
    assert env["GATEWAY_OPERATOR_WEBHOOK_PORT"] == "9443"
    assert env["GATEWAY_OPERATOR_METRICS_PORT"] == "8081"
    assert env["GATEWAY_OPERATOR_STATUS_INTERVAL_S"] == "15"
    assert env["GATEWAY_OPERATOR_LOG_LEVEL"] == "INFO"
    assert "GATEWAY_OPERATOR_REDIS_URL" not in env  # redis.mode none
    assert operator_env(rendered["development"])["GATEWAY_OPERATOR_LOG_LEVEL"] == "DEBUG"
    namespaced = operator_env(rendered["namespaced-certmanager"])
    assert namespaced["GATEWAY_OPERATOR_NAMESPACES"] == "studio-a,studio-b"


@pytest.mark.parametrize("scenario", ["defaults", "namespaced-certmanager", "certmanager-issuer"])
def test_webhook_tls_secret_is_mounted_where_the_operator_reads_it(
    rendered: dict[str, list[Doc]], scenario: str
) -> None:
    """GATEWAY_OPERATOR_WEBHOOK_TLS_DIR holds tls.crt and tls.key of the webhook Secret."""
    docs = rendered[scenario]
    spec = operator(docs)["spec"]["template"]["spec"]
    tls_dir = operator_env(docs)["GATEWAY_OPERATOR_WEBHOOK_TLS_DIR"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == tls_dir]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == f"{FULLNAME}-webhook-tls"
    assert {i["path"] for i in volume["secret"]["items"]} == {"tls.crt", "tls.key"}
    if "certmanager" in scenario:
        certificate = find(docs, "Certificate", f"{FULLNAME}-webhook")
        assert certificate["spec"]["secretName"] == f"{FULLNAME}-webhook-tls"
        assert WEBHOOK_HOST in certificate["spec"]["dnsNames"]
    else:
        assert find(docs, "Secret", f"{FULLNAME}-webhook-tls")["type"] == "kubernetes.io/tls"


@pytest.mark.parametrize(
    ("scenario", "secret", "key"),
    [
        ("development", f"{FULLNAME}-redis", "url"),
        ("production", "studio-gateway-redis", "url"),
    ],
)
def test_operator_redis_url_comes_from_a_secret(
    rendered: dict[str, list[Doc]], scenario: str, secret: str, key: str
) -> None:
    """Embedded: the chart's own Secret, with the password, pointing at its Redis Service;
    external: the given one."""
    docs = rendered[scenario]
    ref = operator_env(docs)["GATEWAY_OPERATOR_REDIS_URL"]["secretKeyRef"]
    assert ref == {"name": secret, "key": key}
    if scenario == "development":
        data = find(docs, "Secret", secret)["data"]
        url, password = (base64.b64decode(data[k]).decode() for k in (key, "password"))
        service = find(docs, "Service", f"{FULLNAME}-redis")
        assert url == f"redis://:{password}@{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"
        assert service["spec"]["ports"][0]["port"] == 6379
    else:
        assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]


def test_sidecar_defaults_are_json_with_the_image(rendered: dict[str, list[Doc]]) -> None:
    """GATEWAY_OPERATOR_SIDECAR parses, names the image and carries every sidecar value."""
    sidecar = json.loads(operator_env(rendered["defaults"])["GATEWAY_OPERATOR_SIDECAR"])
    assert sidecar["image"] == IMAGE
    assert set(sidecar) == {
        "image", "imagePullPolicy", "resources", "logLevel", "otlpEndpoint",
        "tracesSampler", "tracesSamplerArg", "metricsPort",
    }  # fmt: skip
    assert sidecar["metricsPort"] == 9464 and sidecar["resources"]["limits"]["memory"]
    production = json.loads(operator_env(rendered["production"])["GATEWAY_OPERATOR_SIDECAR"])
    assert production["tracesSamplerArg"] == "0.02"
    assert production["otlpEndpoint"].startswith("http://")


def test_sidecar_image_can_be_set_apart(helm: Path) -> None:
    """sidecar.image overrides the default of the operator's own image."""
    docs = documents(helm_template(helm, "--set", "sidecar.image=mirror.example/gw:1.2.3"))
    sidecar = json.loads(operator_env(docs)["GATEWAY_OPERATOR_SIDECAR"])
    assert sidecar["image"] == "mirror.example/gw:1.2.3"
    assert operator(docs)["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_operator_settings_load_from_the_rendered_environment(
    rendered: dict[str, list[Doc]], scenario: str
) -> None:
    """The operator's own settings parser accepts what every scenario renders."""
    settings = pytest.importorskip("gametable_operator.settings")
    env = {k: v for k, v in operator_env(rendered[scenario]).items() if isinstance(v, str)}
    env["GATEWAY_OPERATOR_REDIS_URL"] = "redis://127.0.0.1:6379/0"  # kubelet resolves the ref
    loaded = settings.from_env(env)
    assert loaded.sidecar.image == IMAGE
    assert loaded.webhook_port == 9443


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_injected_sidecar_runs_locked_down(rendered: dict[str, list[Doc]], scenario: str) -> None:
    """The sidecar the webhook injects with each environment's defaults: non-root, read-only."""
    from gametable_operator.settings import parse_sidecar
    from gametable_operator.webhook import inject

    defaults = parse_sidecar(operator_env(rendered[scenario])["GATEWAY_OPERATOR_SIDECAR"])
    root = Path(__file__).resolve().parents[2]
    for example in sorted((root / "examples").glob("gametable-*.yaml")):
        gametable = yaml.safe_load(example.read_text())
        pod = {"metadata": {"name": "game"}, "spec": {"containers": [{"name": "game"}]}}
        sidecar = inject(pod, gametable, defaults)["spec"]["initContainers"][0]
        where = f"{scenario}: {example.name}"
        sc = sidecar["securityContext"]
        assert sidecar["name"] == "gateway" and sidecar["restartPolicy"] == "Always", where
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532, where
        assert sc["runAsGroup"] == 65532 and sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert sidecar["image"] == defaults.image and sidecar["resources"] == defaults.resources
        assert sidecar["resources"]["limits"]["memory"], where
        assert all("subPath" not in m for m in sidecar["volumeMounts"]), where


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_only_sees_labelled_pods_on_create(rendered: dict[str, list[Doc]]) -> None:
    """Pods without the GameTable label never reach the webhook; its path is /inject-sidecar."""
    hook = webhook(rendered["defaults"])
    assert hook["name"] == "inject-sidecar.studio.gateway.dev"
    assert hook["objectSelector"] == {"matchExpressions": [{"key": LABEL, "operator": "Exists"}]}
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    service = hook["clientConfig"]["service"]
    assert service == {
        "name": f"{FULLNAME}-webhook",
        "namespace": NAMESPACE,
        "path": "/inject-sidecar",
        "port": 443,
    }
    assert hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "Never"
    assert "namespaceSelector" not in hook
    svc = find(rendered["defaults"], "Service", f"{FULLNAME}-webhook")
    assert svc["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]


def test_webhook_namespaces_follow_the_watch_list(rendered: dict[str, list[Doc]]) -> None:
    """A namespaced operator only gets pods of its namespaces; an explicit selector wins."""
    hook = webhook(rendered["namespaced-certmanager"])
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["studio-a", "studio-b"]}
    ]
    explicit = webhook(rendered["certmanager-issuer"])
    assert explicit["namespaceSelector"] == {"matchLabels": {"studio.gateway.dev/games": "enabled"}}
    assert explicit["failurePolicy"] == "Ignore"


def test_cert_manager_injects_the_ca(rendered: dict[str, list[Doc]]) -> None:
    """With cert-manager the CA comes from the cainjector, never from the chart."""
    docs = rendered["namespaced-certmanager"]
    config = find(docs, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{FULLNAME}-webhook"
    )
    assert "caBundle" not in webhook(docs)["clientConfig"]
    assert not [d for d in docs if d["kind"] == "Secret"]
    # The chart's own CA: leaf renewals keep the CA bundle the API server trusts.
    assert find(docs, "Certificate", f"{FULLNAME}-webhook-ca")["spec"]["isCA"] is True
    leaf = find(docs, "Certificate", f"{FULLNAME}-webhook")
    assert leaf["spec"]["issuerRef"]["name"] == f"{FULLNAME}-webhook-ca"
    other = find(rendered["certmanager-issuer"], "Certificate")
    assert other["spec"]["issuerRef"] == {
        "name": "studio-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def _serve_tls_once(context: ssl.SSLContext, listener: socket.socket) -> None:
    """Accepts one connection; a handshake the client rejects is the expected outcome too."""
    connection, _ = listener.accept()
    with (
        connection,
        contextlib.suppress(ssl.SSLError),
        context.wrap_socket(connection, server_side=True) as tls,
    ):
        tls.recv(1)


def test_generated_certificate_verifies_as_the_api_server_checks_it(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """A TLS handshake with the generated key verifies against the caBundle for the Service name."""
    docs = rendered["defaults"]
    data = find(docs, "Secret", f"{FULLNAME}-webhook-tls")["data"]
    assert webhook(docs)["clientConfig"]["caBundle"] == data["ca.crt"]
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(data[key]))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        thread = threading.Thread(target=_serve_tls_once, args=(server, listener), daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=WEBHOOK_HOST) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            tls.sendall(b"x")
        thread.join(timeout=10)
    wrong_name = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        threading.Thread(target=_serve_tls_once, args=(server, listener), daemon=True).start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            wrong_name.wrap_socket(raw, server_hostname="somewhere-else.svc")


def test_operator_restarts_only_for_a_new_generated_certificate(
    rendered: dict[str, list[Doc]],
) -> None:
    """The pod template carries the generated certificate's checksum (kopf reads it at start)."""
    docs = rendered["defaults"]
    tls_crt = find(docs, "Secret", f"{FULLNAME}-webhook-tls")["data"]["tls.crt"]
    annotations = operator(docs)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/webhook-tls"] == hashlib.sha256(tls_crt.encode()).hexdigest()
    template = operator(rendered["namespaced-certmanager"])["spec"]["template"]
    assert "annotations" not in template["metadata"]


# --- RBAC ------------------------------------------------------------------------------------


def rules(doc: Doc) -> list[Doc]:
    return list(doc.get("rules", []))


def test_rbac_is_least_privilege(rendered: dict[str, list[Doc]]) -> None:
    """No Secrets, no wildcards, no namespaces; cluster-wide mode needs only the ClusterRole."""
    for docs in rendered.values():
        for doc in docs:
            for rule in rules(doc) if doc["kind"] in ("ClusterRole", "Role") else []:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
                assert not {"secrets", "namespaces", "pods"} & set(rule["resources"])
    cluster = find(rendered["defaults"], "ClusterRole")
    granted = {
        (r["apiGroups"][0], res, v)
        for r in rules(cluster)
        for res in r["resources"]
        for v in r["verbs"]
    }
    assert ("studio.gateway.dev", "gametables/status", "patch") in granted
    assert ("", "configmaps", "patch") in granted
    assert ("", "configmaps", "delete") not in granted  # garbage collection deletes them
    assert ("", "events", "create") in granted  # kopf posts core v1 events
    assert not {g for g, _, _ in granted} & {"events.k8s.io"}  # nothing posts these
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in granted
    assert ("studio.gateway.dev", "gametables", "delete") not in granted
    assert "Role" not in kinds(rendered["defaults"])


def test_namespaced_mode_uses_a_role_per_namespace(rendered: dict[str, list[Doc]]) -> None:
    """Only CRD discovery stays cluster-wide; each watched namespace gets its own Role."""
    docs = rendered["namespaced-certmanager"]
    (cluster_rule,) = rules(find(docs, "ClusterRole"))
    assert cluster_rule == {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    }
    roles = [d for d in docs if d["kind"] == "Role"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["studio-a", "studio-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["studio-a", "studio-b"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    # The cluster-wide rules less CRD discovery (first) and the ClusterKopfPeering (last).
    assert rules(roles[0]) == rules(find(rendered["defaults"], "ClusterRole"))[1:-1]


# --- values schema, versions, CRD ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "redis.mode=bogus"], "/redis/mode"),
        (["--set", "operator.logLevel=TRACE"], "/operator/logLevel"),
        (["--set", "webhook.failurePolicy=Sometimes"], "/webhook/failurePolicy"),
        (["--set", "operator.watchNamespaces={studio-*}"], "/operator/watchNamespaces/0"),
        (["--set", "sidecar.metricsPort=50051"], "/sidecar/metricsPort"),
        (["--set", "sidecar.tracesSamplerArg=lots"], "/sidecar/tracesSamplerArg"),
        (["--set", "operator.replicas=0"], "/operator/replicas"),
        (["--set", "operator.peering.lifetimeSeconds=1"], "/operator/peering/lifetimeSeconds"),
        (["--set", "redis.mode=external"], "/redis/external/existingSecret"),
    ],
)
def test_values_schema_rejects_bad_values(helm: Path, args: list[str], named: str) -> None:
    """A wrong value stops the install with a message naming the value's path."""
    message = render_error(helm, *args)
    assert "values don't meet the specifications of the schema" in message
    assert named in message


def test_pod_monitor_needs_metrics(helm: Path) -> None:
    """A PodMonitor without a metrics port would scrape nothing: refused."""
    message = render_error(
        helm, "--set", "monitoring.podMonitor.enabled=true", "--set", "sidecar.metricsPort=0"
    )
    assert "sidecar.metricsPort" in message


@pytest.mark.parametrize("version", ["1.28.0", "1.38.0"])
def test_kubernetes_outside_the_supported_range_is_refused(helm: Path, version: str) -> None:
    """Chart.yaml's kubeVersion matches the range scripts/check-chart validates (1.29-1.37)."""
    with pytest.raises(subprocess.CalledProcessError) as failed:
        helm_template(helm, kube_version=version)
    message = str(failed.value.stderr)
    assert "incompatible with Kubernetes" in message
    for supported in KUBE_VERSIONS:
        assert documents(helm_template(helm, kube_version=supported))


def test_chart_crd_is_the_operator_crd(rendered: dict[str, list[Doc]]) -> None:
    """The CRD Helm installs is byte for byte the one the operator is built against."""
    assert CHART_CRD.read_bytes() == OPERATOR_CRD.read_bytes(), (
        f"run: cp {OPERATOR_CRD.relative_to(ROOT)} {CHART_CRD.relative_to(ROOT)}"
    )
    crds = {d["metadata"]["name"]: d for d in rendered["defaults"]
            if d["kind"] == "CustomResourceDefinition"}  # fmt: skip
    assert crds["gametables.studio.gateway.dev"] == yaml.safe_load(OPERATOR_CRD.read_text())
    assert set(crds) == {
        "gametables.studio.gateway.dev",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    }


# --- helm test pods --------------------------------------------------------------------------


def test_helm_test_pods(rendered: dict[str, list[Doc]]) -> None:
    """The liveness test always; the sidecar test only for a named GameTable, in its namespace."""
    assert f"{FULLNAME}-test-sidecar" not in {d["metadata"]["name"] for d in rendered["defaults"]}
    check = find(rendered["defaults"], "Pod", f"{FULLNAME}-test-operator")
    assert check["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e["value"] for e in check["spec"]["containers"][0]["env"]}
    assert env["HEALTH_URL"] == f"http://{FULLNAME}-operator.{NAMESPACE}.svc:8080/healthz"
    assert env["WEBHOOK_HOST"] == WEBHOOK_HOST
    (ca_volume,) = [v for v in check["spec"]["volumes"] if "secret" in v]
    assert ca_volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # no key
    health = find(rendered["namespaced-certmanager"], "Pod", f"{FULLNAME}-test-sidecar")
    assert health["metadata"]["namespace"] == "studio-a"
    assert health["metadata"]["labels"][LABEL] == "sbo-001"
    assert health["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = health["spec"]["containers"][0]["command"][-1]
    assert '["gateway", "health", "--target", "127.0.0.1:50051"]' in script


def test_helm_test_scripts_compile(rendered: dict[str, list[Doc]]) -> None:
    """The python3 -c programs of the test pods are valid Python."""
    for doc in rendered["embedded-monitoring"]:
        if doc["kind"] == "Pod":
            command = doc["spec"]["containers"][0]["command"]
            assert command[:2] == ["python3", "-c"]
            compile(command[2], doc["metadata"]["name"], "exec")


# --- monitoring ------------------------------------------------------------------------------


def _instrument_names() -> set[str]:
    """The gateway's OpenTelemetry instrument names and the operator's Prometheus metric names,
    normalised (dots and underscores dropped)."""
    names = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        names |= set(re.findall(r'"(gateway\.[a-z_.]+)"', path.read_text()))
    operator_metrics = ROOT / "operator" / "gametable_operator" / "metrics.py"
    names |= set(re.findall(r'"(gateway_operator_[a-z_]+)"', operator_metrics.read_text()))
    return {n.replace(".", "").replace("_", "") for n in names}


def _metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(gateway_[a-z_]+)", expr))


def _known(metric: str, instruments: set[str]) -> bool:
    base = re.sub(r"(_bucket|_sum|_count|_total)$", "", metric)
    candidates = {base, re.sub(r"_seconds$", "", base)}
    return any(c.replace("_", "") in instruments for c in candidates)


def test_pod_monitor_scrapes_labelled_pods(helm: Path, rendered: dict[str, list[Doc]]) -> None:
    """Every pod labelled with a GameTable, on the injected container's gw-metrics port."""
    monitor = find(rendered["embedded-monitoring"], "PodMonitor", f"{FULLNAME}-sidecars")
    assert monitor["spec"]["selector"] == {
        "matchExpressions": [{"key": LABEL, "operator": "Exists"}]
    }
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "gw-metrics" and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    only_watched = helm_template(
        helm,
        "--set", "monitoring.podMonitor.enabled=true",
        "--set", "operator.watchNamespaces={studio-a}",
    )  # fmt: skip
    namespaced = find(documents(only_watched), "PodMonitor", f"{FULLNAME}-sidecars")
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["studio-a"]}


def test_alert_rules_parse_and_use_real_metrics(rendered: dict[str, list[Doc]]) -> None:
    """Every alert expression is valid PromQL over metrics the sidecar or the operator exports."""
    promql = pytest.importorskip("promql_parser")
    instruments = _instrument_names()
    (group,) = find(rendered["embedded-monitoring"], "PrometheusRule")["spec"]["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert set(alerts) == {
        "StudioGatewayNoHealthyBroker", "StudioGatewayNoActiveBroker",
        "StudioGatewayDetectTimeouts", "StudioGatewayDegraded", "StudioGatewayEpochChurn",
        "StudioGatewayBrokerDown", "StudioGatewayFailovers", "StudioGatewayRedisErrors",
        "StudioGatewayConfigReloadRejected", "StudioGatewayLoopRestarts",
        "StudioGatewayInputsDropped", "StudioGatewaySidecarScrapeFailing",
        "StudioGatewaySidecarMetricsAbsent", "GatewayOperatorMetricsAbsent",
        "GatewayOperatorNotReconciling", "GatewayOperatorReconcileErrors",
    }  # fmt: skip
    # Their metrics carry no table label (docs/telemetry.md): group, gametable or none.
    without_table = {
        "StudioGatewayRedisErrors", "StudioGatewayConfigReloadRejected",
        "StudioGatewaySidecarScrapeFailing", "StudioGatewaySidecarMetricsAbsent",
        "GatewayOperatorMetricsAbsent", "GatewayOperatorNotReconciling",
        "GatewayOperatorReconcileErrors",
    }  # fmt: skip
    for name, rule in alerts.items():
        promql.parse(rule["expr"])
        for metric in _metrics_in(rule["expr"]):
            assert _known(metric, instruments), f"{name}: {metric} is exported by no one"
        assert rule["labels"]["severity"] in ("critical", "warning")
        if name not in without_table:
            assert "{{ $labels.table }}" in rule["annotations"]["summary"], name
    assert 'outcome="timeout"' in alerts["StudioGatewayDetectTimeouts"]["expr"]
    assert "> 0.05" in alerts["StudioGatewayDetectTimeouts"]["expr"]
    assert "changes(gateway_epoch[15m])" in alerts["StudioGatewayEpochChurn"]["expr"]
    assert "gateway_degraded" in alerts["StudioGatewayDegraded"]["expr"]


def test_grafana_dashboard_ships_in_a_labelled_configmap(rendered: dict[str, list[Doc]]) -> None:
    """The dashboard JSON reaches Grafana's sidecar intact, and its queries are valid PromQL."""
    promql = pytest.importorskip("promql_parser")
    instruments = _instrument_names()
    configmap = find(rendered["embedded-monitoring"], "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["studio-gateway.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "studio-gateway.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(_metrics_in(e) for e in exprs))
    assert {
        "gateway_detect_duration_seconds_bucket", "gateway_detects_total",
        "gateway_broker_active", "gateway_epoch", "gateway_broker_probe_rtt_seconds",
    } <= used  # fmt: skip
    for expr in exprs:
        concrete = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
        promql.parse(concrete.replace("$table", ".*"))
    for metric in used:
        assert _known(metric, instruments), f"{metric} is not exported by gateway/"
