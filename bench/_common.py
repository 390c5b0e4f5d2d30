"""Helpers shared by the bench scripts: child processes, peak RSS, the final JSON line."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a fresh process (so each side's peak RSS is its own); parse its last JSON line."""
    res = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    last = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    out: dict[str, Any] = json.loads(last)
    return out


def emit(figures: dict[str, Any]) -> None:
    print(json.dumps(figures), flush=True)
