"""Kafka messages as records (``kafka.source(..., records=True)``): what node flows publish.

A message's value must be one JSON object (read by the shared rules of
:func:`edgeflow.connectors.payloads.loads_json`: valid UTF-8 JSON, at most ``max_depth``
levels, no duplicate keys, at most ``max_payload`` bytes; see :func:`load_record`); anything else is a dead letter
(source ``topic/partition@offset``) with the reason.

:class:`RecordsBuilder` collects the records of one poll and gives one
:class:`~edgeflow.batch.RecordBatch` per record kind, in the order the kinds first came:

* ``kind`` from the ``edgeflow-schema`` header (``window/v1`` -> ``window``; ``anomaly``,
  ``reading``, ``late``, ``dead_letter``, ``trend`` likewise; missing -> ``record``);
* columns: the union of the objects' keys (a key a record lacks is ``None``; values as
  orjson decodes them, nested objects such as quantile sketches kept as dicts), then
  ``edgeflow_id`` (the header, else ``"<topic>/<partition>@<offset>"``), ``edgeflow_flow``
  (the header, else ``None``), ``topic`` and ``t``: the event time, int64 ns. A record's own
  columns of these four names are replaced by them;
* ``t`` is read from the ``time=`` column when the source names one (per ``time_unit``),
  else from ``window_start`` for window records and ``t`` for anomaly, reading and trend
  records (ns), else it is the message's Kafka timestamp. A record whose time column is
  missing or not a time is a dead letter saying so;
* ``id_columns = ("edgeflow_id",)``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson

from edgeflow.batch import RecordBatch
from edgeflow.connectors.parse import RAW_LIMIT, dead_letters, parse_time, short_repr
from edgeflow.connectors.payloads import Limits, PayloadError, check_duplicate_keys
from edgeflow.timeutil import now_ns

ID_HEADER = "edgeflow-id"
FLOW_HEADER = "edgeflow-flow"
SCHEMA_HEADER = "edgeflow-schema"
#: the columns every record gets from the message (they replace the record's own)
MESSAGE_COLUMNS = ("edgeflow_id", "edgeflow_flow", "topic", "t")
#: the event-time column (int ns) of the record kinds edgeflow publishes
TIME_COLUMN = {"window": "window_start", "anomaly": "t", "reading": "t", "trend": "t"}
_KIND = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def header(msg: Any, name: str) -> str | None:
    """The message's header ``name`` as text (invalid UTF-8 escaped), or None."""
    for k, v in msg.headers or ():
        if k == name and v is not None:
            return bytes(v).decode("utf-8", "backslashreplace")
    return None


def kind_of(schema: str | None) -> str:
    """The record kind an ``edgeflow-schema`` header names (``window/v1`` -> ``window``);
    ``record`` when there is none or it is not a kind name."""
    kind = (schema or "").split("/", 1)[0].strip()
    return kind if _KIND.fullmatch(kind) else "record"


def where(msg: Any) -> str:
    """``topic/partition@offset``: the message's place, unique per message."""
    return f"{msg.topic}/{msg.partition}@{msg.offset}"


class RecordsBuilder:
    """The records and dead letters of the messages of one poll."""

    def __init__(self, step: str, limits: Limits, time: str | None, time_unit: str) -> None:
        self.step = step
        self.limits = limits
        self.time = time
        self.time_unit = time_unit
        #: kind -> (objects, ids, flows, topics, times)
        self.kinds: dict[str, tuple[list[dict[str, Any]], list[str], list[str | None], list[str], list[int]]] = {}  # fmt: skip
        self.bad: list[tuple[str, bytes, str, int]] = []

    def add(self, msg: Any) -> None:
        """One message: a record, or a dead letter with the reason."""
        raw = msg.value or b""
        kind = kind_of(header(msg, SCHEMA_HEADER))
        try:
            obj = self._object(raw)
            t = self._event_time(kind, obj, msg)
        except PayloadError as exc:
            self.bad.append((where(msg), raw[:RAW_LIMIT], str(exc), len(raw)))
            return
        objs, ids, flows, topics, times = self.kinds.setdefault(kind, ([], [], [], [], []))
        objs.append(obj)
        ids.append(header(msg, ID_HEADER) or where(msg))
        flows.append(header(msg, FLOW_HEADER))
        topics.append(msg.topic)
        times.append(t)

    def _object(self, raw: bytes) -> dict[str, Any]:
        if len(raw) > self.limits.max_bytes:
            raise PayloadError(
                f"payload of {len(raw)} bytes is over the {self.limits.max_bytes}-byte limit"
            )
        obj = load_record(raw, self.limits.max_depth)
        if not isinstance(obj, dict):
            raise PayloadError(
                f"not a record: a record is one JSON object, this is {_json_kind(obj)}"
            )
        return obj

    def _event_time(self, kind: str, obj: dict[str, Any], msg: Any) -> int:
        column = self.time or TIME_COLUMN.get(kind)
        if column is None:
            ts = msg.timestamp
            return int(ts) * 1_000_000 if isinstance(ts, int) and ts >= 0 else now_ns()
        if column not in obj or obj[column] is None:
            raise PayloadError(f"{kind} record without its time column {column!r}")
        try:
            return parse_time(obj[column], self.time_unit if self.time else "ns")
        except ValueError as exc:
            raise PayloadError(
                f"{kind} record: time column {column!r} = {short_repr(obj[column])}: {exc}"
            ) from None

    def items(self) -> list[RecordBatch]:
        """One RecordBatch per kind (first come, first), then the dead letters, if any."""
        out = []
        for kind, (objs, ids, flows, topics, times) in self.kinds.items():
            names = dict.fromkeys(k for o in objs for k in o)
            cols: dict[str, Any] = {
                name: [o.get(name) for o in objs] for name in names if name not in MESSAGE_COLUMNS
            }
            cols["edgeflow_id"] = ids
            cols["edgeflow_flow"] = flows
            cols["topic"] = topics
            cols["t"] = np.asarray(times, np.int64)
            out.append(RecordBatch(kind, self.step, cols, len(objs), ("edgeflow_id",)))
        if self.bad:
            out.append(dead_letters(self.step, self.bad))
        return out


def load_record(raw: bytes, max_depth: int) -> Any:
    """``raw`` parsed by the shared rules of :func:`~edgeflow.connectors.payloads.loads_json`
    (valid JSON, nested at most ``max_depth`` levels, no key twice in an object), with a
    fast path for records with nested objects (sketches): one walk counts every object's keys
    and the depth; as many ``:`` in ``raw`` as keys means no key is there twice."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not valid JSON: {exc}") from None
    keys, depth = _keys_and_depth(obj)
    if depth > max_depth:
        raise PayloadError(f"JSON nested deeper than {max_depth} levels")
    if raw.count(b":") != keys:
        try:
            check_duplicate_keys(raw, obj)
        except PayloadError:
            raise
        except (ValueError, RecursionError) as exc:
            raise PayloadError(f"unreadable payload: {type(exc).__name__}: {exc}") from None
    return obj


def _keys_and_depth(obj: Any) -> tuple[int, int]:
    """(keys of all the objects in ``obj``, its nesting depth: 1 for a flat object)."""
    keys, depth = 0, 0
    todo: list[tuple[Any, int]] = [(obj, 1)]
    while todo:
        o, level = todo.pop()
        depth = max(depth, level)
        if type(o) is dict:
            keys += len(o)
            inner: Any = o.values()
        elif type(o) is list:
            inner = o
        else:
            continue
        todo.extend((v, level + 1) for v in inner if type(v) is dict or type(v) is list)
    return keys, depth


def _json_kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    return "a number"
