"""``edgeflow score`` on real files (issue 13, "edgeflow score for real files", must-show 4):
times without offset with --tz/--assume-utc, malformed rows kept with their reason, file order
by default and --sort by time, --on-error fail, limits with --low/--high, and a ``raw`` column
beside a ``score`` written with every digit that tells two floats apart."""

from __future__ import annotations

import csv
import math
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from click.testing import CliRunner, Result

from edgeflow.cli.main import main
from edgeflow.ops import detect
from edgeflow.timeutil import datetime_to_ns
from tests.helpers import edgeflow


def _score(src: Path, out: Path, *args: str) -> Result:
    cmd = ["score", "--input", str(src), "--time-col", "ts", "--value-col", "v"]
    return CliRunner().invoke(main, [*cmd, "--out", str(out), *args])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _utc(*parts: int) -> int:
    return datetime_to_ns(datetime(*parts, tzinfo=timezone.utc))  # type: ignore[misc]


def _normal(n: int, seed: int = 3) -> list[float]:
    return [round(v, 4) for v in (10 + np.random.default_rng(seed).normal(0, 0.1, n)).tolist()]


def test_4000_naive_rows_with_tz_utc_and_one_malformed_row_are_all_written_in_file_order(
    tmp_path: Path,
) -> None:
    """Must-show 4: every row comes back, in the file's order (a few rows are out of time
    order), the malformed one with an empty score and its reason, counted on stderr with its
    line number; the rest are scored (the spike is found)."""
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    values: list[str] = [str(v) for v in _normal(4000)]
    values[3000] = "25.0"  # a spike
    values[1234] = "n/a"  # the malformed row: line 1236 (after the header)
    order = list(range(4000))
    for i in range(100, 4000, 500):  # a few rows late in the file, as real recordings have
        order[i], order[i + 1] = order[i + 1], order[i]
    times = [f"2026-03-01T{j // 3600:02d}:{j // 60 % 60:02d}:{j % 60:02d}" for j in order]
    src.write_text("ts,v\n" + "".join(f"{t},{v}\n" for t, v in zip(times, values, strict=True)))

    res = edgeflow(
        "score",
        "--input",
        str(src),
        "--time-col",
        "ts",
        "--value-col",
        "v",
        "--tz",
        "UTC",
        "--out",
        str(out),
        check=False,
    )

    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    rows = _rows(out)
    assert [r["ts"] for r in rows] == times and [r["v"] for r in rows] == values
    bad = rows[1234]
    assert bad["score"] == "" and bad["raw"] == "" and bad["is_anomaly"] == "false"
    assert "'n/a' is not a number" in bad["reason"]
    assert all(r["score"] and not r["reason"] for i, r in enumerate(rows) if i != 1234)
    assert rows[3000]["is_anomaly"] == "true"
    warning = [line for line in res.stderr.splitlines() if "malformed" in line]
    assert len(warning) == 1 and "1 malformed row" in warning[0], res.stderr
    assert "line 1236" in warning[0], res.stderr


def test_a_naive_time_without_tz_is_one_line_saying_to_pass_tz(tmp_path: Path) -> None:
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    src.write_text("ts,v\n2026-03-01T00:00:00Z,1\n2026-03-01 00:00:01,2\n")
    res = _score(src, out)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert ":3:" in lines[0] and "--tz" in lines[0] and "--assume-utc" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", ""])
def test_an_unknown_zone_is_a_usage_error(zone: str, tmp_path: Path) -> None:
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    src.write_text("ts,v\n2026-03-01T00:00:00,1\n")
    res = _score(src, out, "--tz", zone)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "is not a known time zone" in lines[0], res.output


def test_tz_europe_berlin_reads_local_times_with_daylight_saving(tmp_path: Path) -> None:
    from edgeflow.cli.score import read_time  # here, so the other tests run on older code too

    berlin = ZoneInfo("Europe/Berlin")
    assert read_time("2024-01-15T11:50:00", berlin) == _utc(2024, 1, 15, 10, 50)  # CET +1
    assert read_time("2024-07-01 12:30:00.25", berlin) == _utc(2024, 7, 1, 10, 30) + 250_000_000
    # the hour that repeats when the clocks go back is read as its first pass (CEST, +2)
    assert read_time("2024-10-27T02:30:00", berlin) == _utc(2024, 10, 27, 0, 30)
    assert read_time("2024-10-27T03:30:00", berlin) == _utc(2024, 10, 27, 2, 30)
    # a time with an offset ignores --tz; epoch numbers too
    assert read_time("2024-07-01T12:30:00+00:00", berlin) == _utc(2024, 7, 1, 12, 30)
    assert read_time("1719837000", berlin) == _utc(2024, 7, 1, 12, 30)
    assert read_time("2024-07-01T12:30:00", ZoneInfo("UTC")) == _utc(2024, 7, 1, 12, 30)
    with pytest.raises(ValueError, match="does not exist in Europe/Berlin"):
        read_time("2024-03-31T02:30:00", berlin)  # skipped when the clocks went forward

    # through the command: the skipped hour is a malformed row; the conversion decides the
    # scoring order with --sort. The spike's local 12:50 is 10:50Z in summer, before the
    # readings at 11:00Z.. (so it is scored first, in the warm-up); read as UTC it comes last.
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    lines = ["2024-07-01T12:50:00,25.0", "2024-03-31T02:30:00,10.0"]
    lines += [f"2024-07-01T11:{i // 60:02d}:{i % 60:02d}Z,{v}" for i, v in enumerate(_normal(200))]
    src.write_text("ts,v\n" + "\n".join(lines) + "\n")
    res = _score(src, out, "--tz", "Europe/Berlin", "--sort", "--detector", "zscore")
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert rows[0]["is_anomaly"] == "false" and rows[0]["score"] != ""
    assert "does not exist in Europe/Berlin" in rows[1]["reason"] and rows[1]["score"] == ""
    res = _score(src, out, "--assume-utc", "--sort", "--detector", "zscore")
    assert res.exit_code == 0, res.output
    assert _rows(out)[0]["is_anomaly"] == "true"


def test_rows_are_scored_in_file_order_unless_sort(tmp_path: Path) -> None:
    """A file written newest first, with a spike at its latest time (its first line): in file
    order the spike is the first reading a detector sees (warm-up, no alarm), as a flow reading
    the file would; --sort scores it last and flags it. The output keeps the file's order."""
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    values = [25.0, *_normal(200)]
    times = [f"2026-03-01T00:{(200 - i) // 60:02d}:{(200 - i) % 60:02d}Z" for i in range(201)]
    src.write_text("ts,v\n" + "".join(f"{t},{v}\n" for t, v in zip(times, values, strict=True)))
    for args, flagged in (([], "false"), (["--sort"], "true")):
        res = _score(src, out, "--detector", "zscore", *args)
        assert res.exit_code == 0, res.output
        rows = _rows(out)
        assert [r["ts"] for r in rows] == times
        assert rows[0]["is_anomaly"] == flagged, args


def test_on_error_fail_refuses_the_file_at_the_malformed_row(tmp_path: Path) -> None:
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    body = "".join(f"2026-03-01T00:00:{i:02d}Z,{v}\n" for i, v in enumerate(_normal(30)))
    src.write_text("ts,v\n" + body + "2026-03-01T00:01:00Z,12,oops\n" + body)
    kept = _score(src, out)
    assert kept.exit_code == 0 and _rows(out)[30]["reason"].startswith("the row has 3 cells")
    out.unlink()
    res = _score(src, out, "--on-error", "fail")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert f"{src}:32: the row has 3 cells, the header 2" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "limits, outside",
    [
        (["--low", "5"], {3}),
        (["--high", "15"], {7}),
        (["--low", "5", "--high", "15"], {3, 7}),
    ],
)
def test_limits_with_low_and_high_flags_exactly_the_values_outside(
    limits: list[str], outside: set[int], tmp_path: Path
) -> None:
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    values = ["10", "10", "5", "4.9", "", "bad", "15", "15.1", "-0", "10"]
    src.write_text(
        "ts,v,k\n"
        + "".join(f"2026-03-01T00:00:{i:02d}Z,{v},k{i % 2}\n" for i, v in enumerate(values))
    )
    res = _score(src, out, "--detector", "limits", "--key-col", "k", *limits)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    rows = _rows(out)
    assert {i for i, r in enumerate(rows) if r["is_anomaly"] == "true"} == outside | (
        {8} if "--low" in limits else set()
    )
    assert rows[4]["score"] == "" and rows[5]["score"] == "" and rows[5]["reason"]
    assert all(float(r["score"]) >= 0.999 for i, r in enumerate(rows) if i in outside)


def test_raw_is_written_beside_score_and_distinct_scores_print_distinct(tmp_path: Path) -> None:
    """Spikes of many sizes, most far above the alarm level: the written raw and score read
    back as exactly the detector's float64 values, so the CSV never ties two distinct ones."""
    src, out = tmp_path / "rec.csv", tmp_path / "scored.csv"
    x = np.asarray(_normal(600), np.float64)
    x[100::10] += np.linspace(0.5, 40.0, len(x[100::10]))
    src.write_text(
        "ts,v\n"
        + "".join(
            f"2026-03-01T00:{i // 60:02d}:{i % 60:02d}Z,{v!r}\n" for i, v in enumerate(x.tolist())
        )
    )
    res = _score(src, out, "--detector", "zscore")
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    driver = detect.Driver(detect.make("zscore"), detect.threshold(0.999))
    want = driver.run(driver.init(), x)

    def read(cell: str) -> float:
        return float(cell) if cell else math.nan

    np.testing.assert_array_equal([read(r["raw"]) for r in rows], want.raw)  # NaN == NaN here
    np.testing.assert_array_equal([read(r["score"]) for r in rows], want.score)
    printed = {r["score"] for r in rows}
    assert len(printed) == len(set(want.score.tolist()))
    assert list(rows[0])[-5:] == ["raw", "score", "is_anomaly", "detector", "reason"]


def test_the_bulk_time_reader_gives_exactly_what_the_row_reader_gives() -> None:
    """Plain UTC ISO times are read for the whole column at once (50x faster on a 1 M row
    export); the result must be exactly the row-by-row reader's, and anything else falls
    back to it (so malformed rows still get their reason)."""
    from zoneinfo import ZoneInfo

    from edgeflow.cli.score import _fast_times, read_time

    rng = np.random.default_rng(4)
    base = np.datetime64("1970-01-01T00:00:00", "s")
    secs = rng.integers(0, 290 * 365 * 86400, 300)
    texts = []
    for k, s in enumerate(secs.tolist()):
        t = str(base + np.timedelta64(s, "s"))
        frac = ["", ".5", ".123456789", ".000001"][k % 4]
        sep = "T" if k % 3 else " "
        texts.append(f"{t[:10]}{sep}{t[11:]}{frac}" + ["Z", "+00:00"][k % 2])
    got = _fast_times(texts, None)
    assert got is not None
    assert got.tolist() == [read_time(t, None) for t in texts]
    naive = [t.removesuffix("Z").removesuffix("+00:00") for t in texts]
    utc = ZoneInfo("UTC")
    assert _fast_times(naive, None) is None, "no offset and no --tz: the row reader refuses"
    fast_utc = _fast_times(naive, utc)
    assert fast_utc is not None and fast_utc.tolist() == [read_time(t, utc) for t in naive]
    for bad in ("2026-02-30T00:00:00Z", "2026-01-05T24:00:00Z", "2300-01-01T00:00:00Z", "x"):
        assert _fast_times([texts[0], bad], None) is None, bad
    assert _fast_times(naive[:3], ZoneInfo("Europe/Berlin")) is None
