"""Read readings from CSV / JSON-lines files; write records as JSON lines.

Source delivery guarantee: exactly-once replay. Each file is one partition; the
snapshot is the byte offset after the last line returned, so a resumed run reads
exactly the lines after it. Lines that cannot be read become dead-letter records
(raw line truncated, reason, ``path:line``, receive time) - never a crash, never silently
skipped. Each line is read by the record parser every source shares
(:class:`edgeflow.connectors.payloads.Decoder`): the same rules as Kafka and MQTT, the
same limits (``max_payload`` bytes per line, JSON depth, keys of at most 256 bytes) and
time bounds (``max_future``, default 1 h past the wall clock; ``max_past``, default none,
so old files replay). A byte-order mark at the start of a file is skipped; one at the
start of any other line makes that line a dead letter. Every field declared with
``fields=`` is checked on every line, whether or not the flow uses it; without
``fields=`` the fields the flow reads are checked, and other columns (text such as a
status or a site name) are left alone. A CSV header that names a column twice makes every row
of that file a dead letter whose reason names the file and the column (the other files
are read): the same rule as a JSON key given twice.

Sink delivery guarantee: exactly-once into the file. Lines are written and flushed
as records arrive; before each snapshot the file is fsync'ed and its length is the
snapshot. A resumed run truncates the file to that length and continues, so the file
holds each record once, as an uninterrupted run would. A run's file holds that run's
records only: a run with nothing to write leaves an empty file, not an earlier run's.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import math
import os
from collections.abc import Iterator, Sequence
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
from edgeflow.connectors.parse import TIME_UNITS, BatchBuilder
from edgeflow.connectors.payloads import Decoder, Limits, PayloadError, Schema
from edgeflow.connectors.records import TIME_FORMATS, json_lines
from edgeflow.file_modes import open_output
from edgeflow.timeutil import Duration, now_ns

BOM = b"\xef\xbb\xbf"

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
        max_payload: int = 256 * 1024,
        max_depth: int = 8,
        max_readings: int = 10_000,
        max_future: Duration | None = "1h",
        max_past: Duration | None = None,
    ) -> None:
        self.patterns = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        self.format = format
        self.time_unit = time_unit
        self.batch_lines = batch_lines
        self.limits_args = (max_payload, max_depth, max_readings, max_future, max_past)

    def limits(self) -> Limits:
        return Limits.of(*self.limits_args)

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
        try:
            self.limits()
        except ValueError as exc:
            out.append(str(exc))
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


def _csv_header(first: bytes) -> list[str]:
    """The column names of a CSV header line (a byte-order mark and blanks stripped)."""
    text = first.removeprefix(BOM).decode("utf-8", "replace")
    return [c.strip() for c in next(csv.reader(io.StringIO(text)), [])]


def _header_problem(path: str, header: list[str] | None) -> str | None:
    """Why a CSV header cannot be read: a column named twice (JSON refuses a key twice the
    same way; "the last column wins" would lose data silently) or a byte-order mark that
    is not at the start of the file. None when it is fine (or the file is not CSV)."""
    if not header:
        return None
    seen: set[str] = set()
    for c in header:
        if "\ufeff" in c:
            return (
                f"the CSV header (line 1 of {path}) has a byte-order mark (U+FEFF) in column "
                f"{c!r}; one is allowed only at the start of the file"
            )
        if c in seen:
            return (
                f"the CSV header (line 1 of {path}) names column {c!r} twice; "
                "give every column its own name"
            )
        seen.add(c)
    return None


def _peek_columns(path: str, fmt: str) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return None
    if not first.strip():
        return None
    if fmt == "csv":
        return list(dict.fromkeys(_csv_header(first)))  # a column twice: every row is dead
    try:
        obj = orjson.loads(first.removeprefix(BOM))
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
        self.limits = spec.limits()
        self.f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.header: list[str] | None = None
        if self.fmt == "csv":
            first = self.f.readline(self.limits.max_bytes + 2)
            self.header = _csv_header(first)
            offset = max(offset, self.f.tell())
            line_no = max(line_no, 1)
        elif offset == 0 and self.f.read(3) == BOM:
            offset = 3  # the first line starts after the byte-order mark
        self.f.seek(offset)
        self.offset = offset
        self.line_no = line_no
        #: why every row of this file is a dead letter (a CSV header naming a column twice)
        self.header_problem = _header_problem(path, self.header)
        cols = self.header if self.header is not None else (_peek_columns(path, self.fmt) or [])
        found = tuple(dict.fromkeys(c for c in cols if c not in (ctx.key, ctx.time)))
        self.fields = ctx.fields if ctx.fields is not None else found
        # every declared field is checked, also those the flow does not use (not carried);
        # without fields=, the columns are not declared: text columns (a status, a site name)
        # beside the numbers are fine, and the fields the flow reads are checked
        checked = ctx.declared if ctx.declared is not None else ()
        schema = Schema(
            ctx.key,
            ctx.time,
            tuple(self.fields),
            {},
            {f: math.nan for f in (*self.fields, *checked)},  # missing or empty: "no value"
            spec.time_unit,
            tuple(self.header or ()),
            tuple(checked),
        )
        self.decoder = Decoder(self.fmt if self.fmt == "csv" else "json", schema, self.limits)

    def _read_line(self) -> tuple[bytes, int]:
        """The next line (b"" at the end of the file) and its size. A line over the limit
        is cut: its first max_payload + 2 bytes, and the whole line's size without its
        line end (more than the bytes returned); the rest of it is skipped."""
        cap = self.limits.max_bytes + 2
        line = self.f.readline(cap)
        self.bytes_read += len(line)
        if len(line) < cap or line.endswith(b"\n"):
            return line, len(line)
        size = len(line)
        while True:
            chunk = self.f.readline(1 << 20)
            self.bytes_read += len(chunk)
            size += len(chunk.rstrip(b"\r\n"))
            if not chunk or chunk.endswith(b"\n"):
                return line, size

    def next_batch(self) -> list[Item]:
        out = BatchBuilder(self.fields, self.ctx.step)
        received = now_ns()
        at_end = False
        for _ in range(self.spec.batch_lines):
            line, size = self._read_line()
            if not size:
                at_end = True
                break
            self.line_no += 1
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            where = f"{self.path}:{self.line_no}"
            if size > len(line):  # cut by _read_line: over the limit
                out.fail(
                    where,
                    raw,
                    f"line of {size} bytes is over the {self.limits.max_bytes}-byte limit "
                    "(the source's max_payload)",
                    size,
                )
                continue
            if self.header_problem:
                out.fail(where, raw, self.header_problem)
                continue
            try:
                out.add_all(self.decoder.decode(raw, "", received))
            except PayloadError as exc:
                out.fail(where, raw, str(exc))
        self.offset = self.f.tell()
        items = out.items()
        if at_end and not items:
            raise StopIteration
        return items

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
    max_payload: int = 256 * 1024,
    max_depth: int = 8,
    max_readings: int = 10_000,
    max_future: Duration | None = "1h",
    max_past: Duration | None = None,
) -> FileSource:
    """Readings from CSV (header row) or JSON-lines files; a glob reads many files.

    ``time_unit`` says how numeric times are read: ``s``, ``ms``, ``us``, ``ns`` or ``auto``
    (by magnitude). ISO-8601 strings must carry an offset (``Z`` or ``+02:00``). A line
    over ``max_payload`` bytes, or with a time more than ``max_future`` ahead of the wall
    clock (or ``max_past`` behind it, if given), becomes a dead letter; ``None`` lifts a
    time bound.
    """
    return FileSource(
        paths, format=format, time_unit=time_unit, batch_lines=batch_lines,
        max_payload=max_payload, max_depth=max_depth, max_readings=max_readings,
        max_future=max_future, max_past=max_past,
    )  # fmt: skip


class _FileSinkPartition(SinkPartition):
    """Appends JSON lines to one file. An error writing it (a full disk) is raised as an
    ``OSError`` naming the file; after one, :meth:`close` does not raise again (the engine
    closes partitions while it unwinds from the first error)."""

    def __init__(self, path: Path, resume: int | None, time_format: str) -> None:
        self.path = path
        self.failed = False
        with self._named():
            self.f = open_output(path)  # the user's permissions: see edgeflow.file_modes
            self.f.truncate(0 if resume is None else resume)
            self.f.seek(0, os.SEEK_END)
        self.time_format = time_format

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.failed = True
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc

    def write(self, batches: list[RecordBatch]) -> None:
        data = json_lines(batches, self.time_format)
        if data:
            with self._named():
                self.f.write(data)
                self.f.flush()
            self.bytes_written += len(data)

    def snapshot(self) -> Any:
        with self._named():
            self.f.flush()
            os.fsync(self.f.fileno())
            return self.f.tell()

    def close(self) -> None:
        if self.failed:  # what was written stays; the next run truncates to its snapshot
            with contextlib.suppress(OSError):
                self.f.close()
            return
        with self._named():
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


class FileSink(SinkSpec):
    kind = "files"
    stateful = True

    def __init__(self, path: str | os.PathLike[str], time_format: str = "ns") -> None:
        self.path = Path(path)
        self.time_format = time_format
        self.opened = False  # whether this run opened the file (the engine opens it lazily)

    def problems(self) -> list[str]:
        if self.time_format not in TIME_FORMATS:
            return [f"time_format={self.time_format!r}: use one of {', '.join(TIME_FORMATS)}"]
        return []

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "time_format": self.time_format}

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        self.opened = True
        return _FileSinkPartition(self.path, resume, self.time_format)

    def report(self, ctx: SinkContext) -> list[str]:
        """At the end of a run: the engine opens a sink's file only for its first record
        or to resume a snapshot of it, so a file this run never opened is an earlier run's
        output; it is emptied, as a run that wrote records would have replaced it."""
        if not self.opened and self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(0)
                os.fsync(f.fileno())
        return []


def sink(path: str | os.PathLike[str], *, time_format: str = "ns") -> FileSink:
    """Append records to ``path`` as JSON lines (times as int ns, or ``time_format="iso"``)."""
    return FileSink(path, time_format)
