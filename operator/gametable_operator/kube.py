"""A small Kubernetes API client on aiohttp, with the credentials kopf logged in with.

kopf is not a client library; the operator needs only get, create and merge-patch of its
ConfigMaps, so this is a few requests rather than another dependency.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

TIMEOUT_S = 10.0


class ApiError(Exception):
    """The API server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message


class KubeApi:
    """One session against one API server; ``relogin`` is asked for fresh credentials on 401."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        relogin: Callable[[], kopf.ConnectionInfo | None] | None = None,
    ) -> None:
        self._info = info
        self._relogin = relogin
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            info = self._info
            headers = {"Accept": "application/json"}
            auth = None
            if info.token:
                headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
            elif info.username and info.password:
                auth = aiohttp.BasicAuth(info.username, info.password)
            connector = aiohttp.TCPConnector(ssl=_ssl_context(info))
            self._session = aiohttp.ClientSession(
                base_url=info.server.rstrip("/") + "/",
                headers=headers,
                auth=auth,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The JSON answer; None for 404 on GET; ApiError for any other failure."""
        for attempt in (1, 2):
            headers = {}
            if method == "PATCH":
                headers["Content-Type"] = "application/merge-patch+json"
            data = None if body is None else json.dumps(body)
            try:
                async with self._open().request(
                    method, path.lstrip("/"), data=data, headers=headers or None
                ) as r:
                    text = await r.text()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(0, "Unreachable", f"{method} {path}: {exc!r}") from exc
            if status == 401 and attempt == 1 and self._relogin is not None:
                fresh = self._relogin()
                if fresh is not None:
                    await self.aclose()
                    self._info = fresh
                    continue
            if status == 404 and method == "GET":
                return None
            if status >= 400:
                raise _error(status, method, path, text)
            return dict(json.loads(text)) if text else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None if it does not exist."""
        return await self.request("GET", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``body`` in the collection at ``path``; the stored object."""
        return await self.request("POST", path, body) or {}

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch to the object at ``path``; the stored object."""
        return await self.request("PATCH", path, body) or {}


def _error(status: int, method: str, path: str, text: str) -> ApiError:
    try:
        doc = json.loads(text)
        reason, message = str(doc.get("reason", "")), str(doc.get("message", text))
    except ValueError:
        reason, message = "", text
    return ApiError(status, reason or "Error", f"{method} {path}: {message[:500]}")


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cadata = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
    ctx = ssl.create_default_context(cafile=info.ca_path or None, cadata=cadata or None)
    cert, key = info.certificate_path, info.private_key_path
    with tempfile.TemporaryDirectory() as tmp:
        if info.certificate_data:
            cert = _write(tmp, "tls.crt", info.certificate_data)
        if info.private_key_data:
            key = _write(tmp, "tls.key", info.private_key_data)
        if cert:
            ctx.load_cert_chain(cert, key or None)
    return ctx


def _write(directory: str, name: str, data: str | bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path
