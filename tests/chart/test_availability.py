"""The operator's availability as the chart renders it: replicas that elect through kopf's
peering objects, a disruption budget, and the grants the election needs."""

from __future__ import annotations

import yaml

from tests.chart import test_chart
from tests.chart.rendering import CHART, NAMESPACE
from tests.chart.test_chart import FULLNAME, Doc, find, operator, operator_env, rules

# test_chart.py's fixtures: the pinned helm, and every scenario rendered.
helm = test_chart.helm
rendered = test_chart.rendered

PEERING = f"{FULLNAME}-operator"


def test_every_environment_elects_one_of_two_replicas(rendered: dict[str, list[Doc]]) -> None:
    """Each replica runs with its pod name as its identity and the release's peering object."""
    for name in ("defaults", "development", "staging", "production"):
        docs = rendered[name]
        assert operator(docs)["spec"]["replicas"] == 2, name
        env = operator_env(docs)
        assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["GATEWAY_OPERATOR_PEERING"] == PEERING
        assert env["GATEWAY_OPERATOR_PEERING_LIFETIME_S"] == "15"


def test_a_disruption_budget_keeps_one_replica(rendered: dict[str, list[Doc]]) -> None:
    """By default a drain takes one operator replica at a time, and never blocks on one."""
    for name in ("defaults", "production"):
        pdb = find(rendered[name], "PodDisruptionBudget", f"{FULLNAME}-operator")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        selector = pdb["spec"]["selector"]["matchLabels"]
        labels = operator(rendered[name])["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


def test_cluster_wide_operator_elects_through_a_cluster_peering(
    rendered: dict[str, list[Doc]],
) -> None:
    """Without watched namespaces: one ClusterKopfPeering, granted in the ClusterRole."""
    docs = rendered["defaults"]
    peering = find(docs, "ClusterKopfPeering", PEERING)
    assert peering["apiVersion"] == "kopf.dev/v1" and "namespace" not in peering["metadata"]
    assert not [d for d in docs if d["kind"] == "KopfPeering"]
    granted = {
        r: rule["verbs"]
        for rule in rules(find(docs, "ClusterRole"))
        if rule["apiGroups"] == ["kopf.dev"]
        for r in rule["resources"]
    }
    assert granted == {
        "kopfpeerings": ["get", "list", "watch", "patch"],
        "clusterkopfpeerings": ["get", "list", "watch", "patch"],
    }


def test_namespaced_operator_elects_in_each_watched_namespace(
    rendered: dict[str, list[Doc]],
) -> None:
    """Production: a KopfPeering in every watched namespace, granted by that namespace's Role;
    nothing cluster-wide."""
    docs = rendered["production"]
    watched = yaml.safe_load((CHART / "values-production.yaml").read_text())["operator"][
        "watchNamespaces"
    ]
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == sorted(watched)
    assert {p["metadata"]["name"] for p in peerings} == {PEERING}
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    cluster_role = find(docs, "ClusterRole")
    assert not [r for r in rules(cluster_role) if r["apiGroups"] == ["kopf.dev"]]
    for role in [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == PEERING]:
        assert role["metadata"]["namespace"] in watched
        assert {
            "apiGroups": ["kopf.dev"],
            "resources": ["kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        } in rules(role)
    assert NAMESPACE not in watched


def test_peering_crds_keep_whatever_kopf_writes(rendered: dict[str, list[Doc]]) -> None:
    """kopf writes the replicas' entries into the peering object's status as it likes: the
    CRDs keep unknown fields and have no status subresource (kopf patches the object)."""
    crds = {
        d["metadata"]["name"]: d
        for d in rendered["defaults"]
        if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"
    }
    assert {n: c["spec"]["scope"] for n, c in crds.items()} == {
        "kopfpeerings.kopf.dev": "Namespaced",
        "clusterkopfpeerings.kopf.dev": "Cluster",
    }
    for crd in crds.values():
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1" and "subresources" not in version
        assert version["schema"]["openAPIV3Schema"]["x-kubernetes-preserve-unknown-fields"]
