"""Turning decoded records (JSON objects, CSV rows) into columnar batches and dead letters.

Shared by every source that reads structured payloads. A record that does not fit raises
``ValueError`` with a reason; :class:`BatchBuilder` collects good rows into one
:class:`~edgeflow.batch.Batch` and bad ones into dead-letter records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeflow.batch import Batch, RecordBatch
from edgeflow.timeutil import now_ns, parse_iso_ns

TIME_UNITS = {"auto": 0, "ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
RAW_LIMIT = 1024


def number_to_ns(v: float | int, unit: str) -> int:
    """Epoch number -> ns. ``auto`` picks the unit by magnitude (s, ms, us or ns since 1970)."""
    if unit == "auto":
        a = abs(v)
        scale = (
            1 if a >= 1e17 else 1_000 if a >= 1e14 else 1_000_000 if a >= 1e11 else 1_000_000_000
        )
    else:
        scale = TIME_UNITS[unit]
    if isinstance(v, int):
        ns = v * scale
    else:
        whole = math.floor(v)  # split so that large epoch floats keep their fraction exactly
        ns = int(whole) * scale + round((v - whole) * scale)
    if not -(1 << 63) <= ns < 1 << 63:
        read_as = {1: "ns", 1_000: "us", 1_000_000: "ms", 1_000_000_000: "s"}.get(scale, unit)
        raise ValueError(
            f"time value {v!r} read as {read_as} since 1970 is beyond the year 2262; "
            "give the source time_unit= ('s', 'ms', 'us' or 'ns') that the data uses"
        )
    return ns


def parse_time(v: Any, unit: str) -> int:
    """A timestamp (epoch number in ``unit``, or ISO-8601 with offset) as int ns."""
    if isinstance(v, bool) or v is None:
        raise ValueError(f"time value {v!r} is not a timestamp")
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"time value {v!r} is not finite")
        return number_to_ns(v, unit)
    if isinstance(v, str):
        s = v.strip()
        try:
            num: float | int = int(s)
        except ValueError:
            try:
                num = float(s)
            except ValueError:
                return parse_iso_ns(s)
        return parse_time(num, unit)
    raise ValueError(f"time value {v!r} is a {type(v).__name__}, not a number or ISO-8601 string")


class RecordParser:
    """Reads key, time and numeric fields out of one decoded record."""

    def __init__(
        self,
        key: str,
        time: str,
        fields: Sequence[str],
        time_unit: str = "auto",
        *,
        numbers_as_strings: bool = False,
    ) -> None:
        self.key = key
        self.time = time
        self.fields = tuple(fields)
        self.time_unit = time_unit
        self.numbers_as_strings = numbers_as_strings

    def value(self, name: str, v: Any) -> float:
        if v is None or v == "":
            return math.nan
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError(f"field {name!r}: {v!r} is a {type(v).__name__}, expected a number")
        if isinstance(v, str) and not self.numbers_as_strings:
            raise ValueError(f"field {name!r}: {v!r} is a string; send numbers as JSON numbers")
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"field {name!r}: {v!r} is not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"field {name!r}: {v!r} is not a finite number")
        return x

    def key_of(self, v: Any) -> str:
        if isinstance(v, str) and v:
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        raise ValueError(f"key {self.key!r}: {v!r} is not a non-empty string or integer")

    def parse(self, rec: Mapping[str, Any]) -> tuple[str, int, list[float]]:
        if self.key not in rec:
            raise ValueError(f"missing key field {self.key!r}")
        if self.time not in rec:
            raise ValueError(f"missing time field {self.time!r}")
        return (
            self.key_of(rec[self.key]),
            parse_time(rec[self.time], self.time_unit),
            [self.value(f, rec.get(f)) for f in self.fields],
        )


class BatchBuilder:
    """Collects parsed rows and failures; ``items()`` gives a Batch and dead letters."""

    def __init__(self, fields: Sequence[str], step: str) -> None:
        self.fields = tuple(fields)
        self.step = step
        self.keys: list[str] = []
        self.times: list[int] = []
        self.rows: list[list[float]] = []
        self.bad: list[tuple[str, bytes, str]] = []

    def add(self, row: tuple[str, int, list[float]]) -> None:
        self.keys.append(row[0])
        self.times.append(row[1])
        self.rows.append(row[2])

    def fail(self, where: str, raw: bytes, reason: str) -> None:
        self.bad.append((where, raw, reason))

    def items(self) -> list[Batch | RecordBatch]:
        out: list[Batch | RecordBatch] = []
        if self.keys:
            n, nf = len(self.keys), len(self.fields)
            values = np.asarray(self.rows, dtype=np.float64).reshape(n, nf).T.copy()
            names, codes = np.unique(np.asarray(self.keys, dtype=str), return_inverse=True)
            out.append(
                Batch(
                    self.fields,
                    tuple(names.tolist()),
                    codes.astype(np.int32).reshape(-1),
                    np.asarray(self.times, np.int64),
                    values,
                )
            )
        if self.bad:
            out.append(dead_letters(self.step, self.bad))
        return out


def dead_letters(step: str, items: Sequence[tuple[str, bytes, str]]) -> RecordBatch:
    """Dead-letter records: where it came from, the raw payload (truncated), the reason."""
    now = now_ns()
    raw = []
    for _, r, _ in items:
        text = r[:RAW_LIMIT].decode("utf-8", "backslashreplace")
        raw.append(text + ("…" if len(r) > RAW_LIMIT else ""))
    cols: dict[str, Any] = {
        "raw": raw,
        "error": [e for _, _, e in items],
        "source": [s for s, _, _ in items],
        "received_at": np.full(len(items), now, np.int64),
    }
    return RecordBatch("dead_letter", step, cols, len(items), ("source",))
