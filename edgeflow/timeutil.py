"""Durations and timestamps. Time inside edgeflow is int64 nanoseconds since the Unix epoch, UTC."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

from edgeflow.errors import DurationError

NS_PER = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "min": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
}

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|min|m|h|d)")
_WHOLE = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ns|us|µs|ms|s|min|m|h|d)\s*)+$")

Duration = str | int | float | timedelta


def parse_duration(value: Duration, *, what: str = "duration", allow_zero: bool = True) -> int:
    """Return a duration in integer nanoseconds.

    Accepts strings such as ``"500ms"``, ``"10s"``, ``"5m"``, ``"1h30m"``, a
    :class:`datetime.timedelta`, or a number of seconds (int or float).
    Raises :class:`DurationError` saying what is accepted.
    """
    if isinstance(value, bool):
        raise DurationError(f"{what}: expected a duration like '10s', got a boolean {value!r}")
    if isinstance(value, timedelta):
        ns = (value.days * 86400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    elif isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DurationError(f"{what}: {value!r} is not a finite number of seconds")
        ns = round(value * 1_000_000_000)
    elif isinstance(value, str):
        if not _WHOLE.match(value):
            raise DurationError(
                f"{what}: cannot read {value!r} as a duration; write a number with a unit, "
                "e.g. '500ms', '10s', '5m', '1h30m' (units: ns, us, ms, s, m, h, d)"
            )
        total = 0.0
        for num, unit in _PART.findall(value):
            total += float(num) * NS_PER[unit]
        ns = round(total)
    else:
        raise DurationError(
            f"{what}: expected a duration like '10s' (or a timedelta), got {type(value).__name__}"
        )
    if ns < 0:
        raise DurationError(f"{what}: {value!r} is negative; durations must be >= 0")
    if ns == 0 and not allow_zero:
        raise DurationError(f"{what}: {value!r} is zero; give a positive duration such as '1s'")
    return ns


def format_duration(ns: int) -> str:
    """Render nanoseconds in the shortest exact unit, e.g. ``1500000000 -> '1500ms'``."""
    for unit in ("d", "h", "m", "s", "ms", "us"):
        size = NS_PER[unit]
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


#: the range of int64 nanoseconds since the epoch: 1677-09-21T00:12:43Z .. 2262-04-11T23:47:16Z
NS_MIN = -(1 << 63)
NS_MAX = (1 << 63) - 1


def check_ns_range(ns: int, what: str) -> int:
    """``ns`` if it fits int64 nanoseconds; else ValueError naming ``what`` and the range."""
    if NS_MIN <= ns <= NS_MAX:
        return ns
    side = "after 2262-04-11T23:47:16Z" if ns > NS_MAX else "before 1677-09-21T00:12:43Z"
    raise ValueError(
        f"{what} is {side}, outside the int64 nanoseconds since 1970 edgeflow keeps times in"
    )


def now_ns() -> int:
    """Wall-clock time, UTC, in nanoseconds since the epoch."""
    return time.time_ns()


def ns_to_datetime(ns: int) -> datetime:
    """A UTC-aware datetime for ``ns`` nanoseconds since the epoch (microsecond precision)."""
    return datetime.fromtimestamp(ns // 1_000 / 1_000_000, tz=timezone.utc)


def datetime_to_ns(dt: datetime) -> int:
    """Nanoseconds since the epoch for an aware datetime. Naive datetimes are refused."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(
            f"naive datetime {dt.isoformat()} has no UTC offset; give an aware datetime "
            "(e.g. datetime(..., tzinfo=timezone.utc))"
        )
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def ns_to_iso(ns: int) -> str:
    """ISO-8601 UTC with nanosecond digits, e.g. ``2026-01-01T00:00:01.500000000Z``."""
    sec, frac = divmod(int(ns), 1_000_000_000)
    base = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def _clip(text: str, limit: int = 64) -> str:
    """``repr(text)``, cut to ``limit`` characters: error messages never echo huge input."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"...[{len(text)} chars]"


_ISO_FRAC = re.compile(r"^(.*T\d{2}:\d{2}:\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:?\d{2})$")


def parse_iso_ns(text: str) -> int:
    """Parse an ISO-8601 timestamp *with* an offset (``Z`` or ``+hh:mm``) to ns, exactly.

    Raises ValueError with a fix when the offset is missing, the text is not a timestamp, or
    the time is outside int64 nanoseconds (years 1677 to 2262).
    """
    s = text.strip()
    if len(s) > 64:  # the longest ISO-8601 text with 9 fraction digits and offset is 35
        raise ValueError(f"cannot read {_clip(text)} as an ISO-8601 timestamp: too long")
    m = _ISO_FRAC.match(s)
    if m is None:
        if re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$", s):
            raise ValueError(
                f"timestamp {_clip(text)} has no UTC offset; add 'Z' or '+00:00' (naive times are refused)"
            )
        raise ValueError(f"cannot read {_clip(text)} as an ISO-8601 timestamp with offset")
    head, frac, off = m.groups()
    offset = "+00:00" if off == "Z" else off
    try:
        dt = datetime.fromisoformat(head.replace(" ", "T") + offset)
        ns = datetime_to_ns(dt)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"cannot read {_clip(text)} as an ISO-8601 timestamp: {exc}") from None
    if frac:
        ns += int((frac + "000000000")[:9])
    return check_ns_range(ns, f"timestamp {_clip(text)}")
