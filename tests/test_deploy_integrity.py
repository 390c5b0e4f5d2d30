"""Least exposure and integrity of a deployment: its directory is 0700 and its files 0600 (the
flow copy may name credentials; the outbox and log hold data), tightened again on the next start
for a deployment made before; the deployed flow is checked against its sha256 before every
worker start, and an edited copy is refused with the reason in `edgeflow status`."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from tests.helpers import edgeflow, lines, stop_deployments, wait_for, write_flow


def slow_flow(path: Path, out: Path) -> Path:
    return write_flow(
        path,
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate
flow = Flow("press")
r = flow.source(simulate.sensors(devices=2, rate_hz=20, seed=3, speed=10, duration="600s", start="2026-01-01T00:00:00Z"))
r.window(window.tumbling("1s"), agg.count()).to(files.sink({str(out)!r}))
""",
    )


def modes(d: Path) -> dict[str, int]:
    return {
        str(p.relative_to(d)): stat.S_IMODE(p.stat().st_mode)
        for p in [d, *d.rglob("*")]
        if not p.is_symlink() and (p.is_dir() or p.is_file())
    }


def test_deployment_dir_is_0700_and_its_files_0600_also_after_a_restart_of_an_old_one(
    tmp_path: Path,
) -> None:
    root = tmp_path / "deployments"
    out = tmp_path / "out.jsonl"
    flow = slow_flow(tmp_path / "flow.py", out)
    os.chmod(flow, 0o644)
    d = root / "press"
    try:
        edgeflow("deploy", str(flow), "--detach", "--root", str(root), "--snapshot-every", "300ms")
        wait_for(lambda: len(lines(out)) >= 3 and (d / "stats.json").exists(), what="output")
        wait_for(lambda: (d / "state" / "plan.json").exists(), what="state")
        edgeflow("stop", "press", "--root", str(root))
        got = modes(d)
        for must in (
            "flow.py",
            "flow.sha256",
            "edgeflow.log",
            "status.json",
            "stats.json",
            "state",
        ):
            assert must in got, must
        loose = {p: oct(m) for p, m in got.items() if m not in (0o700, 0o600)}
        assert not loose, f"readable by others: {loose}"
        assert {p for p, m in got.items() if m == 0o700} == {
            p for p in got if (d / p).is_dir() or p == "."
        }
        # a deployment made by an older edgeflow (everything 755/644) is tightened on its next start
        for p in [d, *d.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        before = len(lines(out))
        edgeflow("deploy", str(flow), "--detach", "--root", str(root))
        wait_for(lambda: len(lines(out)) > before, what="output after the restart")
        loose = {p: oct(m) for p, m in modes(d).items() if m not in (0o700, 0o600)}
        assert not loose, f"still readable by others after the restart: {loose}"
    finally:
        stop_deployments(root)


def test_an_edited_deployed_flow_is_refused_on_the_next_restart_and_status_says_why(
    tmp_path: Path,
) -> None:
    root = tmp_path / "deployments"
    out = tmp_path / "out.jsonl"
    flow = slow_flow(tmp_path / "flow.py", out)
    d = root / "press"
    try:
        edgeflow("deploy", str(flow), "--detach", "--root", str(root), "--snapshot-every", "300ms")
        wait_for(lambda: len(lines(out)) >= 2, what="output")
        # someone edits the deployed copy, then the worker dies: the supervisor must not run it
        with (d / "flow.py").open("a") as f:
            f.write("\nimport os  # injected\n")
        worker = int((d / "worker.pid").read_text())
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: not (d / "supervisor.pid").exists(), what="the supervisor to refuse")
        log = (d / "edgeflow.log").read_text()
        assert log.count("[supervisor] starting worker") == 1, "the edited flow must not start"
        res = edgeflow("status", "press", "--root", str(root), check=False)
        assert res.returncode == 1, res.stdout
        line = res.stdout.strip()
        assert "refused" in line and "flow.py was changed after deploy" in line, line
        assert "sha256" in line and "redeploy with edgeflow deploy" in line, line
        assert "press\trefused" in edgeflow("list", "--root", str(root)).stdout
        # redeploying the (original) flow is the way out
        before = len(lines(out))
        edgeflow("deploy", str(flow), "--detach", "--root", str(root))
        wait_for(lambda: len(lines(out)) > before, what="output after the redeploy")
        assert "running" in edgeflow("status", "press", "--root", str(root)).stdout
    finally:
        stop_deployments(root)
