"""Record one key's streams from a short run of a flow, or read them from recorded files.

A :class:`Recording` holds, for one key, column arrays of: its raw ``readings``, ``trend``
points (per field), ``windows`` summaries and ``anomalies``. The short run replaces the
flow's sinks with in-memory recorders (nothing reaches Kafka, files or the outbox) and
runs without a state directory.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeflow.batch import RecordBatch
from edgeflow.connectors.base import SinkContext, SinkPartition, SinkSpec
from edgeflow.connectors.parse import parse_time
from edgeflow.engine import RunOptions, run
from edgeflow.flow.plan import Plan, SinkPlan

KINDS = ("readings", "trend", "windows", "anomalies")
TIME_COLUMN = {"readings": "t", "trend": "t", "windows": "window_end", "anomalies": "t"}


@dataclass
class Recording:
    key: str
    #: kind -> list of column dicts (one per batch or file)
    parts: dict[str, list[dict[str, np.ndarray]]] = field(
        default_factory=lambda: {k: [] for k in KINDS}
    )
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, cols: dict[str, np.ndarray]) -> None:
        if len(next(iter(cols.values()), ())):
            with self.lock:
                self.parts[kind].append(cols)

    def table(self, kind: str) -> dict[str, np.ndarray]:
        """All of one kind's records for the key, columns concatenated, sorted by time."""
        parts = self.parts[kind]
        if not parts:
            return {}
        names = [c for c in parts[0] if all(c in p for p in parts)]
        out = {c: np.concatenate([np.asarray(p[c]) for p in parts]) for c in names}
        order = np.argsort(out[TIME_COLUMN[kind]], kind="stable")
        return {c: v[order] for c, v in out.items()}

    def save(self, directory: Path) -> list[Path]:
        """Write each kind as JSON lines (``<kind>.jsonl``), readable by :func:`from_files`."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for kind in KINDS:
            t = self.table(kind)
            if not t:
                continue
            path = directory / f"{kind}.jsonl"
            cols = {c: v.tolist() for c, v in t.items()}
            n = len(next(iter(cols.values())))
            with path.open("wb") as f:
                for i in range(n):
                    row = {c: v[i] for c, v in cols.items()}
                    f.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            written.append(path)
        return written


def _key_rows(b: RecordBatch, key: str) -> dict[str, np.ndarray] | None:
    keys = b.columns.get("key")
    if keys is None:
        return None
    sel = np.flatnonzero(np.asarray(keys, dtype=object) == key)
    if not len(sel):
        return None
    out = {}
    for name, col in b.columns.items():
        arr = np.asarray(col) if isinstance(col, np.ndarray) else np.asarray(col, dtype=object)
        v = arr[sel]
        if v.dtype == object and name not in ("key", "field", "detector"):
            v = np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
        out[name] = v
    return out


class _RecorderPart(SinkPartition):
    def __init__(self, rec: Recording, kind: str) -> None:
        self.rec, self.kind = rec, kind

    def write(self, batches: list[RecordBatch]) -> None:
        for b in batches:
            cols = _key_rows(b, self.rec.key)
            if cols is not None:
                self.rec.add(self.kind, cols)


class _Recorder(SinkSpec):
    kind = "plot-recorder"

    def __init__(self, rec: Recording, kind: str) -> None:
        self.rec, self.stream_kind = rec, kind

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "records": self.stream_kind}

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        return _RecorderPart(self.rec, self.stream_kind)


def short_run(plan: Plan, key: str, run_for_ns: int) -> Recording:
    """Run ``plan`` (at most ``run_for_ns``) with its sinks replaced by recorders of ``key``."""
    rec = Recording(key)
    sinks = [
        SinkPlan(f"plot_{s.name}", _Recorder(rec, "readings"), [(s.name, "readings")])
        for s in plan.sources
    ]
    sinks += [
        SinkPlan(f"plot_{w.name}", _Recorder(rec, "windows"), [(w.name, "windows")])
        for w in plan.windows
    ]
    sinks += [
        SinkPlan(f"plot_{d.name}", _Recorder(rec, "trend"), [(d.name, "trend")])
        for d in plan.downsamples
    ]
    sinks += [
        SinkPlan(f"plot_{a.name}", _Recorder(rec, "anomalies"), [(a.name, "anomalies")])
        for a in plan.detects
    ]
    used = {i for k in sinks for i in k.inputs}
    unrouted = [f"{s.name}.dead_letters" for s in plan.sources]
    unrouted += [f"{w.name}.late" for w in plan.windows]
    unrouted += [f"{f.name}.readings" for f in plan.features if (f.name, "readings") not in used]
    for s in plan.sources:  # raw readings feed the detectors too: read every field
        s.read_fields = s.fields
    recording_plan = dataclasses.replace(plan, sinks=sinks, unrouted=unrouted)
    run(recording_plan, RunOptions(run_for_ns=run_for_ns))
    return rec


def from_files(key: str, files: dict[str, list[Path]]) -> Recording:
    """Read recorded JSON-lines files (kind -> paths), keeping the records of ``key``."""
    rec = Recording(key)
    for kind, paths in files.items():
        for path in paths:
            rows = [orjson.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]
            rows = [r for r in rows if r.get("key") == key]
            if not rows:
                continue
            names = list(dict.fromkeys(c for r in rows for c in r))
            cols: dict[str, np.ndarray] = {}
            for c in names:
                vals = [r.get(c) for r in rows]
                if c in ("t", "window_start", "window_end"):
                    cols[c] = np.asarray([parse_time(v, "auto") for v in vals], np.int64)
                elif all(isinstance(v, int | float) or v is None for v in vals):
                    cols[c] = np.asarray([np.nan if v is None else v for v in vals], np.float64)
                else:
                    cols[c] = np.asarray(vals, dtype=object)
            if TIME_COLUMN[kind] not in cols:
                raise ValueError(
                    f"{path}: {kind} records need a {TIME_COLUMN[kind]!r} column; is this a {kind} file?"
                )
            rec.add(kind, cols)
    return rec
