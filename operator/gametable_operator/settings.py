"""The operator's settings, from its environment (the Helm chart sets them).

| variable | meaning | default |
|---|---|---|
| ``GATEWAY_OPERATOR_NAMESPACES`` | comma-separated namespaces to watch | all namespaces |
| ``GATEWAY_OPERATOR_LIVENESS`` | kopf's liveness endpoint | ``http://0.0.0.0:8080/healthz`` |
| ``GATEWAY_OPERATOR_WEBHOOK_PORT`` | the admission webhook's port | ``9443`` |
| ``GATEWAY_OPERATOR_WEBHOOK_TLS_DIR`` | directory with ``tls.crt`` and ``tls.key`` | plain HTTP |
| ``GATEWAY_OPERATOR_REDIS_URL`` | the sidecars' Redis, read for status | no live status |
| ``GATEWAY_OPERATOR_STATUS_INTERVAL_S`` | how often status is refreshed from Redis | ``15`` |
| ``GATEWAY_OPERATOR_LOG_LEVEL`` | ``DEBUG``, ``INFO``, ``WARNING`` | ``INFO`` |
| ``GATEWAY_OPERATOR_SIDECAR`` | JSON: the sidecar the webhook injects | ``SidecarDefaults`` |
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import ConfigError

ENV_PREFIX = "GATEWAY_OPERATOR_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
DEFAULT_IMAGE = "studio-gateway:0.1.0"


def _default_resources() -> dict[str, Any]:
    # Measured: about 51 MB resident, 56 MB with telemetry export (docs/performance.md).
    return {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "192Mi"}}


@dataclass(frozen=True)
class SidecarDefaults:
    """What the webhook injects besides the table's own configuration."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    resources: dict[str, Any] = field(default_factory=_default_resources)
    log_level: str = "INFO"
    otlp_endpoint: str = ""
    traces_sampler: str = "parentbased_traceidratio"
    traces_sampler_arg: str = "1.0"
    metrics_port: int = 9464  # 0: no Prometheus endpoint


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    liveness: str = "http://0.0.0.0:8080/healthz"
    webhook_port: int = 9443
    webhook_tls_dir: str = ""
    redis_url: str = ""
    status_interval_s: float = 15.0
    log_level: str = "INFO"
    sidecar: SidecarDefaults = field(default_factory=SidecarDefaults)


_SIDECAR_KEYS = {
    "image": "image",
    "imagePullPolicy": "image_pull_policy",
    "resources": "resources",
    "logLevel": "log_level",
    "otlpEndpoint": "otlp_endpoint",
    "tracesSampler": "traces_sampler",
    "tracesSamplerArg": "traces_sampler_arg",
    "metricsPort": "metrics_port",
}


def parse_sidecar(text: str, where: str = f"{ENV_PREFIX}SIDECAR") -> SidecarDefaults:
    """The sidecar defaults from their JSON object; ConfigError names the bad key."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    unknown = sorted(set(doc) - set(_SIDECAR_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, attr in _SIDECAR_KEYS.items():
        if key not in doc or doc[key] is None:
            continue
        value = doc[key]
        if key == "resources":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.resources: must be an object")
        elif key == "metricsPort":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{where}.metricsPort: must be 0 (off) or a port, got {value!r}")
        elif (
            key == "tracesSamplerArg"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            value = str(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: must be a string, got {value!r}")
        values[attr] = value
    sidecar = SidecarDefaults(**values)
    if not sidecar.image:
        raise ConfigError(f"{where}.image: must not be empty")
    if sidecar.image_pull_policy not in PULL_POLICIES:
        raise ConfigError(f"{where}.imagePullPolicy: one of {', '.join(PULL_POLICIES)}")
    if sidecar.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"{where}.logLevel: one of {', '.join(LOG_LEVELS)}")
    if sidecar.metrics_port in (50051, 50052):
        raise ConfigError(f"{where}.metricsPort: {sidecar.metrics_port} is the sidecar's gRPC port")
    return sidecar


def from_env(env: Mapping[str, str]) -> OperatorSettings:
    """Settings from the environment; ConfigError names the bad variable."""

    def get(name: str) -> str:
        return env.get(ENV_PREFIX + name, "").strip()

    values: dict[str, Any] = {}
    if get("NAMESPACES"):
        values["namespaces"] = tuple(n.strip() for n in get("NAMESPACES").split(",") if n.strip())
    if get("LIVENESS"):
        values["liveness"] = get("LIVENESS")
    if get("WEBHOOK_PORT"):
        values["webhook_port"] = _number(get("WEBHOOK_PORT"), "WEBHOOK_PORT", int, 1, 65535)
    values["webhook_tls_dir"] = get("WEBHOOK_TLS_DIR")
    values["redis_url"] = get("REDIS_URL")
    if get("STATUS_INTERVAL_S"):
        values["status_interval_s"] = _number(
            get("STATUS_INTERVAL_S"), "STATUS_INTERVAL_S", float, 1, 3600
        )
    if get("LOG_LEVEL"):
        level = get("LOG_LEVEL").upper()
        if level not in LOG_LEVELS:
            raise ConfigError(f"{ENV_PREFIX}LOG_LEVEL: one of {', '.join(LOG_LEVELS)}, got {level}")
        values["log_level"] = level
    if get("SIDECAR"):
        values["sidecar"] = parse_sidecar(get("SIDECAR"))
    return OperatorSettings(**values)


def _number(text: str, name: str, kind: type[int] | type[float], low: float, high: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}: must be a number, got {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{ENV_PREFIX}{name}: must be between {low:g} and {high:g}, got {text}")
    return value
