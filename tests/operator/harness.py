"""The operator under test: ``kopf run`` against the API emulator process (kube_api.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gametable_operator.render import GROUP, VERSION
from gateway.devtools.sandbox import free_port
from tests.admission import review

GT_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/gametables"
CM_PATH = "/api/v1/namespaces/{ns}/configmaps"
SIDECAR = {"image": "registry.example/studio-gateway:0.1.0", "metricsPort": 9464}


class Cluster:
    """An HTTP client of the emulated API server, as kubectl would use it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(base_url=url)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def create_gametable(self, ns: str, gametable: dict[str, Any]) -> dict[str, Any]:
        gametable = {**gametable, "metadata": {**gametable["metadata"], "namespace": ns}}
        status, body = await self.request("POST", GT_PATH.format(ns=ns), gametable)
        assert status in (200, 201), body
        return dict(body)

    async def gametable(self, ns: str, name: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", f"{GT_PATH.format(ns=ns)}/{name}")
        return dict(body) if status == 200 else None

    async def patch_gametable(self, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        status, body = await self.request("PATCH", f"{GT_PATH.format(ns=ns)}/{name}", patch)
        assert status == 200, body
        return dict(body)

    async def delete_gametable(self, ns: str, name: str) -> None:
        status, body = await self.request("DELETE", f"{GT_PATH.format(ns=ns)}/{name}")
        assert status == 200, body

    async def configmap(self, ns: str, name: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", f"{CM_PATH.format(ns=ns)}/{name}")
        return dict(body) if status == 200 else None

    async def create_peering(self, name: str, namespace: str | None = None) -> None:
        """The kopf peering object the operator replicas elect through (the chart makes it)."""
        kind, plural = ("KopfPeering", "kopfpeerings") if namespace else (
            "ClusterKopfPeering", "clusterkopfpeerings")  # fmt: skip
        ns = f"/namespaces/{namespace}" if namespace else ""
        body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": name}}
        status, answer = await self.request("POST", f"/apis/kopf.dev/v1{ns}/{plural}", body)
        assert status in (200, 201), answer

    async def aclose(self) -> None:
        await self.session.close()


class Operator:
    """``kopf run`` of the real operator module, its log in a file."""

    def __init__(self, log: Path, webhook_port: int, liveness_port: int) -> None:
        self.log = log
        self.webhook_url = f"http://127.0.0.1:{webhook_port}"
        self.liveness_url = f"http://127.0.0.1:{liveness_port}/healthz"
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        self.proc: asyncio.subprocess.Process | None = None

    def lines(self, text: str) -> list[str]:
        """Log lines containing ``text``."""
        return [line for line in self.log.read_text().splitlines() if text in line]


async def _started(argv: list[str], log: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
        )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def kube_api(workdir: Path) -> AsyncIterator[Cluster]:
    """The emulator in its own process; yields a client once it serves."""
    port = free_port()
    log = workdir / "kube-api.log"
    argv = [sys.executable, "-m", "tests.operator.kube_api", "--port", str(port)]
    proc = await _started(argv, log, dict(os.environ))
    cluster = Cluster(f"http://127.0.0.1:{port}")
    try:
        await _until_http(f"{cluster.url}/version", proc, log)
        yield cluster
    finally:
        await cluster.aclose()
        await _stop(proc)


@contextlib.asynccontextmanager
async def operator(
    workdir: Path, cluster: Cluster, redis_url: str | None, *, cli: bool = False, **env: str
) -> AsyncIterator[Operator]:
    """The real operator against the emulator; yields once it is alive.

    ``kopf run`` cluster-wide, or with ``cli`` the product's ``gateway-operator run``, which
    takes its namespaces and liveness endpoint from GATEWAY_OPERATOR_* variables.
    """
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": cluster.url}}],
                "users": [{"name": "op", "user": {"token": "operator-token"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "op"}}],
                "current-context": "emu",
            }
        )
    )
    op = Operator(workdir / "operator.log", free_port(), free_port())
    environ = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "GATEWAY_OPERATOR_WEBHOOK_PORT": op.webhook_url.rsplit(":", 1)[1],
        "GATEWAY_OPERATOR_STATUS_INTERVAL_S": "1",
        "GATEWAY_OPERATOR_SIDECAR": json.dumps(SIDECAR),
        "GATEWAY_OPERATOR_LIVENESS": op.liveness_url,
        "GATEWAY_OPERATOR_METRICS_PORT": op.metrics_url.rsplit(":", 1)[1].split("/")[0],
        **({"GATEWAY_OPERATOR_REDIS_URL": redis_url} if redis_url else {}),
        **env,
    }
    argv = [
        sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
        "-m", "gametable_operator.handlers", "--liveness", op.liveness_url,
    ]  # fmt: skip
    if cli:
        argv = [sys.executable, "-m", "gametable_operator.cli", "run"]
    op.proc = await _started(argv, op.log, environ)
    try:
        await _until_http(op.liveness_url, op.proc, op.log)
        yield op
    finally:
        await _stop(op.proc)


async def _until_http(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: process exited {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within 10 s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return "\n".join(log.read_text().splitlines()[-40:])


async def eventually(probe: Callable[[], Any], limit_s: float, what: str) -> Any:
    """Poll the (async) ``probe`` until it returns something truthy; its last value."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {limit_s} s: {what} (last: {value!r})")
        await asyncio.sleep(0.1)


def condition(gametable: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((gametable or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def gametable(name: str, code: str, broker_port: int = 1883, **spec: Any) -> dict[str, Any]:
    """A valid roulette GameTable with one broker."""
    return {
        "apiVersion": "studio.gateway.dev/v1alpha1",
        "kind": "GameTable",
        "metadata": {"name": name},
        "spec": {
            "game": "roulette",
            "tableCode": code,
            "brokerGroup": {
                "name": f"group-{name}",
                "brokers": [
                    {
                        "id": "b1",
                        "host": "127.0.0.1",
                        "port": broker_port,
                        "priority": 1,
                        "credentialsSecret": {"name": "b1-credentials"},
                    }
                ],
            },
            "redis": {"urlSecret": {"name": "redis", "key": "url"}},
            "detect": {"timeoutSeconds": 5, "retryCount": 2, "retryDelaySeconds": 0.2},
            **spec,
        },
    }


def game_pod(labels: dict[str, str]) -> dict[str, Any]:
    """A pod as a ReplicaSet sends it: generateName, and no metadata.namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "roulette-7d9f-", "labels": labels},
        "spec": {"containers": [{"name": "game", "image": "studio/roulette:5"}]},
    }


async def admit(cluster: Cluster, op: Operator, pod: dict[str, Any], ns: str) -> dict[str, Any]:
    """The webhook's AdmissionReview response for ``pod`` created in ``ns``."""
    async with cluster.session.post(f"{op.webhook_url}/inject-sidecar", json=review(pod, ns)) as r:
        assert r.status == 200, await r.text()
        answer = await r.json()
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    return dict(answer["response"])
