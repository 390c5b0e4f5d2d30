"""Shared test helpers: write flow files, run the real CLI, read JSON-lines output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent


def write_flow(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def edgeflow(
    *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "edgeflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"edgeflow {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        )
    return res


def popen_edgeflow(
    *args: str, env: dict[str, str] | None = None, new_session: bool = False
) -> subprocess.Popen[str]:
    """``edgeflow ...`` in the background; ``new_session``: in a process group of its own (so a
    test can signal the whole group, as systemd or ``timeout`` do)."""
    return subprocess.Popen(
        [sys.executable, "-m", "edgeflow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=new_session,
    )


def kill_9_after(args: tuple[str, ...], out: Path, at_least: int, timeout: float = 120.0) -> bool:
    """``edgeflow *args`` in the background, killed with SIGKILL once ``out`` has
    ``at_least`` JSON lines (or after ``timeout`` s: generous for a loaded CI machine).
    Whether the run was still going when it was killed."""
    proc = popen_edgeflow(*args)
    deadline = time.monotonic() + timeout
    while len(lines(out)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return running


@contextlib.contextmanager
def small_disk(path: Path, size: str = "3m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (tests run as root) for full-disk tests."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def lines(path: Path) -> list[str]:
    # JSON lines are split on "\n" only: str.splitlines() would also split on U+0085,
    # U+2028, ... which may legally appear inside JSON strings
    return [x for x in path.read_text().split("\n") if x] if path.exists() else []


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in lines(path)]


def service_script(script: str, action: str, env: dict[str, str]) -> None:
    """Run scripts/<script> <action> (kafka.sh, mosquitto.sh) with extra environment."""
    full = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    full.update(env)
    res = subprocess.run(
        [str(ROOT / "scripts" / script), action],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        raise RuntimeError(f"scripts/{script} {action} failed:\n{res.stdout}\n{res.stderr}")


def source_connected_gauge(port: int, source: str) -> str | None:
    """The value of ``edgeflow_source_connected{source=...}`` scraped from the metrics endpoint
    on ``port``, or None while it is not served yet."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return None
    for line in body.decode().splitlines():
        if line.startswith("edgeflow_source_connected{") and f'source="{source}"' in line:
            return str(line.rsplit(" ", 1)[1])
    return None


def wait_for(cond: Any, timeout: float = 90, what: str = "condition") -> None:
    """Poll ``cond()`` every 0.1 s until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def stop_deployments(root: Path) -> None:
    """SIGTERM the supervisor of every deployment under ``root`` (a test's clean-up)."""
    for pid_file in root.glob("*/supervisor.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
