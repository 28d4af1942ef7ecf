"""The real operator under ``kopf run``, against a Kubernetes API emulator process.

No cluster exists here: the API server is kmock (``kube_api.py``), which adds uids,
generations, the status subresource, optimistic concurrency and owner-reference garbage
collection. What these tests show about a real API server is as good as that stand-in.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest

from gametable_operator.render import render_configmap
from gateway.config import load_config
from gateway.devtools.sandbox import MosquittoProcess, RedisProcess
from tests.admission import review
from tests.integration.harness import Stack
from tests.integration.test_reload import KubeletDir
from tests.operator.harness import (
    SIDECAR,
    Cluster,
    Operator,
    admit,
    condition,
    eventually,
    game_pod,
    gametable,
    kube_api,
    operator,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
async def redis_server() -> AsyncIterator[RedisProcess]:
    async with RedisProcess() as r:
        yield r


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with kube_api(tmp_path_factory.mktemp("kube")) as c:
        yield c


@pytest.fixture(scope="module")
async def op(
    tmp_path_factory: pytest.TempPathFactory, cluster: Cluster, redis_server: RedisProcess
) -> AsyncIterator[Operator]:
    async with operator(tmp_path_factory.mktemp("operator"), cluster, redis_server.url) as o:
        yield o


async def test_create_update_delete(cluster: Cluster, op: Operator) -> None:
    """Create → owned ConfigMap and status; spec update → generation 2 everywhere; delete → gone."""
    created = await cluster.create_gametable("t-crud", gametable("aro-001", "ARO-001"))
    uid = created["metadata"]["uid"]

    async def rendered(generation: int) -> dict[str, Any] | None:
        gt = await cluster.gametable("t-crud", "aro-001")
        ok = condition(gt, "ConfigRendered").get("status") == "True"
        return gt if ok and gt and gt["status"].get("observedGeneration") == generation else None

    gt = await eventually(lambda: rendered(1), 10, "ConfigRendered on generation 1")
    cm = await cluster.configmap("t-crud", "aro-001-gateway")
    assert cm is not None
    assert cm["data"] == render_configmap(gt)["data"]  # exactly what `render` previews
    assert cm["metadata"]["ownerReferences"] == [
        {"apiVersion": "studio.gateway.dev/v1alpha1", "kind": "GameTable", "name": "aro-001",
         "uid": uid, "controller": True, "blockOwnerDeletion": True},
    ]  # fmt: skip
    doc = json.loads(cm["data"]["table.json"])
    assert doc["generation"] == 1 and doc["table"]["timeout_s"] == 5
    assert "password" not in cm["data"]["table.json"]
    # Redis is there but no sidecar reports for this table yet.
    assert condition(gt, "Ready")["reason"] == "NoSidecars"
    assert gt["status"]["liveSidecars"] == 0

    patched = await cluster.patch_gametable(
        "t-crud", "aro-001", {"spec": {"detect": {"timeoutSeconds": 7}}}
    )
    assert patched["metadata"]["generation"] == 2
    await eventually(lambda: rendered(2), 10, "ConfigRendered on generation 2")
    cm = await cluster.configmap("t-crud", "aro-001-gateway")
    assert cm is not None
    doc = json.loads(cm["data"]["table.json"])
    assert doc["generation"] == 2 and doc["table"]["timeout_s"] == 7

    # A status-only or metadata-only change is not a new generation and renders nothing.
    before = len(op.lines("[t-crud/aro-001] Handler 'reconcile' succeeded"))
    await cluster.patch_gametable("t-crud", "aro-001", {"metadata": {"labels": {"x": "y"}}})
    await asyncio.sleep(1.5)
    assert len(op.lines("[t-crud/aro-001] Handler 'reconcile' succeeded")) == before

    current = await cluster.gametable("t-crud", "aro-001")
    assert current is not None and not current["metadata"].get("finalizers")
    await cluster.delete_gametable("t-crud", "aro-001")
    assert await cluster.gametable("t-crud", "aro-001") is None  # no finalizer to wait for
    assert await cluster.configmap("t-crud", "aro-001-gateway") is None  # owner-reference GC


async def test_an_old_finalizer_is_removed(cluster: Cluster, op: Operator) -> None:
    """The finalizer an earlier operator put on GameTables for its timer is taken off, so that
    a GameTable can be deleted when no operator runs (after an uninstall)."""
    old = gametable("aro-010", "ARO-010")
    old["metadata"]["finalizers"] = ["studio.gateway.dev/operator"]
    await cluster.create_gametable("t-final", old)

    async def released() -> bool:
        gt = await cluster.gametable("t-final", "aro-010")
        return gt is not None and not gt["metadata"].get("finalizers")

    await eventually(released, 10, "the old finalizer is removed")


async def test_invalid_spec_is_a_condition_not_a_retry_loop(cluster: Cluster, op: Operator) -> None:
    """A spec the renderer rejects: one permanent failure, a clear condition, no ConfigMap."""
    bad = gametable("bac-001", "BAC-001", shaker={"name": "Billy-III"})
    bad["spec"]["game"] = "baccarat"
    await cluster.create_gametable("t-invalid", bad)

    async def rejected() -> dict[str, Any] | None:
        gt = await cluster.gametable("t-invalid", "bac-001")
        return gt if condition(gt, "ConfigRendered").get("status") == "False" else None

    gt = await eventually(rejected, 10, "ConfigRendered False")
    rendered = condition(gt, "ConfigRendered")
    assert rendered["reason"] == "InvalidSpec"
    assert "spec.shaker: only for sicbo tables" in rendered["message"]
    assert condition(gt, "Ready")["status"] == "False"
    assert gt["status"]["observedGeneration"] == 1
    version = gt["metadata"]["resourceVersion"]
    await asyncio.sleep(3.5)  # three status timer periods
    assert len(op.lines("[t-invalid/bac-001] Handler 'reconcile' failed permanently")) == 1
    assert not op.lines("[t-invalid/bac-001] Handler 'reconcile' failed temporarily")
    gt = await cluster.gametable("t-invalid", "bac-001")
    assert gt is not None and gt["metadata"]["resourceVersion"] == version  # no status churn
    assert await cluster.configmap("t-invalid", "bac-001-gateway") is None

    await cluster.patch_gametable("t-invalid", "bac-001", {"spec": {"shaker": None}})

    async def fixed() -> bool:
        gt = await cluster.gametable("t-invalid", "bac-001")
        return condition(gt, "ConfigRendered").get("status") == "True"

    await eventually(fixed, 10, "the corrected spec renders")
    assert await cluster.configmap("t-invalid", "bac-001-gateway") is not None


async def test_configmap_drift_is_repaired_and_foreign_ones_left_alone(
    cluster: Cluster, op: Operator
) -> None:
    """A deleted or edited ConfigMap comes back; one the operator does not own is not taken.

    The operator writes by server-side apply: an edited field it applied is taken back
    (forced), while a key somebody else added stays, held by that field manager.
    """
    await cluster.create_gametable("t-drift", gametable("aro-002", "ARO-002"))
    path = "/api/v1/namespaces/t-drift/configmaps/aro-002-gateway"

    async def table_json() -> str | None:
        cm = await cluster.configmap("t-drift", "aro-002-gateway")
        return None if cm is None else str(cm["data"].get("table.json"))

    original = await eventually(table_json, 10, "the ConfigMap exists")
    applied = await cluster.configmap("t-drift", "aro-002-gateway")
    assert applied is not None
    assert [(e["manager"], e["operation"]) for e in applied["metadata"]["managedFields"]] == [
        ("gateway-operator", "Apply")
    ]
    edit = {"data": {"table.json": "{}", "extra": "x"}}
    status, _ = await cluster.request("PATCH", f"{path}?fieldManager=kubectl-edit", edit)
    assert status == 200

    async def restored() -> dict[str, Any] | None:
        cm = await cluster.configmap("t-drift", "aro-002-gateway")
        return cm if cm is not None and cm["data"].get("table.json") == original else None

    cm = await eventually(restored, 10, "the edited ConfigMap is put back")
    assert cm["data"] == {"table.json": original, "extra": "x"}
    managers = {e["manager"]: e["fieldsV1"]["f:data"] for e in cm["metadata"]["managedFields"]}
    assert managers == {"gateway-operator": {"f:table.json": {}}, "kubectl-edit": {"f:extra": {}}}
    status, _ = await cluster.request("DELETE", path)
    assert status == 200
    cm = await eventually(restored, 10, "the deleted ConfigMap is re-created")
    assert cm["data"] == {"table.json": original}

    foreign = {"metadata": {"name": "aro-003-gateway"}, "data": {"table.json": "mine"}}
    status, _ = await cluster.request("POST", "/api/v1/namespaces/t-drift/configmaps", foreign)
    assert status in (200, 201)
    await cluster.create_gametable("t-drift", gametable("aro-003", "ARO-003"))

    async def refused() -> dict[str, Any]:
        gt = await cluster.gametable("t-drift", "aro-003")
        return condition(gt, "ConfigRendered") if gt else {}

    cond = await eventually(refused, 10, "ConfigRendered reports the foreign ConfigMap")
    assert cond["status"] == "False" and cond["reason"] == "ApplyFailed"
    assert "is not owned by this GameTable" in cond["message"]
    cm = await cluster.configmap("t-drift", "aro-003-gateway")
    assert cm is not None and cm["data"] == {"table.json": "mine"}  # untouched

    # A ConfigMap replaced by someone else's after the table rendered: only the status
    # refresh sees it, and logs it once, not at every refresh.
    for _ in range(20):
        await cluster.request("DELETE", path)
        taken = {"metadata": {"name": "aro-002-gateway"}, "data": {"table.json": "theirs"}}
        status, _ = await cluster.request("POST", "/api/v1/namespaces/t-drift/configmaps", taken)
        if status in (200, 201):
            break  # else the operator put its own back first: try again
    assert status in (200, 201)

    async def refresh_failed() -> list[str]:
        lines = op.lines("status refresh: ConfigMap t-drift/aro-002-gateway exists and is not")
        return [line for line in lines if "[t-drift/aro-002]" in line]

    await eventually(refresh_failed, 10, "the refresh logs the failure")
    await asyncio.sleep(2.5)  # two more refreshes
    assert len(await refresh_failed()) == 1
    gt = await cluster.gametable("t-drift", "aro-002")
    assert condition(gt, "ConfigRendered")["reason"] == "ApplyFailed"


def mount(table_json: str, root: Path, redis_url: str) -> str:
    """What kubelet gives the sidecar: the Secret files behind the paths table.json names."""
    doc = json.loads(table_json.replace("/etc/gateway/", f"{root}/etc/gateway/"))
    for broker in doc["brokers"]:
        creds = Path(broker["credentials_dir"])
        creds.mkdir(parents=True, exist_ok=True)
        (creds / "username").write_text("gateway")
        (creds / "password").write_text("secret")
    url_file = Path(doc["redis"]["url_file"])
    url_file.parent.mkdir(parents=True, exist_ok=True)
    url_file.write_text(redis_url)
    return json.dumps(doc)


async def test_status_follows_a_real_sidecar(
    cluster: Cluster, op: Operator, redis_server: RedisProcess, tmp_path: Path
) -> None:
    """A sidecar running the rendered config: Ready, then Rolling after an update, then Ready."""
    async with MosquittoProcess() as broker:
        await cluster.create_gametable("t-live", gametable("aro-009", "ARO-009", broker.port))

        async def table_json() -> str | None:
            cm = await cluster.configmap("t-live", "aro-009-gateway")
            return None if cm is None else str(cm["data"]["table.json"])

        volume = KubeletDir(tmp_path / "config")
        volume.root.mkdir()
        first = await eventually(table_json, 10, "the ConfigMap")
        path = volume.write(mount(first, tmp_path, redis_server.url))
        async with Stack([broker], config=load_config(str(path)), config_path=str(path)) as s:

            async def ready() -> dict[str, Any] | None:
                gt = await cluster.gametable("t-live", "aro-009")
                healthy = condition(gt, "Degraded").get("status") == "False"
                return gt if healthy and condition(gt, "Ready").get("status") == "True" else None

            # The sidecar's first report may predate its broker connection: Degraded until
            # the next one.
            gt = await eventually(ready, 15, "Ready and not Degraded with a live sidecar")
            status = gt["status"]
            assert (status["liveSidecars"], status["appliedSidecars"]) == (1, 1)
            assert status["activeBroker"] == "b1" and status["epoch"] >= 1
            assert "b1" in condition(gt, "Ready")["message"]

            await cluster.patch_gametable(
                "t-live", "aro-009", {"spec": {"detect": {"timeoutSeconds": 3}}}
            )

            async def rolling() -> dict[str, Any]:
                gt = await cluster.gametable("t-live", "aro-009")
                return condition(gt, "Ready") if gt else {}

            cond = await eventually(
                lambda: _reason(rolling, "Rolling"), 10, "Rolling while the sidecar is on 1"
            )
            assert "0 of 1 sidecars run generation 2" in cond["message"]
            second = await eventually(
                lambda: _generation(table_json, 2), 10, "the ConfigMap on generation 2"
            )
            volume.write(mount(second, tmp_path, redis_server.url))  # kubelet's ..data swap
            gt = await eventually(ready, 15, "Ready again on generation 2")
            assert gt["status"]["appliedSidecars"] == 1
            assert s.sidecar.config.generation == 2 and s.sidecar.config.table.timeout_s == 3


async def _reason(probe: Any, reason: str) -> dict[str, Any] | None:
    cond = await probe()
    return cond if cond.get("reason") == reason else None


async def _generation(probe: Any, generation: int) -> str | None:
    text = await probe()
    return text if text and json.loads(text)["generation"] == generation else None


async def test_webhook_injects_the_native_sidecar(cluster: Cluster, op: Operator) -> None:
    """Real AdmissionReview JSON: labelled → sidecar patch; unlabelled, unknown → as they must."""
    await cluster.create_gametable("t-hook", gametable("aro-004", "ARO-004"))
    labelled = game_pod({"app": "roulette", "studio.gateway.dev/gametable": "aro-004"})

    async def allowed() -> dict[str, Any] | None:
        try:
            response = await admit(cluster, op, labelled, "t-hook")
        except aiohttp.ClientConnectorError:
            return None  # kopf starts its webhook server after the liveness endpoint
        return response if response["allowed"] else None

    response = await eventually(allowed, 10, "the labelled pod is admitted")
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    pod = jsonpatch.apply_patch(copy.deepcopy(labelled), ops)
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == "gateway" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SIDECAR["image"]
    assert sidecar["readinessProbe"]["grpc"] == {"port": 50052, "service": ""}
    assert sidecar["livenessProbe"]["grpc"] == {"port": 50052, "service": "liveness"}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["gateway-config"]["configMap"] == {"name": "aro-004-gateway"}
    sources = volumes["gateway-secrets"]["projected"]["sources"]
    assert [s["secret"]["name"] for s in sources] == ["b1-credentials", "redis"]
    game = pod["spec"]["containers"][0]
    assert {"name": "GATEWAY_TARGET", "value": "127.0.0.1:50051"} in game["env"]
    assert "namespace" not in pod["metadata"]  # the patch touches only what it adds

    plain = game_pod({"app": "lobby"})
    response = await admit(cluster, op, plain, "t-hook")
    assert response["allowed"] is True and "patch" not in response

    unknown = game_pod({"studio.gateway.dev/gametable": "nope-001"})
    response = await admit(cluster, op, unknown, "t-hook")
    assert response["allowed"] is False
    assert "GameTable t-hook/nope-001" in response["status"]["message"]
    assert "does not exist" in response["status"]["message"]

    other_namespace = await admit(cluster, op, labelled, "t-elsewhere")
    assert other_namespace["allowed"] is False  # GameTables are looked up in the pod's namespace

    for body in (
        [1, 2],
        {"request": None},
        {"request": {"uid": 5}},
        review(labelled, "t-hook")
        | {"request": {**review(labelled, "t-hook")["request"], "object": "a pod"}},
    ):
        async with cluster.session.post(f"{op.webhook_url}/inject-sidecar", json=body) as r:
            assert r.status == 200, await r.text()  # refused with the reason, never a 500
            answer = await r.json()
        assert answer["response"]["allowed"] is False
        assert "malformed AdmissionReview" in answer["response"]["status"]["message"]
    assert (await admit(cluster, op, labelled, "t-hook"))["allowed"] is True  # still serving


async def test_namespaced_operator_from_the_cli(redis_server: RedisProcess, tmp_path: Path) -> None:
    """`gateway-operator run` watching one namespace, not allowed to list namespaces (RBAC)."""
    async with (
        kube_api(tmp_path) as cluster,
        operator(
            tmp_path, cluster, redis_server.url, cli=True, GATEWAY_OPERATOR_NAMESPACES="t-mine"
        ) as op,
    ):
        await cluster.create_gametable("t-other", gametable("aro-006", "ARO-006"))
        await cluster.create_gametable("t-mine", gametable("aro-005", "ARO-005"))

        async def rendered() -> bool:
            return await cluster.configmap("t-mine", "aro-005-gateway") is not None

        await eventually(rendered, 10, "the watched namespace's GameTable is reconciled")
        await asyncio.sleep(1.5)  # a status timer period
        other = await cluster.gametable("t-other", "aro-006")
        assert other is not None and "status" not in other  # never touched
        assert await cluster.configmap("t-other", "aro-006-gateway") is None
        assert not op.lines("/api/v1/namespaces")  # never asked: no grant needed, no backoff
        assert op.lines('"message"')  # `gateway-operator run` logs JSON
