"""edgeflow plot: a PNG of one key from a short run or from recorded files."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from tests.helpers import ROOT, edgeflow


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def rows(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in path.read_bytes().split(b"\n") if x]


def test_plot_a_short_run_and_replot_its_recording(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLOW_SIM")}
    out, keep = tmp_path / "m3.png", tmp_path / "rec"
    res = edgeflow(
        "plot", str(ROOT / "flows" / "predictive_maintenance.py"), "--key", "m-3",
        "--span", "3m", "--keep", str(keep), "-o", str(out), env=env,
    )  # fmt: skip
    assert f"wrote {out}" in res.stdout
    width, height = png_size(out)
    assert width > 800 and height > 600
    # what was plotted: machine m-3 only, 3 minutes of 1 kHz readings, one window a second
    raw = rows(keep / "readings.jsonl")
    assert len(raw) == 180 * 1000 and {r["key"] for r in raw} == {"m-3"}
    windows = rows(keep / "windows.jsonl")
    assert len(windows) == 180 and all(w["count"] == 1000 for w in windows)
    trend = rows(keep / "trend.jsonl")
    assert 3 * 6 <= len(trend) <= 4 * 6 and all("rms_accel" in p for p in trend)
    assert all(a["key"] == "m-3" for a in rows(keep / "anomalies.jsonl"))

    again = tmp_path / "again.png"
    edgeflow(
        "plot", "--key", "m-3", "--readings", str(keep / "readings.jsonl"),
        "--windows", str(keep / "windows.jsonl"), "--trend", str(keep / "trend.jsonl"),
        "--anomalies", str(keep / "anomalies.jsonl"), "-o", str(again),
    )  # fmt: skip
    assert png_size(again) == (width, height), "the same panels from the recorded files"


def test_plot_says_what_is_wrong(tmp_path: Path) -> None:
    flow = str(ROOT / "flows" / "smart_traffic.py")
    nobody = edgeflow("plot", flow, "--key", "no-such", "--span", "10m", "-o",
                      str(tmp_path / "x.png"), check=False)  # fmt: skip
    assert nobody.returncode == 1 and "nothing recorded for key 'no-such'" in nobody.stderr
    both = edgeflow("plot", flow, "--key", "x-1", "--windows", flow, check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    neither = edgeflow("plot", "--key", "x-1", check=False)
    assert neither.returncode == 2 and "not neither" in neither.stderr
