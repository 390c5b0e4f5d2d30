"""Decode payloads into readings, or say exactly why not: the one record parser of every source.

The files source (each line a payload), the Kafka source (each message) and the MQTT source
(each message) all read records through :class:`Decoder`, so the same input is accepted or
refused the same way everywhere: valid UTF-8, no duplicate JSON keys (escaped spellings
such as ``"\\u0076"`` included), no NaN/Infinity, numbers as numbers (CSV cells are
numbers), no byte-order mark (the files source skips one at the start of a file), every
declared field checked whether or not the flow uses it (``Schema.checked``), keys of at
most 256 bytes, times inside int64 nanoseconds and within ``max_future`` / ``max_past`` of
the receive time.

Formats: ``json`` (one object per reading, or an array of them), ``senml`` (RFC 8428 JSON
packs), ``csv`` (one line, columns declared), ``number`` (a bare number; key from the
topic, time = receive time). A payload is atomic: if any reading in it is bad, the whole
payload becomes one dead letter whose reason names the reading.

Limits guard the node against hostile or broken devices: payload size, JSON nesting,
readings per payload, and timestamps too far in the future or past.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from edgeflow.connectors.parse import check_key, parse_time, short_repr
from edgeflow.timeutil import NS_MAX, NS_MIN, Duration, parse_duration

FORMATS = ("json", "senml", "csv", "number")
#: a UTF-8 byte-order mark: allowed at the start of a file (the files source skips it),
#: refused at the start of any other line or payload
BOM = b"\xef\xbb\xbf"
_KIND = {"csv": "CSV", "number": "number"}
FIELD_TYPES = ("float", "int", "bool")
SENML_RELATIVE = 2**28  # RFC 8428: times below this are relative to now (seconds)

Row = tuple[str, int, list[float]]


class PayloadError(ValueError):
    """A payload that cannot become readings; the message is the dead letter's reason."""


@dataclass(frozen=True)
class Limits:
    """Guards against hostile or broken input; ``None`` time bounds mean "no bound"."""

    max_bytes: int = 256 * 1024
    max_depth: int = 8
    max_readings: int = 10_000
    max_future_ns: int | None = 3600 * 10**9
    max_past_ns: int | None = 365 * 86400 * 10**9

    @staticmethod
    def of(
        max_payload: int = 256 * 1024,
        max_depth: int = 8,
        max_readings: int = 10_000,
        max_future: Duration | None = "1h",
        max_past: Duration | None = "365d",
    ) -> Limits:
        """Limits from a source's options (durations like ``"1h"``); ValueError if invalid."""
        for name, v in (
            ("max_payload", max_payload),
            ("max_depth", max_depth),
            ("max_readings", max_readings),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: give a positive whole number")
        return Limits(
            max_payload,
            max_depth,
            max_readings,
            None if max_future is None else parse_duration(max_future, what="max_future"),
            None if max_past is None else parse_duration(max_past, what="max_past"),
        )


@dataclass(frozen=True)
class Schema:
    """What a reading looks like: key and time (payload field, ``topic[i]`` or ``received``)."""

    key: str
    time: str
    fields: tuple[str, ...]
    types: Mapping[str, str]
    defaults: Mapping[str, float]
    time_unit: str = "auto"
    csv_columns: tuple[str, ...] = ()
    #: declared fields the flow does not use: checked like ``fields`` (a bad value makes the
    #: payload a dead letter) but not carried, so what is a dead letter never depends on
    #: which fields the steps downstream read
    checked: tuple[str, ...] = ()

    def topic_level(self, topic: str, spec: str) -> str:
        idx = int(spec[len("topic[") : -1])
        levels = topic.split("/")
        if not -len(levels) <= idx < len(levels) or not levels[idx]:
            raise PayloadError(f"topic {topic!r} has no level {idx} for the key")
        return levels[idx]


def is_topic_ref(spec: str) -> bool:
    return spec.startswith("topic[") and spec.endswith("]") and spec[6:-1].lstrip("-").isdigit()


def _depth(obj: Any, limit: int, level: int = 1) -> None:
    if level > limit:
        raise PayloadError(f"JSON nested deeper than {limit} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, dict | list):
                _depth(v, limit, level + 1)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict | list):
                _depth(v, limit, level + 1)


def _dicts(obj: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``obj`` (whose depth the caller has bounded)."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            if isinstance(v, dict | list):
                yield from _dicts(v)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict | list):
                yield from _dicts(v)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise PayloadError(f"duplicate key {short_repr(k)} in a JSON object")
        seen.add(k)
    return dict(pairs)


def check_duplicate_keys(raw: bytes, obj: Any) -> None:
    """Refuse a payload with a key twice in one JSON object (orjson keeps the last silently).

    Fast path: without escapes, a key used in n objects appears as ``"key"`` exactly n times
    unless some object repeats it (or the text also occurs as a value); only then, or when
    the payload has escapes (``"\\u0076"`` is ``"v"``), is it parsed again to look.
    """
    if b"\\" not in raw:
        counts: dict[str, int] = {}
        for d in _dicts(obj):
            for k in d:
                counts[k] = counts.get(k, 0) + 1
        if len(counts) <= 32 and all(
            raw.count(b'"' + k.encode() + b'"') == n for k, n in counts.items()
        ):
            return
    json.loads(raw, object_pairs_hook=_refuse_duplicates)


def loads_json(raw: bytes, max_depth: int) -> Any:
    """Parse a JSON payload by the shared rules: valid UTF-8 and JSON (no NaN/Infinity),
    nested at most ``max_depth`` levels, no duplicate keys. PayloadError says why not."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not valid JSON: {exc}") from None
    if raw.count(b"{") + raw.count(b"[") > max_depth:  # else it cannot be nested deeper
        _depth(obj, max_depth)
    # every key has its own ':' (escaped or not), so as many ':' as keys means no key twice
    if raw.count(b":") != _top_keys(obj):
        check_duplicate_keys(raw, obj)
    return obj


def _top_keys(obj: Any) -> int:
    """Keys of the payload's object, or of the objects of its array (not nested deeper)."""
    if isinstance(obj, dict):
        return len(obj)
    if isinstance(obj, list):
        return sum(len(d) for d in obj if isinstance(d, dict))
    return 0


class Decoder:
    """Turns one payload (with its topic and receive time) into readings."""

    def __init__(self, fmt: str, schema: Schema, limits: Limits) -> None:
        self.fmt = fmt
        self.schema = schema
        self.limits = limits
        self.key_from_topic = is_topic_ref(schema.key)
        self.key_level = int(schema.key[6:-1]) if self.key_from_topic else 0
        declared = frozenset(schema.fields)  # (a set: linear in 100,000 fields)
        self.unused = tuple(f for f in dict.fromkeys(schema.checked) if f not in declared)
        self.plain_floats = all(
            schema.types.get(f, "float") == "float" for f in (*schema.fields, *self.unused)
        )
        self.numeric = frozenset(schema.fields) | frozenset(self.unused)

    def decode(self, payload: bytes, topic: str, received_ns: int) -> list[Row]:
        """The readings of one payload, all good; else PayloadError with the reason (any
        other error reading it is turned into one: a payload never escapes as a crash)."""
        try:
            return self._decode(payload, topic, received_ns)
        except PayloadError:
            raise
        except (
            ValueError,
            TypeError,
            OverflowError,
            RecursionError,
            UnicodeDecodeError,
            csv.Error,
        ) as exc:
            raise PayloadError(f"unreadable payload: {type(exc).__name__}: {exc}") from None

    def _decode(self, payload: bytes, topic: str, received_ns: int) -> list[Row]:
        if len(payload) > self.limits.max_bytes:
            raise PayloadError(
                f"payload of {len(payload)} bytes is over the {self.limits.max_bytes}-byte limit"
            )
        if payload[:3] == BOM:
            raise PayloadError(
                f"not valid {_KIND.get(self.fmt, 'JSON')}: it starts with a byte-order "
                "mark (U+FEFF), which is allowed only at the start of a file"
            )
        if self.fmt == "number":
            rows = [self._number(payload, topic, received_ns)]
        elif self.fmt == "csv":
            rows = [self._csv(payload, topic, received_ns)]
        else:
            obj = loads_json(payload, self.limits.max_depth)
            rows = (
                self._senml(obj, topic, received_ns)
                if self.fmt == "senml"
                else self._json(obj, topic, received_ns)
            )
        future, past = self.limits.max_future_ns, self.limits.max_past_ns
        for i, (_, t, _) in enumerate(rows):
            where = f"reading {i}: " if len(rows) > 1 else ""
            if not NS_MIN <= t <= NS_MAX:
                raise PayloadError(f"{where}timestamp {t} ns is outside int64 nanoseconds")
            if future is not None and t > received_ns + future:
                raise PayloadError(
                    f"{where}timestamp {t} ns is more than {future // 10**9} s in the future "
                    "(the source's max_future)"
                )
            if past is not None and t < received_ns - past:
                raise PayloadError(
                    f"{where}timestamp {t} ns is more than {past // 10**9} s in the past "
                    "(the source's max_past)"
                )
        return rows

    # -- pieces -------------------------------------------------------------------------------
    def _key(self, topic: str, rec: Mapping[str, Any] | None) -> str:
        if self.key_from_topic:
            levels = topic.split("/")
            try:
                level = levels[self.key_level]
            except IndexError:
                level = ""
            if not level:
                raise PayloadError(
                    f"topic {short_repr(topic)} has no level {self.key_level} for the key"
                )
            v: Any = level
        elif rec is None or self.schema.key not in rec:
            raise PayloadError(f"missing key field {self.schema.key!r}")
        else:
            v = rec[self.schema.key]
        try:
            return check_key(self.schema.key, v)
        except ValueError as exc:
            raise PayloadError(str(exc)) from None

    def _time(self, rec: Mapping[str, Any] | None, received_ns: int) -> int:
        if self.schema.time == "received":
            return received_ns
        if rec is None or self.schema.time not in rec:
            raise PayloadError(f"missing time field {self.schema.time!r}")
        try:
            return parse_time(rec[self.schema.time], self.schema.time_unit)
        except (ValueError, OverflowError) as exc:
            raise PayloadError(str(exc)) from None

    def _value(self, name: str, v: Any) -> float:
        typ = self.schema.types.get(name, "float")
        if v is None:
            if name in self.schema.defaults:
                return self.schema.defaults[name]
            raise PayloadError(f"field {name!r} is missing and has no default")
        if typ == "bool":
            if isinstance(v, bool):
                return 1.0 if v else 0.0
            raise PayloadError(f"field {name!r}: {short_repr(v)} is not a boolean")
        if isinstance(v, bool) or not isinstance(v, int | float):
            hint = "; send numbers as JSON numbers" if isinstance(v, str) else ""
            raise PayloadError(
                f"field {name!r}: {short_repr(v)} is a {type(v).__name__}, expected a number{hint}"
            )
        try:
            x = float(v)
        except OverflowError:
            raise PayloadError(f"field {name!r}: {short_repr(v)} is too large") from None
        if not math.isfinite(x):
            raise PayloadError(f"field {name!r}: {short_repr(v)} is not a finite number")
        if typ == "int" and not x.is_integer():
            raise PayloadError(f"field {name!r}: {v!r} is not a whole number")
        return x

    def _reading(self, rec: Mapping[str, Any], topic: str, received_ns: int) -> Row:
        values: list[float] = []
        for f in self.schema.fields:
            v = rec.get(f)
            # fast path: a finite float for a float field (ints and the rest: the full checks)
            if self.plain_floats and type(v) is float and v - v == 0.0:
                values.append(v)
            else:
                values.append(self._value(f, v))
        for f in self.unused:  # checked the same way, not carried
            v = rec.get(f)
            if not (self.plain_floats and type(v) is float and v - v == 0.0):
                self._value(f, v)
        return (self._key(topic, rec), self._time(rec, received_ns), values)

    def _json(self, obj: Any, topic: str, received_ns: int) -> list[Row]:
        recs = obj if isinstance(obj, list) else [obj]
        if len(recs) > self.limits.max_readings:
            raise PayloadError(
                f"{len(recs)} readings in one payload; the limit is {self.limits.max_readings}"
            )
        if not recs:
            raise PayloadError("an empty JSON array holds no reading")
        rows = []
        for i, rec in enumerate(recs):
            where = f"reading {i}: " if isinstance(obj, list) else ""
            if not isinstance(rec, dict):
                raise PayloadError(f"{where}expected a JSON object, got {type(rec).__name__}")
            try:
                rows.append(self._reading(rec, topic, received_ns))
            except PayloadError as exc:
                raise PayloadError(f"{where}{exc}") from None
        return rows

    def _number(self, payload: bytes, topic: str, received_ns: int) -> Row:
        if len(self.schema.fields) != 1:
            raise PayloadError("format 'number' needs exactly one declared field")
        text = payload.decode("utf-8", "strict").strip() if payload.isascii() else None
        if text is None:
            raise PayloadError("a bare-number payload must be ASCII")
        try:
            x = float(text)
        except ValueError:
            raise PayloadError(f"{text[:40]!r} is not a number") from None
        return (
            self._key(topic, None),
            received_ns,
            [
                self._value(
                    self.schema.fields[0], int(x) if x.is_integer() and abs(x) < 2**53 else x
                )
            ],
        )

    def _csv(self, payload: bytes, topic: str, received_ns: int) -> Row:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise PayloadError("CSV payload is not valid UTF-8") from None
        cols = self.schema.csv_columns
        if "\n" in text or "\r" in text:
            raise PayloadError("a CSV payload is one line")
        try:
            split = text.split(",") if '"' not in text else next(csv.reader([text]), [""])
        except csv.Error as exc:
            raise PayloadError(f"not valid CSV: {exc}") from None
        cells = [c.strip() for c in split]
        if len(cells) != len(cols):
            raise PayloadError(f"expected {len(cols)} columns ({','.join(cols)}), got {len(cells)}")
        rec: dict[str, Any] = {}
        numeric = self.numeric
        for name, cell in zip(cols, cells, strict=True):
            if name in numeric:
                if cell == "":
                    rec[name] = None
                    continue
                try:
                    num = float(cell)
                except ValueError:
                    raise PayloadError(
                        f"field {name!r}: {short_repr(cell)} is not a number"
                    ) from None
                if num - num != 0.0:
                    raise PayloadError(f"field {name!r}: {short_repr(cell)} is not a finite number")
                rec[name] = num
            else:
                rec[name] = cell
        return self._reading(rec, topic, received_ns)

    def _senml(self, obj: Any, topic: str, received_ns: int) -> list[Row]:
        """RFC 8428: records resolve base name/time/value; records with the same name prefix
        (the device) and time become one reading whose fields are the record names."""
        pack = obj if isinstance(obj, list) else None
        if not pack:
            raise PayloadError("a SenML pack is a non-empty JSON array of records")
        if len(pack) > self.limits.max_readings:
            raise PayloadError(
                f"{len(pack)} SenML records in one pack; the limit is {self.limits.max_readings}"
            )
        bn, bt, bv = "", 0.0, 0.0
        grouped: dict[tuple[str, int], dict[str, float]] = {}
        for i, rec in enumerate(pack):
            if not isinstance(rec, dict):
                raise PayloadError(
                    f"SenML record {i}: expected a JSON object, got {type(rec).__name__}"
                )
            try:
                bn = _str(rec.get("bn", bn), "bn")
                bt = _num(rec.get("bt", bt), "bt")
                bv = _num(rec.get("bv", bv), "bv")
                name = bn + _str(rec.get("n", ""), "n")
                if "vs" in rec or "vd" in rec:
                    raise PayloadError("string and data values (vs, vd) are not numeric readings")
                if "v" in rec:
                    value = bv + _num(rec["v"], "v")
                elif "vb" in rec:
                    if not isinstance(rec["vb"], bool):
                        raise PayloadError(f"vb {rec['vb']!r} is not a boolean")
                    value = 1.0 if rec["vb"] else 0.0
                elif "s" in rec:
                    value = _num(rec["s"], "s")
                else:
                    raise PayloadError("no value (v, vb or s)")
                t_s = bt + _num(rec.get("t", 0.0), "t")
                t_ns = (
                    received_ns + round(t_s * 1e9)
                    if abs(t_s) < SENML_RELATIVE
                    else round(t_s * 1e9)
                )
                device, _, field = _split_name(name)
                if self.key_from_topic:
                    device = self.schema.topic_level(topic, self.schema.key)
                if not device:
                    raise PayloadError(
                        f"name {name!r} has no device part; use bn like 'urn:dev:mac:0024befffe804ff1:'"
                    )
                if field not in self.numeric:
                    continue  # a measurement the source does not declare
                if not math.isfinite(value):
                    raise PayloadError(f"value of {name!r} is not finite")
                grouped.setdefault((device, t_ns), {})[field] = value
            except PayloadError as exc:
                raise PayloadError(f"SenML record {i}: {exc}") from None
        rows = []
        for (device, t_ns), values in grouped.items():
            rows.append(
                (
                    device,
                    t_ns,
                    [
                        values.get(f, self.schema.defaults.get(f, math.nan))
                        for f in self.schema.fields
                    ],
                )
            )
        if not rows:
            raise PayloadError(
                f"no SenML record names a declared field ({', '.join(self.schema.fields)})"
            )
        return rows


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise PayloadError(f"{what} {v!r} is not a string")
    return v


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise PayloadError(f"{what} {v!r} is not a finite number")
    return float(v)


def _split_name(name: str) -> tuple[str, str, str]:
    """'urn:dev:ow:10e2073a01080063:temp' -> ('urn:dev:ow:10e2073a01080063', ':', 'temp')."""
    for sep in (":", "/", "."):
        if sep in name:
            return name.rpartition(sep)
    return "", "", name


def check_schema(
    fmt: str,
    key: str,
    time: str,
    fields: Sequence[str],
    types: Mapping[str, str],
    csv_columns: Sequence[str],
) -> list[str]:
    """Problems with a declared schema, for flow validation."""
    out = []
    if fmt not in FORMATS:
        out.append(f"format={fmt!r}: use one of {', '.join(FORMATS)}")
    if not fields:
        out.append("declare the numeric fields to read, e.g. fields=['temp', 'hum']")
    for f, t in types.items():
        if t not in FIELD_TYPES:
            out.append(f"field {f!r}: type {t!r}; use one of {', '.join(FIELD_TYPES)}")
        if f not in fields:
            out.append(f"types names {f!r}, which is not in fields")
    if fmt == "csv":
        if not csv_columns:
            out.append("format='csv' needs csv_columns=[...] naming the columns in order")
        for c in [
            *fields,
            *([] if is_topic_ref(key) else [key]),
            *([] if time == "received" else [time]),
        ]:
            if csv_columns and c not in csv_columns:
                out.append(f"column {c!r} is not in csv_columns")
    if fmt == "number" and (len(fields) != 1 or not is_topic_ref(key)):
        out.append(
            "format='number' needs exactly one field and key='topic[i]' (the payload is just the value)"
        )
    return out
