"""The pod mutation: a GameTable's sidecar as a native sidecar container. Pure functions.

A pod labelled ``studio.gateway.dev/gametable: <name>`` gets, from the GameTable of that
name in its namespace:

- an init container ``gateway`` with ``restartPolicy: Always`` (a native sidecar,
  Kubernetes 1.29+): it starts before the game's containers and stops after them;
- the ConfigMap ``<name>-gateway`` mounted as a directory (never ``subPath``, so kubelet's
  ``..data`` swap reaches the sidecar's hot reload) and one projected volume with every
  Secret the table needs, at the paths ``render.py`` writes into ``table.json``;
- gRPC probes on ``grpc.health.v1`` on a probe-only port (Detect stays on loopback);
- ``GATEWAY_TARGET`` in the game's containers that do not set it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gametable_operator.render import (
    CONFIG_DIR,
    CONFIG_KEY,
    GROUP,
    SECRETS_DIR,
)
from gametable_operator.settings import SidecarDefaults

LABEL = f"{GROUP}/gametable"
INJECTED = f"{GROUP}/sidecar"
CONTAINER = "gateway"
DETECT_ADDRESS = "127.0.0.1:50051"
HEALTH_PORT = 50052
UID = 65532
CONFIG_VOLUME = "gateway-config"
SECRETS_VOLUME = "gateway-secrets"
TMP_VOLUME = "gateway-tmp"


class CannotInject(ValueError):
    """The pod cannot take the sidecar as it is (the message says why)."""


def already_has_sidecar(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    names = [c.get("name") for c in containers]
    return CONTAINER in names


def inject(
    pod: Mapping[str, Any], gametable: Mapping[str, Any], defaults: SidecarDefaults
) -> dict[str, Any]:
    """The pod with the sidecar added; unchanged if it already has a ``gateway`` container."""
    out = copy.deepcopy(dict(pod))
    if already_has_sidecar(out):
        return out
    spec = out.setdefault("spec", {})
    existing = spec.get("initContainers") or []
    spec["initContainers"] = [sidecar_container(gametable, defaults), *existing]
    ours = {v["name"] for v in volumes(gametable)}
    clash = ours & {v.get("name") for v in spec.get("volumes") or []}
    if clash:
        raise CannotInject(f"pod already has volume(s) named {', '.join(sorted(clash))}")
    spec["volumes"] = list(spec.get("volumes") or []) + volumes(gametable)
    for container in spec.get("containers") or []:
        env = container.get("env") or []
        container["env"] = env
        if not any(e.get("name") == "GATEWAY_TARGET" for e in env):
            env.append({"name": "GATEWAY_TARGET", "value": DETECT_ADDRESS})
    meta = out.setdefault("metadata", {})
    meta.setdefault("annotations", {})[INJECTED] = defaults.image
    return out


def sidecar_container(gametable: Mapping[str, Any], defaults: SidecarDefaults) -> dict[str, Any]:
    """The native sidecar container for a GameTable."""
    name = gametable["metadata"]["name"]
    code = gametable["spec"]["tableCode"]
    args = [
        "--log-level", defaults.log_level.upper(), "--log-format", "json",
        "serve", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}",
        "--listen", DETECT_ADDRESS, "--health-listen", f"0.0.0.0:{HEALTH_PORT}",
    ]  # fmt: skip
    ports = [{"name": "gw-health", "containerPort": HEALTH_PORT, "protocol": "TCP"}]
    if defaults.metrics_port:
        args += ["--metrics-listen", f"0.0.0.0:{defaults.metrics_port}"]
        ports.append({"name": "gw-metrics", "containerPort": defaults.metrics_port,
                      "protocol": "TCP"})  # fmt: skip
    return {
        "name": CONTAINER,
        "image": defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "restartPolicy": "Always",
        "args": args,
        "env": _env(name, code, defaults),
        "ports": ports,
        # Liveness never depends on the brokers: an outage must not restart the sidecar.
        "startupProbe": _probe("liveness", period=1, failures=30),
        "livenessProbe": _probe("liveness", period=10, failures=3, timeout=2),
        "readinessProbe": _probe("", period=2, failures=2),
        "resources": copy.deepcopy(defaults.resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }


def volumes(gametable: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ConfigMap, the projected Secrets and a small /tmp for the sidecar."""
    name = gametable["metadata"]["name"]
    return [
        {"name": CONFIG_VOLUME, "configMap": {"name": f"{name}-gateway"}},
        {"name": SECRETS_VOLUME, "projected": {"defaultMode": 0o444,
                                               "sources": secret_sources(gametable)}},
        {"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]  # fmt: skip


def secret_sources(gametable: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each broker's Secret (username, password, CA) and the Redis URL, at render.py's paths."""
    spec = gametable["spec"]
    sources = []
    for broker in spec["brokerGroup"]["brokers"]:
        bid = broker["id"]
        items = [
            {"key": "username", "path": f"brokers/{bid}/username"},
            {"key": "password", "path": f"brokers/{bid}/password"},
        ]
        ca_key = (broker.get("tls") or {}).get("caSecretKey")
        if ca_key:
            items.append({"key": ca_key, "path": f"tls/{bid}/ca.crt"})
        sources.append({"secret": {"name": broker["credentialsSecret"]["name"], "items": items}})
    redis = spec.get("redis")
    if redis:
        secret = redis["urlSecret"]
        items = [{"key": secret["key"], "path": "redis/url"}]
        sources.append({"secret": {"name": secret["name"], "items": items}})
    return sources


def _env(name: str, code: str, defaults: SidecarDefaults) -> list[dict[str, Any]]:
    def field_ref(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": field_ref("metadata.name")},
        {"name": "POD_NAMESPACE", "valueFrom": field_ref("metadata.namespace")},
        {"name": "OTEL_SERVICE_NAME", "value": "studio-gateway"},
        {
            "name": "OTEL_RESOURCE_ATTRIBUTES",
            "value": "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),"
            f"studio.table={code},studio.gametable={name}",
        },
    ]
    if defaults.otlp_endpoint:
        env += [
            {"name": "OTEL_TRACES_EXPORTER", "value": "otlp"},
            {"name": "OTEL_METRICS_EXPORTER", "value": "otlp"},
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": defaults.otlp_endpoint},
            {"name": "OTEL_TRACES_SAMPLER", "value": defaults.traces_sampler},
            {"name": "OTEL_TRACES_SAMPLER_ARG", "value": defaults.traces_sampler_arg},
        ]
        if defaults.otlp_endpoint.startswith("http://"):
            env.append({"name": "OTEL_EXPORTER_OTLP_INSECURE", "value": "true"})
    else:
        env += [
            {"name": "OTEL_TRACES_EXPORTER", "value": "none"},
            {"name": "OTEL_METRICS_EXPORTER", "value": "none"},
        ]
    return env


def _probe(service: str, *, period: int, failures: int, timeout: int = 1) -> dict[str, Any]:
    return {
        "grpc": {"port": HEALTH_PORT, "service": service},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }
