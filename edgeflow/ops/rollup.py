"""The rollup kernel: mergeable summaries combined per group and tumbling window, exactly.

Input: :class:`~edgeflow.batch.RecordBatch` items of summaries, e.g. a window step's
records with ``agg.mergeable(field)`` or the records of ``kafka.source(..., records=True)``,
with a ``key`` column (the node's device key; missing: ``""``), the time column
(:attr:`RollupSpec.time`, int ns) and, for each rolled-up field ``f``, the mergeable columns
``count_f, sum_f, sumsq_f, min_f, max_f, first_f, first_t_f, last_f, last_t_f, sketch_f``.
Optionally ``edgeflow_id`` (for de-duplication). Pure Python/numpy; no bytewax, no I/O.

How summaries combine (so a rollup of rollups equals one rollup):

* counts add; ``records`` counts the summaries merged, ``keys`` the distinct keys that
  contributed (``key_list``: the first 100 of them, sorted): a record's ``key``, or, for an
  input that is itself a rollup, the keys of its ``key_list`` (so a rollup of rollups
  counts the node keys too, exactly while each input rollup has at most 100 keys; beyond,
  only the listed ones);
* ``sum_f`` and ``sumsq_f`` are the correctly rounded sums of the inputs' sums (exact
  partial sums, ``math.fsum``): independent of arrival order and batching. A sum that is
  null or infinite in an input with values (the node's float sum overflowed) makes the
  rollup's sum null;
* ``min_f``/``max_f`` combine with min/max; ``first_f``/``first_t_f`` is the smallest
  ``(first_t, first)`` pair (ties in time: the smaller value), ``last_f``/``last_t_f`` the
  largest ``(last_t, last)`` pair (ties: the larger value), so the result does not depend on
  the order records arrive in;
* ``mean_f = sum_f / count_f``; ``std_f`` is the population standard deviation from the
  sums, ``sqrt((n * sumsq - sum**2)) / n`` computed exactly from the two floats (its relative
  error grows like 1e-16 * (mean / std)**2 when the spread is tiny against the mean);
* ``sketch_f`` is the exact merge of the inputs' sketches (:mod:`edgeflow.ops.sketch`), and
  ``p<q>_f`` (per :attr:`RollupSpec.quantiles`, named like ``agg.percentile``) is its
  quantile of rank ``floor(q / 100 * (count_f - 1))``, clamped to ``[min_f, max_f]``: within
  relative error ``alpha`` of that raw value. A window without values of ``f``: count 0,
  null for the others, an empty sketch.

Windows and time: a record at time ``t`` belongs to ``[t - t % every, ... + every)`` of its
group. Each group's watermark is the largest record time seen in that group minus
``lateness_ns`` (per record, as if records came one at a time, so batching never changes
the results): a node (group) whose records come late, after an uplink outage, does not make
another group's records late. A
window closes when the watermark reaches its end, when its group has received nothing for
``idle_ns`` of wall-clock time (then later records for it are late), or at :meth:`flush`.
Windows with fewer than ``min_keys`` distinct keys are not emitted. Closed windows are
freed with the ids they hold, so memory is bounded by the open windows.

De-duplication: a record whose ``edgeflow_id`` was already merged into its (still open)
window is skipped and counted (:meth:`RollupKernel.duplicates`); one that comes after its
window closed is late like any record (never merged twice). Records without an id (or with
a null one) are never skipped. The ids are freed with their window.

The ``late`` output carries, as they came (all input columns), the records whose window
had closed (``reason`` ``"window closed"``, ``error`` null) and the malformed records
(``reason`` ``"malformed"``, ``error`` a one-line reason: a missing or non-integer time, a
missing group, a missing mergeable column, a count that is not a whole number, a value that
is not a number, a broken sketch or one whose count differs from ``count_f``, a sketch of
another relative accuracy than the window's), plus the ``watermark`` they met. A malformed
record is never partly merged, and never stops the kernel.
"""

from __future__ import annotations

import math
import pickle
import zlib
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from edgeflow.batch import Batch, RecordBatch
from edgeflow.ops.agg import MERGEABLE_COLUMNS
from edgeflow.ops.kernel import Emitted, Kernel, records
from edgeflow.ops.sketch import QuantileSketch, merge_sides

I64_MIN = -(1 << 63)
#: the most keys ``key_list`` names
KEY_LIST_MAX = 100
#: sketch parts gathered before they are merged into one (bounds an open window's memory)
_MERGE_EVERY = 32


@dataclass(frozen=True)
class RollupSpec:
    """What a rollup step does (see the module docstring for the semantics)."""

    every_ns: int
    fields: tuple[str, ...] = ()
    group_by: str | None = None
    group: str = "all"
    group_sep: str | None = None
    time: str = "window_start"
    lateness_ns: int = 0
    idle_ns: int | None = None
    quantiles: tuple[float, ...] = (50.0, 95.0, 99.0)
    min_keys: int = 1

    def problems(self) -> list[str]:
        """One line per bad argument (empty when valid)."""
        out: list[str] = []

        def whole(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not whole(self.every_ns) or self.every_ns <= 0:
            out.append(f"rollup: every={self.every_ns!r} ns; give a positive duration, e.g. '1m'")
        if not isinstance(self.fields, tuple) or not all(
            isinstance(f, str) and f for f in self.fields
        ):
            out.append(f"rollup: fields={self.fields!r}; give field names, e.g. ['accel']")
        elif len(set(self.fields)) != len(self.fields):
            out.append(f"rollup: fields={list(self.fields)!r} names a field twice")
        if self.group_by is not None and (not isinstance(self.group_by, str) or not self.group_by):
            out.append(f"rollup: group_by={self.group_by!r}; give a record column, e.g. 'key'")
        if not isinstance(self.group, str) or not self.group:
            out.append(f"rollup: group={self.group!r}; give a group name, e.g. 'plant'")
        if self.group_sep is not None:
            if not isinstance(self.group_sep, str) or not self.group_sep:
                out.append(f"rollup: group_sep={self.group_sep!r}; give a separator, e.g. '/'")
            elif self.group_by is None:
                out.append("rollup: group_sep needs group_by (the column to split)")
        if not isinstance(self.time, str) or not self.time:
            out.append(f"rollup: time={self.time!r}; give the records' time column")
        if not whole(self.lateness_ns) or self.lateness_ns < 0:
            out.append(f"rollup: lateness={self.lateness_ns!r} ns; give 0 or a duration")
        if self.idle_ns is not None and (not whole(self.idle_ns) or self.idle_ns <= 0):
            out.append(f"rollup: idle={self.idle_ns!r} ns; give a positive duration or None")
        qs = self.quantiles
        if not isinstance(qs, tuple) or not all(
            isinstance(q, int | float) and not isinstance(q, bool) and 0 <= q <= 100 for q in qs
        ):
            out.append(f"rollup: quantiles={qs!r}; give percents in [0, 100], e.g. (50, 95, 99)")
        elif len({_label(q) for q in qs}) != len(qs):
            out.append(f"rollup: quantiles={list(qs)!r} names a percentile twice")
        if not whole(self.min_keys) or self.min_keys < 1:
            out.append(f"rollup: min_keys={self.min_keys!r}; give a whole number >= 1")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fields"], d["quantiles"] = list(self.fields), list(self.quantiles)
        return d

    def output_columns(self) -> list[str]:
        """The columns of a rollup record, in order."""
        cols = ["key", "window_start", "window_end", "records", "keys", "key_list"]
        for f in self.fields:
            cols += [f"{c}_{f}" for c in MERGEABLE_COLUMNS]
            cols += [f"mean_{f}", f"std_{f}", *(f"{_label(q)}_{f}" for q in self.quantiles)]
        return cols


def _label(q: float) -> str:
    """``p95``, ``p99_9``: like agg.percentile's column names."""
    return f"p{q:g}".replace(".", "_")


# -- groups ------------------------------------------------------------------------------
def _column(rb: RecordBatch, name: str) -> list[Any] | None:
    col = rb.columns.get(name)
    if col is None:
        return None
    return col.tolist() if isinstance(col, np.ndarray) else list(col)


def group_names(spec: RollupSpec, rb: RecordBatch) -> list[str | None]:
    """Each record's group (None: the record names none, it is malformed)."""
    if spec.group_by is None:
        return [spec.group] * rb.n
    col = _column(rb, spec.group_by)
    if col is None:
        return [None] * rb.n
    sep = spec.group_sep
    out: list[str | None] = []
    for v in col:
        if v is None or isinstance(v, dict | list) or (isinstance(v, float) and v != v):
            out.append(None)
            continue
        s = v if isinstance(v, str) else str(v)
        out.append(s.split(sep, 1)[0] if sep else s)
    return out


def split_by_group(spec: RollupSpec, rb: RecordBatch, shards: int) -> list[tuple[str, RecordBatch]]:
    """The records of ``rb`` by shard: ``(str(shard), part)`` with
    ``shard = zlib.crc32(group.encode()) % shards``, so every record of a group meets the
    same state. Records without a group go to the shard of ``""`` (where they become
    malformed records on the late port)."""
    if rb.n == 0:
        return []
    shards = max(int(shards), 1)
    if shards == 1:
        return [("0", rb)]
    memo: dict[str | None, int] = {}
    shard_of: list[int] = []
    for g in group_names(spec, rb):
        s = memo.get(g)
        if s is None:
            s = memo[g] = zlib.crc32((g or "").encode()) % shards
        shard_of.append(s)
    if len(memo) == 1 or len(set(memo.values())) == 1:
        return [(str(shard_of[0]), rb)]
    codes = np.asarray(shard_of)
    out: list[tuple[str, RecordBatch]] = []
    for s in sorted(set(memo.values())):
        rows = np.flatnonzero(codes == s)
        out.append((str(s), _take(rb, rows)))
    return out


def _take(rb: RecordBatch, rows: Any) -> RecordBatch:
    idx = rows.tolist() if isinstance(rows, np.ndarray) else list(rows)
    cols: dict[str, Any] = {}
    for name, col in rb.columns.items():
        if isinstance(col, np.ndarray):
            cols[name] = col.take(np.asarray(idx, np.intp)) if col.ndim == 1 else col
        else:
            lst = list(col)
            cols[name] = [lst[i] for i in idx]
    return RecordBatch(rb.kind, rb.step, cols, len(idx), rb.id_columns)


# -- per-window accumulation -------------------------------------------------------------
def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to a list of non-overlapping partial sums (Shewchuk): ``math.fsum`` of the
    list is then the correctly rounded sum of everything added."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


@dataclass
class _FieldAcc:
    """One field's summaries merged so far in one window."""

    count: int = 0
    sums: list[float] = field(default_factory=list)
    sumsq: list[float] = field(default_factory=list)
    overflow: bool = False  # an input's sum was null/inf while it had values
    lo: float = math.inf
    hi: float = -math.inf
    first: tuple[int, float] | None = None
    last: tuple[int, float] | None = None
    alpha: float | None = None
    zero: int = 0
    pos: list[tuple[int, Any]] = field(default_factory=list)
    neg: list[tuple[int, Any]] = field(default_factory=list)

    def add(self, v: _Parsed) -> None:
        count, s, ss, lo, hi, first, last, sk = v
        if self.alpha is None:
            self.alpha = sk.alpha
        self.zero += sk.zero
        if len(sk.pos):
            self.pos.append((sk.pos_offset, sk.pos))
            if len(self.pos) >= _MERGE_EVERY:
                self.pos = [merge_sides(self.pos)]
        if len(sk.neg):
            self.neg.append((sk.neg_offset, sk.neg))
            if len(self.neg) >= _MERGE_EVERY:
                self.neg = [merge_sides(self.neg)]
        if count == 0:
            return
        self.count += count
        if s is None or ss is None:
            self.overflow = True
        else:
            _add_exact(self.sums, s)
            _add_exact(self.sumsq, ss)
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        if self.first is None or first < self.first:
            self.first = first
        if self.last is None or last > self.last:
            self.last = last

    def sketch(self) -> QuantileSketch:
        return QuantileSketch(
            self.alpha if self.alpha is not None else 0.01,
            self.zero,
            merge_sides(self.pos),
            merge_sides(self.neg),
        )


#: a field's parsed summaries: count, sum, sumsq (None: overflowed), min, max,
#: (first_t, first), (last_t, last), sketch
_Parsed = tuple[
    int, float | None, float | None, float, float, tuple[int, float], tuple[int, float],
    QuantileSketch,
]  # fmt: skip


@dataclass
class _Window:
    group: str
    start: int
    records: int = 0
    keys: set[str] = field(default_factory=set)
    ids: set[str] = field(default_factory=set)
    fields: dict[str, _FieldAcc] = field(default_factory=dict)


@dataclass
class RollupState:
    """Per-shard state: open windows, each group's watermark, idle clocks, closed-window floors."""

    windows: dict[tuple[str, int], _Window] = field(default_factory=dict)
    #: per group: the largest record time seen (its watermark is this minus the lateness)
    max_t: dict[str, int] = field(default_factory=dict)
    #: per group: windows ending at or before this were closed by idle/flush
    floor: dict[str, int] = field(default_factory=dict)
    #: per group with open windows: wall-clock ns of its last record
    last_seen: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


class _MalformedError(Exception):
    """A record the kernel cannot merge; the message is the one-line reason."""


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _MalformedError(f"{what} is {v!r:.40}, not a finite number")
    return float(v)


def _time(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        raise _MalformedError(f"{what} is {v!r:.40}, not a time in int ns")
    if not I64_MIN <= v < 1 << 63:
        raise _MalformedError(f"{what} {v} is outside int64 ns")
    return v


def _sum(v: Any, what: str) -> float | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None  # the node's float sum overflowed (JSON has no inf): unknown
    return _number(v, what)


def _parse_field(f: str, row: list[Any]) -> _Parsed:
    """One record's mergeable columns of ``f`` (``row`` in MERGEABLE_COLUMNS order)."""
    count, s, ss, lo, hi, first, first_t, last, last_t, sk = row
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise _MalformedError(f"count_{f} is {count!r:.40}, not a whole number >= 0")
    try:
        sketch = QuantileSketch.from_json(sk)
    except ValueError as exc:
        raise _MalformedError(f"sketch_{f}: {exc}") from None
    if sketch.count != count:
        raise _MalformedError(f"sketch_{f} holds {sketch.count} values but count_{f} is {count}")
    if count == 0:
        return 0, None, None, math.inf, -math.inf, (0, 0.0), (0, 0.0), sketch
    lo_f, hi_f = _number(lo, f"min_{f}"), _number(hi, f"max_{f}")
    if lo_f > hi_f:
        raise _MalformedError(f"min_{f} {lo_f} is above max_{f} {hi_f}")
    return (
        count,
        _sum(s, f"sum_{f}"),
        _sum(ss, f"sumsq_{f}"),
        lo_f,
        hi_f,
        (_time(first_t, f"first_t_{f}"), _number(first, f"first_{f}")),
        (_time(last_t, f"last_t_{f}"), _number(last, f"last_{f}")),
        sketch,
    )


def _std(n: int, s: float, ss: float) -> float:
    """Population std from count, sum and sum of squares (exact arithmetic on the floats)."""
    var = (Fraction(ss) * n - Fraction(s) ** 2) / (n * n)
    return math.sqrt(float(var)) if var > 0 else 0.0


# -- the kernel --------------------------------------------------------------------------
class RollupKernel(Kernel[RollupState]):
    """Combines mergeable summaries per group and tumbling window (module docstring)."""

    inputs: tuple[str, ...] = ("records",)
    outputs: tuple[str, ...] = ("rollups", "late")

    def __init__(self, step: str, spec: RollupSpec) -> None:
        self.step = step
        self.spec = spec
        self.reads: tuple[str, ...] | None = None

    # -- the kernel protocol (edgeflow/ops/kernel.py) ------------------------------------
    def problems(self) -> list[str]:
        return self.spec.problems()

    def init(self) -> RollupState:
        return RollupState()

    def process(self, state: RollupState, batch: Batch | RecordBatch, now_ns: int) -> Emitted:
        if not isinstance(batch, RecordBatch):
            raise TypeError(f"rollup {self.step!r} reads summary records, not readings")
        rollups, late = self.step_records(state, batch, now_ns)
        return records("rollups", rollups) + records("late", late)

    def finish(self, state: RollupState) -> Emitted:
        return records("rollups", self.flush(state))

    def snapshot(self, state: RollupState) -> bytes:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes, now_ns: int) -> RollupState:
        state = pickle.loads(blob)
        if not isinstance(state, RollupState):
            raise ValueError(f"rollup {self.step!r}: the snapshot is not a rollup state")
        # idle time restarts on resume: downtime of this tier is not silence of the nodes
        state.last_seen = dict.fromkeys(state.last_seen, now_ns)
        return state

    # -- input ----------------------------------------------------------------------------
    def duplicates(self, state: RollupState) -> int:
        """Records skipped so far because their ``edgeflow_id`` was already merged."""
        return state.duplicates

    def step_records(
        self, state: RollupState, rb: RecordBatch, now_ns: int
    ) -> tuple[RecordBatch | None, RecordBatch | None]:
        """Merge a batch of summaries; return (rollups that closed, late/malformed records)."""
        if rb.n == 0:
            return None, None
        spec = self.spec
        n = rb.n
        late_rows: list[int] = []
        late_wm: list[int | None] = []
        late_reason: list[str] = []
        late_error: list[str | None] = []

        def reject(i: int, wm: int | None, reason: str, error: str | None) -> None:
            late_rows.append(i)
            late_wm.append(wm)
            late_reason.append(reason)
            late_error.append(error)

        groups = group_names(spec, rb)
        times = _column(rb, spec.time)
        keys = _column(rb, "key")
        key_lists = _column(rb, "key_list")  # inputs that are rollups: their keys
        ids = _column(rb, "edgeflow_id")
        per_field: list[list[list[Any]]] = []
        missing: str | None = None
        for f in spec.fields:
            cols = []
            for c in MERGEABLE_COLUMNS:
                col = _column(rb, f"{c}_{f}")
                if col is None:
                    missing = missing or f"no column {c}_{f} (a mergeable summary of {f!r})"
                    col = [None] * n
                cols.append(col)
            per_field.append(cols)
        if times is None:
            missing = f"no time column {spec.time!r}"
        elif spec.group_by is not None and spec.group_by not in rb.columns:
            missing = f"no group column {spec.group_by!r}"
        every, lateness = spec.every_ns, spec.lateness_ns
        for i in range(n):
            group = groups[i] if missing is None else None
            seen = I64_MIN if group is None else state.max_t.get(group, I64_MIN)
            wm = None if seen == I64_MIN else seen - lateness
            if missing is not None:
                reject(i, wm, "malformed", missing)
                continue
            assert times is not None
            try:
                t = _time(times[i], f"time {spec.time!r}")
            except _MalformedError as exc:
                reject(i, wm, "malformed", str(exc))
                continue
            if group is None:
                reject(i, wm, "malformed", f"no group in column {spec.group_by!r}")
                continue
            if t > seen:
                state.max_t[group] = t
            start = t - t % every
            end = start + every
            closed = state.floor.get(group, I64_MIN)
            if wm is not None:
                closed = max(closed, wm)
            if end <= closed:
                reject(i, wm, "window closed", None)
                continue
            win = state.windows.get((group, start))
            rid = ids[i] if ids is not None else None
            if rid is not None and win is not None and rid in win.ids:
                state.duplicates += 1
                continue
            try:
                parsed = [
                    _parse_field(f, [col[i] for col in cols])
                    for f, cols in zip(spec.fields, per_field, strict=True)
                ]
                if win is not None:
                    for f, p in zip(spec.fields, parsed, strict=True):
                        acc = win.fields.get(f)
                        if acc is not None and acc.alpha is not None and acc.alpha != p[7].alpha:
                            raise _MalformedError(
                                f"sketch_{f} has relative accuracy {p[7].alpha}, the window's "
                                f"sketches {acc.alpha}"
                            )
            except _MalformedError as exc:
                reject(i, wm, "malformed", str(exc))
                continue
            if win is None:
                win = state.windows[(group, start)] = _Window(group, start)
            win.records += 1
            listed = key_lists[i] if key_lists is not None else None
            if isinstance(listed, list) and listed:
                win.keys.update(k if isinstance(k, str) else str(k) for k in listed)
            else:
                k = keys[i] if keys is not None else None
                win.keys.add("" if k is None else k if isinstance(k, str) else str(k))
            if rid is not None:
                win.ids.add(rid if isinstance(rid, str) else str(rid))
            for f, p in zip(spec.fields, parsed, strict=True):
                acc = win.fields.get(f)
                if acc is None:
                    acc = win.fields[f] = _FieldAcc()
                acc.add(p)
            state.last_seen[group] = now_ns
        late = self._late(rb, late_rows, late_wm, late_reason, late_error) if late_rows else None
        if not state.max_t:
            return None, late
        marks = state.max_t
        return self._close(
            state, lambda w: w.start + every <= marks.get(w.group, I64_MIN) - lateness
        ), late

    def on_time(self, state: RollupState, now_ns: int) -> RecordBatch | None:
        """Wall clock moved: close the windows of groups idle for ``idle_ns``."""
        idle = self.spec.idle_ns
        if idle is None or not state.last_seen:
            return None
        quiet = {g for g, seen in state.last_seen.items() if seen + idle <= now_ns}
        if not quiet:
            return None
        return self._close(state, lambda w: w.group in quiet, set_floor=True)

    def next_wakeup(self, state: RollupState) -> int | None:
        """When :meth:`on_time` may next close a window (wall-clock ns), or None."""
        if self.spec.idle_ns is None or not state.last_seen:
            return None
        return min(state.last_seen.values()) + self.spec.idle_ns

    def flush(self, state: RollupState) -> RecordBatch | None:
        """End of input: close every open window."""
        return self._close(state, lambda w: True, set_floor=True)

    # -- output ---------------------------------------------------------------------------
    def _close(
        self, state: RollupState, closes: Any, *, set_floor: bool = False
    ) -> RecordBatch | None:
        done = [w for w in state.windows.values() if closes(w)]
        if not done:
            return None
        every = self.spec.every_ns
        for w in done:
            del state.windows[(w.group, w.start)]
            if set_floor:
                state.floor[w.group] = max(state.floor.get(w.group, I64_MIN), w.start + every)
        still_open = {w.group for w in state.windows.values()}
        for g in {w.group for w in done} - still_open:
            state.last_seen.pop(g, None)
        if state.floor:  # a group's watermark covers these now
            lateness = self.spec.lateness_ns
            state.floor = {
                g: e
                for g, e in state.floor.items()
                if e > state.max_t.get(g, I64_MIN + lateness) - lateness
            }
        done.sort(key=lambda w: (w.start, w.group))
        emit = [w for w in done if len(w.keys) >= self.spec.min_keys]
        return self._records(emit) if emit else None

    def _records(self, windows: list[_Window]) -> RecordBatch:
        spec = self.spec
        every = spec.every_ns
        cols: dict[str, list[Any]] = {c: [] for c in spec.output_columns()}
        for w in windows:
            cols["key"].append(w.group)
            cols["window_start"].append(w.start)
            cols["window_end"].append(w.start + every)
            cols["records"].append(w.records)
            cols["keys"].append(len(w.keys))
            cols["key_list"].append(sorted(w.keys)[:KEY_LIST_MAX])
            for f in spec.fields:
                self._field_columns(cols, f, w.fields.get(f) or _FieldAcc())
        return RecordBatch(
            "window", self.step, cols, len(windows), id_columns=("key", "window_start")
        )

    def _field_columns(self, cols: dict[str, list[Any]], f: str, acc: _FieldAcc) -> None:
        sketch = acc.sketch()
        n = acc.count
        cols[f"count_{f}"].append(n)
        cols[f"sketch_{f}"].append(sketch.to_json())
        if n == 0:
            for c in MERGEABLE_COLUMNS[1:-1]:
                cols[f"{c}_{f}"].append(None)
            for c in ("mean", "std", *(_label(q) for q in self.spec.quantiles)):
                cols[f"{c}_{f}"].append(None)
            return
        s = None if acc.overflow else math.fsum(acc.sums)
        ss = None if acc.overflow else math.fsum(acc.sumsq)
        assert acc.first is not None and acc.last is not None
        cols[f"sum_{f}"].append(s)
        cols[f"sumsq_{f}"].append(ss)
        cols[f"min_{f}"].append(acc.lo)
        cols[f"max_{f}"].append(acc.hi)
        cols[f"first_{f}"].append(acc.first[1])
        cols[f"first_t_{f}"].append(acc.first[0])
        cols[f"last_{f}"].append(acc.last[1])
        cols[f"last_t_{f}"].append(acc.last[0])
        ok = s is not None and ss is not None and math.isfinite(s) and math.isfinite(ss)
        cols[f"mean_{f}"].append(s / n if ok and s is not None else None)
        cols[f"std_{f}"].append(_std(n, s, ss) if ok and s is not None and ss is not None else None)
        for q in self.spec.quantiles:
            v = sketch.quantile(q / 100.0)
            cols[f"{_label(q)}_{f}"].append(min(max(v, acc.lo), acc.hi))

    def _late(
        self,
        rb: RecordBatch,
        rows: list[int],
        wm: list[int | None],
        reason: list[str],
        error: list[str | None],
    ) -> RecordBatch:
        part = _take(rb, rows) if len(rows) != rb.n else rb
        cols = dict(part.columns)
        cols["watermark"] = wm
        cols["reason"] = reason
        cols["error"] = error
        if "edgeflow_id" in cols:
            ids: tuple[str, ...] = ("edgeflow_id",)
        else:
            ids = tuple(c for c in ("key", self.spec.time) if c in cols)
        return RecordBatch("late", self.step, cols, len(rows), ids)
