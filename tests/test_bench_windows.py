"""bench/windows.py --quick runs end to end and prints its JSON line (figures not judged:
performance is shown by the bench, not by timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT


def test_windows_bench_quick_prints_its_figures() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "windows.py"), "--quick", "--max-rss-mb", "100000"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("bench", "per_s", "baseline_per_s", "ratio", "peak_rss_mb", "cpu_ratio"):
        assert key in figures, key
    assert figures["bench"] == "windows" and figures["same_windows"] is True
