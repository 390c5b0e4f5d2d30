"""``edgeflow score``: run a streaming detector over a recorded CSV, one score per row.

Guarantees:

- every input row is written, in the file's order, with ``raw``, ``score``, ``is_anomaly``,
  ``detector`` and ``reason``; floats are written with ``repr`` (shortest round-trip), so two
  distinct float64 values never print the same;
- a malformed row (a time that cannot be read, a value that is not a finite number, the wrong
  number of cells, a misplaced byte-order mark) keeps its place with an empty score and its
  reason, and stderr gets one line counting them with their line numbers; with
  ``--on-error fail`` the first one is a one-line refusal instead;
- times are never naive: an ISO time without offset needs ``--tz ZONE`` or ``--assume-utc`` and
  becomes int64 ns UTC (DST-aware, via zoneinfo);
- each key is scored in file order (as a flow sees the rows), or in time order with ``--sort``.

Every mistake in the command line or the file as a whole (a missing or empty file, an unknown
column, a header naming a column twice, a naive time without ``--tz``, an unknown zone, a file
in which no row can be read, a detector without its arguments, an output that cannot be
written) is one line ``error: ...`` saying what to change, with exit code 2.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import numpy as np

from edgeflow.connectors.parse import parse_time
from edgeflow.ops import detect
from edgeflow.timeutil import check_ns_range, datetime_to_ns

#: columns the output adds after the input's own
OUT_COLUMNS = ("raw", "score", "is_anomaly", "detector", "reason")
#: how many line numbers of malformed rows the stderr summary names
SHOWN_LINES = 5


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
    help="Column with the time: ISO-8601 with offset, epoch s/ms/us/ns, or ISO-8601 "
    "without offset together with --tz or --assume-utc.",
)
@click.option("--value-col", required=True, help="Column with the value to score.")
@click.option(
    "--key-col", default=None, help="Column with the device key; each key is scored separately."
)
@click.option(
    "--tz",
    "tz_name",
    default=None,
    metavar="ZONE",
    help="Zone of times written without offset, an IANA name such as Europe/Berlin or UTC "
    "(DST-aware; a repeated hour is read as its first pass). Times with an offset ignore it.",
)
@click.option("--assume-utc", is_flag=True, help="Times without offset are UTC (= --tz UTC).")
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
    "--sort",
    "by_time",
    is_flag=True,
    help="Score each key's rows in time order (stable) instead of file order; the output "
    "keeps the file's row order either way.",
)
@click.option(
    "--on-error",
    type=click.Choice(["keep", "fail"]),
    default="keep",
    show_default=True,
    help="A malformed row: keep it with an empty score and its reason, or fail on it.",
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
    tz_name: str | None,
    assume_utc: bool,
    low: float | None,
    high: float | None,
    thr: float,
    by_time: bool,
    on_error: str,
    out_path: Path,
) -> None:
    """Score a recorded CSV with the same streaming detector a flow runs.

    Writes every input row, in file order, plus raw (the detector's statistic), score (0-1,
    higher = more anomalous), is_anomaly, detector and reason. Each key's rows are scored in
    file order, as a flow would see them (--sort: in time order). A row whose value is empty
    gets an empty score; a malformed row gets an empty score and its reason, and is counted
    on stderr (--on-error fail refuses the file instead)."""
    make = _detector_maker(name, low, high)
    zone = _zone(tz_name, assume_utc)
    columns = _Columns(time_col, value_col, key_col)
    header, rows = _read_csv(input_path, columns.needed())
    parsed = _parse_rows(input_path, header, rows, columns, zone, fail=on_error == "fail")
    raw, score, anomalous = _score(parsed, make, thr, by_time)
    _write_csv(out_path, header, rows, parsed.reasons, raw, score, anomalous, name)
    bad = parsed.bad_lines()
    if bad:
        shown = ", ".join(str(n) for n in bad[:SHOWN_LINES])
        more = f" and {len(bad) - SHOWN_LINES} more" if len(bad) > SHOWN_LINES else ""
        click.echo(
            f"warning: {len(bad)} malformed row{'s' if len(bad) > 1 else ''} written with an "
            f"empty score and the reason in column 'reason': {input_path} line"
            f"{'s' if len(bad) > 1 else ''} {shown}{more} (--on-error fail refuses such a file)",
            err=True,
        )
    click.echo(
        f"scored {len(rows)} rows with {name}: {int(anomalous.sum())} anomalous -> {out_path}",
        err=True,
    )


@dataclass(frozen=True)
class _Columns:
    time: str
    value: str
    key: str | None

    def needed(self) -> list[str]:
        return [self.time, self.value, *([self.key] if self.key else [])]


@dataclass(slots=True)
class _Row:
    """One CSV record: its line number, its cells in header order (exactly as many as the
    header has columns), and why it is malformed."""

    line: int
    cells: list[str]
    problem: str | None = None


@dataclass
class _Parsed:
    """Per row: time (int64 ns UTC, 0 if unreadable), value (NaN if empty or bad), key, and
    the reason written beside a row without a score ('' for a scored row)."""

    lines: list[int]
    times: np.ndarray
    values: np.ndarray
    keys: list[str]
    reasons: list[str]
    malformed: np.ndarray

    def bad_lines(self) -> list[int]:
        return [self.lines[i] for i in np.flatnonzero(self.malformed).tolist()]


def _zone(tz_name: str | None, assume_utc: bool) -> ZoneInfo | None:
    """The zone for times without offset, or None (then such times are refused)."""
    if assume_utc:
        if tz_name is not None and tz_name.strip().upper() not in ("UTC", "ETC/UTC"):
            raise ScoreError(
                f"--assume-utc and --tz {tz_name} disagree; give one of them "
                "(--assume-utc is --tz UTC)"
            )
        tz_name = "UTC"
    if tz_name is None:
        return None
    try:
        return ZoneInfo(tz_name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScoreError(
            f"--tz {tz_name!r} is not a known time zone; give an IANA name such as "
            "Europe/Berlin or America/New_York, or UTC"
        ) from None


#: an ISO-8601 time without offset: date, hh:mm[:ss], and a fraction only after seconds
_NAIVE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:(?<=:\d{2}:\d{2})[.,](\d+))?$"
)
_SPACE_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}\S*)$")


class _NaiveTimeError(Exception):
    """A time without offset while no --tz was given: the whole file is refused."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def read_time(text: str, zone: ZoneInfo | None) -> int:
    """A CSV time cell as int64 ns UTC. ValueError says why a cell cannot be read;
    _NaiveTimeError when it has no offset and no zone was given."""
    s = text.strip()
    if not s:
        raise ValueError("the time is empty")
    m = _NAIVE.match(s) if s[-1].isdigit() else None  # 'Z' ends most times: skip the regex
    if m is None:
        space = _SPACE_ISO.match(s) if s[10:11] == " " else None
        return parse_time(f"{space[1]}T{space[2]}" if space else s, "auto")
    if zone is None:
        raise _NaiveTimeError(s[:40])
    date, clock, frac = m.groups()
    try:
        local = datetime.fromisoformat(f"{date}T{clock}")
    except ValueError as exc:
        raise ValueError(f"cannot read {s[:40]!r} as a time: {exc}") from None
    aware = local.replace(tzinfo=zone)
    try:
        back = aware.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None)
    except OverflowError:  # year 1 or 9999 shifted out of datetime's range
        back = local
    if back != local:
        raise ValueError(
            f"{s[:40]!r} does not exist in {zone.key} (the clocks skipped it, as at the "
            "change to summer time)"
        )
    ns = datetime_to_ns(aware) + int((frac or "").ljust(9, "0")[:9])
    return check_ns_range(ns, f"time {s[:40]!r}")


#: a UTC time numpy can read as it stands: 'Z' or '+00:00' (or no offset with --tz UTC),
#: years 1970-2261 (inside int64 ns), seconds with up to 9 decimals
_FAST_UTC = re.compile(
    r"(?:19[7-9]\d|2[01]\d\d|22[0-5]\d|226[01])-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,9})?"
    r"(Z|\+00:00)?"
)


def _fast_times(cells: list[str], zone: ZoneInfo | None) -> np.ndarray | None:
    """Every time cell at once as int64 ns UTC when each is a plain UTC ISO time (the usual
    export: '2026-01-05T00:00:00Z'), else None: the rows are read one by one, with a reason
    for each bad one. Exactly what :func:`read_time` gives for these cells, 50x faster."""
    utc_zone = zone is not None and zone.key == "UTC"
    match = _FAST_UTC.fullmatch
    plain = []
    for c in cells:
        m = match(c)
        if m is None or (m.group(1) is None and not utc_zone):
            return None
        plain.append(c[: m.start(1)] if m.group(1) else c)
    try:
        out: np.ndarray = np.array(plain, dtype="datetime64[ns]").astype(np.int64)
    except ValueError:  # a day or hour out of range (2026-02-30): the slow path says which
        return None
    return out


def _parse_rows(
    path: Path,
    header: list[str],
    rows: list[_Row],
    columns: _Columns,
    zone: ZoneInfo | None,
    *,
    fail: bool,
) -> _Parsed:
    """Times, values and keys of every row, with the reason of each malformed one.

    Refuses (ScoreError) a time without offset when no zone was given, the first malformed
    row when ``fail``, and a file in which no row can be read (most likely a wrong column)."""
    n = len(rows)
    times = np.zeros(n, np.int64)
    values = np.full(n, np.nan)
    malformed = np.zeros(n, bool)
    keys, reasons = [""] * n, [""] * n
    at = [header.index(c) for c in columns.needed()]  # time, value[, key] cell index
    fast = None
    if all(r.problem is None for r in rows):
        fast = _fast_times([r.cells[at[0]].strip() for r in rows], zone)
    if fast is not None:
        times[:] = fast
    for i, row in enumerate(rows):
        try:
            problem = row.problem or _problem(
                row, at, columns, None if fast is not None else zone, times, values, i,
                time_read=fast is not None,
            )  # fmt: skip
        except _NaiveTimeError as naive:
            raise ScoreError(
                f"{path}:{row.line}: column {columns.time!r}: {naive.text!r} has no UTC "
                "offset; pass --tz ZONE (e.g. --tz Europe/Berlin) or --assume-utc to say "
                "which zone the file's times are in"
            ) from None
        if problem is None:
            keys[i] = row.cells[at[2]] if columns.key else ""
            if math.isnan(values[i]):
                reasons[i] = "missing value (empty cell)"
            continue
        if fail:
            raise ScoreError(
                f"{path}:{row.line}: {problem}; fix the row, or leave out --on-error fail to "
                "keep it in the output with an empty score and its reason"
            )
        malformed[i], reasons[i], values[i] = True, problem, math.nan
    if n and malformed.all():
        first = rows[0]
        raise ScoreError(
            f"no row of {path} can be scored, the first: {path}:{first.line}: {reasons[0]}; "
            f"check that --time-col and --value-col name the time and a numeric column"
        )
    return _Parsed([r.line for r in rows], times, values, keys, reasons, malformed)


def _problem(
    row: _Row,
    at: list[int],
    columns: _Columns,
    zone: ZoneInfo | None,
    times: np.ndarray,
    values: np.ndarray,
    i: int,
    *,
    time_read: bool = False,
) -> str | None:
    """Why row ``i`` cannot be scored (None if it can); fills times[i] (unless
    ``time_read``: done for every row at once) and values[i].
    Raises _NaiveTimeError for a time without offset when no zone was given."""
    try:
        if not time_read:
            times[i] = read_time(row.cells[at[0]], zone)
    except ValueError as exc:
        return f"column {columns.time!r}: {exc}"
    cell = row.cells[at[1]].strip()
    if not cell:
        return None  # a missing reading: written with an empty score, not malformed
    try:
        value = float(cell)
    except ValueError:
        return f"column {columns.value!r}: {cell[:40]!r} is not a number"
    if not math.isfinite(value):  # the sources refuse NaN and infinities too
        return (
            f"column {columns.value!r}: {cell[:40]!r} is not a finite number; "
            "leave the cell empty for a missing value"
        )
    values[i] = value
    return None


def _score(
    parsed: _Parsed, make: Any, thr: float, by_time: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """raw, score and is_anomaly per row (NaN / False for rows without a value), each key
    run through its own detector in file order, or in stable time order when ``by_time``."""
    n = len(parsed.keys)
    raw, score = np.full(n, np.nan), np.full(n, np.nan)
    anomalous = np.zeros(n, bool)
    key_arr = np.asarray(parsed.keys)
    for key in dict.fromkeys(parsed.keys):
        idx = np.flatnonzero(key_arr == key)
        idx = idx[np.isfinite(parsed.values[idx])]
        if by_time:
            idx = idx[np.argsort(parsed.times[idx], kind="stable")]
        if not len(idx):
            continue
        driver = detect.Driver(make(), detect.threshold(thr))
        out = driver.run(driver.init(), parsed.values[idx])
        raw[idx], score[idx], anomalous[idx] = out.raw, out.score, out.anomaly
    return raw, score, anomalous


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
    try:
        problems = detect.make(name, **params).problems()
    except (TypeError, ValueError) as exc:
        raise ScoreError(f"--detector {name}: {exc}") from None
    if problems:
        raise ScoreError(problems[0])
    return lambda: detect.make(name, **params)


def _read_csv(path: Path, needed: list[str]) -> tuple[list[str], list[_Row]]:
    """The header and rows of a CSV, or one line saying why the file cannot be scored.

    A row with the wrong number of cells or a byte-order mark inside a needed cell is kept
    with its problem (missing cells read as empty, extra cells are dropped)."""
    if not path.exists():
        raise ScoreError(f"--input {path}: no such file")
    if not path.is_file():
        raise ScoreError(f"--input {path}: not a file; give a CSV file with a header row")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = _check_header(path, reader, needed)
            rows = list(_records(reader, header, needed))
    except UnicodeDecodeError as exc:
        raise ScoreError(
            f"--input {path}: not UTF-8 text ({exc.reason}); save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise ScoreError(f"--input {path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise ScoreError(f"--input {path}: cannot read it ({exc.strerror or exc})") from None
    return header, rows


def _check_header(path: Path, reader: Iterator[list[str]], needed: list[str]) -> list[str]:
    header = next(reader, [])
    if not header:
        raise ScoreError(
            f"--input {path} is empty; give a CSV with a header row naming the "
            "time and value columns, then one row per reading"
        )
    for col in header:
        if header.count(col) > 1:
            raise ScoreError(
                f"{path}:1: the header names column {col!r} twice; give every column its own name"
            )
        if "\ufeff" in col:
            raise ScoreError(f"{path}:1: column {col!r}: {_BOM_ONLY_AT_START}")
        if col in OUT_COLUMNS:
            raise ScoreError(
                f"{path}:1: the input has a column {col!r}, which the output adds; rename it "
                f"(the output adds {', '.join(OUT_COLUMNS)})"
            )
    for col in needed:
        if col not in header:
            raise ScoreError(f"column {col!r} is not in {path} (columns: {', '.join(header)})")
    return header


def _records(reader: Any, header: list[str], needed: list[str]) -> Iterator[_Row]:
    """Every non-blank record after the header, numbered by the line it ends on."""
    width = len(header)
    at = [header.index(c) for c in needed]
    for cells in reader:
        if not cells:
            continue  # a blank line, as csv.DictReader skips it
        row = _Row(reader.line_num, cells)
        if len(cells) != width:
            row.problem = f"the row has {len(cells)} cells, the header {width}" + (
                "; the extra cells are not written" if len(cells) > width else ""
            )
            row.cells = (cells + [""] * width)[:width]
        else:
            for j in at:
                if cells[j].startswith("\ufeff"):
                    row.problem = f"column {header[j]!r}: {_BOM_ONLY_AT_START}"
                    break
        yield row


_BOM_ONLY_AT_START = (
    "a byte-order mark (U+FEFF) is allowed only at the start of the file; remove it"
)


def _texts(v: np.ndarray) -> list[str]:
    """The shortest text that reads back as exactly each float ('' for NaN): distinct floats
    never print the same."""
    return [repr(x) if x == x else "" for x in v.tolist()]


def _write_csv(
    path: Path,
    header: list[str],
    rows: list[_Row],
    reasons: list[str],
    raw: np.ndarray,
    score: np.ndarray,
    anomalous: np.ndarray,
    name: str,
) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*header, *OUT_COLUMNS])
            flags = ["true" if a else "false" for a in anomalous.tolist()]
            writer.writerows(
                [*row.cells, r, s, a, name, reason]
                for row, r, s, a, reason in zip(
                    rows, _texts(raw), _texts(score), flags, reasons, strict=True
                )
            )
    except OSError as exc:
        raise ScoreError(
            f"--out {path}: cannot write it ({exc.strerror or exc}); give a writable file path"
        ) from None


if __name__ == "__main__":
    score_cmd(sys.argv[1:])
