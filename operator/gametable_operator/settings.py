"""The operator's settings, from its environment (the Helm chart sets them).

| variable | meaning | default |
|---|---|---|
| ``GATEWAY_OPERATOR_NAMESPACES`` | comma-separated namespaces to watch | all namespaces |
| ``GATEWAY_OPERATOR_LIVENESS`` | kopf's liveness endpoint | ``http://0.0.0.0:8080/healthz`` |
| ``GATEWAY_OPERATOR_WEBHOOK_PORT`` | the admission webhook's port | ``9443`` |
| ``GATEWAY_OPERATOR_METRICS_PORT`` | port of the Prometheus ``/metrics``; ``0``: off | ``8081`` |
| ``GATEWAY_OPERATOR_WEBHOOK_TLS_DIR`` | directory with ``tls.crt`` and ``tls.key`` | plain HTTP |
| ``GATEWAY_OPERATOR_REDIS_URL`` | the sidecars' Redis, read for status | no live status |
| ``GATEWAY_OPERATOR_STATUS_INTERVAL_S`` | how often status is refreshed from Redis | ``15`` |
| ``GATEWAY_OPERATOR_PEERING`` | kopf peering object: one replica reconciles | standalone |
| ``GATEWAY_OPERATOR_PEERING_LIFETIME_S`` | seconds a silent replica counts as alive | ``15`` |
| ``GATEWAY_OPERATOR_LOG_LEVEL`` | ``DEBUG``, ``INFO``, ``WARNING`` | ``INFO`` |
| ``GATEWAY_OPERATOR_SIDECAR`` | JSON: the sidecar the webhook injects | ``SidecarDefaults`` |

Whatever the variables hold, parsing raises ``ConfigError`` only, naming the variable.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config import DEFAULT_HEALTH_PORT, DEFAULT_PORT, ConfigError

ENV_PREFIX = "GATEWAY_OPERATOR_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
DEFAULT_IMAGE = "studio-gateway:0.1.0"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
RESOURCE_KEYS = ("requests", "limits")
_T = TypeVar("_T")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


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
    """What the operator watches and serves, read once from its environment."""

    namespaces: tuple[str, ...] = ()
    liveness: str = "http://0.0.0.0:8080/healthz"
    webhook_port: int = 9443
    metrics_port: int = 8081  # 0: no Prometheus endpoint
    webhook_tls_dir: str = ""
    redis_url: str = ""
    status_interval_s: float = 15.0
    log_level: str = "INFO"
    sidecar: SidecarDefaults = field(default_factory=SidecarDefaults)
    peering: str = ""  # kopf peering object: replicas elect one to reconcile; "" standalone
    peering_lifetime_s: int = 15


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
    return _guarded(where, lambda: _parse_sidecar(text, where))


def from_env(env: Mapping[str, str]) -> OperatorSettings:
    """Settings from the environment; ConfigError names the bad variable."""
    return _guarded(f"{ENV_PREFIX}*", lambda: _from_env(env))


def _parse_sidecar(text: str, where: str) -> SidecarDefaults:
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ConfigError(f"{where}: not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON: {_brief(str(exc))}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    unknown = sorted(_key(k) for k in set(doc) - set(_SIDECAR_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, attr in _SIDECAR_KEYS.items():
        if key not in doc or doc[key] is None:
            continue
        value = doc[key]
        if key == "resources":
            value = _resources(value, f"{where}.resources")
        elif key == "metricsPort":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(
                    f"{where}.metricsPort: must be 0 (off) or a port, got {_brief(value)}"
                )
        elif (
            key == "tracesSamplerArg"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            if not math.isfinite(value):
                raise ConfigError(f"{where}.{key}: must be a finite number, got {value}")
            value = str(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: must be a string, got {_brief(value)}")
        if isinstance(value, str) and not value.isprintable():
            raise ConfigError(f"{where}.{key}: must hold printable characters only")
        values[attr] = value
    sidecar = SidecarDefaults(**values)
    if not sidecar.image:
        raise ConfigError(f"{where}.image: must not be empty")
    if sidecar.image_pull_policy not in PULL_POLICIES:
        raise ConfigError(f"{where}.imagePullPolicy: one of {', '.join(PULL_POLICIES)}")
    if sidecar.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"{where}.logLevel: one of {', '.join(LOG_LEVELS)}")
    if sidecar.metrics_port in (DEFAULT_PORT, DEFAULT_HEALTH_PORT):
        raise ConfigError(f"{where}.metricsPort: {sidecar.metrics_port} is the sidecar's gRPC port")
    return sidecar


def _resources(value: Any, where: str) -> dict[str, Any]:
    """A container's resources: ``requests`` and ``limits``, each resource name to a quantity.

    Checked to that shape, so the webhook copies a small flat object into every pod.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be an object")
    out: dict[str, Any] = {}
    for kind, quantities in value.items():
        if kind not in RESOURCE_KEYS:
            raise ConfigError(f"{where}: unknown key {_brief(kind)}; expected requests, limits")
        if quantities is None:
            continue
        if not isinstance(quantities, dict):
            raise ConfigError(f"{where}.{kind}: must be an object")
        for name, quantity in quantities.items():
            if not isinstance(name, str) or not name or not name.isprintable():
                raise ConfigError(f"{where}.{kind}: {_brief(name)} is not a resource name")
            if isinstance(quantity, bool) or not (
                (isinstance(quantity, str) and quantity and quantity.isprintable())
                or (isinstance(quantity, int | float) and math.isfinite(quantity))
            ):
                raise ConfigError(
                    f"{where}.{kind}.{name}: must be a quantity like 50m or 96Mi, "
                    f"got {_brief(quantity)}"
                )
        out[kind] = dict(quantities)
    return out


def _from_env(env: Mapping[str, str]) -> OperatorSettings:
    def get(name: str, *, multiline: bool = False) -> str:
        value = env.get(ENV_PREFIX + name, "")
        if not isinstance(value, str):
            raise ConfigError(f"{ENV_PREFIX}{name}: must be a string")
        value = value.strip()
        if not (value.isprintable() or (multiline and _is_utf8(value))):
            raise ConfigError(f"{ENV_PREFIX}{name}: holds control characters or undecodable bytes")
        return value

    values: dict[str, Any] = {}
    if get("NAMESPACES"):
        values["namespaces"] = tuple(n.strip() for n in get("NAMESPACES").split(",") if n.strip())
    if get("LIVENESS"):
        values["liveness"] = get("LIVENESS")
    if get("WEBHOOK_PORT"):
        values["webhook_port"] = _number(get("WEBHOOK_PORT"), "WEBHOOK_PORT", int, 1, 65535)
    if get("METRICS_PORT"):
        values["metrics_port"] = _number(get("METRICS_PORT"), "METRICS_PORT", int, 0, 65535)
    values["webhook_tls_dir"] = get("WEBHOOK_TLS_DIR")
    values["redis_url"] = get("REDIS_URL")
    if values["redis_url"] and not values["redis_url"].startswith(REDIS_SCHEMES):
        # The URL may hold a password: it is not shown.
        raise ConfigError(
            f"{ENV_PREFIX}REDIS_URL: must start with redis://, rediss://, unix:// or "
            "redis+sentinel://"
        )
    if get("PEERING"):
        values["peering"] = _name(get("PEERING"), "PEERING")
    if get("PEERING_LIFETIME_S"):
        values["peering_lifetime_s"] = _number(
            get("PEERING_LIFETIME_S"), "PEERING_LIFETIME_S", int, 2, 300
        )
    if get("STATUS_INTERVAL_S"):
        values["status_interval_s"] = _number(
            get("STATUS_INTERVAL_S"), "STATUS_INTERVAL_S", float, 1, 3600
        )
    if get("LOG_LEVEL"):
        level = get("LOG_LEVEL").upper()
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"{ENV_PREFIX}LOG_LEVEL: one of {', '.join(LOG_LEVELS)}, got {_brief(level)}"
            )
        values["log_level"] = level
    # A pretty-printed JSON object spans several lines.
    if get("SIDECAR", multiline=True):
        values["sidecar"] = parse_sidecar(get("SIDECAR", multiline=True))
    cfg = OperatorSettings(**values)
    _check_metrics_port(cfg)
    return cfg


def _check_metrics_port(cfg: OperatorSettings) -> None:
    """The metrics endpoint needs a port of its own: the webhook and kopf's liveness
    endpoint listen in the same process."""
    if cfg.metrics_port == 0:
        return
    where = f"{ENV_PREFIX}METRICS_PORT"
    if cfg.metrics_port == cfg.webhook_port:
        raise ConfigError(
            f"{where}: {cfg.metrics_port} is the webhook's port ({ENV_PREFIX}WEBHOOK_PORT)"
        )
    if cfg.metrics_port == _liveness_port(cfg.liveness):
        raise ConfigError(
            f"{where}: {cfg.metrics_port} is the liveness endpoint's port ({ENV_PREFIX}LIVENESS)"
        )


def _liveness_port(url: str) -> int | None:
    """The port of kopf's liveness URL (its scheme's default when it names none)."""
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # not a URL with a port; kopf itself reports that
        return None


def _name(text: str, name: str) -> str:
    """A Kubernetes object name (DNS-1123 subdomain)."""
    if len(text) > 253 or not _DNS_NAME.fullmatch(text):
        raise ConfigError(
            f"{ENV_PREFIX}{name}: must be an object name (lower-case letters, digits, '-', "
            f"'.'), got {_brief(text)}"
        )
    return text


def _number(text: str, name: str, kind: type[int] | type[float], low: float, high: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}: must be a number, got {_brief(text)}") from None
    if not low <= value <= high:
        raise ConfigError(
            f"{ENV_PREFIX}{name}: must be between {low:g} and {high:g}, got {_brief(text)}"
        )
    return value


def _guarded(where: str, parse: Callable[[], _T]) -> _T:
    """``parse()``, with any unexpected failure as a ConfigError: the operator's settings
    fail one way, which the command line and the startup handler report."""
    try:
        return parse()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{where}: unexpected {type(exc).__name__} while parsing") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key(key: str) -> str:
    return key if key.isprintable() and len(key) <= 80 else _brief(key)


def _brief(value: Any) -> str:
    """A short, printable rendering of a value for a message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, str):
        text = value if len(value) <= 80 else value[:80] + "..."
        return repr(text) if text.isprintable() else ascii(text)
    if isinstance(value, list | dict):
        return f"<a JSON {'array' if isinstance(value, list) else 'object'}>"
    return ascii(value)[:80]
