"""Deployments and their words: a changed flow is refused at deploy time with the way out
(--new-state moves the old state aside); a crash loop gives up and `status` says `failed`
with the last error and a non-zero exit; --root is the deployments root, --state-dir only
a flow's state directory, and nothing deploy --detach cannot honour is silently ignored."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import edgeflow, write_flow

SIM = 'simulate.sensors(devices=2, rate_hz=20, seed=3, speed=50, duration="20s", start="2026-01-01T00:00:00Z")'


def sim_flow(path: Path, window: str, out: Path, prelude: str = "") -> Path:
    return write_flow(
        path,
        f"""
import os
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate
{prelude}
flow = Flow("press")
r = flow.source({SIM})
r.window(window.tumbling({window!r}), agg.count()).to(files.sink({str(out)!r}))
""",
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
        return data
    except (OSError, ValueError):
        return {}


def stop_all(root: Path) -> None:
    """Stop any supervisor a failed assertion left running (by its pid file)."""
    for pid_file in root.glob("*/supervisor.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def wait_for(cond: object, timeout: float = 90, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_deploy_of_a_changed_flow_is_refused_until_new_state_moves_the_old_state_aside(
    tmp_path: Path,
) -> None:
    root = tmp_path / "deployments"
    out = tmp_path / "out.jsonl"
    v1 = sim_flow(tmp_path / "v1.py", "1s", out)
    edgeflow("deploy", str(v1), "--root", str(root), "--for", "1s")  # foreground: writes state
    state = root / "press" / "state"
    assert (state / "plan.json").exists()
    v2 = sim_flow(tmp_path / "v2.py", "2s", out)  # another window: the snapshots do not fit
    try:
        deploy_changed(root, v2)
    finally:
        stop_all(root)


def deploy_changed(root: Path, v2: Path) -> None:
    for detach in (["--detach"], []):
        res = edgeflow("deploy", str(v2), "--root", str(root), *detach, check=False)
        assert res.returncode == 1, res.stderr
        assert "the flow changed since the state" in res.stderr
        assert "--new-state" in res.stderr and "moved aside, not deleted" in res.stderr
        assert "Traceback" not in res.stderr
        assert not (root / "press" / "supervisor.pid").exists(), "nothing was started"
    assert "deployed" not in res.stdout
    res = edgeflow("deploy", str(v2), "--root", str(root), "--detach", "--new-state", "--for", "1s")
    assert "deployed press" in res.stdout
    moved = list((root / "press").glob("state.old-*"))
    assert len(moved) == 1 and (moved[0] / "plan.json").exists(), "the old state is kept"
    assert f"moved the old state aside to {moved[0]}" in res.stderr
    status = root / "press" / "status.json"
    wait_for(lambda: read_json(status).get("state") == "finished", what="the deployment to end")
    assert read_json(status)["last_exit"] == 0 and read_json(status)["restarts"] == 0


def test_run_with_a_changed_flow_says_how_to_start_over(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    state = tmp_path / "st"
    edgeflow("run", str(sim_flow(tmp_path / "v1.py", "1s", out)), "--state-dir", str(state))
    v2 = sim_flow(tmp_path / "v2.py", "2s", out)
    res = edgeflow("run", str(v2), "--state-dir", str(state), check=False)
    assert res.returncode == 1 and "--new-state" in res.stderr, res.stderr
    edgeflow("run", str(v2), "--state-dir", str(state), "--new-state")
    assert len(list(tmp_path.glob("st.old-*"))) == 1


def test_a_crash_loop_gives_up_and_status_says_failed_with_the_last_error(tmp_path: Path) -> None:
    root = tmp_path / "deployments"
    # the worker (it has a stats file; the deploy command does not) cannot start
    crash = 'if os.environ.get("EDGEFLOW_STATS_FILE"):\n    raise OSError("sensor bus /dev/bus7 is gone")'
    flow = sim_flow(tmp_path / "f.py", "1s", tmp_path / "out.jsonl", prelude=crash)
    edgeflow(
        "deploy", str(flow), "--root", str(root), "--detach",
        "--max-restarts", "2", "--restart-window", "10m",
    )  # fmt: skip
    d = root / "press"
    try:
        wait_for(lambda: not (d / "supervisor.pid").exists(), what="the supervisor to give up")
    finally:
        stop_all(root)
    res = edgeflow("status", "press", "--root", str(root), check=False)
    assert res.returncode == 1, res.stdout
    line = res.stdout.strip()
    assert line.startswith("press: failed (gave up after 3 exits within 600s, 2 restarts)"), line
    assert "sensor bus /dev/bus7 is gone" in line and "running" not in line, line
    assert edgeflow("status", "--root", str(root), check=False).returncode == 1
    assert "press\tfailed" in edgeflow("list", "--root", str(root)).stdout
    logs = edgeflow("logs", "press", "--root", str(root)).stdout
    assert logs.count("[supervisor] starting worker") == 3 and "giving up (failed)" in logs


def test_root_is_the_deployments_root_and_state_dir_only_a_flows_state(tmp_path: Path) -> None:
    root = tmp_path / "deployments"
    for cmd in (["status"], ["list"], ["logs", "press"], ["stop", "press"]):
        res = edgeflow(*cmd, "--state-dir", str(root), check=False)
        assert res.returncode == 2, (cmd, res.stderr)
        assert f"for the deployments root use --root {root}" in res.stderr, res.stderr
    flow = sim_flow(tmp_path / "f.py", "1s", tmp_path / "out.jsonl")
    refused = {
        ("--state-dir", str(tmp_path / "st")): "with --detach the state lives in ROOT/NAME/state",
        ("--live",): "a detached deployment has no console",
        ("--no-live",): "a detached deployment has no console",
    }
    for opts, why in refused.items():
        res = edgeflow("deploy", str(flow), "--root", str(root), "--detach", *opts, check=False)
        assert res.returncode == 2 and why in res.stderr, (opts, res.stderr)
    for opts in (("--max-restarts", "3"), ("--restart-window", "5m")):
        res = edgeflow("deploy", str(flow), "--root", str(root), *opts, check=False)
        assert res.returncode == 2 and "applies to --detach" in res.stderr, res.stderr
    res = edgeflow("run", str(flow), "--new-state", check=False)
    assert res.returncode == 2 and "--new-state needs --state-dir" in res.stderr
    assert not root.exists(), "nothing was deployed"
