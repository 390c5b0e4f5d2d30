"""bench/udf.py --quick runs end to end and prints its JSON line (figures not judged:
performance is shown by the bench, not by timed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT


def test_udf_bench_quick_prints_its_figures() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "udf.py"), "--quick"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("per_s", "baseline_per_s", "ratio", "per_record_per_s", "without_udf_per_s"):
        assert figures[key] > 0, key
    assert figures["bench"] == "udf" and figures["same_windows"] is True
