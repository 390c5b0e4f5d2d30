"""`edgeflow status` rates are smoothed over 10 s (hostile testing of issue 12, 11(d)).

A flow with 2-s windows writes its records every 2 s; sampled each second, a per-second
rate showed "0 records/s out" every other time while its bytes out kept growing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from edgeflow.engine.figures import RateWindow, figures, summary_line
from tests.helpers import popen_edgeflow, write_flow


def test_a_sink_writing_every_2s_never_shows_0_records_per_s() -> None:
    rates = RateWindow()
    shown = []
    for second in range(30):
        records = 10 * (second // 2)  # 10 records at every even second
        c = {"records_to.out": records, "bytes_to.out": 50 * records}
        prev, span_s = rates.push(1000.0 + second, c)
        shown.append(figures(c, prev, span_s)["records_per_s"])
    assert all(r > 0 for r in shown[2:]), shown
    assert all(abs(r - 5.0) <= 1.0 for r in shown[12:]), shown  # the mean rate: 10 per 2 s
    assert "5 records/s out" in summary_line(figures(c, prev, span_s))


def test_rates_follow_a_stop_within_the_span() -> None:
    rates = RateWindow(span_s=10)
    for second in range(22):
        c = {"records_to.out": 10 * min(second, 10)}  # writes 10/s, then stops at 10 s
        prev, span_s = rates.push(float(second), c)
    assert figures(c, prev, span_s)["records_per_s"] == 0


def test_status_figures_of_a_running_2s_window_flow_are_never_0(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate
flow = Flow("rates-2s")
r = flow.source(simulate.sensors(devices=3, rate_hz=10))
r.window(window.tumbling("2s"), agg.count()).to(files.sink({str(tmp_path / "out.jsonl")!r}))
""",
    )
    proc = popen_edgeflow(
        "run", str(flow), "--for", "90s", env={**os.environ, "EDGEFLOW_STATS_FILE": str(stats)}
    )
    seen: list[tuple[float, float, int]] = []  # (at, records/s, bytes out)
    try:
        deadline = time.monotonic() + 80
        while time.monotonic() < deadline and len(seen) < 8:
            time.sleep(0.1)
            try:
                doc = json.loads(stats.read_text())
            except (OSError, ValueError):
                continue
            f = doc["figures"]
            if f["records_out"] and (not seen or doc["at"] > seen[-1][0]):
                seen.append((doc["at"], f["records_per_s"], f["bytes_out"]))
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert len(seen) == 8, seen
    assert seen[-1][2] > seen[0][2], "bytes out keep growing"
    assert all(r > 0 for _, r, _ in seen), f"records/s out shown as 0: {seen}"
