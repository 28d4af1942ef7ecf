"""The chart's alerts, their runbook, its README and metadata, and the overridable security
contexts: rendered offline with the pinned helm, as in tests/chart/test_chart.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import test_chart as base
from tests.chart.rendering import CHART, NAMESPACE, ROOT, documents, helm_template, pod_spec
from tests.chart.test_chart import FULLNAME, find, render_error

# The session fixtures of test_chart.py (the pinned helm, every scenario rendered), shared here.
helm = base.helm
rendered = base.rendered

Doc = dict[str, Any]
RUNBOOK = ROOT / "docs" / "runbook.md"
DEFAULT_RUNBOOK_URL = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"][
    "prometheusRule"
]["runbookBaseUrl"]
SIDECAR_JOB = f"{NAMESPACE}/{FULLNAME}-sidecars"
MONITORING = ("--set", "monitoring.prometheusRule.enabled=true")
# The sidecars' alerts and the operator's.
ALERT_PREFIXES = ("StudioGateway", "GatewayOperator")


def alert_rules(docs: list[Doc]) -> dict[str, Doc]:
    """The PrometheusRule's alerts by name."""
    (group,) = find(docs, "PrometheusRule")["spec"]["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def github_anchor(heading: str) -> str:
    """The fragment GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> dict[str, str]:
    """Anchor -> heading text of every heading of docs/runbook.md."""
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    return {github_anchor(h): h for h in headings}


def operator_pod(docs: list[Doc]) -> Doc:
    spec = pod_spec(find(docs, "Deployment", f"{FULLNAME}-operator"))
    assert spec is not None
    return spec


# --- runbook ---------------------------------------------------------------------------------


def test_every_alert_links_its_runbook_section(rendered: dict[str, list[Doc]]) -> None:
    """Each alert's runbook_url is the runbook's URL and a fragment that is one of its headings."""
    anchors = runbook_anchors()
    for name, rule in alert_rules(rendered["embedded-monitoring"]).items():
        url = rule["annotations"]["runbook_url"]
        base, _, fragment = url.partition("#")
        assert base == DEFAULT_RUNBOOK_URL, name
        assert fragment == name.lower(), f"{name}: fragment {fragment!r}"
        assert fragment in anchors, f"{name}: docs/runbook.md has no heading for #{fragment}"
        assert anchors[fragment] == name, f"{name}: heading {anchors[fragment]!r}"


def test_runbook_has_a_section_only_for_real_alerts(rendered: dict[str, list[Doc]]) -> None:
    """No runbook section outlives its alert: every alert-named heading is a rendered alert."""
    alerts = set(alert_rules(rendered["embedded-monitoring"]))
    sections = {h for h in runbook_anchors().values() if h.startswith(ALERT_PREFIXES)}
    assert sections == alerts


def test_runbook_sections_say_what_to_check_and_do() -> None:
    """Every alert section tells the responder what to check and what to do."""
    text = RUNBOOK.read_text(encoding="utf-8")
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title = section.splitlines()[0]
        if title.startswith(ALERT_PREFIXES):
            assert "\nCheck:\n" in section and "\nDo:\n" in section, title
            assert "**Critical.**" in section or "**Warning.**" in section, title


def test_runbook_url_follows_the_value(helm: Path) -> None:
    """monitoring.prometheusRule.runbookBaseUrl moves every alert's link to the given page."""
    base = "https://wiki.example.internal/studio/runbook"
    docs = documents(
        helm_template(
            helm, *MONITORING, "--set", f"monitoring.prometheusRule.runbookBaseUrl={base}"
        )
    )
    for name, rule in alert_rules(docs).items():
        assert rule["annotations"]["runbook_url"] == f"{base}#{name.lower()}"


@pytest.mark.parametrize(
    "url", ["docs/runbook.md", "https://wiki.example/runbook#section", "ftp://wiki.example/rb"]
)
def test_runbook_url_must_be_a_page(helm: Path, url: str) -> None:
    """A relative path, a URL with its own fragment or a non-HTTP URL is refused by the schema."""
    message = render_error(helm, "--set", f"monitoring.prometheusRule.runbookBaseUrl={url}")
    assert "/monitoring/prometheusRule/runbookBaseUrl" in message


# --- the alerts ------------------------------------------------------------------------------


def test_scrape_alerts_watch_the_pod_monitors_job(rendered: dict[str, list[Doc]]) -> None:
    """up and absent() name the job the Prometheus operator gives the PodMonitor's targets."""
    docs = rendered["embedded-monitoring"]
    monitor = find(docs, "PodMonitor", f"{FULLNAME}-sidecars")
    assert f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}" == SIDECAR_JOB
    alerts = alert_rules(docs)
    scrape = alerts["StudioGatewaySidecarScrapeFailing"]
    assert scrape["expr"] == f'up{{job="{SIDECAR_JOB}"}} == 0'
    assert scrape["for"] == "5m"
    absent = alerts["StudioGatewaySidecarMetricsAbsent"]
    assert absent["expr"] == f'absent(gateway_broker_up{{job="{SIDECAR_JOB}"}})'
    assert "{{ $labels.gametable }}" in scrape["annotations"]["summary"]


def test_scrape_alerts_follow_another_job(helm: Path) -> None:
    """Sidecars scraped by another job: monitoring.prometheusRule.sidecarJob names it."""
    docs = documents(
        helm_template(helm, *MONITORING, "--set", "monitoring.prometheusRule.sidecarJob=gw")
    )
    alerts = alert_rules(docs)
    assert alerts["StudioGatewaySidecarScrapeFailing"]["expr"] == 'up{job="gw"} == 0'
    assert 'gateway_broker_up{job="gw"}' in alerts["StudioGatewaySidecarMetricsAbsent"]["expr"]


@pytest.mark.parametrize(
    ("alert", "selector"),
    [
        ("StudioGatewayFailovers", "gateway_failovers_total"),
        ("StudioGatewayConfigReloadRejected", 'gateway_config_reloads_total{result="invalid"}'),
        ("StudioGatewayLoopRestarts", "gateway_loop_restarts_total"),
    ],
)
def test_event_alerts_see_the_first_event(
    rendered: dict[str, list[Doc]], alert: str, selector: str
) -> None:
    """A counter series born with its first event counts too (increase() needs two samples)."""
    expr = alert_rules(rendered["embedded-monitoring"])[alert]["expr"]
    assert f"increase({selector}[" in expr
    assert re.search(rf"\({re.escape(selector)} unless {re.escape(selector)} offset \w+\)", expr)


def test_new_alerts_watch_what_the_brief_names(rendered: dict[str, list[Doc]]) -> None:
    """Failovers, Redis errors, loop restarts and dropped inputs, with their thresholds."""
    alerts = alert_rules(rendered["embedded-monitoring"])
    assert alerts["StudioGatewayFailovers"]["expr"].rstrip().endswith("> 2")
    assert "rate(gateway_redis_errors_total[5m])" in alerts["StudioGatewayRedisErrors"]["expr"]
    assert "by (namespace, group)" in alerts["StudioGatewayRedisErrors"]["expr"]
    assert "{{ $labels.group }}" in alerts["StudioGatewayRedisErrors"]["annotations"]["summary"]
    assert "gateway_inputs_dropped_total" in alerts["StudioGatewayInputsDropped"]["expr"]
    assert (
        "min by (namespace, table, broker) (gateway_broker_up)"
        in (alerts["StudioGatewayBrokerDown"]["expr"])
    )
    critical = {name for name, rule in alerts.items() if rule["labels"]["severity"] == "critical"}
    assert critical == {"StudioGatewayNoHealthyBroker", "StudioGatewayNoActiveBroker"}


def test_alert_labels_reach_every_alert(helm: Path) -> None:
    """monitoring.prometheusRule.alertLabels is added to each rule, new ones included."""
    docs = documents(
        helm_template(
            helm,
            *MONITORING,
            "--set", "monitoring.prometheusRule.alertLabels.team=studio",
            "--set", "monitoring.prometheusRule.failovers1h=5",
        )
    )  # fmt: skip
    alerts = alert_rules(docs)
    assert all(rule["labels"]["team"] == "studio" for rule in alerts.values())
    assert alerts["StudioGatewayFailovers"]["expr"].rstrip().endswith("> 5")


# --- security contexts -----------------------------------------------------------------------


OPENSHIFT_VALUES = """
operator:
  podSecurityContext: {runAsUser: null, runAsGroup: null, fsGroup: null}
  securityContext: {runAsUser: null, runAsGroup: null}
redis:
  mode: embedded
  embedded:
    podSecurityContext: {runAsUser: null, runAsGroup: null, fsGroup: null}
    securityContext: {runAsUser: null, runAsGroup: null}
"""


def test_security_contexts_without_fixed_ids_render_valid(
    helm: Path,
    tmp_path: Path,
) -> None:
    """OpenShift's restricted SCC: the fixed IDs removed with null, the rest stays restricted."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    values = tmp_path / "openshift.yaml"
    values.write_text(OPENSHIFT_VALUES)
    docs = documents(helm_template(helm, "-f", str(values)))
    for name in (f"{FULLNAME}-operator", f"{FULLNAME}-redis"):
        deployment = find(docs, "Deployment", name)
        kubernetes_validate.validate(deployment, "1.37.0", strict=True)
        spec = pod_spec(deployment)
        assert spec is not None
        pod_sc = spec["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(pod_sc), name
        assert (
            pod_sc["runAsNonRoot"] is True and pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        )
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert not {"runAsUser", "runAsGroup"} & set(sc), name
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}, name


def test_security_context_can_be_set_with_set(helm: Path) -> None:
    """--set ...runAsUser=null drops the key; another UID replaces it."""
    docs = documents(
        helm_template(
            helm,
            "--set", "operator.podSecurityContext.runAsUser=null",
            "--set", "operator.securityContext.runAsUser=1000700000",
        )
    )  # fmt: skip
    spec = operator_pod(docs)
    assert "runAsUser" not in spec["securityContext"]
    assert spec["containers"][0]["securityContext"]["runAsUser"] == 1000700000


def test_security_context_defaults_are_the_restricted_ones(
    rendered: dict[str, list[Doc]],
) -> None:
    """Unchanged values render the same restricted contexts as before they were values."""
    spec = operator_pod(rendered["defaults"])
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert spec["containers"][0]["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["--set", "operator.securityContext.runAsUser=root"],
            "/operator/securityContext/runAsUser",
        ),
        (
            ["--set", "redis.embedded.podSecurityContext.fsGroup=-1"],
            "/redis/embedded/podSecurityContext/fsGroup",
        ),
        (["--set", "operator.securityContext.capabilities.keep={ALL}"], "keep"),
    ],
)
def test_security_context_schema_names_bad_values(
    helm: Path,
    args: list[str],
    named: str,
) -> None:
    """A wrong type in a security context is refused, naming the value."""
    assert named in render_error(helm, *args)


# --- README and Chart.yaml -------------------------------------------------------------------


def chart_readme(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart-readme"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_chart_readme_values_table_is_current() -> None:
    """The README's values table is what scripts/chart-readme makes from values.yaml."""
    result = chart_readme("--check")
    assert result.returncode == 0, result.stderr


def test_chart_readme_check_fails_on_drift(tmp_path: Path) -> None:
    """A changed value comment makes the check fail and say how to regenerate."""
    chart = tmp_path / "chart"
    chart.mkdir()
    shutil.copy(CHART / "README.md", chart / "README.md")
    values = (CHART / "values.yaml").read_text()
    changed = values.replace("# -- Operator log level:", "# -- The operator's log level:", 1)
    assert changed != values
    (chart / "values.yaml").write_text(changed)
    result = chart_readme("--check", "--chart", str(chart))
    assert result.returncode == 1
    assert "scripts/chart-readme" in result.stderr
    assert (
        '+| `operator.logLevel` | string | `"INFO"` | The operator\'s log level:' in result.stderr
    )
    assert chart_readme("--chart", str(chart)).returncode == 0
    assert chart_readme("--check", "--chart", str(chart)).returncode == 0


def test_every_documented_value_is_in_the_readme() -> None:
    """Each `# --` comment of values.yaml has its row, under its full key path."""
    readme = (CHART / "README.md").read_text()
    values = (CHART / "values.yaml").read_text()
    assert values.count("# -- ") >= 60
    for key in ("operator.podSecurityContext", "monitoring.prometheusRule.runbookBaseUrl"):
        assert f"| `{key}` |" in readme
    assert readme.count("\n| `") == values.count("# -- ")


def test_helm_show_readme_and_chart_metadata(helm: Path) -> None:
    """helm show readme prints the README; Chart.yaml has home, sources, Artifact Hub data."""
    shown = subprocess.run(
        [str(helm), "show", "readme", str(CHART)], capture_output=True, text=True, check=True
    ).stdout
    assert shown.startswith("# studio-gateway") and "| `image.repository` |" in shown
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"] in chart["sources"]
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
    annotations = chart["annotations"]
    assert annotations["artifacthub.io/license"] == "LicenseRef-Proprietary"
    links = yaml.safe_load(annotations["artifacthub.io/links"])
    assert all({"name", "url"} == set(link) for link in links)
    assert {link["url"].rsplit("/", 1)[-1] for link in links} >= {"deploy.md", "runbook.md"}
    (crd,) = yaml.safe_load(annotations["artifacthub.io/crds"])
    assert crd["name"] == "gametables.studio.gateway.dev" and crd["kind"] == "GameTable"
    runbook_link = next(link["url"] for link in links if link["url"].endswith("runbook.md"))
    assert runbook_link == DEFAULT_RUNBOOK_URL
