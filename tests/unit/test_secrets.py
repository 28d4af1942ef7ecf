"""Secrets hygiene: redacted URLs, Redis URLs off the command line, warnings, Sentinel TLS."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.config import ConfigError, parse_config
from gateway.errors import InvalidRequest
from gateway.fleet.store import sentinel_plan
from gateway.protocol import check_stream_url
from gateway.redact import RedactingFilter, has_password, redact, redact_url
from gateway.sidecar.telemetry import configure_logging

SOURCE = "/etc/gateway/table.json"


def _v1(**top: Any) -> dict[str, Any]:
    """A minimal file in the gateway's own format, with extra top-level sections."""
    return {
        "version": 1,
        "table": {"game": "roulette", "code": "ARO-001"},
        "brokers": [{"host": "10.0.0.1"}],
        **top,
    }


# --- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtmp://cam:s3cret@10.0.0.54:1935/live", "rtmp://cam:***@10.0.0.54:1935/live"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        (
            "redis+sentinel://:s3cret@h1:26379,h2:26379/t",
            "redis+sentinel://:***@h1:26379,h2:26379/t",
        ),
        ("rtsp://u:p@ss:w0rd@cam/x", "rtsp://u:***@cam/x"),
        (
            "https://cdn.example/live.flv?token=s3cret&x=1",
            "https://cdn.example/live.flv?token=***&x=1",
        ),
        ("rtmp://u:s3cret @cam/live", "rtmp://u:***@cam/live"),
        ("rtmp://10.0.0.54:1935/live/r14_sb", "rtmp://10.0.0.54:1935/live/r14_sb"),
        ("rtmp://user@cam/live", "rtmp://user@cam/live"),
    ],
)
def test_redact_url_masks_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    """A URL keeps its scheme, user, host and path; the password and tokens become ***."""
    assert redact_url(url) == shown
    if " " not in url:
        assert redact(f"connecting to {url} now") == f"connecting to {shown} now"


def test_redact_leaves_text_without_urls_alone() -> None:
    """Ports, times and plain words are not mistaken for credentials."""
    for text in ("broker 10.0.0.9:1883 up at 10:15:00", "http://host:8080/path", "a=b c"):
        assert redact(text) == text


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://:pw@r:6379/0", True),
        ("redis://user:pw@r:6379/0", True),
        ("redis://r:6379/0?password=pw", True),
        ("redis://user@r:6379/0", False),
        ("redis://r:6379/0", False),
        ("unix:///run/redis.sock?db=1", False),
    ],
)
def test_has_password(url: str, secret: bool) -> None:
    """A password in the user info or in a ``password=`` query parameter is seen."""
    assert has_password(url) is secret


@pytest.mark.parametrize(
    "url",
    ["ftp://cam:s3cret@10.0.0.54/live", "rtmp://cam:s3cret@10.0.0.54/li ve", "cam:s3cret@x"],
)
def test_rejected_stream_url_is_redacted_in_the_error(url: str) -> None:
    """The InvalidRequest for a bad stream URL names the field but never its password."""
    with pytest.raises(InvalidRequest) as info:
        check_stream_url("input", url)
    assert "input" in info.value.message
    assert "s3cret" not in info.value.message


def test_rejected_stream_url_in_the_config_is_redacted() -> None:
    """A bad ``table.input`` in the file is refused by field, the password masked."""
    doc = _v1()
    doc["table"]["input"] = "ftp://cam:s3cret@10.0.0.54/live"
    with pytest.raises(ConfigError) as info:
        parse_config(doc, source=SOURCE, env={})
    assert "table.input" in info.value.message
    assert "ftp://cam:***@10.0.0.54/live" in info.value.message
    assert "s3cret" not in info.value.message


# --- the logging filter -------------------------------------------------------------------


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_filter_redacts_message_arguments_and_exceptions() -> None:
    """A password in a message, its arguments or an exception never reaches the output."""
    f = RedactingFilter()
    record = _record("store %s down (%d%%)", "redis://:s3cret@r:6379/0", 5)
    assert f.filter(record) is True
    assert record.getMessage() == "store redis://:***@r:6379/0 down (5%)"
    try:
        raise ValueError("cannot open rtmp://cam:s3cret@10.0.0.54/live")
    except ValueError as exc:
        record = _record("failed", exc=exc)
    f.filter(record)
    text = logging.Formatter().format(record)
    assert "rtmp://cam:***@10.0.0.54/live" in text and "s3cret" not in text


def test_filter_passes_a_broken_record_through() -> None:
    """A record whose arguments do not fit still reaches the handler (it reports it)."""
    assert RedactingFilter().filter(_record("%d", "not a number")) is True


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restores the root logger's handlers and level that configure_logging replaces."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure_logging_redacts_every_record(
    fmt: str, root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the configured handler, any logger's URL password comes out as ***."""
    configure_logging("INFO", fmt)
    logging.getLogger("some.library").warning("dial redis://user:s3cret@r:6379/0 failed")
    try:
        raise OSError("cannot open rtsp://cam:s3cret@10.0.0.54/live")
    except OSError:
        logging.getLogger("gateway.x").exception("camera")
    err = capsys.readouterr().err
    assert "redis://user:***@r:6379/0" in err and "rtsp://cam:***@10.0.0.54/live" in err
    assert "s3cret" not in err


# --- Redis URLs on the command line -------------------------------------------------------


def _serve(tmp_path: Path, *extra: str) -> list[str]:
    path = tmp_path / "table.json"
    path.write_text('{"version": 1, "table": {"game": "roulette", "code": "ARO-001"}, '
                    '"brokers": [{"host": "127.0.0.1"}]}')  # fmt: skip
    return ["serve", "--config", str(path), *extra]


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's logging set-up left out: these calls stop before anything is logged."""
    monkeypatch.setattr(cli, "configure_logging", lambda *a: None)


def test_redis_url_with_a_password_is_refused(
    tmp_path: Path, quiet_cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """--redis-url with a password exits 2 naming the alternatives, without the password."""
    code = cli.main(_serve(tmp_path, "--redis-url", "redis://:s3cret@127.0.0.1:9/0"))
    err = capsys.readouterr().err
    assert code == 2
    assert "--redis-url-file" in err and "GATEWAY_REDIS_URL" in err and "url_file" in err
    assert "s3cret" not in err


def test_redis_url_with_a_bad_scheme_does_not_echo_it(
    tmp_path: Path, quiet_cli: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL that is not a Redis one is refused without being shown."""
    assert cli.main(_serve(tmp_path, "--redis-url", "s3cret-not-a-url")) == 2
    err = capsys.readouterr().err
    assert "--redis-url: must start with redis://" in err and "s3cret" not in err


def test_redis_url_without_a_password_and_url_file_are_used(tmp_path: Path) -> None:
    """A password-free --redis-url, or a --redis-url-file with a password, is the URL."""
    args = cli.build_parser().parse_args(_serve(tmp_path, "--redis-url", "redis://r:6379/0"))
    assert cli._redis_override(args) == "redis://r:6379/0"
    secret = tmp_path / "url"
    secret.write_text("redis://:s3cret@r:6379/0\n")
    args = cli.build_parser().parse_args(_serve(tmp_path, "--redis-url-file", str(secret)))
    assert cli._redis_override(args) == "redis://:s3cret@r:6379/0"


@pytest.mark.parametrize(
    ("content", "names"),
    [(None, "cannot read"), (b"", "is empty"), (b"http://:s3cret@r", "must start with redis://")],
)
def test_bad_redis_url_file_is_refused_by_path(
    tmp_path: Path, content: bytes | None, names: str, quiet_cli: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A missing, empty or wrong --redis-url-file exits 2 naming the file, not its content."""
    secret = tmp_path / "url"
    if content is not None:
        secret.write_bytes(content)
    assert cli.main(_serve(tmp_path, "--redis-url-file", str(secret))) == 2
    err = capsys.readouterr().err
    assert f"--redis-url-file: {secret}" in err and names in err and "s3cret" not in err


def test_redis_url_and_url_file_are_exclusive(tmp_path: Path) -> None:
    """Both Redis options at once is a usage error."""
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(
            _serve(tmp_path, "--redis-url", "redis://r", "--redis-url-file", "/f")
        )
    assert info.value.code == 2


# --- warnings at load ---------------------------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_inline_redis_password_warns(caplog: pytest.LogCaptureFixture) -> None:
    """A Redis URL with a password written in the file works but warns, naming the file."""
    doc = _v1(redis={"url": "redis://:s3cret@r:6379/0"})
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        config = parse_config(doc, source=SOURCE, env={})
    assert config.redis.url == "redis://:s3cret@r:6379/0"
    (warning,) = _warnings(caplog)
    assert SOURCE in warning and "redis.url" in warning and "url_file" in warning
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(
    ("redis", "env"),
    [
        ({"url": "redis://r:6379/0"}, {}),
        ({"url_env": "REDIS_URL"}, {"REDIS_URL": "redis://:s3cret@r:6379/0"}),
        ({}, {"GATEWAY_REDIS_URL": "redis://:s3cret@r:6379/0"}),
    ],
)
def test_no_redis_warning_without_an_inline_password(
    redis: dict[str, str], env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A password-free inline URL, or one from the environment, loads silently."""
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        parse_config(_v1(redis=redis), source=SOURCE, env=env)
    assert _warnings(caplog) == []


def test_insecure_skip_verify_warns_once_per_broker(caplog: pytest.LogCaptureFixture) -> None:
    """Each broker with insecure_skip_verify gets one warning naming it and the risk."""
    doc = _v1()
    doc["brokers"] = [
        {"id": "mqtt-a", "host": "10.0.0.1", "tls": {"insecure_skip_verify": True}},
        {"id": "mqtt-b", "host": "10.0.0.2", "tls": {"insecure_skip_verify": True}},
        {"id": "mqtt-c", "host": "10.0.0.3", "tls": {"ca_file": "/etc/ca.crt"}},
    ]
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        config = parse_config(doc, source=SOURCE, env={})
    assert [b.tls.insecure_skip_verify for b in config.brokers if b.tls] == [True, True, False]
    warnings = _warnings(caplog)
    assert len(warnings) == 2
    for broker, warning in zip(("mqtt-a", "mqtt-b"), warnings, strict=True):
        assert f"broker {broker} " in warning and "insecure_skip_verify" in warning
        assert "not checked" in warning and SOURCE in warning


# --- Sentinel TLS -------------------------------------------------------------------------


def test_rediss_sentinel_speaks_tls_to_the_sentinels_too() -> None:
    """rediss+sentinel: the Sentinels and the master both get TLS, with the URL's CA."""
    plan = sentinel_plan(
        "rediss+sentinel://:s3cret@h1:26379,h2:26380/tables/2?ssl_ca_certs=/etc/ca.crt"
        "&ssl_check_hostname=false"
    )
    assert plan.hosts == [("h1", 26379), ("h2", 26380)] and plan.service == "tables"
    for kwargs in (plan.sentinel_kwargs, plan.master_kwargs):
        assert kwargs["ssl"] is True and kwargs["password"] == "s3cret"
        assert kwargs["ssl_ca_certs"] == "/etc/ca.crt" and kwargs["ssl_check_hostname"] is False
    assert plan.master_kwargs["db"] == 2
    assert "s3cret" not in repr(plan)


def test_redis_sentinel_stays_plaintext() -> None:
    """redis+sentinel (no s): neither the Sentinels nor the master get TLS options."""
    plan = sentinel_plan("redis+sentinel://h1:26379/tables?ssl_ca_certs=/etc/ca.crt")
    for kwargs in (plan.sentinel_kwargs, plan.master_kwargs):
        assert not any(key.startswith("ssl") for key in kwargs)


def test_sentinel_tls_options_are_checked() -> None:
    """A TLS query option with an impossible value is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        sentinel_plan("rediss+sentinel://h1:26379/tables?ssl_cert_reqs=maybe")
