"""kopf handlers of the GameTable operator: wiring only.

Run with ``gateway-operator run`` (or ``kopf run --standalone -m gametable_operator.handlers``).
Rendering is in ``render.py``, status in ``status.py``, the pod mutation in ``webhook.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import redis.asyncio as redis

from gametable_operator import metrics, webhook
from gametable_operator import settings as settings_mod
from gametable_operator import status as st
from gametable_operator.kube import FIELD_MANAGER, ApiError, KubeApi
from gametable_operator.render import (
    GROUP,
    VERSION,
    InvalidGameTable,
    render_config,
    render_configmap,
)
from gateway.config import ConfigError, RedisConfig
from gateway.fleet.store import connect
from gateway.redact import RedactingFilter

GAMETABLES = (GROUP, VERSION, "gametables")
REFRESH = "refresh-status"
UNAVAILABLE = 503  # the webhook's answer when it cannot read the GameTable
FOREIGN = "AlreadyExists"  # the reason of the refusal to take over a ConfigMap
OWNED_BY = f"{GROUP}/gametable"


def _interval_from_env() -> float:
    """The timer's interval is needed at import; a bad value is reported at startup."""
    try:
        return settings_mod.from_env(os.environ).status_interval_s
    except ConfigError:
        return settings_mod.OperatorSettings().status_interval_s


@dataclass
class _Runtime:
    settings: settings_mod.OperatorSettings
    api: KubeApi | None = None
    redis: redis.Redis | None = None
    metrics: metrics.MetricsServer | None = None


runtime = _Runtime(settings_mod.OperatorSettings())


class WebhookServer(kopf.WebhookServer):
    """kopf's server, plus the namespace of the request copied into the object.

    A pod created by a controller reaches admission without ``metadata.namespace``; the
    namespace is only in the AdmissionReview's request, which kopf does not pass on.
    """

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        """Serve the admission webhook for kopf, answering each request with ``fn``."""

        async def with_namespace(request: Any, **kwargs: Any) -> Any:
            try:
                payload = webhook.admission_request(request)
            except webhook.BadReview as exc:  # refused with the reason, never a 500
                logging.getLogger(__name__).warning("malformed AdmissionReview: %s", exc)
                return webhook.refusal(request, f"malformed AdmissionReview: {exc}")
            obj, namespace = payload.get("object"), payload.get("namespace")
            if isinstance(obj, dict) and namespace:
                obj.setdefault("metadata", {}).setdefault("namespace", namespace)
            return await fn(request, **kwargs)

        async for client_config in super().__call__(with_namespace):
            yield client_config


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Read the operator's settings from the environment and configure kopf with them."""
    try:
        runtime.settings = settings_mod.from_env(os.environ)
    except ConfigError as exc:
        raise kopf.PermanentError(f"bad operator settings: {exc}") from exc  # stops the operator
    cfg = runtime.settings
    logging.getLogger().setLevel(cfg.log_level)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # not a line per API request
    for handler in logging.getLogger().handlers:  # kopf's; a URL password never gets out
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.WARNING  # events for problems, not for every success
    if cfg.peering:
        # Replicas elect one to reconcile through the peering object; the rest stand by and
        # serve the webhook. The oldest replica wins, so a rollout hands over only once.
        settings.peering.name = cfg.peering
        settings.peering.mandatory = True
        settings.peering.standalone = False
        settings.peering.priority = startup_priority()
        settings.peering.lifetime = cfg.peering_lifetime_s
        settings.peering.stealth = True  # no log line per keep-alive
        await _check_peering(cfg, logger)
    if cfg.namespaces:
        # Serve exactly the listed namespaces; listing them would need a cluster-wide grant,
        # and kopf retries a refused list with backoff (over a minute) before going on.
        settings.scanning.disabled = True
    tls = cfg.webhook_tls_dir
    settings.admission.managed = None  # the Helm chart owns the MutatingWebhookConfiguration
    settings.admission.server = WebhookServer(
        addr="0.0.0.0",
        port=cfg.webhook_port,
        certfile=os.path.join(tls, "tls.crt") if tls else None,
        pkeyfile=os.path.join(tls, "tls.key") if tls else None,
        insecure=not tls,
    )
    if not tls:
        logger.warning("webhook served over plain HTTP: no GATEWAY_OPERATOR_WEBHOOK_TLS_DIR")
    try:
        runtime.metrics = metrics.serve(cfg.metrics_port)
    except OSError as exc:
        raise kopf.PermanentError(f"metrics port {cfg.metrics_port}: {exc}") from exc
    if cfg.redis_url:
        runtime.redis = connect(RedisConfig(url=cfg.redis_url))
    else:
        logger.warning("no GATEWAY_OPERATOR_REDIS_URL: GameTable status has no live data")


def startup_priority(now_s: float | None = None) -> int:
    """The peering priority of a replica started at ``now_s``: the earlier, the higher.

    A random tail separates replicas started in the same millisecond: kopf pauses every
    replica of an equal priority.
    """
    started_ms = int((time.time() if now_s is None else now_s) * 1000)
    return -(started_ms * 1000 + random.randrange(1000))


async def _check_peering(cfg: settings_mod.OperatorSettings, logger: kopf.Logger) -> None:
    """Say so when a peering object is missing: kopf then pauses every replica, silently."""
    for namespace in cfg.namespaces or (None,):
        kind = f"KopfPeering {namespace}/" if namespace else "ClusterKopfPeering "
        try:
            if not await _api().peering_exists(cfg.peering, namespace):
                logger.warning(
                    "no %s%s: the operator stays paused until it exists (the Helm chart "
                    "creates it)",
                    kind,
                    cfg.peering,
                )
        except ApiError as exc:
            logger.warning("cannot read %s%s: %s", kind, cfg.peering, exc)


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, the kubeconfig (KUBECONFIG), as KubeApi."""
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    """Close the API and Redis clients and the metrics endpoint when the operator stops."""
    if runtime.metrics is not None:
        await runtime.metrics.aclose()
    if runtime.api is not None:
        await runtime.api.aclose()
    if runtime.redis is not None:
        await runtime.redis.aclose()


def _api() -> KubeApi:
    if runtime.api is None:
        runtime.api = KubeApi()
    return runtime.api


@kopf.on.resume(*GAMETABLES)
@kopf.on.create(*GAMETABLES)
@kopf.on.update(*GAMETABLES, field="spec")
async def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Render the spec into the table's ConfigMap and report it in status."""
    status, error = await sync(body)
    patch.status.update(status)
    if error is not None:
        raise error


@kopf.timer(*GAMETABLES, id=REFRESH, interval=_interval_from_env(), initial_delay=1)
async def refresh(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Live status from Redis; also puts back a ConfigMap that was edited or deleted.

    A failure is in the status (the ConfigRendered condition) and in the log, once per
    new message: the timer runs again at its interval whatever happened.
    """
    started = time.monotonic()
    status, error = await sync(body)
    metrics.refreshed(error is None, time.monotonic() - started)
    metrics.observe_active()  # only the elected replica runs timers
    current = dict(body.status)
    if error is not None and _rendered_message(current) != _rendered_message(status):
        logger.warning("status refresh: %s", error)
    if any(current.get(k) != v for k, v in status.items()):
        patch.status.update(status)


def _rendered_message(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == st.RENDERED:
            return str(condition.get("message", ""))
    return ""


def _timer_without_finalizer(handler_id: str) -> None:
    """kopf blocks deletion with a finalizer for every timer, so that it can stop the timer
    first. The refresh needs no clean-up, and with that finalizer a GameTable cannot be
    deleted while no operator runs (after an uninstall). kopf removes the finalizer from
    objects that have it once no handler requires it.
    """
    spawning = kopf.get_default_registry()._spawning
    for i, handler in enumerate(spawning._handlers):
        if handler.id == handler_id:
            spawning._handlers[i] = dataclasses.replace(handler, requires_finalizer=False)
            return
    raise AssertionError(f"no timer {handler_id!r} registered")  # pragma: no cover


_timer_without_finalizer(REFRESH)


async def sync(body: Mapping[str, Any]) -> tuple[dict[str, Any], Exception | None]:
    """Render and apply the ConfigMap, observe the sidecars: the status, and an error to raise.

    An invalid spec is a permanent error (retried only when the spec changes); an API
    failure is temporary: a conflict or an unreachable server soon, a refusal later.
    """
    meta, spec = body.get("metadata", {}), body.get("spec", {})
    generation = int(meta.get("generation") or 0)
    previous = (body.get("status") or {}).get("conditions")
    error: kopf.PermanentError | kopf.TemporaryError | None = None
    try:
        configmap = render_configmap(body)
    except InvalidGameTable as exc:
        rendered = st.Rendered(False, "InvalidSpec", exc.message)
        error = kopf.PermanentError(exc.message)
        metrics.reconciled("invalid_spec")
    else:
        name = configmap["metadata"]["name"]
        try:
            outcome = await apply_configmap(_api(), configmap, owner_uid=str(meta.get("uid")))
        except ApiError as exc:
            rendered = st.Rendered(False, "ApplyFailed", exc.message)
            soon = exc.status in (0, 409, 429) or exc.status >= 500
            error = kopf.TemporaryError(exc.message, delay=2 if soon else 30)
            metrics.applied("refused" if exc.reason == FOREIGN else "error")
            metrics.reconciled("apply_failed")
        else:
            rendered = st.Rendered(
                True, "Rendered", f"ConfigMap {name} holds generation {generation}"
            )
            metrics.applied(outcome)
            metrics.reconciled("rendered")
    seen = await st.observe(runtime.redis, {"spec": spec}) if spec else st.Observed()
    return st.status_patch(generation, rendered, seen, previous), error


async def apply_configmap(api: KubeApi, configmap: Mapping[str, Any], owner_uid: str) -> str:
    """Create or update the ConfigMap by server-side apply; 'created', 'updated' or 'unchanged'.

    A ConfigMap of that name owned by something else is never taken over (ApiError 409):
    a new one is applied without force, so one made meanwhile by anybody else conflicts;
    one this GameTable owns is applied with force and carries the resourceVersion it was
    read at, so edits by hand are taken back and a concurrent writer makes it fail with 409
    (the handler retries on fresh data).
    """
    meta = configmap["metadata"]
    current = await api.get_configmap(meta["namespace"], meta["name"])
    if current is None:
        await api.apply_configmap(configmap, force=False)
        return "created"
    cmeta = current.get("metadata") or {}
    owners = cmeta.get("ownerReferences") or []
    if not any(o.get("uid") == owner_uid for o in owners):
        raise ApiError(
            409,
            FOREIGN,
            f"ConfigMap {meta['namespace']}/{meta['name']} exists and is not owned by this "
            "GameTable; delete or rename it",
        )
    data = current.get("data") or {}
    labels = cmeta.get("labels") or {}
    stale = _applied_data_keys(cmeta) - set(configmap["data"])
    same_data = all(data.get(k) == v for k, v in configmap["data"].items())
    if same_data and not stale and all(labels.get(k) == v for k, v in meta["labels"].items()):
        return "unchanged"
    pinned = {**meta, "resourceVersion": cmeta.get("resourceVersion")}
    await api.apply_configmap({**configmap, "metadata": pinned}, force=True)
    return "updated"


def _applied_data_keys(meta: Mapping[str, Any]) -> set[str]:
    """The ``data`` keys the operator's field manager holds by apply."""
    keys: set[str] = set()
    for entry in meta.get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply":
            fields = (entry.get("fieldsV1") or {}).get("f:data") or {}
            keys.update(k[2:] for k in fields if k.startswith("f:"))
    return keys


@kopf.on.mutate(
    "v1",
    "pods",
    id="inject-sidecar",
    operations=["CREATE"],
    labels={webhook.LABEL: kopf.PRESENT},
)
async def inject_sidecar(
    body: kopf.Body,
    patch: kopf.Patch,
    namespace: str | None,
    labels: Mapping[str, str],
    **_: Any,
) -> None:
    """Add the sidecar of the pod's GameTable; refuse the pod if that table is unusable.

    The GameTable is read from the API server, not from a cache: every replica serves the
    webhook, and a standby replica does not watch.
    """
    try:
        pod = await _injected(body, namespace, labels[webhook.LABEL])
    except kopf.AdmissionError as exc:
        metrics.admitted("error" if exc.code == UNAVAILABLE else "refused")
        raise
    metrics.admitted("injected")

    def replace(target: kopf.RawBody) -> None:
        target["metadata"], target["spec"] = pod["metadata"], pod["spec"]

    patch.fns.append(replace)


async def _injected(body: kopf.Body, namespace: str | None, name: str) -> dict[str, Any]:
    """The pod with the sidecar of its GameTable; AdmissionError for a pod to refuse."""
    where = f"GameTable {namespace}/{name} (pod label {webhook.LABEL})"
    if not namespace:
        raise kopf.AdmissionError(f"{where}: the pod has no namespace", code=400)
    try:
        gametable = await _api().get_gametable(namespace, name)
    except ApiError as exc:
        raise kopf.AdmissionError(f"{where}: cannot be read: {exc}", code=UNAVAILABLE) from exc
    if gametable is None:
        raise kopf.AdmissionError(f"{where} does not exist; create it first", code=400)
    try:
        render_config(gametable)  # the same validation the operator applies
        return webhook.inject(body, gametable, runtime.settings.sidecar)
    except (InvalidGameTable, webhook.CannotInject) as exc:
        raise kopf.AdmissionError(f"{where}: {exc}", code=400) from exc
