"""A Kubernetes API server stand-in for the operator tests: kmock, plus the bookkeeping a real
API server does that the operator depends on.

kmock (the emulator kopf's own tests use) stores objects and serves discovery, list, watch,
get, create, merge-patch and delete. On top of it this adds what a real API server (and its
garbage collector) would do: ``uid``, ``creationTimestamp`` and ``resourceVersion`` on
create; ``generation`` bumped by spec changes only; the ``status`` subresource (a status
patch changes only status, a main-resource patch never changes status); 409 Conflict on a
stale ``resourceVersion``; cascading deletion of dependents by ``ownerReferences``.

Run as a process: ``python -m tests.operator.kube_api --port P`` prints ``ready`` when it
serves on ``http://127.0.0.1:P``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import sys
import uuid
from typing import Any

import aiohttp.web
import kmock
import yaml

from gametable_operator.render import GROUP, VERSION

GAMETABLES = f"{GROUP}/{VERSION}/gametables"
_versions = itertools.count(1)


class KubeApi(kmock.KubernetesEmulator):  # type: ignore[misc]
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            # As the Helm chart's RBAC has it: the operator may not list namespaces.
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                      "reason": "Forbidden", "message": "namespaces is forbidden"}  # fmt: skip
            return aiohttp.web.json_response(status, status=403)
        return await super().__call__(raw_request)  # type: ignore[no-any-return]

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        try:
            self._bookkeeping(request)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)  # type: ignore[no-any-return]
        before = self._current(request)
        response = await super()._handle(request)
        if before is not None and self._current(request) is None:  # gone, finalizers done
            await self._delete_dependents(before["metadata"]["uid"])
        return response  # type: ignore[no-any-return]

    def _bookkeeping(self, request: kmock.Request) -> None:
        """Adjust the request the way a real API server would."""
        if request.resource is None:
            return
        data = request.data if isinstance(request.data, dict) else None
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if request.action == kmock.action.CREATE and data is not None:
            meta = data.setdefault("metadata", {})
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now, generation=1,
                        resourceVersion=str(next(_versions)))  # fmt: skip
            if request.namespace:
                meta["namespace"] = request.namespace
            return
        current = self._current(request)
        if current is None or request.action != kmock.action.UPDATE or data is None:
            return
        meta = data.setdefault("metadata", {}) if request.subresource is None else {}
        wanted = (data.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"].get("resourceVersion"):
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message="the object has been modified; please apply your changes to the "
                "latest version and try again",
            )  # fmt: skip
        if request.subresource == "status":
            for key in list(data):
                if key != "status":
                    del data[key]
            data["metadata"] = meta = {}
        elif self._has_status(request):
            data.pop("status", None)
        if "spec" in data and _merged(current.get("spec"), data["spec"]) != current.get("spec"):
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = str(next(_versions))

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if request.resource is None or request.name is None:
            return None
        if key not in self.objects or self.objects[key].deleted:
            return None
        return dict(self.objects[key].raw)

    def _has_status(self, request: kmock.Request) -> bool:
        info = self.resources.get(request.resource) if request.resource else None
        return bool(info is not None and "status" in info.subresources)

    async def _delete_dependents(self, owner_uid: str) -> None:
        """The garbage collector's part: delete every object owned by ``owner_uid``."""
        for (resource, namespace, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            owners = obj.get("metadata", {}).get("ownerReferences") or []
            if any(o.get("uid") == owner_uid for o in owners):
                path = _path(resource, namespace, name)
                url = f"{self.servers[0].url}{path}"
                async with aiohttp.ClientSession() as session, session.delete(url) as r:
                    r.raise_for_status()


def _merged(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return patch
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merged(base.get(k), v)
    return out


def _path(resource: kmock.resource, namespace: str | None, name: str) -> str:
    base = f"/api/{resource.version}" if not resource.group else (
        f"/apis/{resource.group}/{resource.version}")  # fmt: skip
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{ns}/{resource.plural}/{name}"


def make_api() -> KubeApi:
    api = KubeApi()
    api.resources.load_bundled()
    with open(_crd_path()) as f:
        crd = yaml.safe_load(f)
    names = crd["spec"]["names"]
    api.resources[GAMETABLES] = kmock.ResourceInfo(
        namespaced=True, kind=names["kind"], singular=names["singular"],
        shortnames=set(names["shortNames"]), subresources={"status"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    )  # fmt: skip
    return api


def _crd_path() -> str:
    from importlib.resources import files

    return str(files("gametable_operator") / "crd.yaml")


async def _main(port: int) -> None:
    async with make_api() as api, kmock.Server(api, port=port):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.port))
    except KeyboardInterrupt:
        sys.exit(0)
