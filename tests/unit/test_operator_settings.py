"""Unit tests of the GameTable operator's settings: environment, sidecar JSON, kopf argv."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kopf import cli as kopf_cli

from gametable_operator import cli, settings
from gametable_operator.settings import OperatorSettings, SidecarDefaults, from_env, parse_sidecar
from gateway.config import ConfigError

FULL_SIDECAR = {
    "image": "registry.example.com/studio-gateway:1.2.3",
    "imagePullPolicy": "Always",
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    "logLevel": "debug",
    "otlpEndpoint": "http://otel-collector.observability:4317",
    "tracesSampler": "always_on",
    "tracesSamplerArg": "0.5",
    "metricsPort": 9100,
}


def _env(**values: str) -> dict[str, str]:
    return {f"GATEWAY_OPERATOR_{name}": value for name, value in values.items()}


def _kopf_run_params(argv: list[str]) -> dict[str, Any]:
    """The options kopf's own ``run`` command parses from the argv (nothing is run)."""
    assert argv[0] == "run"
    context = kopf_cli.main.commands["run"].make_context("run", argv[1:])
    return dict(context.params)


def test_defaults_without_any_variable() -> None:
    """With no GATEWAY_OPERATOR_* variable the operator watches everything on the defaults."""
    cfg = from_env({"GATEWAY_REDIS_URL": "redis://ignored:6379/0", "PATH": "/bin"})
    assert cfg == OperatorSettings()
    assert cfg.namespaces == ()
    assert cfg.liveness == "http://0.0.0.0:8080/healthz"
    assert cfg.webhook_port == 9443
    assert cfg.metrics_port == 8081
    assert cfg.webhook_tls_dir == "" and cfg.redis_url == ""
    assert cfg.status_interval_s == 15.0
    assert cfg.log_level == "INFO"
    assert cfg.sidecar == SidecarDefaults()
    assert cfg.sidecar.image == settings.DEFAULT_IMAGE
    assert cfg.sidecar.metrics_port == 9464 and cfg.sidecar.otlp_endpoint == ""


def test_every_variable_is_parsed() -> None:
    """Each variable lands in its setting, trimmed, with the namespace list split on commas."""
    cfg = from_env(
        _env(
            NAMESPACES=" studio-a, studio-b ,,studio-c ",
            LIVENESS="http://0.0.0.0:9090/live",
            WEBHOOK_PORT=" 8443 ",
            METRICS_PORT=" 9100 ",
            WEBHOOK_TLS_DIR="/etc/webhook/tls",
            REDIS_URL="redis://redis.studio:6379/0",
            STATUS_INTERVAL_S="2.5",
            LOG_LEVEL="debug",
            SIDECAR=json.dumps(FULL_SIDECAR),
        )
    )
    assert cfg.namespaces == ("studio-a", "studio-b", "studio-c")
    assert cfg.liveness == "http://0.0.0.0:9090/live"
    assert cfg.webhook_port == 8443
    assert cfg.metrics_port == 9100
    assert cfg.webhook_tls_dir == "/etc/webhook/tls"
    assert cfg.redis_url == "redis://redis.studio:6379/0"
    assert cfg.status_interval_s == 2.5
    assert cfg.log_level == "DEBUG"
    assert cfg.sidecar.image == "registry.example.com/studio-gateway:1.2.3"
    assert cfg.sidecar.metrics_port == 9100


def test_blank_variables_mean_the_defaults() -> None:
    """Variables set to whitespace behave as unset rather than failing to parse."""
    names = ("NAMESPACES", "WEBHOOK_PORT", "METRICS_PORT", "STATUS_INTERVAL_S", "LOG_LEVEL")
    names += ("SIDECAR",)
    assert from_env(_env(**dict.fromkeys(names, "  "))) == OperatorSettings()


BAD_VARIABLES = {
    "port-zero": ("WEBHOOK_PORT", "0"),
    "port-too-high": ("WEBHOOK_PORT", "65536"),
    "port-not-a-number": ("WEBHOOK_PORT", "https"),
    "metrics-port-negative": ("METRICS_PORT", "-1"),
    "metrics-port-too-high": ("METRICS_PORT", "65536"),
    "metrics-port-not-a-number": ("METRICS_PORT", "metrics"),
    "metrics-port-on-the-webhook": ("METRICS_PORT", "9443"),
    "metrics-port-on-liveness": ("METRICS_PORT", "8080"),
    "interval-not-a-number": ("STATUS_INTERVAL_S", "soon"),
    "interval-too-short": ("STATUS_INTERVAL_S", "0.5"),
    "interval-too-long": ("STATUS_INTERVAL_S", "3601"),
    "interval-nan": ("STATUS_INTERVAL_S", "nan"),
    "log-level": ("LOG_LEVEL", "verbose"),
    "peering-not-a-name": ("PEERING", "Gateway_Operator"),
    "peering-lifetime-too-short": ("PEERING_LIFETIME_S", "1"),
    "peering-lifetime-not-whole": ("PEERING_LIFETIME_S", "7.5"),
    "sidecar-not-json": ("SIDECAR", "{image: x}"),
    "sidecar-not-object": ("SIDECAR", '["studio-gateway:1"]'),
}


@pytest.mark.parametrize("name,value", BAD_VARIABLES.values(), ids=BAD_VARIABLES.keys())
def test_bad_variable_names_itself(name: str, value: str) -> None:
    """A bad value raises ConfigError whose message names the variable."""
    with pytest.raises(ConfigError) as info:
        from_env(_env(**{name: value}))
    assert f"GATEWAY_OPERATOR_{name}" in str(info.value)


def test_out_of_range_port_message_gives_the_range() -> None:
    """An out-of-range port says which range is allowed and what was given."""
    with pytest.raises(ConfigError) as info:
        from_env(_env(WEBHOOK_PORT="70000"))
    message = str(info.value)
    assert "between 1 and 65535" in message and "70000" in message


def test_metrics_port_zero_turns_the_endpoint_off() -> None:
    """GATEWAY_OPERATOR_METRICS_PORT 0 is accepted, and never clashes with another port."""
    assert from_env(_env(METRICS_PORT="0")).metrics_port == 0
    assert from_env(_env(METRICS_PORT="0", LIVENESS="http://0.0.0.0:0/healthz")).metrics_port == 0


@pytest.mark.parametrize(
    ("env", "other"),
    [
        ({"METRICS_PORT": "9443"}, "GATEWAY_OPERATOR_WEBHOOK_PORT"),
        ({"METRICS_PORT": "8443", "WEBHOOK_PORT": "8443"}, "GATEWAY_OPERATOR_WEBHOOK_PORT"),
        ({"WEBHOOK_PORT": "8081"}, "GATEWAY_OPERATOR_WEBHOOK_PORT"),
        ({"METRICS_PORT": "8080"}, "GATEWAY_OPERATOR_LIVENESS"),
        ({"LIVENESS": "http://0.0.0.0:8081/healthz"}, "GATEWAY_OPERATOR_LIVENESS"),
        ({"METRICS_PORT": "80", "LIVENESS": "http://0.0.0.0/healthz"}, "GATEWAY_OPERATOR_LIVENESS"),
    ],
)
def test_metrics_port_must_be_its_own(env: dict[str, str], other: str) -> None:
    """A metrics port shared with the webhook or the liveness endpoint names both variables."""
    with pytest.raises(ConfigError) as info:
        from_env(_env(**env))
    message = str(info.value)
    assert message.startswith("GATEWAY_OPERATOR_METRICS_PORT:"), message
    assert other in message


def test_metrics_port_beside_a_liveness_url_without_a_port() -> None:
    """A liveness URL naming no port listens on its scheme's (80): the default 8081 is free."""
    cfg = from_env(_env(LIVENESS="http://0.0.0.0/healthz"))
    assert cfg.metrics_port == 8081


def test_full_sidecar_object() -> None:
    """Every key of the sidecar JSON object reaches SidecarDefaults."""
    sidecar = parse_sidecar(json.dumps(FULL_SIDECAR))
    assert sidecar == SidecarDefaults(
        image="registry.example.com/studio-gateway:1.2.3",
        image_pull_policy="Always",
        resources={"requests": {"cpu": "100m", "memory": "128Mi"}},
        log_level="debug",
        otlp_endpoint="http://otel-collector.observability:4317",
        traces_sampler="always_on",
        traces_sampler_arg="0.5",
        metrics_port=9100,
    )


def test_partial_sidecar_object_keeps_the_other_defaults() -> None:
    """Keys left out or set to null keep their defaults."""
    sidecar = parse_sidecar('{"image": "studio-gateway:9.9.9", "resources": null}')
    assert sidecar == SidecarDefaults(image="studio-gateway:9.9.9")


def test_metrics_port_zero_turns_metrics_off() -> None:
    """metricsPort 0 is accepted: it means no Prometheus endpoint."""
    assert parse_sidecar('{"metricsPort": 0}').metrics_port == 0


def test_unknown_sidecar_keys_are_named() -> None:
    """Every unknown key is named, so a typo is found without reading the code."""
    with pytest.raises(ConfigError) as info:
        parse_sidecar('{"imag": "x", "pullPolicy": "Always", "image": "y"}')
    message = str(info.value)
    assert "GATEWAY_OPERATOR_SIDECAR" in message
    assert "imag" in message and "pullPolicy" in message


SIDECAR_BREAKS = {
    "metrics-port-string": ({"metricsPort": "x"}, "metricsPort"),
    "metrics-port-bool": ({"metricsPort": True}, "metricsPort"),
    "metrics-port-float": ({"metricsPort": 9464.5}, "metricsPort"),
    "metrics-port-too-high": ({"metricsPort": 70000}, "metricsPort"),
    "metrics-port-negative": ({"metricsPort": -1}, "metricsPort"),
    "resources-list": ({"resources": [{"cpu": "50m"}]}, "resources"),
    "image-number": ({"image": 5}, "image"),
    "otlp-endpoint-object": ({"otlpEndpoint": {"url": "x"}}, "otlpEndpoint"),
    "image-empty": ({"image": ""}, "image"),
    "pull-policy": ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
    "log-level": ({"logLevel": "chatty"}, "logLevel"),
    "metrics-on-detect-port": ({"metricsPort": 50051}, "metricsPort"),
    "metrics-on-health-port": ({"metricsPort": 50052}, "metricsPort"),
}


@pytest.mark.parametrize("doc,key", SIDECAR_BREAKS.values(), ids=SIDECAR_BREAKS.keys())
def test_bad_sidecar_value_names_the_key(doc: dict[str, Any], key: str) -> None:
    """A wrong type or value raises ConfigError naming the variable and the key."""
    with pytest.raises(ConfigError) as info:
        parse_sidecar(json.dumps(doc))
    assert f"GATEWAY_OPERATOR_SIDECAR.{key}" in str(info.value)


@pytest.mark.parametrize("port", [50051, 50052])
def test_metrics_port_clash_says_why(port: int) -> None:
    """A metrics port on the sidecar's own gRPC ports is refused as such."""
    with pytest.raises(ConfigError) as info:
        parse_sidecar(json.dumps({"metricsPort": port}))
    assert f"{port} is the sidecar's gRPC port" in str(info.value)


def test_sidecar_errors_name_the_given_source() -> None:
    """Errors name the caller's source (e.g. a Helm value) instead of the variable."""
    with pytest.raises(ConfigError) as info:
        parse_sidecar('{"imagePullPolicy": "Sometimes"}', where="values.sidecar")
    assert str(info.value).startswith("values.sidecar.imagePullPolicy:")


@pytest.mark.parametrize("arg,expected", [(0.25, "0.25"), (1, "1"), ("0.1", "0.1")])
def test_traces_sampler_arg_number_becomes_a_string(arg: Any, expected: str) -> None:
    """tracesSamplerArg written as a JSON number is kept as the string OTEL reads."""
    assert parse_sidecar(json.dumps({"tracesSamplerArg": arg})).traces_sampler_arg == expected


def test_kopf_argv_cluster_wide() -> None:
    """Without a namespace list the operator runs standalone over all namespaces."""
    argv = cli.kopf_argv({})
    assert argv[0] == "run"
    assert "--all-namespaces" in argv and "--namespace" not in argv
    assert "--standalone" in argv and "--verbose" not in argv
    params = _kopf_run_params(argv)
    assert params["clusterwide"] is True and params["namespaces"] == ()
    assert params["standalone"] is True
    assert params["modules"] == ("gametable_operator.handlers",)
    assert params["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"


def test_kopf_argv_namespace_list() -> None:
    """A namespace list becomes one --namespace per namespace and no --all-namespaces."""
    argv = cli.kopf_argv(_env(NAMESPACES="studio-a,studio-b"))
    assert "--all-namespaces" not in argv
    params = _kopf_run_params(argv)
    assert params["namespaces"] == ("studio-a", "studio-b")
    assert params["clusterwide"] is False and params["standalone"] is True


def test_kopf_argv_with_peering_elects_instead_of_standalone() -> None:
    """With a peering name kopf runs with that peering object, never standalone."""
    argv = cli.kopf_argv(_env(PEERING="studio-gateway-operator", PEERING_LIFETIME_S="30"))
    assert "--standalone" not in argv
    params = _kopf_run_params(argv)
    assert params["peering_name"] == "studio-gateway-operator"
    assert params["standalone"] is None
    assert from_env(_env(PEERING_LIFETIME_S="30")).peering_lifetime_s == 30


def test_an_earlier_start_has_the_higher_priority() -> None:
    """The oldest replica leads: priorities fall with the start time, a millisecond apart
    is enough, and replicas started in the same millisecond still differ (almost always)."""
    from gametable_operator.handlers import startup_priority

    assert startup_priority(1000.000) > startup_priority(1000.001) > startup_priority(2000.0)
    same = {startup_priority(1000.0) for _ in range(50)}
    assert len(same) > 1


def test_kopf_argv_passes_the_liveness_url() -> None:
    """The liveness endpoint from the environment is the one kopf serves."""
    argv = cli.kopf_argv(_env(LIVENESS="http://0.0.0.0:9999/alive"))
    assert argv[argv.index("--liveness") + 1] == "http://0.0.0.0:9999/alive"
    assert _kopf_run_params(argv)["liveness_endpoint"] == "http://0.0.0.0:9999/alive"


@pytest.mark.parametrize("level,verbose", [("DEBUG", True), ("debug", True), ("INFO", False)])
def test_kopf_argv_debug_is_verbose(level: str, verbose: bool) -> None:
    """Log level DEBUG (any case) makes kopf verbose; other levels do not."""
    argv = cli.kopf_argv(_env(LOG_LEVEL=level))
    assert ("--verbose" in argv) is verbose
    assert _kopf_run_params(argv)["verbose"] is verbose


def test_kopf_argv_rejects_bad_settings() -> None:
    """Bad settings fail before kopf starts, naming the variable."""
    with pytest.raises(ConfigError, match="GATEWAY_OPERATOR_WEBHOOK_PORT"):
        cli.kopf_argv(_env(WEBHOOK_PORT="0"))


def test_sampler_arg_true_is_refused_not_stringified() -> None:
    """tracesSamplerArg true is a type error, not the string "True" handed to OpenTelemetry."""
    with pytest.raises(ConfigError, match="tracesSamplerArg"):
        parse_sidecar('{"tracesSamplerArg": true}')
