"""Turning record batches into JSON lines, shared by the sinks."""

from __future__ import annotations

from typing import Any

import orjson

from edgeflow.batch import RecordBatch
from edgeflow.timeutil import ns_to_iso

TIME_COLUMNS = ("window_start", "window_end", "t", "watermark", "received_at")
TIME_FORMATS = ("ns", "iso")


def rows_for_output(batch: RecordBatch, time_format: str) -> list[dict[str, Any]]:
    rows = batch.rows()
    if time_format == "iso":
        iso_cols = [c for c in TIME_COLUMNS if c in batch.columns]
        for row in rows:
            for c in iso_cols:
                v = row[c]
                if isinstance(v, int):
                    row[c] = ns_to_iso(v)
    return rows


def json_lines(batches: list[RecordBatch], time_format: str) -> bytes:
    parts: list[bytes] = []
    for b in batches:
        for row in rows_for_output(b, time_format):
            parts.append(orjson.dumps(row))
    if not parts:
        return b""
    return b"\n".join(parts) + b"\n"
