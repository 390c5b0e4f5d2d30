"""Managed deployments on one node: a supervisor process per deployment.

A deployment lives in ``<root>/<name>/``:

* ``flow.py`` and ``flow.sha256`` - the flow as deployed (a copy, so edits to the original
  do not change a running deployment);
* ``state/`` - recovery snapshots and the outbox;
* ``edgeflow.log`` - supervisor and worker output;
* ``supervisor.pid``, ``worker.pid`` - who is running;
* ``status.json`` - started at, restarts, last exit code;
* ``stats.json`` - the worker's counters, refreshed every second.

The supervisor starts the worker (``edgeflow run``), restarts it with backoff (1 s doubling
to 30 s) when it dies, and stops it on SIGTERM. A worker that exits 0 (its input ended, or
``--for`` elapsed) ends the deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson


def alive(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is running."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):  # a zombie child of ours is not running
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return None
    return pid


def read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data))
    tmp.replace(path)


def supervise(deploy_dir: Path, extra: list[str]) -> int:
    """The supervisor's loop (runs in its own process)."""
    status_path = deploy_dir / "status.json"
    log = (deploy_dir / "edgeflow.log").open("ab", buffering=0)
    status: dict[str, Any] = {
        "started_at": time.time(),
        "restarts": 0,
        "last_exit": None,
        "pid": os.getpid(),
    }
    write_json(status_path, status)
    stopping = False
    worker: subprocess.Popen[bytes] | None = None

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    backoff = 1.0
    env = {**os.environ, "EDGEFLOW_STATS_FILE": str(deploy_dir / "stats.json")}
    while not stopping:
        cmd = [
            sys.executable,
            "-m",
            "edgeflow",
            "run",
            str(deploy_dir / "flow.py"),
            "--state-dir",
            str(deploy_dir / "state"),
            *extra,
        ]
        log.write(f"[supervisor] starting worker: {' '.join(cmd)}\n".encode())
        worker = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        (deploy_dir / "worker.pid").write_text(str(worker.pid))
        started = time.monotonic()
        code = worker.wait()
        status["last_exit"] = code
        if code == 0 or stopping:
            write_json(status_path, status)
            break
        if time.monotonic() - started > 60:
            backoff = 1.0
        status["restarts"] += 1
        write_json(status_path, status)
        log.write(
            f"[supervisor] worker exited with {code}; restarting in {backoff:.0f}s (restart {status['restarts']})\n".encode()
        )
        deadline = time.monotonic() + backoff
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
        backoff = min(backoff * 2, 30.0)
    log.write(b"[supervisor] stopped\n")
    for name in ("worker.pid", "supervisor.pid"):
        with contextlib.suppress(OSError):
            (deploy_dir / name).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[2:]))
