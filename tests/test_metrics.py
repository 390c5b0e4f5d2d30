"""The Prometheus endpoint reports the flow's real counts."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import files, simulate
from edgeflow.engine import RunOptions, run
from tests.helpers import lines
from tests.kafka_helpers import free_port


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_endpoint_counts_what_the_flow_did(tmp_path: Path) -> None:
    out, alerts = tmp_path / "w.jsonl", tmp_path / "a.jsonl"
    flow = Flow("metrics-test")
    r = flow.source(
        simulate.sensors(
            devices=5,
            rate_hz=50,
            seed=2,
            speed=20,
            duration="60s",
            start="2026-01-01T00:00:00Z",
            spike_prob=0.005,
        )
    )
    r.window(window.tumbling("1s"), agg.count()).to(files.sink(out), name="windows_out")
    r.detect(detect.zscore(), "accel", name="alerts").to(files.sink(alerts), name="alerts_out")
    port = free_port()
    result: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: result.setdefault("summary", run(flow.plan(), RunOptions(metrics_port=port)))
    )
    runner.start()
    time.sleep(1.5)
    live = scrape(port)  # mid-run: the endpoint answers while the flow works
    assert 0 < live['edgeflow_readings_in_total{flow="metrics-test"}'] < 5 * 50 * 60
    runner.join(60)
    final = scrape(port)
    assert final['edgeflow_readings_in_total{flow="metrics-test"}'] == 5 * 50 * 60
    assert final['edgeflow_window_records_total{flow="metrics-test"}'] == len(lines(out)) == 5 * 60
    assert final['edgeflow_anomalies_total{flow="metrics-test"}'] == len(lines(alerts)) > 0
    assert final['edgeflow_records_written_total{flow="metrics-test",sink="windows_out"}'] == len(
        lines(out)
    )
    assert final['edgeflow_reduction_ratio{flow="metrics-test"}'] == 5 * 50 * 60 / (
        len(lines(out)) + len(lines(alerts))
    )
