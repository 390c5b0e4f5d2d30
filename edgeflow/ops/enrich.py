"""Enrichment from a slowly changing table: join each reading by its key with a CSV or JSON
file of device metadata (site, line, limits, ...).

* :func:`load_table` reads the file: CSV with a header row, a JSON list of objects, or a
  JSON object of objects by key. A column is numeric when every non-empty value is a number
  (empty cells and JSON ``null`` are NaN); other columns are text.
* :class:`EnrichSpec` is the step's arguments; :class:`EnrichKernel` joins batches (numpy:
  one dictionary lookup per distinct key of a batch, then array takes).
* :class:`TableWatcher` keeps the table current: at most every ``check_every`` it compares
  the file's (mtime, size, inode) with the loaded one's (and, while the file is younger than
  two seconds, its bytes' hash), and loads a changed file on a background thread, so a batch
  never waits for a load. A new file that cannot be read or lacks a column the flow uses
  keeps the last good table; the error is reported once per broken version of the file.

Numeric columns become float64 fields of the readings; text columns are not carried (a
reading holds numbers only): map text to numbers in the file (e.g. a ``line_no`` column)
to use it downstream. Nothing is snapshotted: a resumed flow loads the file again.

This module is plain numpy (no engine import).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from edgeflow.batch import Batch
from edgeflow.ops.kernel import Emitted, StatelessKernel

#: the stream of readings whose key is not in the table (``missing="route"``)
UNMATCHED = "unmatched"
MISSING = ("route", "default")
#: a file younger than this is hashed at every check (its mtime may not move on a rewrite)
RACY_NS = 2_000_000_000


class TableError(Exception):
    """The table file cannot be used (unreadable, malformed, or missing a column)."""


@dataclass(frozen=True)
class Table:
    """A loaded table: numeric ``columns`` (one float64 array each, a row per key),
    ``text`` (names of the text columns), and each key's row in ``index``."""

    index: dict[str, int]
    columns: dict[str, npt.NDArray[np.float64]]
    text: tuple[str, ...]
    signature: tuple[int, int, int] = (0, 0, 0)
    digest: str = ""

    def __len__(self) -> int:
        return len(self.index)


def _number(v: Any) -> float | None:
    """A JSON/CSV cell as a float (None: not a number; NaN: empty)."""
    if v is None or v == "":
        return math.nan
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _rows(path: Path, data: bytes) -> tuple[list[tuple[str | None, Any]], list[str]]:
    """(key given by a JSON object of objects or None, row) for each row of the file, and
    the CSV header's column names."""
    if path.suffix.lower() == ".json":
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise TableError(f"not valid JSON ({exc})") from None
        if isinstance(doc, dict):
            return [(str(k), v) for k, v in doc.items()], []
        if isinstance(doc, list):
            return [(None, r) for r in doc], []
        raise TableError("a JSON table is a list of objects or an object of objects by key")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableError(f"not UTF-8 text ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise TableError("empty file: give a header row, e.g. device,site,low_limit,high_limit")
    rows: list[tuple[str | None, Any]] = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise TableError(
                f"line {reader.line_num}: {len(reader.fieldnames)} columns expected "
                f"({', '.join(reader.fieldnames)})"
            )
        rows.append((None, row))
    return rows, list(reader.fieldnames)


def parse_table(path: Path, data: bytes, key: str) -> Table:
    """The table in ``data`` (the bytes of ``path``; ``.json`` is JSON, anything else CSV)
    keyed by column ``key``. Raises :class:`TableError` saying what is wrong and where."""
    json = path.suffix.lower() == ".json"
    index: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    rows, header = _rows(path, data)
    for i, (given, row) in enumerate(rows):
        where = f"entry {i + 1}" if json else f"line {i + 2}"
        if not isinstance(row, dict):
            raise TableError(f"{where} is not an object; give one object per device")
        k = row.get(key, given)
        if k is None or k == "" or isinstance(k, (dict, list)):
            raise TableError(f"{where}: no value in the key column {key!r}")
        k = str(k)
        if k in index:
            raise TableError(f"{where}: key {k!r} appears twice; give each key one row")
        index[k] = len(records)
        records.append(row)
    if header and key not in header:
        raise TableError(f"no key column {key!r}; the columns are: {', '.join(header)}")
    names = [n for n in dict.fromkeys([*header, *(n for r in records for n in r)]) if n != key]
    columns: dict[str, npt.NDArray[np.float64]] = {}
    text: list[str] = []
    for name in names:
        nums = [_number(r.get(name)) for r in records]
        if any(v is None for v in nums):
            text.append(name)
        else:
            columns[name] = np.asarray(nums, np.float64)
    return Table(index, columns, tuple(text))


def file_signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_table(path: str | Path, key: str, fields: Sequence[str] = ()) -> Table:
    """Read and parse the table at ``path``; ``fields`` must be numeric columns of it.
    Raises :class:`TableError` (OSError included) with what is wrong."""
    p = Path(path)
    try:
        sig = file_signature(p)
        data = p.read_bytes()
    except OSError as exc:
        raise TableError(f"cannot read it ({exc.strerror or exc})") from None
    table = parse_table(p, data, key)
    check_fields(table, fields)
    return Table(table.index, table.columns, table.text, sig, hashlib.sha1(data).hexdigest())


def check_fields(table: Table, fields: Sequence[str]) -> None:
    for f in fields:
        if f in table.text:
            raise TableError(f"column {f!r} is not numeric (a value is text)")
        if f not in table.columns:
            have = ", ".join(table.columns) or "(no numeric column)"
            raise TableError(f"no column {f!r}; the numeric columns are: {have}")


@dataclass(frozen=True)
class EnrichSpec:
    """An enrich step: join readings with the table at ``path`` by column ``key``, adding
    ``fields`` (None: every numeric column); ``missing`` is ``"route"`` (readings of keys
    not in the table go to the ``unmatched`` stream) or ``"default"`` (they get
    ``defaults``, which must give every added field)."""

    path: str
    key: str
    fields: tuple[str, ...] | None = None
    missing: str = "route"
    defaults: tuple[tuple[str, float], ...] = ()

    def ports(self) -> tuple[str, ...]:
        return ("readings", UNMATCHED) if self.missing == "route" else ("readings",)

    def problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.key, str) or not self.key:
            out.append(f"key={self.key!r}: name the table's key column, e.g. key='device'")
        if self.missing not in MISSING:
            out.append(f"missing={self.missing!r}: use 'route' or 'default'")
        for n, v in self.defaults:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                out.append(f"defaults[{n!r}]={v!r} is not a number")
        if self.missing != "default" and self.defaults:
            out.append("defaults= is used only with missing='default'")
        return out


@dataclass
class TableWatcher:
    """The current table of a file, reloaded in the background when the file changes (see
    the module docstring). :meth:`current` never blocks on a load."""

    path: Path
    key: str
    fields: tuple[str, ...]
    check_every_ns: int
    table: Table
    next_check_ns: int = 0
    errors: list[str] = field(default_factory=list)
    _bad: tuple[tuple[int, int, int], str] | None = None
    _loading: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self, now_ns: int | None = None) -> Table:
        now = time.time_ns() if now_ns is None else now_ns
        if now >= self.next_check_ns:
            self.next_check_ns = now + self.check_every_ns
            with self._lock:
                if self._loading is None or not self._loading.is_alive():
                    self._loading = threading.Thread(
                        target=self._check, args=(now,), name="edgeflow-enrich-table", daemon=True
                    )
                    self._loading.start()
        return self.table

    def check_now(self) -> Table:
        """Check the file and load it if changed, in this thread (tests, start-up)."""
        self._check(time.time_ns())
        return self.table

    def _check(self, now: int) -> None:
        try:
            sig = file_signature(self.path)
        except OSError as exc:
            self._fail((0, 0, 0), f"cannot read it ({exc.strerror or exc})")
            return
        racy = now - sig[0] < RACY_NS
        if sig == self.table.signature and not racy:
            return
        if self._bad is not None and self._bad[0] == sig and not racy:
            return  # this broken version was reported already
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            self._fail(sig, f"cannot read it ({exc.strerror or exc})")
            return
        digest = hashlib.sha1(data).hexdigest()
        if digest == self.table.digest:
            self._bad = None
            return
        try:
            t = parse_table(self.path, data, self.key)
            check_fields(t, self.fields)
        except TableError as exc:
            self._fail(sig, str(exc), digest)
            return
        self._bad = None
        self.table = Table(t.index, t.columns, t.text, sig, digest)

    def _fail(self, sig: tuple[int, int, int], why: str, digest: str = "") -> None:
        key = (sig, why + digest)
        if self._bad is not None and self._bad[1] == key[1]:
            return
        self._bad = key
        with self._lock:
            self.errors.append(why)

    def take_errors(self) -> list[str]:
        """The errors found since the last call (each broken version of the file once)."""
        with self._lock:
            out = list(self.errors)
            self.errors.clear()
        return out


class EnrichKernel(StatelessKernel):
    """Joins batches with the watched table: outputs by port (``readings``, and
    ``unmatched`` with ``missing="route"``). Stateless (the table is the file's)."""

    inputs: tuple[str, ...] = ("readings",)
    #: a join keeps every field of the input
    reads: tuple[str, ...] | None = None

    def __init__(
        self, step: str, spec: EnrichSpec, fields: tuple[str, ...], watcher: TableWatcher
    ) -> None:
        self.step = step
        self.spec = spec
        self.fields = fields
        self.watcher = watcher
        self.outputs: tuple[str, ...] = spec.ports()
        self.defaults = np.asarray(
            [dict(spec.defaults).get(f, math.nan) for f in fields], np.float64
        )

    # -- the kernel protocol (edgeflow/ops/kernel.py): stateless ----------------------
    def problems(self) -> list[str]:
        return self.spec.problems()

    def process(self, state: None, batch: Batch, now_ns: int) -> Emitted:
        return list(self.step_batch(batch, now_ns))

    def step_batch(self, b: Batch, now_ns: int | None = None) -> list[tuple[str, Batch]]:
        table = self.watcher.current(now_ns)
        return join(b, table, self.fields, self.spec.missing, self.defaults)


def join(
    b: Batch,
    table: Table,
    fields: tuple[str, ...],
    missing: str,
    defaults: npt.NDArray[np.float64],
) -> list[tuple[str, Batch]]:
    """``b`` joined with ``table``: the readings with ``fields`` appended (non-empty ports
    only). Unmatched readings go to ``unmatched`` (``missing="route"``, unchanged) or get
    ``defaults``."""
    if not len(b):
        return []
    per_key = np.fromiter((table.index.get(k, -1) for k in b.keys), np.int64, len(b.keys))
    rows = per_key[b.key_idx]
    matched = rows >= 0
    out_fields = b.fields + fields
    if missing == "route" and not matched.all():
        idx = np.flatnonzero(matched)
        other = np.flatnonzero(~matched)
        out: list[tuple[str, Batch]] = []
        if len(idx):
            sub = Batch(b.fields, b.keys, b.key_idx[idx], b.t[idx], b.values.take(idx, axis=1))
            out.append(("readings", _append(sub, out_fields, table, fields, rows[idx], defaults)))
        unmatched = Batch(
            b.fields, b.keys, b.key_idx[other], b.t[other], b.values.take(other, axis=1)
        )
        out.append((UNMATCHED, unmatched))
        return out
    return [("readings", _append(b, out_fields, table, fields, rows, defaults))]


def _append(
    b: Batch,
    out_fields: tuple[str, ...],
    table: Table,
    fields: tuple[str, ...],
    rows: npt.NDArray[np.int64],
    defaults: npt.NDArray[np.float64],
) -> Batch:
    n, nb = len(b), len(b.fields)
    values = np.empty((len(out_fields), n), np.float64)
    values[:nb] = b.values
    hit = rows >= 0
    safe = np.where(hit, rows, 0)
    for j, f in enumerate(fields):
        col = table.columns[f]
        values[nb + j] = np.where(hit, col[safe], defaults[j]) if len(col) else defaults[j]
    return Batch(out_fields, b.keys, b.key_idx, b.t, values)
