"""`gateway serve --metrics-listen`: Prometheus metrics and JSON logs after real Detects."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.client import GatewayClient
from gateway.devtools.sandbox import MosquittoProcess, free_port
from tests.integration.harness import Stack, wait_health


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by name and label set, from the sidecar's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def total(samples: dict[tuple[tuple[str, str], ...], float], **want: str) -> float:
    return sum(v for labels, v in samples.items() if set(want.items()) <= set(labels))


async def test_metrics_and_json_logs_after_each_outcome(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Detects that succeed, time out and fail are counted by outcome; logs carry trace ids."""
    config = {
        "brokers": [{"broker": "127.0.0.1", "port": broker.port, "priority": 1}],
        "game_config": {"game_type": "sicbo", "game_code": "SBO-001", "timeout": 5,
                        "input_stream": "rtmp://192.0.2.1/l", "output_stream": "rtmp://192.0.2.1/o"},
    }  # fmt: skip
    path = tmp_path / "sbo.json"
    path.write_text(json.dumps(config))
    grpc_port, metrics_port = free_port(), free_port()
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--log-format", "json", "serve", "--config", str(path),
        "--listen", f"127.0.0.1:{grpc_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        async with Stack([broker], "sicbo") as s:  # the simulated IDP (and its own sidecar)
            address = f"127.0.0.1:{grpc_port}"
            async with asyncio.timeout(10):
                await wait_health(address, "SERVING")
            async with GatewayClient(address) as client:
                await client.detect("SBO-001-ok")
                s.behave(answer="silence")
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.detect("SBO-001-silent", deadline_s=0.3)
                s.behave(answer="error", err=-3)
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.detect("SBO-001-noshake")
            samples = await asyncio.to_thread(scrape, metrics_port)
    finally:
        proc.terminate()
        _, logs = await asyncio.wait_for(proc.communicate(), 15)
    detects = samples["gateway_detects_total"]
    for outcome in ("ok", "timeout", "idp_error"):
        assert total(detects, table="SBO-001", game="sicbo", outcome=outcome) == 1
    assert total(samples["gateway_detect_duration_seconds_count"], outcome="ok") == 1
    assert total(samples["gateway_broker_up"], broker=f"127.0.0.1:{broker.port}") == 1
    assert "gateway_epoch" in samples
    # No Redis configured and the broker ready: SERVING, not DEGRADED.
    degraded = samples["gateway_degraded"].items()
    assert [v for labels, v in degraded if ("table", "SBO-001") in labels] == [0.0]
    records = [json.loads(line) for line in logs.decode().splitlines() if line.startswith("{")]
    summaries = [r for r in records if r["message"].startswith("detect table=SBO-001")]
    assert len(summaries) == 3
    assert all(len(r["trace_id"]) == 32 and len(r["span_id"]) == 16 for r in summaries)
