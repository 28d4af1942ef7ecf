"""The operator's Kubernetes API client: lightkube, with server-side apply for what it owns.

kopf watches and patches the GameTables; this client does the rest: it reads a GameTable
for the admission webhook and reads and server-side applies the tables' ConfigMaps, under
the field manager ``gateway-operator``. Credentials come from the pod's service account
(the token file is re-read as the kubelet rotates it) or, outside a cluster, from
``KUBECONFIG``, as kopf's own login does. Every failure is an ``ApiError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import httpx2
import lightkube
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.core_v1 import ConfigMap

from gametable_operator.render import GROUP, VERSION

FIELD_MANAGER = "gateway-operator"
TIMEOUT_S = 10.0

GameTable = create_namespaced_resource(GROUP, VERSION, "GameTable", "gametables")
KopfPeering = create_namespaced_resource("kopf.dev", "v1", "KopfPeering", "kopfpeerings")
ClusterKopfPeering = create_global_resource(
    "kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings"
)


class ApiError(Exception):
    """The API server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message


class KubeApi:
    """One lazily opened client against the API server the operator runs under."""

    def __init__(self, config: KubeConfig | None = None) -> None:
        self._config = config
        self._client: lightkube.AsyncClient | None = None

    def _open(self) -> lightkube.AsyncClient:
        if self._client is None:
            try:
                config = self._config or KubeConfig.from_env()
                self._client = lightkube.AsyncClient(
                    config, timeout=httpx2.Timeout(TIMEOUT_S), field_manager=FIELD_MANAGER
                )
            except LightkubeConfigError as exc:
                raise ApiError(0, "NoCredentials", f"no API server credentials: {exc}") from exc
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap, or None if there is none of that name."""
        return await self._get(ConfigMap, "ConfigMap", name, namespace)

    async def get_gametable(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The GameTable, or None if there is none of that name."""
        return await self._get(GameTable, "GameTable", name, namespace)

    async def peering_exists(self, name: str, namespace: str | None) -> bool:
        """Whether kopf's peering object is there (a KopfPeering, or cluster-wide without
        ``namespace``); without it every replica of a peered operator stays paused."""
        if namespace is None:
            found = await self._get(ClusterKopfPeering, "ClusterKopfPeering", name, None)
        else:
            found = await self._get(KopfPeering, "KopfPeering", name, namespace)
        return found is not None

    async def _get(
        self, resource: Any, kind: str, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        """One object as a dict; None for 404; ApiError for any other failure."""
        where = f"GET {kind} {namespace + '/' if namespace else ''}{name}"
        try:
            if namespace is None:
                found = await self._open().get(resource, name)
            else:
                found = await self._open().get(resource, name, namespace=namespace)
        except httpx2.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise _refused(where, exc) from exc
        except (httpx2.HTTPError, OSError) as exc:
            raise ApiError(0, "Unreachable", f"{where}: {exc!r}") from exc
        return dict(found.to_dict())

    async def apply_configmap(self, body: Mapping[str, Any], *, force: bool) -> dict[str, Any]:
        """Server-side apply ``body`` as the operator's field manager; the stored object.

        Without ``force`` a field another manager holds is a 409 conflict; with it the
        operator takes those fields back. Keys the operator applied before and leaves out
        now are removed by the API server, unless another manager also holds them.
        """
        meta = body["metadata"]
        where = f"APPLY ConfigMap {meta['namespace']}/{meta['name']}"
        try:
            obj = cast(ConfigMap, ConfigMap.from_dict(dict(body)))
            stored = await self._open().apply(obj, force=force)
        except httpx2.HTTPStatusError as exc:
            raise _refused(where, exc) from exc
        except (httpx2.HTTPError, OSError) as exc:
            raise ApiError(0, "Unreachable", f"{where}: {exc!r}") from exc
        return dict(stored.to_dict())


def _refused(where: str, exc: httpx2.HTTPStatusError) -> ApiError:
    """lightkube raises its ApiError when the answer is a Status; plain HTTP errors otherwise."""
    code = exc.response.status_code
    if isinstance(exc, lightkube.ApiError):
        reason, message = exc.status.reason, exc.status.message
    else:
        reason, message = exc.response.reason_phrase, exc.response.text
    return ApiError(code, str(reason or "Error"), f"{where}: {str(message or '')[:500]}")
