"""Columnar micro-batches: the unit of data that moves through a flow.

A :class:`Batch` holds many readings at once: a dictionary-encoded key column
(``keys`` names, sorted, and ``key_idx`` integer codes; see :func:`intern_keys`), an int64 nanosecond time column ``t``, and one
float64 row per field in ``values`` (shape ``(n_fields, n)``). Operators work on the
whole arrays; no Python object is made per reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeflow.errors import BatchError

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]


def intern_keys(keys: Iterable[str]) -> tuple[tuple[str, ...], I32]:
    """Dictionary-encode keys: the distinct names, sorted, and each key's int32 code.

    Works on Python strings (a dict), never on a fixed-width numpy string array, so memory
    grows with the total length of the distinct keys, not with count x the longest key.
    """
    ids: dict[str, int] = {}
    setdefault = ids.setdefault
    first = np.fromiter((setdefault(k, len(ids)) for k in keys), np.int32)
    names = sorted(ids)
    if all(ids[n] == i for i, n in enumerate(names)):  # already in sorted order
        return tuple(names), first
    rank = np.empty(len(names), np.int32)
    rank[np.fromiter((ids[n] for n in names), np.int64, len(names))] = np.arange(
        len(names), dtype=np.int32
    )
    return tuple(names), rank[first]


@dataclass(frozen=True, eq=False)
class Batch:
    """Readings of one or more keys, column by column. Validated on construction."""

    fields: tuple[str, ...]
    keys: tuple[str, ...]
    key_idx: I32
    t: I64
    values: F64

    def __post_init__(self) -> None:
        n = self.t.shape[0] if self.t.ndim == 1 else -1
        if self.t.dtype != np.int64 or self.t.ndim != 1:
            raise BatchError(
                f"Batch.t must be a 1-D int64 array of ns, got {self.t.dtype} {self.t.shape}"
            )
        if self.key_idx.dtype != np.int32 or self.key_idx.shape != (n,):
            raise BatchError(
                f"Batch.key_idx must be int32 of length {n}, got {self.key_idx.dtype} {self.key_idx.shape}"
            )
        if self.values.dtype != np.float64 or self.values.shape != (len(self.fields), n):
            raise BatchError(
                f"Batch.values must be float64 of shape ({len(self.fields)}, {n}), "
                f"got {self.values.dtype} {self.values.shape}"
            )
        if n and len(self.keys) == 0:
            raise BatchError("Batch has readings but no key names")

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @staticmethod
    def empty(fields: Sequence[str]) -> Batch:
        return Batch(
            tuple(fields),
            (),
            np.empty(0, np.int32),
            np.empty(0, np.int64),
            np.empty((len(fields), 0), np.float64),
        )

    @staticmethod
    def from_columns(
        keys: Sequence[str],
        t: Sequence[int] | I64,
        columns: Mapping[str, Sequence[float] | F64],
    ) -> Batch:
        """Build a batch from a key per reading, times in ns and one sequence per field."""
        names, codes = intern_keys(str(k) for k in keys)
        fields = tuple(columns)
        n = len(codes)
        values = np.empty((len(fields), n), np.float64)
        for j, f in enumerate(fields):
            col = np.asarray(columns[f], dtype=np.float64)
            if col.shape != (n,):
                raise BatchError(f"column {f!r} has {col.shape[0]} values but there are {n} keys")
            values[j] = col
        return Batch(fields, names, codes, np.asarray(t, dtype=np.int64).reshape(-1), values)

    def column(self, name: str) -> F64:
        col: F64 = self.values[self.fields.index(name)]
        return col

    def select(self, rows: npt.NDArray[Any]) -> Batch:
        """The readings at ``rows`` (an index or boolean mask); key names are kept as they are."""
        return Batch(self.fields, self.keys, self.key_idx[rows], self.t[rows], self.values[:, rows])

    def key_array(self) -> npt.NDArray[np.object_]:
        """The key of every reading as an array of ``str`` objects (for tests and sinks, not
        hot paths; an object array, so one long key does not widen every element)."""
        names = np.empty(len(self.keys), object)
        names[:] = self.keys
        return names[self.key_idx] if len(self) else np.empty(0, object)


@dataclass(frozen=True, eq=False)
class RecordBatch:
    """Result records (window summaries, late readings, dead letters) column by column.

    ``kind`` names the record schema (``window``, ``late``, ``dead_letter``), ``step`` the
    step that produced them. ``columns`` maps column name to a list or 1-D array, all of
    length ``n``. Sinks turn them into rows with :meth:`rows`.
    """

    kind: str
    step: str
    columns: dict[str, Any]
    n: int
    id_columns: tuple[str, ...] = field(default=())

    def rows(self) -> list[dict[str, Any]]:
        cols = {
            k: (v.tolist() if isinstance(v, np.ndarray) else list(v))
            for k, v in self.columns.items()
        }
        names = list(cols)
        data = [cols[k] for k in names]
        out: list[dict[str, Any]] = []
        for i in range(self.n):
            row = {}
            for name, col in zip(names, data, strict=True):
                v = col[i]
                if isinstance(v, float) and v != v:
                    v = None  # NaN means "no value": JSON null
                row[name] = v
            out.append(row)
        return out

    def record_ids(self, flow: str) -> list[str]:
        """Deterministic ids (flow/step/<id columns>) so consumers can drop duplicates."""
        cols = [self.columns[c] for c in self.id_columns]
        lists = [c.tolist() if isinstance(c, np.ndarray) else list(c) for c in cols]
        return ["/".join([flow, self.step, *(str(c[i]) for c in lists)]) for i in range(self.n)]


def window_readings(rb: RecordBatch, time: str, fields: Sequence[str]) -> Batch:
    """Window summaries as readings: one per record, keyed like the record, at its ``time``
    column, with the given aggregation columns as fields (missing values are NaN)."""
    if rb.n == 0:
        return Batch.empty(fields)
    names, codes = intern_keys(str(k) for k in rb.columns["key"])
    values = np.empty((len(fields), rb.n), np.float64)
    for j, f in enumerate(fields):
        col = rb.columns[f]
        values[j] = np.asarray(
            [np.nan if v is None else v for v in col] if isinstance(col, list) else col,
            dtype=np.float64,
        )
    return Batch(tuple(fields), names, codes, np.asarray(rb.columns[time], dtype=np.int64), values)


def stable_argsort(values: npt.NDArray[np.integer[Any]], upper: int) -> npt.NDArray[np.intp]:
    """Stable argsort of non-negative ints below ``upper``; O(n) radix sort when they fit 16 bits."""
    if upper <= 1 << 16:
        return np.argsort(values.astype(np.uint16), kind="stable")
    return np.argsort(values, kind="stable")
