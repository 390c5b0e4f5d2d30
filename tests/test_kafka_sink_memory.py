"""The Kafka sink's write path: records in the outbox exactly as before (value = the record as
JSON with NaN as null, headers with the record id, highest priority first and oldest first
within a priority, each key in order), with memory that does not grow per record: a write of
many keys' windows is encoded and appended piece by piece, every bytes object its own size."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeflow.batch import RecordBatch
from edgeflow.connectors import kafka
from edgeflow.connectors.base import SinkContext
from edgeflow.connectors.outbox import priority_of


def window_batch(n: int, *, start: int = 1_767_225_600_000_000_000, step: str = "w") -> RecordBatch:
    rng = np.random.default_rng(n)
    mean = rng.normal(size=n)
    mean[::7] = np.nan  # no value
    cols: dict[str, Any] = {
        "key": [f"sensor-{i:07d}" for i in range(n)],
        "window_start": np.full(n, start, np.int64),
        "window_end": np.full(n, start + 1_000_000_000, np.int64),
        "count": np.full(n, 10, np.int64),
        "accel_mean": mean,
        "accel_p95": rng.normal(size=n).astype(np.float32),
    }
    return RecordBatch("window", step, cols, n, ("key", "window_start"))


def open_sink(tmp_path: Path) -> Any:
    spec = kafka.sink("topic-a", forwarders=0)
    return spec.open("0", None, SinkContext("f", "to_kafka", "3", tmp_path))


def stored(tmp_path: Path) -> list[tuple[int, bytes | None, bytes, bytes]]:
    db = sqlite3.connect(tmp_path / "outbox.sqlite")
    try:
        return db.execute(
            "SELECT priority, key, value, headers FROM outbox ORDER BY seq"
        ).fetchall()
    finally:
        db.close()


def expected(batches: list[RecordBatch]) -> list[tuple[int, bytes | None, bytes, bytes]]:
    """What the sink stored before the change: rows(), record_ids(), one orjson call per
    header list, per priority (highest first) sorted by event time (stable)."""
    by_prio: dict[int, list[tuple[int, tuple[int, bytes | None, bytes, bytes]]]] = {}
    for b in batches:
        prio = priority_of(kafka.KIND_PRIORITY.get(b.kind, "summary"))
        meta = [
            ["edgeflow-flow", "f"],
            ["edgeflow-version", "3"],
            ["edgeflow-step", b.step],
            ["edgeflow-schema", f"{b.kind}/v1"],
        ]
        tcol = "window_start" if "window_start" in b.columns else "t"
        times = [int(x) for x in np.asarray(b.columns[tcol]).tolist()]
        keys = b.columns.get("key") or b.columns.get("source")
        for row, rid, key, t in zip(b.rows(), b.record_ids("f"), keys, times, strict=True):
            headers = orjson.dumps([["edgeflow-id", rid], *meta])
            by_prio.setdefault(prio, []).append(
                (t, (prio, str(key).encode(), orjson.dumps(row), headers))
            )
    out = []
    for _, recs in sorted(by_prio.items(), reverse=True):
        recs.sort(key=lambda r: r[0])
        out.extend(r for _, r in recs)
    return out


def test_records_are_stored_as_before_in_priority_and_time_order(tmp_path: Path) -> None:
    late_cols: dict[str, Any] = {
        "key": ["b", "a", "b"],
        "t": np.array([30, 10, 20], np.int64),
        "accel": np.array([1.5, np.nan, -2.0]),
        "watermark": np.array([5, 5, 5], np.int64),
        "reason": ["window closed"] * 3,
    }
    late = RecordBatch("late", "w", late_cols, 3, ("key", "t"))
    older = window_batch(kafka.APPEND_CHUNK + 300, start=1_767_225_599_000_000_000)
    batches = [window_batch(kafka.APPEND_CHUNK + 500), late, older]
    part = open_sink(tmp_path)
    part.write(batches)
    got = stored(tmp_path)
    assert got == expected(batches)
    # oldest first within a priority: the older batch's windows lead
    assert orjson.loads(got[0][2])["window_start"] == 1_767_225_599_000_000_000
    assert orjson.loads(got[0][2])["accel_mean"] is None  # NaN -> null
    assert part.bytes_written == sum(len(v) + len(k or b"") for _, k, v, _ in got)


def test_a_write_of_many_keys_does_not_hold_memory_per_record(tmp_path: Path) -> None:
    n = 40_000
    batch = window_batch(n)
    part = open_sink(tmp_path)
    tracemalloc.start()
    try:
        part.write([batch])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(stored(tmp_path)) == n
    # one piece of APPEND_CHUNK records at a time, each ~0.5 KB; before, every record held
    # two 4 KiB orjson buffers until the whole write was appended (~330 MB here)
    assert peak < 40 * 2**20, f"the write peaked at {peak / 2**20:.0f} MiB for {n} records"


def test_interleaved_batches_are_stored_in_time_order_each_keeping_its_own_order(
    tmp_path: Path,
) -> None:
    """Records of several batches whose times interleave (windows, trend points and others
    by time), with ties, across append pieces: stored exactly as the plain sort gives."""
    rng = np.random.default_rng(11)
    batches = []
    for i, n in enumerate((kafka.APPEND_CHUNK + 700, 333, 2 * kafka.APPEND_CHUNK // 3)):
        b = window_batch(n, step=f"w{i}")
        b.columns["window_start"] = np.sort(rng.integers(0, 500, n)).astype(np.int64) * 10**9
        if i == 1:  # a batch not in time order itself
            b.columns["window_start"] = b.columns["window_start"][::-1].copy()
        batches.append(b)
    part = open_sink(tmp_path)
    part.write(batches)
    assert stored(tmp_path) == expected(batches)
