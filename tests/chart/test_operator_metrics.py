"""The operator's metrics in the chart: its container port and setting, the PodMonitor, the
NetworkPolicy rule for Prometheus and the GatewayOperator* alerts, rendered offline with the
pinned helm, as in tests/chart/test_chart.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.chart import test_chart
from tests.chart.rendering import NAMESPACE, documents, helm_template
from tests.chart.test_alerts_docs import alert_rules
from tests.chart.test_chart import FULLNAME, Doc, find, operator_env, render_error
from tests.chart.test_network_rbac import SELECTOR, policies, ports, rule, tcp, values

# test_chart.py's fixtures: the pinned helm, and every scenario rendered.
helm = test_chart.helm
rendered = test_chart.rendered

OPERATOR_JOB = f"{NAMESPACE}/{FULLNAME}-operator"
OPERATOR_ALERTS = (
    "GatewayOperatorMetricsAbsent",
    "GatewayOperatorNotReconciling",
    "GatewayOperatorReconcileErrors",
)
MONITORING = ("--set", "monitoring.prometheusRule.enabled=true")


def operator_container(docs: list[Doc]) -> Doc:
    deployment = find(docs, "Deployment", f"{FULLNAME}-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def container_ports(docs: list[Doc]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in operator_container(docs)["ports"]}


def operator_monitor(docs: list[Doc]) -> Doc | None:
    found = [
        d
        for d in docs
        if d["kind"] == "PodMonitor" and d["metadata"]["name"] == f"{FULLNAME}-operator"
    ]
    assert len(found) <= 1
    return found[0] if found else None


def render(helm: Path, *sets: str) -> list[Doc]:
    args: list[str] = []
    for assignment in sets:
        args += ["--set", assignment]
    return documents(helm_template(helm, *args))


def exported_metric_names() -> set[str]:
    """Every sample name the operator's registry exposes (counters with _total, histograms
    with _bucket, _sum and _count)."""
    from gametable_operator import metrics

    return {sample.name for family in metrics.REGISTRY.collect() for sample in family.samples}


# --- the operator's container and the PodMonitor ---------------------------------------------


def test_operator_serves_metrics_on_its_own_named_port(rendered: dict[str, list[Doc]]) -> None:
    """By default the operator is told port 8081 and the container declares it as `metrics`."""
    for scenario in ("defaults", "production"):
        docs = rendered[scenario]
        assert container_ports(docs)["metrics"] == 8081
        assert operator_env(docs)["GATEWAY_OPERATOR_METRICS_PORT"] == "8081"


def test_pod_monitor_scrapes_the_operator_pods_on_the_metrics_port(
    rendered: dict[str, list[Doc]],
) -> None:
    """The PodMonitor selects exactly the operator's pods, in the release namespace, by port."""
    docs = rendered["embedded-monitoring"]
    monitor = operator_monitor(docs)
    assert monitor is not None
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    deployment = find(docs, "Deployment", f"{FULLNAME}-operator")
    selector = {**SELECTOR, "app.kubernetes.io/component": "operator"}
    assert monitor["spec"]["selector"] == {"matchLabels": selector}
    assert deployment["spec"]["selector"] == {"matchLabels": selector}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s"}
    assert "metrics" in container_ports(docs)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [("defaults", False), ("development", False), ("staging", True), ("production", True)],
)
def test_environments_scrape_the_operator_where_they_scrape_the_sidecars(
    rendered: dict[str, list[Doc]], scenario: str, expected: bool
) -> None:
    """Staging and production render the operator's PodMonitor next to the sidecars'."""
    docs = rendered[scenario]
    sidecars = [d for d in docs if d["metadata"]["name"] == f"{FULLNAME}-sidecars"]
    assert (operator_monitor(docs) is not None) is expected
    assert bool(sidecars) is expected


def test_pod_monitor_values_reach_it(helm: Path) -> None:
    """A custom port, interval and labels: the container, the setting and the PodMonitor agree."""
    docs = render(
        helm,
        "operator.metrics.port=9100",
        "operator.metrics.podMonitor.enabled=true",
        "operator.metrics.podMonitor.interval=15s",
        "operator.metrics.podMonitor.labels.release=kube-prometheus-stack",
    )
    assert container_ports(docs)["metrics"] == 9100
    assert operator_env(docs)["GATEWAY_OPERATOR_METRICS_PORT"] == "9100"
    monitor = operator_monitor(docs)
    assert monitor is not None
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["interval"] == "15s"


def test_port_zero_turns_the_endpoint_off(helm: Path) -> None:
    """Port 0: no container port, the operator told 0 (which it reads as off), no alerts on it."""
    from gametable_operator.settings import from_env

    docs = render(
        helm,
        "operator.metrics.port=0",
        "monitoring.prometheusRule.enabled=true",
        "networkPolicy.enabled=true",
    )
    assert "metrics" not in container_ports(docs)
    env = operator_env(docs)
    assert env["GATEWAY_OPERATOR_METRICS_PORT"] == "0"
    assert from_env({k: v for k, v in env.items() if isinstance(v, str)}).metrics_port == 0
    assert not set(OPERATOR_ALERTS) & set(alert_rules(docs))
    assert "StudioGatewaySidecarMetricsAbsent" in alert_rules(docs)
    policy = policies(docs)[(NAMESPACE, f"{FULLNAME}-operator")]
    assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} == {8080, 9443}


def test_pod_monitor_without_a_port_is_refused(helm: Path) -> None:
    """An operator PodMonitor with the endpoint off would scrape nothing: refused, naming why."""
    message = render_error(
        helm,
        "--set", "operator.metrics.podMonitor.enabled=true",
        "--set", "operator.metrics.port=0",
    )  # fmt: skip
    assert "operator.metrics.port" in message


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "operator.metrics.port=8080"], "/operator/metrics/port"),
        (["--set", "operator.metrics.port=9443"], "/operator/metrics/port"),
        (["--set", "operator.metrics.port=70000"], "/operator/metrics/port"),
        (["--set", "operator.metrics.port=metrics"], "/operator/metrics/port"),
        (["--set", "operator.metrics.podMonitor.interval=often"], "/operator/metrics/podMonitor"),
        (["--set", "operator.metrics.path=/m"], "path"),
        (["--set", "monitoring.prometheusRule.operatorJob=5"], "operatorJob"),
    ],
)
def test_schema_rejects_bad_metrics_values(helm: Path, args: list[str], named: str) -> None:
    """A taken or impossible port, a bad interval or an unknown key stops the install, named."""
    message = render_error(helm, *args)
    assert "values don't meet the specifications of the schema" in message
    assert named in message


# --- NetworkPolicy ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["staging", "production"])
def test_network_policy_lets_prometheus_scrape_the_operator(
    rendered: dict[str, list[Doc]], env: str
) -> None:
    """The operator's policy admits the Prometheus peers, and only them, on the metrics port."""
    policy = policies(rendered[env])[(NAMESPACE, f"{FULLNAME}-operator")]
    metrics_rule = rule(policy, "ingress", 8081)
    assert ports(metrics_rule) == tcp(8081)
    assert metrics_rule["from"] == values(env)["networkPolicy"]["prometheus"]["peers"]


def test_network_policy_follows_the_metrics_port(helm: Path) -> None:
    """Another metrics port moves the rule; with no Prometheus peers there is no rule at all
    (a rule without peers would admit any source)."""
    docs = render(helm, "networkPolicy.enabled=true", "operator.metrics.port=9100")
    policy = policies(docs)[(NAMESPACE, f"{FULLNAME}-operator")]
    assert ports(rule(policy, "ingress", 9100)) == tcp(9100)
    docs = documents(
        helm_template(
            helm,
            "--set", "networkPolicy.enabled=true",
            "--set-json", "networkPolicy.prometheus.peers=[]",
        )
    )  # fmt: skip
    policy = policies(docs)[(NAMESPACE, f"{FULLNAME}-operator")]
    assert all(8081 not in {p["port"] for p in r["ports"]} for r in policy["spec"]["ingress"])
    assert all("from" in r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] != 9443)


# --- alerts ----------------------------------------------------------------------------------


def test_operator_alerts_parse_and_use_exported_metrics(rendered: dict[str, list[Doc]]) -> None:
    """Each operator alert is valid PromQL over metrics the operator's registry really exports,
    scoped to the operator PodMonitor's job."""
    promql = pytest.importorskip("promql_parser")
    exported = exported_metric_names()
    alerts = alert_rules(rendered["embedded-monitoring"])
    for name in OPERATOR_ALERTS:
        expr = alerts[name]["expr"]
        promql.parse(expr)
        used = set(re.findall(r"\b(gateway_operator_[a-z_]+)", expr))
        assert used and used <= exported, f"{name}: {used - exported}"
        assert f'job="{OPERATOR_JOB}"' in expr, name
        assert alerts[name]["labels"]["severity"] == "warning"
        assert alerts[name]["annotations"]["runbook_url"].endswith(f"#{name.lower()}")


def test_operator_alert_expressions(rendered: dict[str, list[Doc]]) -> None:
    """Absent metrics for 10m; no replica active for 5 status intervals; sustained failures."""
    alerts = alert_rules(rendered["embedded-monitoring"])
    absent = alerts["GatewayOperatorMetricsAbsent"]
    assert absent["expr"] == f'absent(gateway_operator_info{{job="{OPERATOR_JOB}"}})'
    assert absent["for"] == "10m"
    idle = alerts["GatewayOperatorNotReconciling"]["expr"]
    assert idle.startswith("time() - max by (job) (gateway_operator_last_active_timestamp_seconds")
    # values-development.yaml refreshes every 5 s: five intervals are 25 s.
    assert idle.endswith(" > 25")
    errors = alerts["GatewayOperatorReconcileErrors"]
    assert 'result=~"apply_failed|invalid_spec"' in errors["expr"]
    assert "rate(gateway_operator_reconciles_total{" in errors["expr"]
    assert errors["for"] == "15m"
    assert "{{ $labels.result }}" in errors["annotations"]["summary"]


@pytest.mark.parametrize(
    ("interval", "threshold"), [("15", "75"), ("2.5", "12.5"), ("600", "3000")]
)
def test_not_reconciling_threshold_is_five_status_intervals(
    helm: Path, interval: str, threshold: str
) -> None:
    """operator.statusIntervalSeconds sets the timer and, times five, the alert's threshold."""
    # --set-json: --set would hand 2.5 over as a string, which the schema refuses.
    docs = documents(
        helm_template(helm, *MONITORING, "--set-json", f"operator.statusIntervalSeconds={interval}")
    )
    expr = alert_rules(docs)["GatewayOperatorNotReconciling"]["expr"]
    assert expr.endswith(f" > {threshold}")
    assert operator_env(docs)["GATEWAY_OPERATOR_STATUS_INTERVAL_S"] == interval


def test_operator_alerts_follow_another_job(helm: Path) -> None:
    """An operator scraped some other way: monitoring.prometheusRule.operatorJob names its job."""
    docs = documents(
        helm_template(helm, *MONITORING, "--set", "monitoring.prometheusRule.operatorJob=ops")
    )
    alerts: dict[str, Any] = alert_rules(docs)
    for name in OPERATOR_ALERTS:
        assert 'job="ops"' in alerts[name]["expr"], name
    assert 'job="ops"' not in alerts["StudioGatewaySidecarMetricsAbsent"]["expr"]
