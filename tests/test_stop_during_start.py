"""A stop that arrives while a flow is starting (a pod stopped during start-up, ``systemctl
stop`` right after start) stops it: the flow does not run on until SIGKILL, and no traceback
reaches the user, whatever the moment the signal lands."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

from tests.helpers import popen_edgeflow, write_flow
from tests.kafka_helpers import free_port

FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate

flow = Flow("startstop")
r = flow.source(simulate.sensors(devices=5, rate_hz=50, seed=1), key="device", time="ts")
r.window(window.tumbling("1s"), agg.count()).to(files.sink({out!r}), name="out")
"""


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_sigterm_as_soon_as_the_flow_serves_metrics_stops_it(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flow.py", FLOW.format(out=str(tmp_path / "out.jsonl")))
    for attempt in range(3):
        port = free_port()
        proc = popen_edgeflow(
            "run", str(flow), "--metrics-port", str(port), "--no-live",
            "--state-dir", str(tmp_path / f"state{attempt}"),
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while not answers(port):  # the signal handler is in place once metrics are served
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the flow never served metrics"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # the engine is still starting
        try:
            _, err = proc.communicate(timeout=60)
        except Exception:
            proc.kill()
            raise AssertionError(f"attempt {attempt}: SIGTERM during start was lost") from None
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
