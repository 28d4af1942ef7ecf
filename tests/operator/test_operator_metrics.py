"""Unit tests of the operator's Prometheus metrics, scraped from its real /metrics endpoint
on a loopback port."""

from __future__ import annotations

import errno
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from importlib import metadata

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gametable_operator import metrics
from gateway.devtools.sandbox import HOST, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """The metrics endpoint, served for this module's tests."""
    server = metrics.serve(free_port(), HOST)
    assert server is not None
    with server:
        yield f"http://{HOST}:{server.port}/metrics"


def scrape(url: str) -> Samples:
    """Every sample of one scrape, by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def grown(before: Samples, after: Samples) -> Samples:
    """The samples whose value changed between two scrapes, with the difference."""
    return {
        key: value - before.get(key, 0.0)
        for key, value in after.items()
        if value != before.get(key)
    }


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def test_port_zero_serves_nothing() -> None:
    """Metrics port 0 turns the endpoint off: nothing listens and there is nothing to close."""
    assert metrics.serve(0) is None


def test_every_series_is_there_from_the_start(endpoint: str) -> None:
    """Each result and outcome is exported before its first event, next to the version."""
    samples = scrape(endpoint)
    for result in ("rendered", "invalid_spec", "apply_failed"):
        assert (
            "gateway_operator_reconciles_total",
            (("result", result),),
        ) in samples
    for outcome in ("created", "updated", "unchanged", "refused", "error"):
        assert ("gateway_operator_configmap_writes_total", (("outcome", outcome),)) in samples
    for result in ("injected", "refused", "error"):
        assert ("gateway_operator_admissions_total", (("result", result),)) in samples
    assert ("gateway_operator_status_refresh_errors_total", ()) in samples
    assert ("gateway_operator_status_refresh_seconds_count", ()) in samples
    assert ("gateway_operator_last_active_timestamp_seconds", ()) in samples
    version = metadata.version("studio-gateway")
    assert samples[("gateway_operator_info", (("version", version),))] == 1.0


def test_counters_count_each_call_under_its_label(endpoint: str) -> None:
    """reconciled, applied and admitted add one to their own series and to no other."""
    before = scrape(endpoint)
    metrics.reconciled("rendered")
    metrics.reconciled("rendered")
    metrics.reconciled("apply_failed")
    metrics.applied("created")
    metrics.applied("refused")
    metrics.admitted("injected")
    metrics.admitted("error")
    assert grown(before, scrape(endpoint)) == {
        ("gateway_operator_reconciles_total", (("result", "rendered"),)): 2.0,
        ("gateway_operator_reconciles_total", (("result", "apply_failed"),)): 1.0,
        ("gateway_operator_configmap_writes_total", (("outcome", "created"),)): 1.0,
        ("gateway_operator_configmap_writes_total", (("outcome", "refused"),)): 1.0,
        ("gateway_operator_admissions_total", (("result", "injected"),)): 1.0,
        ("gateway_operator_admissions_total", (("result", "error"),)): 1.0,
    }


def test_refreshes_are_timed_and_failures_counted(endpoint: str) -> None:
    """Every refresh lands in the histogram; only the failed one counts as an error."""
    before = scrape(endpoint)
    metrics.refreshed(True, 0.02)
    metrics.refreshed(False, 3.0)
    changed = grown(before, scrape(endpoint))
    histogram = "gateway_operator_status_refresh_seconds"
    assert changed[(f"{histogram}_count", ())] == 2.0
    assert changed[(f"{histogram}_sum", ())] == pytest.approx(3.02)
    assert (f"{histogram}_bucket", (("le", "0.01"),)) not in changed
    assert changed[(f"{histogram}_bucket", (("le", "0.025"),))] == 1.0
    assert changed[(f"{histogram}_bucket", (("le", "2.5"),))] == 1.0
    assert changed[(f"{histogram}_bucket", (("le", "5.0"),))] == 2.0
    assert changed[("gateway_operator_status_refresh_errors_total", ())] == 1.0


def test_observe_active_stamps_the_current_time(endpoint: str) -> None:
    """The last-active gauge holds the Unix time of the latest observe_active call."""
    start = time.time()
    metrics.observe_active()
    end = time.time()
    stamp = scrape(endpoint)[("gateway_operator_last_active_timestamp_seconds", ())]
    assert start - 0.01 <= stamp <= end + 0.01


BAD_CALLS: dict[str, tuple[Callable[[str], None], str]] = {
    "reconciled": (metrics.reconciled, "Rendered"),
    "applied": (metrics.applied, "deleted"),
    "admitted": (metrics.admitted, "gametable-42"),
}


@pytest.mark.parametrize(("record", "value"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_unknown_label_value_is_refused_naming_it(
    endpoint: str, record: Callable[[str], None], value: str
) -> None:
    """A label value outside the documented set raises ValueError naming it; nothing is added."""
    before = scrape(endpoint)
    with pytest.raises(ValueError, match=repr(value)) as info:
        record(value)
    assert "one of" in str(info.value)
    assert scrape(endpoint) == before


@pytest.mark.parametrize("seconds", [-0.5, float("nan"), float("inf")])
def test_impossible_refresh_duration_is_refused(seconds: float) -> None:
    """A negative or non-finite duration is a caller's bug: ValueError, not a skewed histogram."""
    with pytest.raises(ValueError, match="refreshed seconds"):
        metrics.refreshed(True, seconds)


def test_close_stops_serving_and_frees_the_port() -> None:
    """After close() the port refuses connections and can be bound again; closing twice is fine."""
    port = free_port()
    server = metrics.serve(port, HOST)
    assert server is not None and server.port == port
    assert accepts(port)
    server.close()
    server.close()
    assert not accepts(port)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=1).close()
    again = metrics.serve(port, HOST)
    assert again is not None
    again.close()


async def test_aclose_stops_serving_from_the_event_loop() -> None:
    """The async form stops the endpoint without blocking the loop for the server's poll."""
    port = free_port()
    server = metrics.serve(port, HOST)
    assert server is not None
    async with server:
        assert accepts(port)
    assert not accepts(port)


def test_port_in_use_fails_at_start() -> None:
    """A taken port raises OSError from serve(), at startup rather than at the first scrape."""
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        with pytest.raises(OSError) as info:
            metrics.serve(taken.getsockname()[1], HOST)
    assert info.value.errno == errno.EADDRINUSE
