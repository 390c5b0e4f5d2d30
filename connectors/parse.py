"""The shared rules for reading one record, and turning readings into batches and dead letters.

Every source (files, Kafka, MQTT) reads records through
:class:`edgeflow.connectors.payloads.Decoder`, which uses the pieces here: timestamps
(:func:`parse_time`, always inside int64 nanoseconds), keys (:func:`check_key`, at most
:data:`MAX_KEY_BYTES`), and :class:`BatchBuilder`, which collects good rows into one
:class:`~edgeflow.batch.Batch` (keys interned to integer codes) and bad ones into
dead-letter records whose echoed input and reason are truncated (:data:`RAW_LIMIT`,
:data:`ERROR_LIMIT`) with a ``...[truncated, N bytes]`` marker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeflow.batch import Batch, RecordBatch, intern_keys
from edgeflow.timeutil import NS_MAX, NS_MIN, check_ns_range, now_ns, ns_to_iso, parse_iso_ns

TIME_UNITS = {"auto": 0, "ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
UNIT_NAMES = {1: "ns", 1_000: "us", 1_000_000: "ms", 1_000_000_000: "s"}
#: a dead letter echoes at most this many characters of the bad input
RAW_LIMIT = 1024
#: and at most this many characters of reason
ERROR_LIMIT = 1024
#: the longest key (UTF-8 bytes); a longer one makes its record a dead letter
MAX_KEY_BYTES = 256
#: ``time_unit="auto"`` reads ms, us and ns only from 2001-09-09 on: a smaller value is more
#: likely a later time in the next coarser unit (year 9999 in seconds looks like 1978 in ms)
AUTO_EARLIEST_NS = 10**18


def short_repr(v: Any, limit: int = 64) -> str:
    """``repr(v)`` cut to about ``limit`` characters: reasons never echo huge input."""
    if isinstance(v, str | bytes) and len(v) > limit:
        return repr(v[:limit]) + f"...[{len(v)} {'chars' if isinstance(v, str) else 'bytes'}]"
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + f"...[{len(text)} chars]"


def number_to_ns(v: float | int, unit: str) -> int:
    """Epoch number -> ns, inside int64 ns (1677..2262), else ValueError with the fix.

    ``auto`` picks the unit by magnitude: below 1e11 seconds, then ms, us, ns; a value that
    would read as a time before 2001-09-09 in ms, us or ns is refused as ambiguous.
    """
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
    if not NS_MIN <= ns <= NS_MAX:
        side = "beyond the year 2262" if ns > 0 else "before the year 1677"
        raise ValueError(
            f"time value {short_repr(v)} read as {UNIT_NAMES.get(scale, unit)} since 1970 is "
            f"{side}; give the source time_unit= ('s', 'ms', 'us' or 'ns') that the data uses"
        )
    if unit == "auto" and scale != 1_000_000_000 and abs(ns) < AUTO_EARLIEST_NS:
        read_as = UNIT_NAMES[scale]
        coarser = UNIT_NAMES[scale * 1_000]
        raise ValueError(
            f"time value {short_repr(v)} is ambiguous with time_unit='auto': read as {read_as} "
            f"it is {ns_to_iso(ns)[:19]}Z, read as {coarser} it is beyond the year 2262; "
            "give the source time_unit= ('s', 'ms', 'us' or 'ns') that the data uses"
        )
    return ns


def parse_time(v: Any, unit: str) -> int:
    """A timestamp (epoch number in ``unit``, or ISO-8601 with offset) as int64 ns.

    Raises ValueError (never OverflowError) saying why, for anything else or anything
    outside int64 nanoseconds (1677-09-21 to 2262-04-11).
    """
    if isinstance(v, bool) or v is None:
        raise ValueError(f"time value {v!r} is not a timestamp")
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"time value {v!r} is not finite")
        ns = number_to_ns(v, unit)
        return ns if NS_MIN <= ns <= NS_MAX else check_ns_range(ns, f"time value {short_repr(v)}")
    if isinstance(v, str):
        s = v.strip()
        if len(s) > 64:
            raise ValueError(f"time value {short_repr(v)} is too long to be a timestamp")
        try:
            num: float | int = int(s)
        except ValueError:
            try:
                num = float(s)
            except ValueError:
                return parse_iso_ns(s)
        return parse_time(num, unit)
    raise ValueError(
        f"time value {short_repr(v)} is a {type(v).__name__}, not a number or ISO-8601 string"
    )


def check_key(name: str, v: Any) -> str:
    """A record's key as a string: a non-empty string or an integer, at most MAX_KEY_BYTES."""
    if isinstance(v, str) and v:
        if len(v) * 4 > MAX_KEY_BYTES and len(v.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise ValueError(
                f"key {name!r}: {short_repr(v)} is {len(v.encode('utf-8', 'surrogatepass'))} "
                f"bytes long; keys are at most {MAX_KEY_BYTES} bytes"
            )
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        text = str(v) if abs(v) < 10**MAX_KEY_BYTES else ""
        if not text:
            raise ValueError(f"key {name!r}: the integer is over {MAX_KEY_BYTES} digits long")
        return text
    raise ValueError(f"key {name!r}: {short_repr(v)} is not a non-empty string or integer")


class BatchBuilder:
    """Collects parsed rows and failures; ``items()`` gives a Batch and dead letters."""

    def __init__(self, fields: Sequence[str], step: str) -> None:
        self.fields = tuple(fields)
        self.step = step
        self.keys: list[str] = []
        self.times: list[int] = []
        self.rows: list[list[float]] = []
        self.bad: list[tuple[str, bytes, str, int]] = []

    def add(self, row: tuple[str, int, list[float]]) -> None:
        """One good reading (key, time in int64 ns, values)."""
        self.keys.append(row[0])
        self.times.append(row[1])
        self.rows.append(row[2])

    def add_all(self, rows: Sequence[tuple[str, int, list[float]]]) -> None:
        """The readings of one payload, all or none (the decoder checked them)."""
        for row in rows:
            self.add(row)

    def fail(self, where: str, raw: bytes, reason: str, size: int | None = None) -> None:
        """One bad input record: where (unique per record), its bytes (or the start of
        them, with ``size`` the whole size) and why it was refused."""
        self.bad.append((where, raw[:RAW_LIMIT], reason, len(raw) if size is None else size))

    def items(self) -> list[Batch | RecordBatch]:
        out: list[Batch | RecordBatch] = []
        if self.keys:
            n, nf = len(self.keys), len(self.fields)
            values = np.asarray(self.rows, dtype=np.float64).reshape(n, nf).T.copy()
            names, codes = intern_keys(self.keys)
            out.append(Batch(self.fields, names, codes, np.asarray(self.times, np.int64), values))
        if self.bad:
            out.append(dead_letters(self.step, self.bad))
        return out


def clip_text(text: str, limit: int, size: int | None = None) -> str:
    """``text`` if it is at most ``limit`` characters, else its start and a marker
    ``...[truncated, N bytes]`` (N = ``size``, the whole input's size), ``limit`` in all."""
    if len(text) <= limit and size is None:
        return text
    n = size if size is not None else len(text.encode("utf-8", "surrogatepass"))
    marker = f"...[truncated, {n} bytes]"
    return text[: max(0, limit - len(marker))] + marker


def echo_raw(raw: bytes, size: int | None = None) -> str:
    """The bad input as text for a dead letter: invalid UTF-8 escaped, at most RAW_LIMIT
    characters, with a ``...[truncated, N bytes]`` marker when cut (N: ``size``, the whole
    input's size, when ``raw`` is only its start)."""
    n = len(raw) if size is None else size
    text = raw[:RAW_LIMIT].decode("utf-8", "backslashreplace")
    if n <= RAW_LIMIT and len(text) <= RAW_LIMIT:
        return text
    return clip_text(text, RAW_LIMIT, n)


def dead_letters(
    step: str, items: Sequence[tuple[str, bytes, str] | tuple[str, bytes, str, int]]
) -> RecordBatch:
    """Dead-letter records: where it came from (unique per input record), the raw input
    and the reason (both truncated with a marker), the receive time. An item is
    ``(where, raw, reason)`` or ``(where, start of raw, reason, whole size)``."""
    now = now_ns()
    cols: dict[str, Any] = {
        "raw": [echo_raw(it[1], it[3] if len(it) == 4 else None) for it in items],
        "error": [
            it[2] if len(it[2]) <= ERROR_LIMIT else clip_text(it[2], ERROR_LIMIT) for it in items
        ],
        "source": [it[0] for it in items],
        "received_at": np.full(len(items), now, np.int64),
    }
    return RecordBatch("dead_letter", step, cols, len(items), ("source",))
