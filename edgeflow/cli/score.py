"""``edgeflow score``: run a streaming detector over a recorded CSV, one score per row.

Every mistake in the command line or the input (a missing or empty file, an unknown or
non-numeric column, a value that is not a finite number, a header naming a column twice, a
byte-order mark that is not at the start of the file, a bad time, a detector without its arguments, an output that cannot be
written) is one line ``error: ...`` saying what to change, with exit code 2.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import IO, Any

import click
import numpy as np

from edgeflow.connectors.parse import parse_time
from edgeflow.ops import detect


class ScoreError(click.UsageError):
    """A usage error shown as one line, ``error: ...`` (exit code 2)."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _OneLineErrors(click.Command):
    """click's own option errors (a bad --threshold, a missing option) as one line too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except ScoreError:
            raise
        except click.UsageError as exc:
            raise ScoreError(f"edgeflow score: {exc.format_message()}", ctx) from None


@click.command("score", cls=_OneLineErrors)
@click.option(
    "--detector",
    "name",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", *detect.DETECTORS]),
    help="Which detector.",
)
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV with a header row.",
)
@click.option(
    "--time-col",
    required=True,
    help="Column with the time (ISO-8601 with offset, or epoch s/ms/us/ns).",
)
@click.option("--value-col", required=True, help="Column with the value to score.")
@click.option(
    "--key-col", default=None, help="Column with the device key; each key is scored separately."
)
@click.option(
    "--low", type=float, default=None, help="--detector limits: values below this are anomalous."
)
@click.option(
    "--high", type=float, default=None, help="--detector limits: values above this are anomalous."
)
@click.option(
    "--threshold",
    "thr",
    default=0.999,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Score at which a row is anomalous.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Where to write the scored CSV.",
)
def score_cmd(
    name: str,
    input_path: Path,
    time_col: str,
    value_col: str,
    key_col: str | None,
    low: float | None,
    high: float | None,
    thr: float,
    out_path: Path,
) -> None:
    """Score a recorded CSV with the same streaming detector a flow runs: writes every input
    row plus score (0-1, higher = more anomalous), is_anomaly and detector. Rows are taken in
    time order per key; rows whose value is empty are written with an empty score."""
    make = _detector_maker(name, low, high)
    header, rows = _read_csv(input_path, [time_col, value_col, *([key_col] if key_col else [])])
    times, values, keys = [], [], []
    for i, row in enumerate(rows, start=2):
        try:
            times.append(parse_time(row[time_col], "auto"))
        except ValueError as exc:
            raise ScoreError(f"{input_path}:{i}: column {time_col!r}: {exc}") from None
        cell = (row[value_col] or "").strip()
        try:
            value = float(cell) if cell else math.nan
        except ValueError:
            raise ScoreError(
                f"{input_path}:{i}: column {value_col!r}: {cell[:40]!r} is not a number; "
                "--value-col must name a numeric column (an empty cell is scored as missing)"
            ) from None
        if cell and not math.isfinite(value):  # the sources refuse NaN and infinities too
            raise ScoreError(
                f"{input_path}:{i}: column {value_col!r}: {cell[:40]!r} is not a finite number; "
                "leave the cell empty for a missing value"
            )
        values.append(value)
        keys.append(row[key_col] if key_col else "")
    t = np.asarray(times, np.int64)
    x = np.asarray(values, np.float64)
    score = np.full(len(rows), np.nan)
    anomalous = np.zeros(len(rows), bool)
    key_arr = np.asarray(keys)
    for key in dict.fromkeys(keys):
        idx = np.flatnonzero(key_arr == key)
        idx = idx[np.argsort(t[idx], kind="stable")]
        ok = idx[np.isfinite(x[idx])]
        if not len(ok):
            continue
        driver = detect.Driver(make(), detect.threshold(thr))
        out = driver.run(driver.init(), x[ok])
        score[ok] = out.score
        anomalous[ok] = out.anomaly
    _write_csv(out_path, header, rows, score, anomalous, name)
    click.echo(
        f"scored {len(rows)} rows with {name}: {int(anomalous.sum())} anomalous -> {out_path}",
        err=True,
    )


def _detector_maker(name: str, low: float | None, high: float | None) -> Any:
    """A function making a fresh detector per key; refuses arguments that do not fit."""
    if name == "limits":
        if low is None and high is None:
            raise ScoreError(
                "--detector limits needs the alarm limits: give --low, --high or both "
                "(e.g. --high 80)"
            )
        if low is not None and high is not None and not low < high:
            raise ScoreError(f"--low {low} must be below --high {high}")
        params: dict[str, Any] = {"low": low, "high": high}
    elif low is not None or high is not None:
        raise ScoreError(f"--low and --high apply to --detector limits only, not {name}")
    else:
        params = {}
    for opt, v in (("--low", low), ("--high", high)):
        if v is not None and not math.isfinite(v):
            raise ScoreError(f"{opt} {v}: give a finite number")
    problems = detect.make(name, **params).problems()
    if problems:
        raise ScoreError(problems[0])
    return lambda: detect.make(name, **params)


def _read_csv(path: Path, needed: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV, or one line saying why it cannot be scored."""
    if not path.exists():
        raise ScoreError(f"--input {path}: no such file")
    if not path.is_file():
        raise ScoreError(f"--input {path}: not a file; give a CSV file with a header row")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            if not header:
                raise ScoreError(
                    f"--input {path} is empty; give a CSV with a header row naming the "
                    "time and value columns, then one row per reading"
                )
            for col in header:
                if header.count(col) > 1:
                    raise ScoreError(
                        f"{path}:1: the header names column {col!r} twice; give every column "
                        "its own name"
                    )
                if "\ufeff" in col:
                    raise ScoreError(f"{path}:1: column {col!r}: {_BOM_ONLY_AT_START}")
            for col in needed:
                if col not in header:
                    raise ScoreError(
                        f"column {col!r} is not in {path} (columns: {', '.join(header)})"
                    )
            rows = []
            for row in reader:
                if None in row or any(row[c] is None for c in needed):
                    raise ScoreError(
                        f"{path}:{reader.line_num}: the row has {_cells(row)} cells, the "
                        f"header {len(header)}; give every row the header's columns"
                    )
                for c in needed:
                    if row[c].startswith("\ufeff"):
                        raise ScoreError(
                            f"{path}:{reader.line_num}: column {c!r}: {_BOM_ONLY_AT_START}"
                        )
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise ScoreError(
            f"--input {path}: not UTF-8 text ({exc.reason}); save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise ScoreError(f"--input {path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise ScoreError(f"--input {path}: cannot read it ({exc.strerror or exc})") from None
    return header, rows


_BOM_ONLY_AT_START = (
    "a byte-order mark (U+FEFF) is allowed only at the start of the file; remove it"
)


def _cells(row: dict[Any, Any]) -> int:
    extra = row.get(None) or []
    return sum(v is not None for k, v in row.items() if k is not None) + len(extra)


def _write_csv(
    path: Path,
    header: list[str],
    rows: list[dict[str, str]],
    score: np.ndarray,
    anomalous: np.ndarray,
    name: str,
) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*header, "score", "is_anomaly", "detector"])
            writer.writeheader()
            for row, s, a in zip(rows, score.tolist(), anomalous.tolist(), strict=True):
                writer.writerow(
                    {
                        **row,
                        "score": "" if math.isnan(s) else f"{s:.6f}",
                        "is_anomaly": "true" if a else "false",
                        "detector": name,
                    }
                )
    except OSError as exc:
        raise ScoreError(
            f"--out {path}: cannot write it ({exc.strerror or exc}); give a writable file path"
        ) from None


if __name__ == "__main__":
    score_cmd(sys.argv[1:])
