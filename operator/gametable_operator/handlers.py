"""kopf handlers of the GameTable operator: wiring only.

Run with ``gateway-operator run`` (or ``kopf run --standalone -m gametable_operator.handlers``).
Rendering is in ``render.py``, status in ``status.py``, the pod mutation in ``webhook.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import redis.asyncio as redis

from gametable_operator import settings as settings_mod
from gametable_operator import status as st
from gametable_operator import webhook
from gametable_operator.kube import ApiError, KubeApi
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
    connection: kopf.ConnectionInfo | None = None
    api: KubeApi | None = None
    redis: redis.Redis | None = None


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
    for handler in logging.getLogger().handlers:  # kopf's; a URL password never gets out
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.WARNING  # events for problems, not for every success
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
    if cfg.redis_url:
        runtime.redis = connect(RedisConfig(url=cfg.redis_url))
    else:
        logger.warning("no GATEWAY_OPERATOR_REDIS_URL: GameTable status has no live data")


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, the kubeconfig (KUBECONFIG)."""
    info = _login(settings)
    runtime.connection = info
    return info


def _login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    """Close the API and Redis clients when the operator stops."""
    if runtime.api is not None:
        await runtime.api.aclose()
    if runtime.redis is not None:
        await runtime.redis.aclose()


def _api() -> KubeApi:
    if runtime.api is None:
        if runtime.connection is None:
            raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
        settings = kopf.OperatorSettings()
        runtime.api = KubeApi(runtime.connection, relogin=lambda: _login(settings))
    return runtime.api


@kopf.index(*GAMETABLES)
def gametables(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """Every GameTable by (namespace, name), for the webhook."""
    return {(namespace, name): {"metadata": dict(body.metadata), "spec": dict(body.spec)}}


@kopf.on.resume(*GAMETABLES)
@kopf.on.create(*GAMETABLES)
@kopf.on.update(*GAMETABLES, field="spec")
async def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Render the spec into the table's ConfigMap and report it in status."""
    status, error = await sync(body)
    patch.status.update(status)
    if error is not None:
        raise error


@kopf.timer(*GAMETABLES, interval=_interval_from_env(), initial_delay=1)
async def refresh(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Live status from Redis; also puts back a ConfigMap that was edited or deleted."""
    status, _error = await sync(body)
    current = dict(body.status)
    if any(current.get(k) != v for k, v in status.items()):
        patch.status.update(status)


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
    else:
        name = configmap["metadata"]["name"]
        try:
            await apply_configmap(_api(), configmap, owner_uid=str(meta.get("uid")))
        except ApiError as exc:
            rendered = st.Rendered(False, "ApplyFailed", exc.message)
            soon = exc.status in (0, 409, 429) or exc.status >= 500
            error = kopf.TemporaryError(exc.message, delay=2 if soon else 30)
        else:
            rendered = st.Rendered(
                True, "Rendered", f"ConfigMap {name} holds generation {generation}"
            )
    seen = await st.observe(runtime.redis, {"spec": spec}) if spec else st.Observed()
    return st.status_patch(generation, rendered, seen, previous), error


async def apply_configmap(api: KubeApi, configmap: Mapping[str, Any], owner_uid: str) -> str:
    """Create or update the ConfigMap; 'created', 'updated' or 'unchanged'.

    A ConfigMap of that name owned by something else is never taken over (ApiError 409).
    The update carries the resourceVersion it read, so a concurrent writer makes it fail
    with 409 and the handler retries on fresh data.
    """
    meta = configmap["metadata"]
    collection = f"/api/v1/namespaces/{meta['namespace']}/configmaps"
    path = f"{collection}/{meta['name']}"
    current = await api.get(path)
    if current is None:
        try:
            await api.create(collection, configmap)
            return "created"
        except ApiError as exc:
            if exc.status != 409:
                raise
            current = await api.get(path)
            if current is None:
                raise
    cmeta = current.get("metadata") or {}
    owners = cmeta.get("ownerReferences") or []
    if not any(o.get("uid") == owner_uid for o in owners):
        raise ApiError(
            409,
            "AlreadyExists",
            f"ConfigMap {meta['namespace']}/{meta['name']} exists and is not owned by this "
            "GameTable; delete or rename it",
        )
    data = current.get("data") or {}
    labels = cmeta.get("labels") or {}
    if data == configmap["data"] and all(labels.get(k) == v for k, v in meta["labels"].items()):
        return "unchanged"
    stale = {k: None for k in data if k not in configmap["data"]}
    await api.merge_patch(
        path,
        {
            "metadata": {"resourceVersion": cmeta.get("resourceVersion"), "labels": meta["labels"]},
            "data": {**stale, **configmap["data"]},
        },
    )
    return "updated"


@kopf.on.mutate(
    "v1",
    "pods",
    id="inject-sidecar",
    operations=["CREATE"],
    labels={webhook.LABEL: kopf.PRESENT},
)
def inject_sidecar(
    body: kopf.Body,
    patch: kopf.Patch,
    namespace: str | None,
    labels: Mapping[str, str],
    **kwargs: Any,
) -> None:
    """Add the sidecar of the pod's GameTable; refuse the pod if that table is unusable."""
    gametables: kopf.Index[Any, Any] = kwargs["gametables"]  # kopf passes indices by name
    name = labels[webhook.LABEL]
    where = f"GameTable {namespace}/{name} (pod label {webhook.LABEL})"
    found = list(gametables.get((namespace, name), []))
    if not found:
        raise kopf.AdmissionError(f"{where} does not exist; create it first", code=400)
    gametable = found[0]
    try:
        render_config(gametable)  # the same validation the operator applies
        pod = webhook.inject(body, gametable, runtime.settings.sidecar)
    except (InvalidGameTable, webhook.CannotInject) as exc:
        raise kopf.AdmissionError(f"{where}: {exc}", code=400) from exc

    def replace(target: kopf.RawBody) -> None:
        target["metadata"], target["spec"] = pod["metadata"], pod["spec"]

    patch.fns.append(replace)
