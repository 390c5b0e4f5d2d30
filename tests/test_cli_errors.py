"""Command-line mistakes end in one line saying what to do, never a traceback (issue 12, item 7)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeflow.cli.main import main
from tests.helpers import edgeflow, write_flow

GOOD_CSV = "ts,temp,device,label\n" + "".join(
    f"2024-01-01T00:00:{i:02d}Z,{20 + (i % 3) * 0.1 + (60 if i == 40 else 0)},d{i % 2},x\n"
    for i in range(50)
)


def _score(tmp_path: Path, *args: str) -> tuple[int, str, BaseException | None]:
    res = CliRunner().invoke(main, ["score", *args])
    return res.exit_code, res.output, res.exception


def _files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "good": GOOD_CSV,
        "empty": "",
        "header_only": "ts,temp\n",
        "text_values": "ts,temp\n2024-01-01T00:00:00Z,warm\n",
        "bad_time": "ts,temp\nyesterday,1.5\n",
        "ragged": "ts,temp\n2024-01-01T00:00:00Z,1.5,extra\n",
        "short": "ts,temp,device\n2024-01-01T00:00:00Z\n",
        "nul": "ts,temp\n2024-01-01T00:00:00Z,1\x00\n",
        # hostile #9: the same rules as the sources
        "infinite": "ts,temp\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:01Z,inf\n",
        "nan": "ts,temp\n2024-01-01T00:00:00Z,NaN\n",
        "duplicate_header": "ts,temp,temp\n2024-01-01T00:00:00Z,1,2\n",
        "later_bom": "ts,temp,device\n2024-01-01T00:00:00Z,1,d1\n2024-01-01T00:00:01Z,1,\ufeffd1\n",
    }
    paths = {}
    for name, text in made.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    paths["latin1"] = tmp_path / "latin1.csv"
    paths["latin1"].write_bytes("ts,température\n2024-01-01T00:00:00Z,1\n".encode("latin-1"))
    return paths


CASES = {
    # name: (input file, extra arguments, what the one line must say)
    "limits without limits": ("good", ["--detector", "limits"], "give --low, --high or both"),
    "limits low above high": (
        "good",
        ["--detector", "limits", "--low", "5", "--high", "1"],
        "below",
    ),
    "limits not finite": ("good", ["--detector", "limits", "--high", "nan"], "finite"),
    "limits options on zscore": ("good", ["--detector", "zscore", "--low", "1"], "limits only"),
    "missing file": ("missing", [], "no such file"),
    "directory": ("dir", [], "not a file"),
    "empty file": ("empty", [], "is empty"),
    "non-numeric column": ("good", ["--value-col", "label"], "is not a number"),
    "text values": ("text_values", [], "'warm' is not a number"),
    "unknown value column": ("good", ["--value-col", "pressure"], "column 'pressure' is not in"),
    "unknown key column": ("good", ["--key-col", "site"], "column 'site' is not in"),
    "time column not a time": ("good", ["--time-col", "label"], "column 'label'"),
    "bad time": ("bad_time", [], "yesterday"),
    "too many cells": ("ragged", [], "3 cells, the header 2"),
    "too few cells": ("short", ["--key-col", "device"], "cells"),
    "not utf-8": ("latin1", ["--value-col", "température"], "UTF-8"),
    "nul byte": ("nul", [], "is not a number"),
    "infinite value": (
        "infinite",
        ["--on-error", "fail"],
        ":3: column 'temp': 'inf' is not a finite number",
    ),
    "nan value": ("nan", [], ":2: column 'temp': 'NaN' is not a finite number"),
    "duplicate header column": ("duplicate_header", [], ":1: the header names column 'temp' twice"),
    "byte-order mark in a later row": (
        "later_bom",
        ["--key-col", "device", "--on-error", "fail"],
        ":3: column 'device': a byte-order mark",
    ),
    "threshold out of range": ("good", ["--threshold", "1.5"], "--threshold"),
    "unknown detector": ("good", ["--detector", "isolation"], "--detector"),
    "output is a directory": ("good", ["--out", "."], "--out"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_score_mistakes_are_one_line_errors_with_exit_2(case: str, tmp_path: Path) -> None:
    which, extra, says = CASES[case]
    paths = _files(tmp_path)
    paths["missing"] = tmp_path / "nope.csv"
    paths["dir"] = tmp_path
    args = ["--input", str(paths[which]), "--time-col", "ts", "--value-col", "temp"]
    args += ["--out", str(tmp_path / "scored.csv")]
    code, out, exc = _score(tmp_path, *args, *extra)
    assert isinstance(exc, SystemExit), f"raised {exc!r}:\n{out}"  # not an uncaught exception
    assert code == 2, out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert says in lines[0], out


def test_score_limits_with_its_limits_flags_the_values_outside(tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(GOOD_CSV)
    args = ["--input", str(src), "--time-col", "ts", "--value-col", "temp", "--out", str(out)]
    code, text, exc = _score(tmp_path, *args, "--detector", "limits", "--high", "50")
    assert code == 0, f"{text} {exc!r}"
    rows = out.read_text().splitlines()
    flagged = [r for r in rows[1:] if r.endswith(",true,limits,")]
    assert len(rows) == 51 and len(flagged) == 1 and flagged[0].startswith("2024-01-01T00:00:40Z")


def test_score_header_only_writes_an_empty_result(tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("ts,temp\n")
    args = ["--input", str(src), "--time-col", "ts", "--value-col", "temp", "--out", str(out)]
    code, text, _ = _score(tmp_path, *args)
    assert code == 0 and "scored 0 rows" in text
    assert out.read_text().splitlines() == ["ts,temp,raw,score,is_anomaly,detector,reason"]


def test_metrics_port_in_use_is_one_line_with_exit_2(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "flow.py",
        "from edgeflow import Flow, agg, window\n"
        "from edgeflow.connectors import simulate, stdio\n"
        "flow = Flow('metrics-busy')\n"
        "r = flow.source(simulate.sensors(devices=2, duration='2s'))\n"
        "r.window(window.tumbling('1s'), agg.count()).to(stdio.sink())\n",
    )
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = edgeflow("run", str(flow), "--metrics-port", str(port), "--for", "5s", check=False)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and f"--metrics-port {port}" in errors[0], res.stderr
    assert "already in use" in errors[0] and "choose a free port" in errors[0]


def test_metrics_port_from_the_environment_must_be_a_port_number(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "flow.py",
        "from edgeflow import Flow, agg, window\n"
        "from edgeflow.connectors import simulate, stdio\n"
        "flow = Flow('metrics-env')\n"
        "r = flow.source(simulate.sensors(devices=2, duration='2s'))\n"
        "r.window(window.tumbling('1s'), agg.count()).to(stdio.sink())\n",
    )
    for bad in ("nine", "70000"):
        env = {**os.environ, "EDGEFLOW_METRICS_PORT": bad}
        res = edgeflow("run", str(flow), "--for", "5s", check=False, env=env)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        assert f"EDGEFLOW_METRICS_PORT={bad!r}" in res.stderr and "1-65535" in res.stderr
