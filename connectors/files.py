"""Read readings from CSV / JSON-lines files; write records as JSON lines.

Source delivery guarantee: exactly-once replay. Each file is one partition; the
snapshot is the byte offset after the last line returned, so a resumed run reads
exactly the lines after it. Lines that cannot be read become dead-letter records
(raw line, reason, ``path:line``, receive time) - never a crash, never silently skipped.

Sink delivery guarantee: exactly-once into the file. Lines are written and flushed
as records arrive; before each snapshot the file is fsync'ed and its length is the
snapshot. A resumed run truncates the file to that length and continues, so the file
holds each record once, as an uninterrupted run would.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from edgeflow.batch import RecordBatch
from edgeflow.connectors.base import (
    Item,
    SinkContext,
    SinkPartition,
    SinkSpec,
    SourceContext,
    SourcePartition,
    SourceSpec,
)
from edgeflow.connectors.parse import TIME_UNITS, BatchBuilder, RecordParser
from edgeflow.connectors.records import TIME_FORMATS, json_lines

FORMATS = ("auto", "csv", "jsonl")


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "csv" if path.lower().endswith((".csv", ".csv.txt")) else "jsonl"


class FileSource(SourceSpec):
    kind = "files"

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        format: str = "auto",
        time_unit: str = "auto",
        batch_lines: int = 10_000,
    ) -> None:
        self.patterns = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        self.format = format
        self.time_unit = time_unit
        self.batch_lines = batch_lines

    def files(self) -> list[str]:
        out: list[str] = []
        for p in self.patterns:
            p = os.fspath(p)
            matches = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p]
            out.extend(matches)
        return out

    def problems(self) -> list[str]:
        out = []
        if self.format not in FORMATS:
            out.append(f"format={self.format!r}: use one of {', '.join(FORMATS)}")
        if self.time_unit not in TIME_UNITS:
            out.append(f"time_unit={self.time_unit!r}: use one of {', '.join(TIME_UNITS)}")
        files = self.files()
        if not files:
            out.append(
                f"no file matches {self.patterns!r}; check the path (relative paths start where edgeflow runs)"
            )
        for f in files:
            if not os.path.isfile(f):
                out.append(f"input file {f!r} does not exist or is not a file")
        return out

    def columns(self) -> Sequence[str] | None:
        for f in self.files():
            cols = _peek_columns(f, _format_of(f, self.format))
            if cols is not None:
                return cols
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "paths": [os.fspath(p) for p in self.patterns],
            "format": self.format,
            "time_unit": self.time_unit,
        }

    def partitions(self) -> list[str]:
        return self.files()

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        offset, line_no = (0, 0) if resume is None else (int(resume[0]), int(resume[1]))
        return _FilePartition(self, partition, offset, line_no, ctx)


def _peek_columns(path: str, fmt: str) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError:
        return None
    if not first.strip():
        return None
    if fmt == "csv":
        return next(csv.reader(io.StringIO(first.decode("utf-8", "replace"))))
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    return list(obj) if isinstance(obj, dict) else None


class _FilePartition(SourcePartition):
    def __init__(
        self, spec: FileSource, path: str, offset: int, line_no: int, ctx: SourceContext
    ) -> None:
        self.spec = spec
        self.path = path
        self.fmt = _format_of(path, spec.format)
        self.ctx = ctx
        self.f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.header: list[str] | None = None
        if self.fmt == "csv":
            first = self.f.readline()
            self.header = next(csv.reader(io.StringIO(first.decode("utf-8", "replace"))), [])
            offset = max(offset, self.f.tell())
            line_no = max(line_no, 1)
        self.f.seek(offset)
        self.offset = offset
        self.line_no = line_no
        if ctx.fields is not None:
            self.fields = ctx.fields
        else:
            cols = self.header if self.header is not None else (_peek_columns(path, self.fmt) or [])
            self.fields = tuple(c for c in cols if c not in (ctx.key, ctx.time))
        self.parser = RecordParser(ctx.key, ctx.time, self.fields, spec.time_unit)
        self.csv_parser = RecordParser(
            ctx.key, ctx.time, self.fields, spec.time_unit, numbers_as_strings=True
        )

    def next_batch(self) -> list[Item]:
        lines: list[tuple[int, bytes]] = []
        for _ in range(self.spec.batch_lines):
            line = self.f.readline()
            self.bytes_read += len(line)
            if not line:
                break
            self.line_no += 1
            if line.strip():
                lines.append((self.line_no, line.rstrip(b"\r\n")))
        self.offset = self.f.tell()
        if not lines:
            raise StopIteration
        return self._parse(lines)

    def _parse(self, lines: list[tuple[int, bytes]]) -> list[Item]:
        out = BatchBuilder(self.fields, self.ctx.step)
        for no, raw in lines:
            try:
                out.add(self._parse_csv(raw) if self.fmt == "csv" else self._parse_json(raw))
            except (ValueError, UnicodeDecodeError, csv.Error) as exc:
                out.fail(f"{self.path}:{no}", raw, str(exc))
        return out.items()

    def _parse_json(self, raw: bytes) -> tuple[str, int, list[float]]:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object per line, got {type(obj).__name__}")
        return self.parser.parse(obj)

    def _parse_csv(self, raw: bytes) -> tuple[str, int, list[float]]:
        assert self.header is not None
        row = next(csv.reader(io.StringIO(raw.decode("utf-8"))))
        if len(row) != len(self.header):
            raise ValueError(
                f"expected {len(self.header)} columns ({','.join(self.header)}), got {len(row)}"
            )
        return self.csv_parser.parse(dict(zip(self.header, row, strict=True)))

    def snapshot(self) -> Any:
        return (self.offset, self.line_no)

    def close(self) -> None:
        self.f.close()


def source(
    paths: str | Sequence[str],
    *,
    format: str = "auto",
    time_unit: str = "auto",
    batch_lines: int = 10_000,
) -> FileSource:
    """Readings from CSV (header row) or JSON-lines files; a glob reads many files.

    ``time_unit`` says how numeric times are read: ``s``, ``ms``, ``us``, ``ns`` or ``auto``
    (by magnitude). ISO-8601 strings must carry an offset (``Z`` or ``+02:00``).
    """
    return FileSource(paths, format=format, time_unit=time_unit, batch_lines=batch_lines)


class _FileSinkPartition(SinkPartition):
    def __init__(self, path: Path, resume: int | None, time_format: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "ab")  # noqa: SIM115 - closed in close()
        self.f.truncate(0 if resume is None else resume)
        self.f.seek(0, os.SEEK_END)
        self.time_format = time_format

    def write(self, batches: list[RecordBatch]) -> None:
        data = json_lines(batches, self.time_format)
        if data:
            self.f.write(data)
            self.f.flush()
            self.bytes_written += len(data)

    def snapshot(self) -> Any:
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class FileSink(SinkSpec):
    kind = "files"
    stateful = True

    def __init__(self, path: str | os.PathLike[str], time_format: str = "ns") -> None:
        self.path = Path(path)
        self.time_format = time_format

    def problems(self) -> list[str]:
        if self.time_format not in TIME_FORMATS:
            return [f"time_format={self.time_format!r}: use one of {', '.join(TIME_FORMATS)}"]
        return []

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "time_format": self.time_format}

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        return _FileSinkPartition(self.path, resume, self.time_format)


def sink(path: str | os.PathLike[str], *, time_format: str = "ns") -> FileSink:
    """Append records to ``path`` as JSON lines (times as int ns, or ``time_format="iso"``)."""
    return FileSink(path, time_format)
