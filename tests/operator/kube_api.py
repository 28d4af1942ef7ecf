"""A Kubernetes API server stand-in for the operator tests: kmock, plus the bookkeeping a real
API server does that the operator depends on.

kmock (the emulator kopf's own tests use) stores objects and serves discovery, list, watch,
get, create, merge-patch and delete. On top of it this adds what a real API server (and its
garbage collector) would do: ``uid``, ``creationTimestamp`` and ``resourceVersion`` on
create; ``generation`` bumped by spec changes only; the ``status`` subresource (a status
patch changes only status, a main-resource patch never changes status); 409 Conflict on a
stale ``resourceVersion``; cascading deletion of dependents by ``ownerReferences``; field
managers in ``managedFields`` and server-side apply (``fields.py``).

Run as a process: ``python -m tests.operator.kube_api --port P`` prints ``ready`` when it
serves on ``http://127.0.0.1:P``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import sys
import uuid
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from gametable_operator.render import GROUP, VERSION
from tests.operator import fields

GAMETABLES = f"{GROUP}/{VERSION}/gametables"
PEERINGS = (
    ("kopfpeerings", "KopfPeering", True),
    ("clusterkopfpeerings", "ClusterKopfPeering", False),
)
_versions = itertools.count(1)
APPLIED = "X-Emulator-Applied"  # a write an apply turned into: its managedFields are set


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
            applying = _is_apply(request) or APPLIED in request.headers
            if _is_apply(request):  # served as the POST or merge patch it amounts to
                return await self._forward(self._applied(request))
            self._bookkeeping(request)
            if request.subresource is None and not applying:
                self._record_manager(request)
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

    def _applied(self, request: kmock.Request) -> kmock.Request:
        """A server-side apply, turned into the create or merge patch it amounts to."""
        manager = request.params.get("fieldManager")
        if not manager:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest",
                message="fieldManager is required for apply requests",
            )  # fmt: skip
        if not isinstance(request.data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="not an object")
        current = self._current(request)
        force = request.params.get("force") == "true"
        try:
            new, patch = fields.apply(current, request.data, manager, force)
        except fields.Conflict as exc:
            raise kmock.KubernetesError(status=409, reason="Conflict", message=str(exc)) from exc
        if current is None:
            new.setdefault("metadata", {})["namespace"] = request.namespace
            return attrs.evolve(request, action=kmock.action.CREATE, data=new)  # type: ignore[misc]
        return attrs.evolve(request, data=patch)  # type: ignore[misc]

    async def _forward(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Send the create or merge patch an apply amounts to, and answer with its answer."""
        path = str(request.url.path)
        if request.action == kmock.action.CREATE:
            method, path = "POST", path.rsplit("/", 1)[0]
            headers = {APPLIED: "1"}
        else:
            method, headers = (
                "PATCH",
                {APPLIED: "1", "Content-Type": "application/merge-patch+json"},
            )
        url = f"{self.servers[0].url}{path}"
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, data=json.dumps(request.data), headers=headers) as r,
        ):
            return aiohttp.web.json_response(await r.json(content_type=None), status=r.status)

    def _record_manager(self, request: kmock.Request) -> None:
        """The field manager of a create or merge patch, as the API server records it."""
        if request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return
        if not isinstance(request.data, dict):
            return
        agent = request.headers.get("User-Agent", "unknown").split("/", 1)[0]
        manager = request.params.get("fieldManager") or agent
        fields.record_update(self._current(request), request.data, manager)

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


def _is_apply(request: kmock.Request) -> bool:
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip()
    return request.action == kmock.action.UPDATE and content_type == fields.APPLY_TYPE


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
    for plural, kind, namespaced in PEERINGS:  # kopf's, as the chart installs them
        api.resources[f"kopf.dev/v1/{plural}"] = kmock.ResourceInfo(
            namespaced=namespaced, kind=kind, singular=kind.lower(),
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
