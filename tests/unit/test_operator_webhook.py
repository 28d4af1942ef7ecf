"""Unit tests of the GameTable operator's pod mutation: the injected native sidecar."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gametable_operator import webhook
from gametable_operator.render import render_configmap, render_document
from gametable_operator.settings import SidecarDefaults
from gateway.cli import build_parser
from gateway.sidecar.app import LIVENESS_SERVICE

ROOT = Path(__file__).parents[2]
UID = "6f1d2c3e-0000-4000-8000-000000000002"
GAMES = ["baccarat", "roulette", "sicbo"]
SECRETS_MOUNT = "/etc/gateway/secrets"
DEFAULTS = SidecarDefaults(
    image="registry.example.com/studio-gateway:1.4.2",
    image_pull_policy="Always",
    resources={"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
    log_level="warning",
    metrics_port=9464,
)


def _applied(name: str, generation: int = 3) -> dict[str, Any]:
    """An example GameTable as the API server returns it: with uid and generation."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"gametable-{name}.yaml").read_text())
    doc["metadata"].update(uid=UID, generation=generation)
    return doc


def _deployment_pod(table: str = "sbo-001") -> dict[str, Any]:
    """A pod as a ReplicaSet submits it: generateName, no namespace, no name."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "table-client-7d9f8b6c5-",
            "labels": {
                "app.kubernetes.io/name": "table-client",
                "pod-template-hash": "7d9f8b6c5",
                webhook.LABEL: table,
            },
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "table-client-7d9f8b6c5",
                    "uid": "0b8f2a44-0000-4000-8000-0000000000aa",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "table-client",
            "initContainers": [
                {
                    "name": "wait-for-camera",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "until nc -z camera 1935; do sleep 1; done"],
                }
            ],
            "containers": [
                {
                    "name": "client",
                    "image": "registry.example.com/table-client:2.4.0",
                    "env": [{"name": "TABLE_CODE", "value": "SBO-001"}],
                    "volumeMounts": [
                        {
                            "name": "kube-api-access-x7k2p",
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                            "readOnly": True,
                        }
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "kube-api-access-x7k2p",
                    "projected": {
                        "sources": [{"serviceAccountToken": {"path": "token"}}],
                        "defaultMode": 420,
                    },
                }
            ],
        },
    }


def _sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["initContainers"][0]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [v for v in pod["spec"]["volumes"] if v["name"] == name]
    assert len(volumes) == 1, f"{len(volumes)} volumes named {name}"
    return volumes[0]


def _mount_path(container: dict[str, Any], volume: str) -> str:
    paths: list[str] = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    assert len(paths) == 1, f"{len(paths)} mounts of {volume}"
    return paths[0]


def _mounted_secret_files(pod: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Absolute path in the sidecar -> (Secret name, key), from the projected volume."""
    root = _mount_path(_sidecar(pod), webhook.SECRETS_VOLUME)
    files: dict[str, tuple[str, str]] = {}
    for source in _volume(pod, webhook.SECRETS_VOLUME)["projected"]["sources"]:
        secret = source["secret"]
        for item in secret["items"]:
            path = f"{root}/{item['path']}"
            assert path not in files, f"two Secret items project to {path}"
            files[path] = (secret["name"], item["key"])
    return files


def _files_table_json_reads(doc: dict[str, Any]) -> set[str]:
    """Every mounted file the rendered table.json points the sidecar at."""
    files = set()
    for broker in doc["brokers"]:
        files |= {f"{broker['credentials_dir']}/username", f"{broker['credentials_dir']}/password"}
        if "ca_file" in broker.get("tls", {}):
            files.add(broker["tls"]["ca_file"])
    if "redis" in doc:
        files.add(doc["redis"]["url_file"])
    return files


@pytest.mark.parametrize("game", GAMES)
def test_sidecar_is_the_first_native_init_container(game: str) -> None:
    """The sidecar is initContainers[0], named gateway, restartPolicy Always, from the defaults."""
    gametable = _applied(game)
    pod = webhook.inject(_deployment_pod(gametable["metadata"]["name"]), gametable, DEFAULTS)
    sidecar = _sidecar(pod)
    assert sidecar["name"] == "gateway"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.example.com/studio-gateway:1.4.2"
    assert sidecar["imagePullPolicy"] == "Always"
    assert sidecar["resources"] == DEFAULTS.resources
    assert pod["metadata"]["annotations"][webhook.INJECTED] == DEFAULTS.image


@pytest.mark.parametrize("game", GAMES)
def test_sidecar_serves_detect_on_loopback_and_health_on_the_pod(game: str) -> None:
    """The args serve table.json with Detect on loopback, health on 50052 and metrics."""
    sidecar = _sidecar(webhook.inject(_deployment_pod(), _applied(game), DEFAULTS))
    args = sidecar["args"]
    serve = args.index("serve")
    assert args[serve : serve + 7] == [
        "serve",
        "--config",
        "/etc/gateway/config/table.json",
        "--listen",
        "127.0.0.1:50051",
        "--health-listen",
        "0.0.0.0:50052",
    ]
    assert args[args.index("--metrics-listen") + 1] == "0.0.0.0:9464"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"gw-health": 50052, "gw-metrics": 9464}


def test_sidecar_args_parse_with_the_gateway_cli() -> None:
    """The gateway's own parser accepts the args and reads them as the webhook meant."""
    sidecar = _sidecar(webhook.inject(_deployment_pod(), _applied("sicbo"), DEFAULTS))
    args = build_parser().parse_args(sidecar["args"])
    assert args.command == "serve"
    assert args.config == "/etc/gateway/config/table.json"
    assert args.listen == "127.0.0.1:50051"
    assert args.health_listen == "0.0.0.0:50052"
    assert args.metrics_listen == "0.0.0.0:9464"
    assert args.log_level == "WARNING" and args.log_format == "json"


def test_metrics_port_zero_means_no_metrics_endpoint() -> None:
    """With metrics_port 0 there is no --metrics-listen and no metrics port."""
    defaults = SidecarDefaults(metrics_port=0)
    sidecar = _sidecar(webhook.inject(_deployment_pod(), _applied("sicbo"), defaults))
    assert "--metrics-listen" not in sidecar["args"]
    assert [p["containerPort"] for p in sidecar["ports"]] == [50052]
    assert build_parser().parse_args(sidecar["args"]).metrics_listen is None


def test_probes_are_grpc_health_on_the_probe_port() -> None:
    """Startup and liveness ask the liveness service, readiness the overall service."""
    sidecar = _sidecar(webhook.inject(_deployment_pod(), _applied("sicbo"), DEFAULTS))
    probes = {k: sidecar[k]["grpc"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {
        "startupProbe": {"port": 50052, "service": LIVENESS_SERVICE},
        "livenessProbe": {"port": 50052, "service": LIVENESS_SERVICE},
        "readinessProbe": {"port": 50052, "service": ""},
    }
    assert LIVENESS_SERVICE == "liveness"


def test_sidecar_security_context_is_locked_down() -> None:
    """Non-root 65532, read-only root, no escalation, no capabilities, RuntimeDefault seccomp."""
    pod = webhook.inject(_deployment_pod(), _applied("sicbo"), DEFAULTS)
    sidecar = _sidecar(pod)
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532 and security["runAsGroup"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root still needs a writable /tmp, from a memory-backed emptyDir.
    (tmp,) = [m["name"] for m in sidecar["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert _volume(pod, tmp)["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("game", GAMES)
def test_config_map_is_mounted_as_a_directory(game: str) -> None:
    """The table's ConfigMap is mounted whole, read-only, where --config points; no subPath."""
    gametable = _applied(game)
    pod = webhook.inject(_deployment_pod(), gametable, DEFAULTS)
    sidecar = _sidecar(pod)
    configmap = render_configmap(gametable)
    volume = _volume(pod, webhook.CONFIG_VOLUME)
    assert volume["configMap"] == {"name": configmap["metadata"]["name"]}
    assert configmap["metadata"]["name"] == f"{gametable['metadata']['name']}-gateway"
    (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == webhook.CONFIG_VOLUME]
    assert mount["readOnly"] is True
    config_arg = sidecar["args"][sidecar["args"].index("--config") + 1]
    assert config_arg == f"{mount['mountPath']}/{next(iter(configmap['data']))}"
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        for m in container.get("volumeMounts", []):
            assert "subPath" not in m and "subPathExpr" not in m


@pytest.mark.parametrize("game", GAMES)
def test_secret_files_are_exactly_what_table_json_reads(game: str) -> None:
    """The projected Secret files are exactly the paths render writes into table.json."""
    gametable = _applied(game)
    pod = webhook.inject(_deployment_pod(), gametable, DEFAULTS)
    assert _mount_path(_sidecar(pod), webhook.SECRETS_VOLUME) == SECRETS_MOUNT
    mounted = _mounted_secret_files(pod)
    assert set(mounted) == _files_table_json_reads(render_document(gametable))


@pytest.mark.parametrize("game", GAMES)
def test_secret_items_come_from_the_named_secrets(game: str) -> None:
    """Each broker's username, password and CA, and the Redis URL, come from the right keys."""
    gametable = _applied(game)
    spec = gametable["spec"]
    mounted = _mounted_secret_files(webhook.inject(_deployment_pod(), gametable, DEFAULTS))
    expected: dict[str, tuple[str, str]] = {}
    for broker in spec["brokerGroup"]["brokers"]:
        secret, bid = broker["credentialsSecret"]["name"], broker["id"]
        expected[f"{SECRETS_MOUNT}/brokers/{bid}/username"] = (secret, "username")
        expected[f"{SECRETS_MOUNT}/brokers/{bid}/password"] = (secret, "password")
        if "caSecretKey" in broker.get("tls", {}):
            expected[f"{SECRETS_MOUNT}/tls/{bid}/ca.crt"] = (secret, broker["tls"]["caSecretKey"])
    if "redis" in spec:
        url = spec["redis"]["urlSecret"]
        expected[f"{SECRETS_MOUNT}/redis/url"] = (url["name"], url["key"])
    assert mounted == expected


def test_sicbo_secret_layout() -> None:
    """The SicBo example mounts a CA for its TLS broker only, and the Redis URL."""
    mounted = _mounted_secret_files(webhook.inject(_deployment_pod(), _applied("sicbo"), DEFAULTS))
    assert mounted == {
        "/etc/gateway/secrets/brokers/mqtt-a/username": ("mqtt-a-credentials", "username"),
        "/etc/gateway/secrets/brokers/mqtt-a/password": ("mqtt-a-credentials", "password"),
        "/etc/gateway/secrets/tls/mqtt-a/ca.crt": ("mqtt-a-credentials", "ca.crt"),
        "/etc/gateway/secrets/brokers/mqtt-b/username": ("mqtt-b-credentials", "username"),
        "/etc/gateway/secrets/brokers/mqtt-b/password": ("mqtt-b-credentials", "password"),
        "/etc/gateway/secrets/redis/url": ("studio-a-redis", "url"),
    }


def test_redis_url_reaches_the_sidecar_as_a_secret_file_never_an_argument() -> None:
    """The Redis URL (it may hold a password) is neither in the args nor in the env."""
    gametable = _applied("sicbo")
    assert "redis" in gametable["spec"]
    pod = webhook.inject(_deployment_pod(), gametable, DEFAULTS)
    sidecar = _sidecar(pod)
    args = build_parser().parse_args(sidecar["args"])
    assert args.redis_url is None and args.redis_url_file is None
    assert not [a for a in sidecar["args"] if "redis" in a.lower()]
    for env in sidecar["env"]:
        assert "redis" not in env["name"].lower()
        assert "redis" not in str(env.get("value", "")).lower()
    assert render_document(gametable)["redis"]["url_file"] == f"{SECRETS_MOUNT}/redis/url"
    assert f"{SECRETS_MOUNT}/redis/url" in _mounted_secret_files(pod)


def test_existing_init_containers_and_volumes_are_kept_after_ours() -> None:
    """The pod's own init containers and volumes stay, in order, after the sidecar's."""
    original = _deployment_pod()
    pod = webhook.inject(original, _applied("sicbo"), DEFAULTS)
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["gateway", "wait-for-camera"]
    assert init[1] == original["spec"]["initContainers"][0]
    names = [v["name"] for v in pod["spec"]["volumes"]]
    assert names[0] == "kube-api-access-x7k2p"
    assert pod["spec"]["volumes"][0] == original["spec"]["volumes"][0]
    assert {webhook.CONFIG_VOLUME, webhook.SECRETS_VOLUME} <= set(names[1:])
    assert len(names) == len(set(names))
    mounts = {m["name"] for m in _sidecar(pod)["volumeMounts"]}
    assert mounts <= set(names)


def test_pod_without_init_containers_or_volumes() -> None:
    """A bare pod gets the sidecar and its volumes, and an env list for its container."""
    pod = {"metadata": {"labels": {webhook.LABEL: "bac-001"}},
           "spec": {"containers": [{"name": "client", "image": "client:1"}]}}  # fmt: skip
    out = webhook.inject(pod, _applied("baccarat"), DEFAULTS)
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["gateway"]
    assert {m["name"] for m in _sidecar(out)["volumeMounts"]} <= {
        v["name"] for v in out["spec"]["volumes"]
    }
    assert out["spec"]["containers"][0]["env"] == [
        {"name": "GATEWAY_TARGET", "value": "127.0.0.1:50051"}
    ]


def test_app_containers_get_gateway_target_without_overriding() -> None:
    """GATEWAY_TARGET is added where missing and an existing value is left alone."""
    original = _deployment_pod()
    original["spec"]["containers"].append(
        {
            "name": "recorder",
            "image": "recorder:1",
            "env": [{"name": "GATEWAY_TARGET", "value": "127.0.0.1:6000"}],
        }
    )
    pod = webhook.inject(original, _applied("sicbo"), DEFAULTS)
    client, recorder = pod["spec"]["containers"]
    assert client["env"] == [
        {"name": "TABLE_CODE", "value": "SBO-001"},
        {"name": "GATEWAY_TARGET", "value": "127.0.0.1:50051"},
    ]
    assert recorder["env"] == [{"name": "GATEWAY_TARGET", "value": "127.0.0.1:6000"}]
    # The pod's own init containers are not the game's clients.
    assert "env" not in pod["spec"]["initContainers"][1]


def test_input_pod_and_gametable_are_not_mutated() -> None:
    """The request's pod, the GameTable and the defaults are left as they were."""
    pod, gametable = _deployment_pod(), _applied("sicbo")
    pod_before, gametable_before = copy.deepcopy(pod), copy.deepcopy(gametable)
    defaults = SidecarDefaults()
    resources_before = copy.deepcopy(defaults.resources)
    out = webhook.inject(pod, gametable, defaults)
    assert pod == pod_before and gametable == gametable_before
    out["spec"]["containers"][0]["env"].append({"name": "LATER", "value": "x"})
    _sidecar(out)["resources"]["limits"]["memory"] = "1Gi"
    out["metadata"]["labels"]["changed"] = "yes"
    assert pod == pod_before
    assert defaults.resources == resources_before


@pytest.mark.parametrize("where", ["containers", "initContainers"])
def test_pod_with_a_gateway_container_is_unchanged(where: str) -> None:
    """A pod that already has a gateway container comes back as it was."""
    pod = _deployment_pod()
    pod["spec"].setdefault(where, []).append({"name": "gateway", "image": "studio-gateway:0.0.9"})
    out = webhook.inject(pod, _applied("sicbo"), DEFAULTS)
    assert out == pod
    assert webhook.already_has_sidecar(pod)
    assert not webhook.already_has_sidecar(_deployment_pod())


@pytest.mark.parametrize(
    "volume", [webhook.CONFIG_VOLUME, webhook.SECRETS_VOLUME, webhook.TMP_VOLUME]
)
def test_volume_name_clash_cannot_inject(volume: str) -> None:
    """A pod that already has one of the sidecar's volume names is refused, naming it."""
    pod = _deployment_pod()
    pod["spec"]["volumes"].append({"name": volume, "emptyDir": {}})
    with pytest.raises(webhook.CannotInject) as info:
        webhook.inject(pod, _applied("sicbo"), DEFAULTS)
    assert volume in str(info.value)
    assert webhook.CONFIG_VOLUME == "gateway-config"


def test_pod_identity_env_precedes_its_use() -> None:
    """POD_NAME and POD_NAMESPACE come from the downward API before the attributes use them."""
    sidecar = _sidecar(webhook.inject(_deployment_pod(), _applied("sicbo"), DEFAULTS))
    names = [e["name"] for e in sidecar["env"]]
    env = _env(sidecar)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    attrs = env["OTEL_RESOURCE_ATTRIBUTES"]
    assert "$(POD_NAME)" in attrs and "$(POD_NAMESPACE)" in attrs
    assert "studio.table=SBO-001" in attrs and "studio.gametable=sbo-001" in attrs
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert names.index("POD_NAMESPACE") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert env["OTEL_SERVICE_NAME"] == "studio-gateway"


def test_otel_export_with_a_plain_http_endpoint() -> None:
    """An http:// OTLP endpoint turns on trace and metric export, sampling and insecure."""
    defaults = SidecarDefaults(
        otlp_endpoint="http://otel-collector.observability:4317",
        traces_sampler="parentbased_traceidratio",
        traces_sampler_arg="0.1",
    )
    env = _env(_sidecar(webhook.inject(_deployment_pod(), _applied("roulette"), defaults)))
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_METRICS_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert env["OTEL_EXPORTER_OTLP_INSECURE"] == "true"


def test_otel_export_with_a_tls_endpoint_is_not_insecure() -> None:
    """An https:// OTLP endpoint exports without the insecure flag."""
    defaults = SidecarDefaults(otlp_endpoint="https://otel.example.com:4317")
    env = _env(_sidecar(webhook.inject(_deployment_pod(), _applied("roulette"), defaults)))
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel.example.com:4317"
    assert "OTEL_EXPORTER_OTLP_INSECURE" not in env


def test_no_otel_endpoint_exports_nothing() -> None:
    """Without an OTLP endpoint trace and metric exporters are none and no endpoint is set."""
    env = _env(_sidecar(webhook.inject(_deployment_pod(), _applied("roulette"), SidecarDefaults())))
    assert env["OTEL_TRACES_EXPORTER"] == "none" and env["OTEL_METRICS_EXPORTER"] == "none"
    assert not {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER"} & set(env)
