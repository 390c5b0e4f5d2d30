"""Managed deployments on one node: a supervisor process per deployment.

A deployment lives in ``<root>/<name>/``:

* ``flow.py`` and ``flow.sha256`` - the flow as deployed (a copy, so edits to the original
  do not change a running deployment);
* ``state/`` - recovery snapshots and the outbox;
* ``edgeflow.log`` - supervisor and worker output;
* ``supervisor.pid``, ``worker.pid`` - who is running;
* ``status.json`` - started at, restarts, last exit code, ``state`` (running, stopped,
  finished, failed) and, when failed, the worker's last error line;
* ``stats.json`` - the worker's counters and connection states, refreshed every second.

The supervisor starts the worker (``edgeflow run``), restarts it with backoff (1 s doubling
to 30 s) when it dies, and stops it on SIGTERM. A worker that exits 0 (its input ended, or
``--for`` elapsed) ends the deployment. A worker that dies more than ``--max-restarts``
times (default 5) within ``--restart-window`` seconds (default 600) is not restarted again:
the deployment is ``failed`` with the last error line, for ``edgeflow status`` to show.
"""

from __future__ import annotations

import argparse
import collections
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


MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0


def last_error(log: Path, offset: int) -> str | None:
    """The last ``error:`` (or click's ``Error:``) line the worker wrote to ``log`` after ``offset`` (else its last
    line), for ``status`` to show why it died."""
    try:
        with log.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = [ln for ln in found if not ln.startswith("[supervisor]")]
    errors = [ln for ln in found if ln.lower().startswith("error:")]
    last = errors or found
    return last[-1] if last else None


def supervise(
    deploy_dir: Path,
    extra: list[str],
    max_restarts: int = MAX_RESTARTS,
    restart_window_s: float = RESTART_WINDOW_S,
) -> int:
    """The supervisor's loop (runs in its own process)."""
    status_path = deploy_dir / "status.json"
    log_path = deploy_dir / "edgeflow.log"
    log = log_path.open("ab", buffering=0)
    status: dict[str, Any] = {
        "started_at": time.time(),
        "restarts": 0,
        "last_exit": None,
        "pid": os.getpid(),
        "state": "running",
        "max_restarts": max_restarts,
        "restart_window_s": restart_window_s,
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
    deaths: collections.deque[float] = collections.deque()  # monotonic times, in the window
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
        offset = log_path.stat().st_size
        worker = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        (deploy_dir / "worker.pid").write_text(str(worker.pid))
        started = time.monotonic()
        code = worker.wait()
        status["last_exit"] = code
        if code == 0 or stopping:
            status["state"] = "stopped" if stopping else "finished"
            write_json(status_path, status)
            break
        now = time.monotonic()
        if now - started > 60:
            backoff = 1.0
        deaths.append(now)
        while deaths and now - deaths[0] > restart_window_s:
            deaths.popleft()
        status["error"] = last_error(log_path, offset)
        status["exits_in_window"] = len(deaths)
        if len(deaths) > max_restarts:
            status.update(state="failed", failed_at=time.time())
            write_json(status_path, status)
            log.write(
                f"[supervisor] worker exited with {code}: {len(deaths)} exits within "
                f"{restart_window_s:.0f}s, more than --max-restarts {max_restarts}; "
                f"giving up (failed): {status['error']}\n".encode()
            )
            break
        status["restarts"] += 1
        write_json(status_path, status)
        log.write(
            f"[supervisor] worker exited with {code}; restarting in {backoff:.0f}s (restart {status['restarts']})\n".encode()
        )
        deadline = time.monotonic() + backoff
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
        backoff = min(backoff * 2, 30.0)
    if stopping and status["state"] == "running":
        status["state"] = "stopped"
        write_json(status_path, status)
    log.write(b"[supervisor] stopped\n")
    for name in ("worker.pid", "supervisor.pid"):
        with contextlib.suppress(OSError):
            (deploy_dir / name).unlink()
    return 0


def main(argv: list[str]) -> int:
    """``python -m edgeflow.cli.supervisor DIR [--max-restarts N] [--restart-window S] -- RUN-ARGS``"""
    split = argv.index("--") if "--" in argv else len(argv)
    head, extra = argv[:split], argv[split + 1 :]
    p = argparse.ArgumentParser(prog="edgeflow.cli.supervisor")
    p.add_argument("deploy_dir", type=Path)
    p.add_argument("--max-restarts", type=int, default=MAX_RESTARTS)
    p.add_argument("--restart-window", type=float, default=RESTART_WINDOW_S)
    a = p.parse_args(head)
    return supervise(a.deploy_dir, extra, a.max_restarts, a.restart_window)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
