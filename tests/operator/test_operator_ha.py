"""Two operator replicas against the API emulator: one reconciles, the other stands by.

The replicas elect through kopf's peering object, as the Helm chart deploys them. Every
replica serves the admission webhook, the standby too, since it reads the GameTable from
the API server rather than from a watch it does not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from gateway.devtools.sandbox import RedisProcess
from tests.operator.harness import (
    Cluster,
    Operator,
    admit,
    eventually,
    game_pod,
    gametable,
    kube_api,
    operator,
)

pytestmark = pytest.mark.timeout(120)
PEERING = "gateway-operator"
LIFETIME_S = 6


def reconciled(op: Operator, name: str) -> bool:
    """Whether ``op`` ran the reconcile handler of GameTable ``name`` (its JSON log)."""
    for line in op.lines("Handler 'reconcile' succeeded"):
        if (json.loads(line).get("object") or {}).get("name") == name:
            return True
    return False


async def rendered_by(op: Operator, cluster: Cluster, name: str) -> bool:
    """Whether ``op`` reconciled GameTable ``name`` and its ConfigMap exists."""
    return reconciled(op, name) and await cluster.configmap("t-ha", f"{name}-gateway") is not None


async def scrape(cluster: Cluster, op: Operator) -> dict[str, float]:
    """The operator's /metrics samples by name and labels."""
    async with cluster.session.get(op.metrics_url) as r:
        assert r.status == 200
        text = await r.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def peers(cluster: Cluster, count: int) -> bool:
    """Whether the peering object lists ``count`` live replicas."""
    status, body = await cluster.request("GET", f"/apis/kopf.dev/v1/clusterkopfpeerings/{PEERING}")
    live = [p for p in ((body or {}).get("status") or {}).values() if p and p.get("lifetime")]
    return status == 200 and len(live) == count


async def test_leader_handover_on_crash_and_on_shutdown(tmp_path: Path) -> None:
    """The older replica leads; a killed leader is replaced within the peering lifetime, one
    that shuts down cleanly at once (it takes itself out of the peering object)."""
    env = {"GATEWAY_OPERATOR_PEERING": PEERING,
           "GATEWAY_OPERATOR_PEERING_LIFETIME_S": str(LIFETIME_S)}  # fmt: skip
    async with RedisProcess() as redis, kube_api(tmp_path) as cluster:
        await cluster.create_peering(PEERING)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        (tmp_path / "c").mkdir()
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                operator(tmp_path / "a", cluster, redis.url, cli=True, **env)
            )
            await cluster.create_gametable("t-ha", gametable("aro-101", "ARO-101"))
            await eventually(lambda: rendered_by(a, cluster, "aro-101"), 15, "A leads")
            b = await stack.enter_async_context(
                operator(tmp_path / "b", cluster, redis.url, cli=True, **env)
            )

            await eventually(lambda: peers(cluster, 2), 10, "both replicas are peers")
            await cluster.create_gametable("t-ha", gametable("aro-102", "ARO-102"))
            await eventually(lambda: rendered_by(a, cluster, "aro-102"), 10, "A renders")
            assert not reconciled(b, "aro-102")

            pod = game_pod({"studio.gateway.dev/gametable": "aro-102"})
            answer = await admit(cluster, b, pod, "t-ha")
            assert answer["allowed"] is True and answer["patchType"] == "JSONPatch"

            async def leader_active() -> dict[str, float] | None:
                samples = await scrape(cluster, a)
                return (
                    samples if samples["gateway_operator_last_active_timestamp_seconds"] else None
                )

            leader = await eventually(leader_active, 10, "the leader's status timer runs")
            standby = await scrape(cluster, b)
            assert standby["gateway_operator_last_active_timestamp_seconds"] == 0
            assert standby['gateway_operator_admissions_total{result="injected"}'] == 1
            assert leader['gateway_operator_reconciles_total{result="rendered"}'] >= 2
            assert standby['gateway_operator_reconciles_total{result="rendered"}'] == 0

            assert a.proc is not None
            a.proc.kill()  # a crash: no goodbye in the peering object
            await a.proc.wait()
            killed = _now()
            await cluster.create_gametable("t-ha", gametable("aro-103", "ARO-103"))
            await eventually(
                lambda: rendered_by(b, cluster, "aro-103"), LIFETIME_S + 10, "B takes over"
            )
            crash_handover_s = _now() - killed
            assert b.lines("Resuming operations")

            c = await stack.enter_async_context(
                operator(tmp_path / "c", cluster, redis.url, cli=True, **env)
            )

            await eventually(lambda: peers(cluster, 2), 10, "B and the new replica are peers")
            assert b.proc is not None
            b.proc.terminate()  # a rollout: kopf removes B from the peering object
            await b.proc.wait()
            stopped = _now()
            await cluster.create_gametable("t-ha", gametable("aro-104", "ARO-104"))
            await eventually(lambda: rendered_by(c, cluster, "aro-104"), 10, "C takes over")
            # Before the lifetime could have expired: the clean exit was seen, not waited out.
            graceful_handover_s = _now() - stopped
            print(f"handover: crash {crash_handover_s:.2f} s, shutdown {graceful_handover_s:.2f} s")
            assert graceful_handover_s < LIFETIME_S, (crash_handover_s, graceful_handover_s)


def _now() -> float:
    import time

    return time.monotonic()


async def test_namespaced_replicas_elect_in_their_namespace(tmp_path: Path) -> None:
    """As production runs it: a namespaced operator (no namespace listing, no scanning)
    elects through the KopfPeering in its namespace and reconciles there."""
    env = {"GATEWAY_OPERATOR_PEERING": PEERING, "GATEWAY_OPERATOR_NAMESPACES": "t-mine",
           "GATEWAY_OPERATOR_PEERING_LIFETIME_S": str(LIFETIME_S)}  # fmt: skip
    async with RedisProcess() as redis, kube_api(tmp_path) as cluster:
        await cluster.create_peering(PEERING, namespace="t-mine")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with (
            operator(tmp_path / "a", cluster, redis.url, cli=True, **env) as a,
            operator(tmp_path / "b", cluster, redis.url, cli=True, **env) as b,
        ):
            await cluster.create_gametable("t-mine", gametable("aro-201", "ARO-201"))

            async def rendered() -> bool:
                return await cluster.configmap("t-mine", "aro-201-gateway") is not None

            await eventually(rendered, 15, "one of the replicas reconciles")

            async def namespaced_peers() -> bool:
                status, body = await cluster.request(
                    "GET", f"/apis/kopf.dev/v1/namespaces/t-mine/kopfpeerings/{PEERING}"
                )
                live = [p for p in ((body or {}).get("status") or {}).values() if p]
                return status == 200 and len(live) == 2

            await eventually(namespaced_peers, 10, "both replicas in the namespace's peering")
            await asyncio.sleep(1.5)  # a status period: only the leader refreshes
            assert reconciled(a, "aro-201") != reconciled(b, "aro-201")


async def test_a_missing_peering_object_is_reported_and_waited_for(tmp_path: Path) -> None:
    """Without its peering object the operator says so and does nothing; once the object
    is created it takes the lead and reconciles."""
    env = {"GATEWAY_OPERATOR_PEERING": PEERING,
           "GATEWAY_OPERATOR_PEERING_LIFETIME_S": str(LIFETIME_S)}  # fmt: skip
    async with (
        RedisProcess() as redis,
        kube_api(tmp_path) as cluster,
        operator(tmp_path, cluster, redis.url, cli=True, **env) as op,
    ):

        async def warned() -> bool:
            return bool(op.lines(f"no ClusterKopfPeering {PEERING}: the operator stays paused"))

        await eventually(warned, 10, "the missing peering object is reported")
        await cluster.create_gametable("t-wait", gametable("aro-301", "ARO-301"))
        await asyncio.sleep(2)  # kopf would have reconciled by now if it were not paused
        assert await cluster.configmap("t-wait", "aro-301-gateway") is None
        await cluster.create_peering(PEERING)
        await eventually(lambda: rendered_in(cluster, "t-wait", "aro-301"), 15, "resumed")


async def rendered_in(cluster: Cluster, ns: str, name: str) -> bool:
    """Whether the GameTable's ConfigMap exists."""
    return await cluster.configmap(ns, f"{name}-gateway") is not None
