"""``edgeflow score``: run a streaming detector over a recorded CSV, one score per row."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import click
import numpy as np

from edgeflow.connectors.parse import parse_time
from edgeflow.ops import detect


@click.command("score")
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
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
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
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the scored CSV.",
)
def score_cmd(
    name: str,
    input_path: Path,
    time_col: str,
    value_col: str,
    key_col: str | None,
    thr: float,
    out_path: Path,
) -> None:
    """Score a recorded CSV with the same streaming detector a flow runs: writes every input
    row plus score (0-1, higher = more anomalous), is_anomaly and detector. Rows are taken in
    time order per key; rows whose value is empty are written with an empty score."""
    with input_path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in (time_col, value_col, *([key_col] if key_col else [])):
            if col not in header:
                raise click.UsageError(
                    f"column {col!r} is not in {input_path} (columns: {', '.join(header)})"
                )
        rows = list(reader)
    times, values, keys = [], [], []
    for i, row in enumerate(rows, start=2):
        try:
            times.append(parse_time(row[time_col], "auto"))
        except ValueError as exc:
            raise click.UsageError(f"{input_path}:{i}: {time_col}: {exc}") from None
        cell = (row[value_col] or "").strip()
        try:
            values.append(float(cell) if cell else math.nan)
        except ValueError:
            raise click.UsageError(
                f"{input_path}:{i}: {value_col}: {cell!r} is not a number"
            ) from None
        keys.append(row[key_col] if key_col else "")
    t = np.asarray(times, np.int64)
    x = np.asarray(values, np.float64)
    score = np.full(len(rows), np.nan)
    anomalous = np.zeros(len(rows), bool)
    for key in dict.fromkeys(keys):
        idx = np.flatnonzero(np.asarray(keys) == key)
        idx = idx[np.argsort(t[idx], kind="stable")]
        ok = idx[np.isfinite(x[idx])]
        driver = detect.Driver(detect.make(name), detect.threshold(thr))
        out = driver.run(driver.init(), x[ok])
        score[ok] = out.score
        anomalous[ok] = out.anomaly
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", newline="") as f:
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
    click.echo(
        f"scored {len(rows)} rows with {name}: {int(anomalous.sum())} anomalous -> {out_path}",
        err=True,
    )


if __name__ == "__main__":
    score_cmd(sys.argv[1:])
