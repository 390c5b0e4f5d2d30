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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from edgeflow.file_modes import restrict_tree
from edgeflow.fleet.control_topic import ControlListener
from edgeflow.fleet.health import MAX_ERROR_RATE, GraceCheck
from edgeflow.fleet.release import (
    current_release,
    integrity_problem,
    read_release,
    restore_state,
    write_release,
)
from edgeflow.fleet.status_topic import DEFAULT_PERIOD_S, StatusReporter, node_id


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


#: how long a stopping worker gets to snapshot and exit before SIGKILL (``edgeflow stop``
#: waits 60 s for the whole deployment; the next start resumes from the last snapshot)
STOP_TIMEOUT_S = 45.0


def _stop_worker(worker: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (the flow snapshots its state and exits), SIGKILL after ``timeout``."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
    return worker.wait()


def node_status(deploy_dir: Path, status: dict[str, Any], checking: bool) -> dict[str, Any]:
    """What the status topic says about this deployment."""
    release = read_release(deploy_dir)
    cur = current_release(deploy_dir) or {}
    state = status.get("state", "running")
    if state == "running":
        health = (
            "checking update" if checking else "ok" if status.get("worker_up") else "restarting"
        )
    else:
        health = state
    return {
        "deployment": deploy_dir.name,
        "version": cur.get("version"),
        "state": state,
        "health": health,
        "restarts": status.get("restarts", 0),
        "last_exit": status.get("last_exit"),
        "error": status.get("error"),
        "last_update": release.get("update"),
    }


def _logger(log: Any) -> Callable[[str], None]:
    """A writer of ``[supervisor] LINE`` lines to the deployment's log."""

    def say(line: str) -> None:
        log.write(f"[supervisor] {line}\n".encode())

    return say


def _reporter(deploy_dir: Path, log: Any) -> StatusReporter | None:
    conf = read_release(deploy_dir).get("status") or {}
    if not conf.get("topic") or not conf.get("bootstrap"):
        return None

    return StatusReporter(
        conf["bootstrap"],
        conf["topic"],
        f"{node_id(conf.get('node_id'))}/{deploy_dir.name}",
        _logger(log),
        float(conf.get("period_s") or DEFAULT_PERIOD_S),
    )


def _control(deploy_dir: Path, log: Any) -> ControlListener | None:
    conf = read_release(deploy_dir).get("control") or {}
    if not conf.get("topic") or not conf.get("bootstrap"):
        return None

    return ControlListener(deploy_dir, conf["bootstrap"], conf["topic"], _logger(log))


def _probation(deploy_dir: Path) -> GraceCheck | None:
    """The grace check of an update that has not passed yet (also after a supervisor restart)."""
    rec = read_release(deploy_dir)
    upd = rec.get("update") or {}
    if upd.get("result") != "checking" or not rec.get("previous"):
        return None
    return GraceCheck(
        grace_s=float(upd.get("grace_s", 30)),
        started=time.monotonic(),
        need_input=bool(upd.get("need_input", False)),
        max_error_rate=float(upd.get("max_error_rate", MAX_ERROR_RATE)),
    )


def _update_passed(deploy_dir: Path, check: GraceCheck) -> str:
    rec = read_release(deploy_dir)
    upd = rec["update"]
    upd.update(result="succeeded", at=time.time())
    write_release(deploy_dir, rec)
    return (
        f"update to {upd.get('to')} succeeded: healthy for its {check.grace_s:.0f} s grace period"
    )


def _roll_back(deploy_dir: Path, reason: str) -> str:
    """Back to the previous version (and its state, when the update moved it aside)."""
    rec = read_release(deploy_dir)
    upd = rec["update"]
    aside = upd.get("state_aside")
    if aside:
        failed_state = restore_state(deploy_dir / "state", Path(aside))
        upd["state"] = f"restored the state of {upd.get('from')} from {aside}"
        if failed_state is not None:
            upd["state"] += f"; the state of {upd.get('to')} was moved aside to {failed_state}"
    rec["current"], rec["previous"] = rec["previous"], None
    rec["rolled_back"] = [*(rec.get("rolled_back") or []), upd.get("to")][-20:]
    upd.update(result="rolled back", reason=reason, at=time.time())
    write_release(deploy_dir, rec)
    return f"update to {upd.get('to')} failed: {reason}; rolled back to {upd.get('from')}"


def supervise(
    deploy_dir: Path,
    extra: list[str],
    max_restarts: int = MAX_RESTARTS,
    restart_window_s: float = RESTART_WINDOW_S,
) -> int:
    """The supervisor's loop (runs in its own process)."""
    # what the supervisor creates is its owner's only; the worker gets the user's umask back
    # (its state is private by itself, files it writes elsewhere are the user's choice)
    user_umask = os.umask(0o077)
    restrict_tree(deploy_dir)
    status_path = deploy_dir / "status.json"
    stats_path = deploy_dir / "stats.json"
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
    reporter = _reporter(deploy_dir, log)
    control = _control(deploy_dir, log)
    check = _probation(deploy_dir)

    def save() -> None:
        write_json(status_path, status)
        if reporter is not None:
            reporter.publish(node_status(deploy_dir, status, check is not None))

    say = _logger(log)

    save()
    stopping = False
    worker: subprocess.Popen[bytes] | None = None

    def on_term(*_: Any) -> None:
        # only a flag: the loop below signals the worker, also one that was being started
        # when the SIGTERM came (signalling here could miss it)
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    backoff = 1.0
    deaths: collections.deque[float] = collections.deque()  # monotonic times, in the window
    env = {**os.environ, "EDGEFLOW_STATS_FILE": str(stats_path)}

    def roll_back(reason: str) -> None:
        nonlocal check, backoff
        line = _roll_back(deploy_dir, reason)
        say(line)
        status.update(update=line, restarts=0, worker_up=False, last_exit=None)
        status.pop("error", None)
        check = None
        deaths.clear()
        backoff = 1.0
        save()

    while not stopping:
        problem = integrity_problem(deploy_dir)
        if problem and check is not None:
            roll_back(problem)
            continue
        if problem:
            status.update(state="refused", error=problem, refused_at=time.time(), worker_up=False)
            save()
            say(f"refusing to start the flow: {problem}")
            break
        entry = deploy_dir / (current_release(deploy_dir) or {}).get("entry", "flow.py")
        cmd = [
            sys.executable,
            "-m",
            "edgeflow",
            "run",
            str(entry),
            "--state-dir",
            str(deploy_dir / "state"),
            *extra,
        ]
        say(f"starting worker: {' '.join(cmd)}")
        offset = log_path.stat().st_size
        if check is not None:  # judge the new version on its own figures only
            stats_path.unlink(missing_ok=True)
        worker = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, umask=user_umask)
        (deploy_dir / "worker.pid").write_text(str(worker.pid))
        status["worker_up"] = True
        save()
        started = time.monotonic()
        failed_reason = None
        term_at = None  # when the worker was asked to stop (SIGTERM)
        while (code := worker.poll()) is None:
            if stopping:  # the flow snapshots its state and exits; SIGKILL if it does not
                if term_at is None:
                    worker.send_signal(signal.SIGTERM)
                    term_at = time.monotonic()
                elif time.monotonic() - term_at > STOP_TIMEOUT_S:
                    say(f"the worker did not stop within {STOP_TIMEOUT_S:.0f}s of SIGTERM: killed")
                    worker.kill()
            if check is not None and not stopping:
                verdict, failed_reason = check.verdict(
                    time.monotonic(), True, read_json(stats_path), time.time()
                )
                if verdict == "passed":
                    line = _update_passed(deploy_dir, check)
                    say(line)
                    status["update"] = line
                    check = None
                    save()
                elif verdict == "failed":
                    say(f"stopping the new version: {failed_reason}")
                    _stop_worker(worker)
                    break
            time.sleep(0.2)
        if failed_reason is not None and check is not None:
            roll_back(failed_reason)
            continue
        code = worker.wait()
        status.update(last_exit=code, worker_up=False)
        if code == 0 or stopping:
            if check is not None and code == 0 and not stopping:
                status["update"] = _update_passed(deploy_dir, check)
                check = None
            status["state"] = "stopped" if stopping else "finished"
            save()
            break
        now = time.monotonic()
        error = last_error(log_path, offset)
        if check is not None:
            check.worker_exited(now, code, error)
            verdict, reason = check.verdict(now, False, {}, time.time())
            if verdict == "failed" and reason is not None:
                roll_back(reason)
                continue
        if now - started > 60:
            backoff = 1.0
        deaths.append(now)
        while deaths and now - deaths[0] > restart_window_s:
            deaths.popleft()
        status["error"] = error
        status["exits_in_window"] = len(deaths)
        if len(deaths) > max_restarts:
            status.update(state="failed", failed_at=time.time())
            save()
            say(
                f"worker exited with {code}: {len(deaths)} exits within "
                f"{restart_window_s:.0f}s, more than --max-restarts {max_restarts}; "
                f"giving up (failed): {status['error']}"
            )
            break
        status["restarts"] += 1
        save()
        say(
            f"worker exited with {code}; restarting in {backoff:.0f}s (restart {status['restarts']})"
        )
        deadline = time.monotonic() + backoff
        while time.monotonic() < deadline and not stopping:
            if check is not None:
                verdict, reason = check.verdict(time.monotonic(), False, {}, time.time())
                if verdict == "failed" and reason is not None:
                    roll_back(reason)
                    break
            time.sleep(0.1)
        backoff = min(backoff * 2, 30.0)
    if stopping and status["state"] == "running":
        status["state"] = "stopped"
    status["worker_up"] = False
    save()
    if control is not None:
        control.close()
    if reporter is not None:
        reporter.close()
    say("stopped")
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
