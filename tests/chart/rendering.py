"""Renders the Helm chart and validates what it renders, offline.

Shared by tests/chart/test_chart.py and scripts/check-chart:

    python -m tests.chart.rendering --helm HELM --out DIR 1.29.0 1.37.0

renders every scenario for each Kubernetes version into DIR/<version>/<scenario>.yaml (custom
resources of CRDs the cluster gets from elsewhere left out, and listed), and checks the chart's
CRD against the operator's and the examples against the chart's CRD schema.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "studio-gateway"
CHART_CRD = CHART / "crds" / "gametables.studio.gateway.dev.yaml"
OPERATOR_CRD = ROOT / "operator" / "gametable_operator" / "crd.yaml"
ENVIRONMENTS = ("development", "staging", "production")
RELEASE = "studio-gateway"
NAMESPACE = "studio-gateway"
# The range Chart.yaml's kubeVersion claims: its ends are what the checks validate against.
KUBE_VERSIONS = ("1.29.0", "1.37.0")


def _values(values_file: str | None, *sets: str) -> list[str]:
    """helm arguments: an optional values file of the chart, then --set for each of sets."""
    args = ["-f", str(CHART / values_file)] if values_file else []
    for assignment in sets:
        args += ["--set", assignment]
    return args


# Every value file and every optional feature, on and off.
SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    **{env: _values(f"values-{env}.yaml") for env in ENVIRONMENTS},
    # Namespaced RBAC, cert-manager with the chart's own CA, the PDB, the sidecar test pod.
    "namespaced-certmanager": _values(
        "values-production.yaml",
        "operator.watchNamespaces={studio-a,studio-b}",
        "webhook.certManager.enabled=true",
        "operator.podDisruptionBudget.enabled=true",
        "tests.gameTable=sbo-001",
        "tests.namespace=studio-a",
    ),
    # cert-manager with an issuer of the cluster's; an explicit webhook namespace selector.
    "certmanager-issuer": _values(
        None,
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=studio-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
        "webhook.namespaceSelector.matchLabels.studio\\.gateway\\.dev/games=enabled",
        "webhook.failurePolicy=Ignore",
    ),
    # Embedded Redis with every monitoring object and the sidecar test pod.
    "embedded-monitoring": _values(
        "values-development.yaml",
        "monitoring.podMonitor.enabled=true",
        "operator.metrics.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.grafanaDashboard.enabled=true",
        "tests.gameTable=sbo-001",
    ),
}

# Custom resources of CRDs that come with other software (the Prometheus operator,
# cert-manager): kubernetes-validate has no schema for them, so they are left out of that
# validation on purpose; tests/chart/test_chart.py checks their shape.
UNVALIDATED_KINDS = frozenset(
    {
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("cert-manager.io/v1", "Certificate"),
        ("cert-manager.io/v1", "Issuer"),
        # kopf's peering objects: their CRDs are the chart's, kept open (test_availability.py).
        ("kopf.dev/v1", "KopfPeering"),
        ("kopf.dev/v1", "ClusterKopfPeering"),
    }
)

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"})


def helm_template(
    helm: Path, *args: str, kube_version: str = KUBE_VERSIONS[-1], crds: bool = True
) -> str:
    """`helm template` of the chart; raises CalledProcessError (with stderr) on failure."""
    command = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    command += ["--kube-version", kube_version, *args]
    if crds:
        command.append("--include-crds")
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def documents(rendered: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a rendering."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def render(
    helm: Path, scenario: str, kube_version: str = KUBE_VERSIONS[-1]
) -> list[dict[str, Any]]:
    return documents(helm_template(helm, *SCENARIOS[scenario], kube_version=kube_version))


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Pod, Deployment, Job, ...), else None."""
    if doc.get("kind") not in WORKLOAD_KINDS:
        return None
    if doc["kind"] == "Pod":
        return dict(doc["spec"])
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's openAPIV3Schema rejecting unknown fields, as kubectl's default field
    validation (Strict) does; ObjectMeta stays open."""
    schema = copy.deepcopy(schema)

    def close(node: dict[str, Any], path: str) -> None:
        props = node.get("properties")
        if isinstance(props, dict) and path != "/metadata":
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for name, child in props.items():
                close(child, f"{path}/{name}")
        items = node.get("items")
        if isinstance(items, dict):
            close(items, f"{path}/*")

    close(schema, "")
    return schema


def crd_schema(crd_path: Path = CHART_CRD) -> dict[str, Any]:
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return strict_schema(version["schema"]["openAPIV3Schema"])


def check_examples() -> list[str]:
    """Validates examples/*.yaml GameTables against the chart's CRD; returns the names."""
    validator = jsonschema.Draft4Validator(crd_schema())
    checked = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "GameTable":
                errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
                if errors:
                    where = "/".join(str(p) for p in errors[0].absolute_path)
                    raise SystemExit(f"{path.name}: {where}: {errors[0].message}")
                checked.append(f"{path.name} ({doc['metadata']['name']})")
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("versions", nargs="*", default=list(KUBE_VERSIONS))
    args = parser.parse_args(argv)

    if CHART_CRD.read_bytes() != OPERATOR_CRD.read_bytes():
        print(
            f"{CHART_CRD.relative_to(ROOT)} differs from {OPERATOR_CRD.relative_to(ROOT)}; run:\n"
            f"  cp {OPERATOR_CRD.relative_to(ROOT)} {CHART_CRD.relative_to(ROOT)}",
            file=sys.stderr,
        )
        return 1
    print(f"CRD: {CHART_CRD.relative_to(ROOT)} is byte-identical to the operator's")
    print("examples valid against the chart's CRD schema:", ", ".join(check_examples()))

    skipped: set[str] = set()
    for version in args.versions:
        folder = args.out / version
        folder.mkdir(parents=True, exist_ok=True)
        for scenario in SCENARIOS:
            try:
                docs = render(args.helm, scenario, version)
            except subprocess.CalledProcessError as exc:
                print(
                    f"helm template {scenario} ({version}) failed:\n{exc.stderr}", file=sys.stderr
                )
                return 1
            kept = []
            for doc in docs:
                if (doc["apiVersion"], doc["kind"]) in UNVALIDATED_KINDS:
                    skipped.add(f"{doc['apiVersion']} {doc['kind']}")
                else:
                    kept.append(doc)
            (folder / f"{scenario}.yaml").write_text(yaml.safe_dump_all(kept, sort_keys=False))
        print(f"rendered {len(SCENARIOS)} scenarios for Kubernetes {version}")
    print("left out of kubernetes-validate (other projects' CRDs):", ", ".join(sorted(skipped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
