"""Print records to standard output as JSON lines.

Delivery guarantee: none beyond the terminal; it keeps no position, so after a crash
and resume records of the last unfinished snapshot interval may be printed again.
"""

from __future__ import annotations

import sys
from typing import Any

from edgeflow.batch import RecordBatch
from edgeflow.connectors.base import SinkContext, SinkPartition, SinkSpec
from edgeflow.connectors.records import TIME_FORMATS, json_lines


class _StdoutPartition(SinkPartition):
    def __init__(self, time_format: str) -> None:
        self.time_format = time_format

    def write(self, batches: list[RecordBatch]) -> None:
        data = json_lines(batches, self.time_format)
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            self.bytes_written += len(data)


class StdoutSink(SinkSpec):
    kind = "stdio"

    def __init__(self, time_format: str = "iso") -> None:
        self.time_format = time_format

    def problems(self) -> list[str]:
        if self.time_format not in TIME_FORMATS:
            return [f"time_format={self.time_format!r}: use one of {', '.join(TIME_FORMATS)}"]
        return []

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "time_format": self.time_format}

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        return _StdoutPartition(self.time_format)


def sink(time_format: str = "iso") -> StdoutSink:
    """Print every record as one JSON line; times as ISO-8601 UTC (``time_format="ns"`` for ints)."""
    return StdoutSink(time_format)
