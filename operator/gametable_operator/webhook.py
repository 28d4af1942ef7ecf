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

The pod comes from the AdmissionReview as it was sent: a shape the mutation cannot work
on is refused with ``CannotInject`` (a 400 answer naming the field), never another error.
``admission_request`` checks the AdmissionReview itself, and ``refusal`` answers one that
cannot be served.
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
from gateway.config import DEFAULT_ADDRESS, DEFAULT_HEALTH_PORT

LABEL = f"{GROUP}/gametable"
INJECTED = f"{GROUP}/sidecar"
CONTAINER = "gateway"
DETECT_ADDRESS = DEFAULT_ADDRESS
HEALTH_PORT = DEFAULT_HEALTH_PORT
UID = 65532
CONFIG_VOLUME = "gateway-config"
SECRETS_VOLUME = "gateway-secrets"
TMP_VOLUME = "gateway-tmp"


class CannotInject(ValueError):
    """The pod cannot take the sidecar as it is (the message says why)."""


class BadReview(ValueError):
    """A body that is not an AdmissionReview the webhook can serve (the message says why)."""


def already_has_sidecar(pod: Mapping[str, Any]) -> bool:
    """Whether the pod has a ``gateway`` container; CannotInject if its spec is malformed."""
    spec = _object(pod, "spec", "spec")
    containers = _objects(spec, "initContainers", "spec.initContainers") + _objects(
        spec, "containers", "spec.containers"
    )
    return any(c.get("name") == CONTAINER for c in containers)


def inject(
    pod: Mapping[str, Any], gametable: Mapping[str, Any], defaults: SidecarDefaults
) -> dict[str, Any]:
    """The pod with the sidecar added; unchanged if it already has a ``gateway`` container.

    CannotInject if the pod's shape does not allow it (the message names the field).
    """
    if not isinstance(pod, Mapping):
        raise CannotInject("the pod must be an object")
    try:
        out = copy.deepcopy(dict(pod))
    except RecursionError:
        raise CannotInject("the pod is nested too deeply") from None
    if already_has_sidecar(out):
        return out
    spec = out["spec"] = _object(out, "spec", "spec")
    existing = _objects(spec, "initContainers", "spec.initContainers")
    present = _objects(spec, "volumes", "spec.volumes")
    containers = spec["containers"] = _objects(spec, "containers", "spec.containers")
    spec["initContainers"] = [sidecar_container(gametable, defaults), *existing]
    ours = {v["name"] for v in volumes(gametable)}
    clash = ours & {v.get("name") for v in present if isinstance(v.get("name"), str)}
    if clash:
        raise CannotInject(f"pod already has volume(s) named {', '.join(sorted(clash))}")
    spec["volumes"] = present + volumes(gametable)
    for i, container in enumerate(containers):
        env = container["env"] = _objects(container, "env", f"spec.containers[{i}].env")
        if not any(e.get("name") == "GATEWAY_TARGET" for e in env):
            env.append({"name": "GATEWAY_TARGET", "value": DETECT_ADDRESS})
    meta = out["metadata"] = _object(out, "metadata", "metadata")
    annotations = meta["annotations"] = _object(meta, "annotations", "metadata.annotations")
    annotations[INJECTED] = defaults.image
    return out


def admission_request(review: Any) -> dict[str, Any]:
    """The ``request`` of an AdmissionReview body, checked for what admission reads.

    BadReview names the first field that is missing or of the wrong type.
    """
    if not isinstance(review, Mapping):
        raise BadReview("the body must be a JSON object (an AdmissionReview)")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("request: is required and must be an object")
    if not isinstance(request.get("uid"), str):
        raise BadReview("request.uid: is required and must be a string")
    resource = request.get("resource")
    if not isinstance(resource, Mapping):
        raise BadReview("request.resource: is required and must be an object")
    for key in ("group", "version", "resource"):
        if not isinstance(resource.get(key), str):
            raise BadReview(f"request.resource.{key}: is required and must be a string")
    for key in ("operation", "namespace"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise BadReview(f"request.{key}: must be a string")
    if not isinstance(request.get("userInfo"), Mapping):
        raise BadReview("request.userInfo: is required and must be an object")
    new, old = request.get("object"), request.get("oldObject")
    for key, value in (("object", new), ("oldObject", old)):
        if value is not None and not isinstance(value, Mapping):
            raise BadReview(f"request.{key}: must be an object")
    if new is None and old is None:
        raise BadReview("request.object: is required (or request.oldObject)")
    return request


def refusal(review: Any, message: str, code: int = 400) -> dict[str, Any]:
    """The AdmissionReview response that refuses ``review`` with ``message``."""
    request = review.get("request") if isinstance(review, Mapping) else None
    uid = request.get("uid") if isinstance(request, Mapping) else None
    api_version = review.get("apiVersion") if isinstance(review, Mapping) else None
    return {
        "apiVersion": api_version if isinstance(api_version, str) else "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid if isinstance(uid, str) else "",
            "allowed": False,
            "status": {"code": code, "message": message},
        },
    }


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


def _object(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """A field that must be an object; absent or null is an empty one."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CannotInject(f"pod {where}: must be an object")
    return value if isinstance(value, dict) else dict(value)


def _objects(parent: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """A field that must be a list of objects; absent or null is an empty one."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise CannotInject(f"pod {where}: must be a list")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise CannotInject(f"pod {where}[{i}]: must be an object")
    return value


def _probe(service: str, *, period: int, failures: int, timeout: int = 1) -> dict[str, Any]:
    return {
        "grpc": {"port": HEALTH_PORT, "service": service},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }
