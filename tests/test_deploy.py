"""Managed deployments: detach, restart after kill -9 with no gap, refuse a second copy, stop."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import defaultdict
from pathlib import Path

from tests.helpers import edgeflow, lines, records, write_flow

S = 1_000_000_000


def wait_for(cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_detached_deploy_restarts_after_kill_9_without_a_gap_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    flow = write_flow(
        tmp_path / "flow.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate
flow = Flow("managed")
r = flow.source(simulate.sensors(devices=4, rate_hz=50, seed=9, speed=10, duration="600s", start="2026-01-01T00:00:00Z"))
r.window(window.tumbling("1s"), agg.count()).to(files.sink({str(out)!r}))
""",
    )
    root = tmp_path / "deployments"
    res = edgeflow(
        "deploy",
        str(flow),
        "--name",
        "press",
        "--detach",
        "--root",
        str(root),
        "--snapshot-every",
        "300ms",
    )
    assert "deployed press" in res.stdout
    d = root / "press"
    assert (d / "flow.py").read_text() == flow.read_text() and (d / "flow.sha256").exists()
    wait_for(lambda: len(lines(out)) >= 40)
    worker = int((d / "worker.pid").read_text())
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: (d / "worker.pid").exists() and int((d / "worker.pid").read_text()) != worker)
    before = len(lines(out))
    wait_for(lambda: len(lines(out)) >= before + 40)
    status = edgeflow("status", "press", "--root", str(root)).stdout
    assert "running" in status and "restarts 1" in status and "last exit -9" in status
    # the live figures: 4 devices x 50 Hz at 10x speed = 2000 readings/s, 40 windows/s out
    rate = re.search(r"(\d+) readings/s in, (\d+) records/s out", status)
    assert rate and 1200 <= int(rate[1]) <= 2800 and 20 <= int(rate[2]) <= 60, status
    assert re.search(r"reduction \d+\.\dx", status) and "watermark lag" in status, status
    assert "outbox 0 waiting / 0 dropped" in status, status
    again = edgeflow(
        "deploy", str(flow), "--name", "press", "--detach", "--root", str(root), check=False
    )
    assert again.returncode != 0 and "already running" in again.stderr
    assert "press\trunning" in edgeflow("list", "--root", str(root)).stdout
    assert "stopped press" in edgeflow("stop", "press", "--root", str(root)).stdout
    assert "stopped" in edgeflow("status", "press", "--root", str(root)).stdout
    logs = edgeflow("logs", "press", "--root", str(root)).stdout
    assert "worker exited with -9; restarting" in logs and "[supervisor] stopped" in logs
    # the output has no gap and no duplicate: each device's windows are consecutive seconds
    per_key: dict[str, list[int]] = defaultdict(list)
    for r in records(out):
        per_key[r["key"]].append(r["window_start"] // S)
    for starts in per_key.values():
        starts.sort()
        assert starts == list(range(starts[0], starts[0] + len(starts))), "no gap, no duplicate"
    assert all(r["count"] == 50 for r in records(out)), "every window complete"
