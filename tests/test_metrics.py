"""The Prometheus endpoint reports the flow's real counts."""

from __future__ import annotations

import contextlib
import os
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
    live: dict[str, float] = {}
    deadline = time.monotonic() + 120  # mid-run: the endpoint answers while the flow works
    while runner.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            live = scrape(port)
            if live.get('edgeflow_readings_in_total{flow="metrics-test"}', 0) > 0:
                break
        time.sleep(0.05)
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
    assert final['edgeflow_bytes_written_total{flow="metrics-test",sink="windows_out"}'] == (
        out.stat().st_size
    )
    assert final['edgeflow_bytes_written_total{flow="metrics-test",sink="alerts_out"}'] == (
        alerts.stat().st_size
    )
    # the stream started on 2026-01-01: its windows close that far behind the wall clock
    lag = final['edgeflow_watermark_lag_seconds{flow="metrics-test",step="window"}']
    start = 1767225600  # 2026-01-01T00:00:00Z
    assert abs(lag - (time.time() - (start + 60))) < 5
    assert final['edgeflow_outbox_depth{flow="metrics-test"}'] == 0


def test_bytes_in_and_outbox_figures_of_a_file_flow(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    rows = [f'{{"device": "d{i % 3}", "ts": {i * 100_000_000}, "v": {i}}}' for i in range(600)]
    src.write_text("\n".join([*rows, "not json"]) + "\n")
    from edgeflow.connectors import kafka

    flow = Flow("bytes-test")
    r = flow.source(files.source(src, time_unit="ns"), key="device", time="ts")
    r.window(window.tumbling("10s"), agg.mean("v")).to(kafka.sink("t"), name="to_kafka")
    port = free_port()
    env_keys = ("EDGEFLOW_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP")
    saved = {k: os.environ.pop(k) for k in env_keys if k in os.environ}
    try:
        run(flow.plan(), RunOptions(metrics_port=port, state_dir=tmp_path / "st"))
    finally:
        os.environ.update(saved)
    final = scrape(port)
    assert final['edgeflow_bytes_in_total{flow="bytes-test"}'] == src.stat().st_size
    assert final['edgeflow_outbox_depth{flow="bytes-test"}'] == 3 * 6, "no broker: all wait"
    assert final['edgeflow_dead_letters_total{flow="bytes-test"}'] == 1


def test_live_console_view_shows_the_run_figures(tmp_path: Path) -> None:
    import re

    from tests.helpers import edgeflow, write_flow

    out = tmp_path / "w.jsonl"
    flow = write_flow(
        tmp_path / "live.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate
flow = Flow("live-view")
r = flow.source(simulate.sensors(devices=3, rate_hz=100, seed=1, speed=None, duration="20s",
                                 start="2026-01-01T00:00:00Z"))
r.window(window.tumbling("1s"), agg.count()).to(files.sink({str(out)!r}), name="archive")
""",
    )
    res = edgeflow("run", str(flow), "--live")
    err = res.stderr
    assert "edgeflow · live-view" in err, err
    assert re.search(r"readings in\s+6,000\s", err), err
    assert re.search(r"records out\s+60\s", err), err
    assert re.search(r"archive\s+files\s+60\s+", err), err
    quiet = edgeflow("run", str(flow), "--no-live")
    assert "edgeflow · live-view" not in quiet.stderr, "--no-live hides it"
