"""The window kernel: tumbling, hopping, session and count windows over columnar batches.

What the user builds (:class:`~edgeflow.ops.window.WindowSpec`, its arguments and checks)
is :mod:`edgeflow.ops.window`; this module is the numpy step that runs it.

Pure numpy; no bytewax, no I/O. Use it as ``state = kernel.init()``, then
``out = kernel.step(state, batch, now_ns)`` for each batch, ``kernel.on_time(state, now_ns)``
when the wall clock moves (idle keys, processing time), and ``kernel.flush(state)`` at the
end of input. ``kernel.snapshot(state)`` / ``kernel.restore(blob)`` round-trip the state.

Semantics (event time, the default), per key:

* The watermark is the largest event time seen for the key minus the allowed lateness.
  A window ``[start, end)`` closes when the watermark reaches ``end``.
* Tumbling and hopping: a reading is *late* when every window it belongs to has
  already closed when it arrives; otherwise it counts in each of its windows that is
  still open. Session: a reading is late when its time is below the watermark. Late
  readings go to the ``late`` output, never silently dropped.
* Session windows group readings closer than ``gap``; ``window_start``/``window_end``
  are the first and last reading times. A session closes when the watermark passes
  ``last + gap``.
* Count windows cut every ``n`` readings of a key in arrival order (no lateness);
  ``window_start``/``window_end`` are the earliest and latest reading times in it.
* Idle: when a key has received nothing for ``idle`` wall-clock time, its open windows
  close (a quiet sensor still gets its last window out); later readings for those
  windows are late. Keys with nothing open and no reading for ``key_ttl`` are forgotten.
* Processing time: readings are stamped with the wall clock on arrival and windows
  close when the wall clock passes their end.

Results are identical however the input is cut into batches: the watermark before
each reading is computed per reading (a per-key running maximum), exactly as if the
readings were processed one at a time.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgeflow.batch import F64, I32, I64, Batch, RecordBatch, stable_argsort
from edgeflow.ops import agg as aggmod
from edgeflow.ops.kernel import Emitted, Kernel

if TYPE_CHECKING:
    from edgeflow.ops.window import ResolvedWindow

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max


def _sat_sub(a: I64, b: int) -> I64:
    """a - b without wrapping below int64 min (min stays min: 'nothing seen yet')."""
    return np.where(a < I64_MIN + b, I64_MIN, a - b)


def _floor_div(a: I64, b: int) -> I64:
    return a // b


def group_exclusive_cummax(codes: I32, t: I64, init: I64) -> tuple[I64, I64]:
    """For each row, the max of ``init[code]`` and the ``t`` of earlier rows with its code.

    Returns (exclusive max per row, new max per code for the codes in ``init``).
    """
    n = t.shape[0]
    order = stable_argsort(codes, init.shape[0])
    c = codes[order]
    tt = t[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    gidx = np.cumsum(np.r_[False, c[1:] != c[:-1]])
    lo = int(tt.min())
    span = int(tt.max()) - lo + 1
    n_groups = starts.shape[0]
    if n_groups * span < 2**62:
        v = gidx.astype(np.int64) * span + (tt - lo)
        inc = np.maximum.accumulate(v) - gidx * span + lo
    else:  # time range too wide to pack: per group (rare: absurd timestamps)
        inc = np.empty(n, np.int64)
        bounds = np.r_[starts, n]
        for i in range(n_groups):
            inc[bounds[i] : bounds[i + 1]] = np.maximum.accumulate(tt[bounds[i] : bounds[i + 1]])
    excl = np.empty(n, np.int64)
    excl[1:] = inc[:-1]
    excl[starts] = I64_MIN
    excl = np.maximum(excl, init[c])
    out = np.empty(n, np.int64)
    out[order] = excl
    new_max = init.copy()
    ends = np.r_[starts[1:], n] - 1
    np.maximum.at(new_max, c[ends], inc[ends])
    return out, new_max


class WindowState:
    """Per-shard state: key table, per-key scalars, buffered readings of open windows."""

    def __init__(self, n_fields: int) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []
        self.max_t: I64 = np.empty(0, np.int64)
        self.floor: I64 = np.empty(0, np.int64)
        self.last_seen: I64 = np.empty(0, np.int64)
        self.seen: I64 = np.empty(0, np.int64)
        self.buf_code: I32 = np.empty(0, np.int32)
        self.buf_t: I64 = np.empty(0, np.int64)
        self.buf_k: I64 = np.empty(0, np.int64)
        self.buf_vals: F64 = np.empty((n_fields, 0), np.float64)
        self.last_expiry: int = 0
        # the last batch's key tuple and its codes: a source that keeps its key tuple
        # (simulators, a steady set of devices) is looked up once, not once per batch
        self._lut_keys: Sequence[str] | None = None
        self._lut: I32 = np.empty(0, np.int32)
        # readings appended since the buffer was last laid out in one piece: appending
        # is O(batch), not a copy of everything buffered; :meth:`consolidate` joins them
        self._pending: list[tuple[I32, I64, I64, F64]] = []
        self._n_pending = 0
        # each key's smallest buffered window index (I64_MAX: none), or None when not
        # known: tells in O(keys) whether a window can close without reading the buffer
        self._kmin_key: I64 | None = None

    def lookup(self, names: Sequence[str]) -> I32:
        """Local codes for key names, adding unseen keys."""
        if names is self._lut_keys:
            return self._lut
        codes = self.codes
        got: list[int | None] = list(map(codes.get, names))  # no Python loop for known keys
        added = 0
        if None in got:
            for i, code in enumerate(got):
                if code is None:
                    name = names[i]
                    code = codes.get(name)
                    if code is None:
                        code = codes[name] = len(self.names)
                        self.names.append(name)
                        added += 1
                    got[i] = code
        out = np.array(got, np.int32) if got else np.empty(0, np.int32)
        if added:
            self._kmin_key = None
            self.max_t = np.r_[self.max_t, np.full(added, I64_MIN, np.int64)]
            self.floor = np.r_[self.floor, np.full(added, I64_MIN, np.int64)]
            self.last_seen = np.r_[self.last_seen, np.zeros(added, np.int64)]
            self.seen = np.r_[self.seen, np.zeros(added, np.int64)]
        if isinstance(names, tuple):  # immutable: the same object means the same keys
            self._lut_keys, self._lut = names, out
        return out

    def forget_lookup(self) -> None:
        """Key codes changed (keys expired): the cached lookup no longer holds."""
        self._lut_keys, self._lut = None, np.empty(0, np.int32)

    def persistent(self) -> dict[str, Any]:
        """The state a snapshot keeps (buffer in one piece; no caches)."""
        self.consolidate()
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def buffered(self) -> int:
        return int(self.buf_t.shape[0]) + self._n_pending

    def append(self, codes: I32, t: I64, k: I64, vals: F64) -> None:
        """Buffer readings (arrays the state may keep: not shared with a batch)."""
        if not len(t):
            return
        self._pending.append((codes, t, k, vals))
        self._n_pending += len(t)
        if self._kmin_key is not None:
            np.minimum.at(self._kmin_key, codes, k)

    def consolidate(self) -> None:
        """Lay the buffer out in one piece (the readings in arrival order)."""
        if not self._pending:
            return
        parts = self._pending
        if self.buf_t.shape[0]:
            parts = [(self.buf_code, self.buf_t, self.buf_k, self.buf_vals), *parts]
        if len(parts) == 1:
            self.buf_code, self.buf_t, self.buf_k, self.buf_vals = parts[0]
        else:
            self.buf_code = np.concatenate([p[0] for p in parts])
            self.buf_t = np.concatenate([p[1] for p in parts])
            self.buf_k = np.concatenate([p[2] for p in parts])
            self.buf_vals = np.concatenate([p[3] for p in parts], axis=1)
        self._pending, self._n_pending = [], 0

    def changed(self) -> None:
        """The buffer or the key codes changed other than by :meth:`append`."""
        self._kmin_key = None

    def kmin_per_key(self) -> I64:
        """Each key's smallest buffered window index (I64_MAX for keys with none)."""
        if self._kmin_key is None:
            self.consolidate()
            kmin = np.full(len(self.names), I64_MAX, np.int64)
            np.minimum.at(kmin, self.buf_code, self.buf_k)
            self._kmin_key = kmin
        return self._kmin_key


@dataclass
class StepOutput:
    """What one kernel call produced: closed windows and late readings (either may be None)."""

    windows: RecordBatch | None = None
    late: RecordBatch | None = None


class WindowKernel(Kernel[WindowState]):
    """A window step: one window spec, several aggregations, over the given fields."""

    inputs: tuple[str, ...] = ("readings",)
    outputs: tuple[str, ...] = ("windows", "late")

    def __init__(
        self,
        step: str,
        spec: ResolvedWindow,
        aggs: Sequence[aggmod.Agg],
        fields: Sequence[str],
        *,
        lateness_ns: int = 0,
        idle_ns: int | None = None,
        key_ttl_ns: int | None = 3600 * 10**9,
    ) -> None:
        self.step = step
        self.spec = spec
        self.aggs = list(aggs)
        self.fields = tuple(fields)
        self.reads: tuple[str, ...] | None = self.fields
        self.processing = spec.time == "processing"
        self.lateness = 0 if self.processing else lateness_ns
        self.idle = idle_ns
        self.key_ttl = key_ttl_ns
        # only first/last (and mergeable's first/last) read the order within a window
        self._time_ordered = any(a.func in ("first", "last", "mergeable") for a in self.aggs)
        # mergeable summaries read the readings' times (first_t/last_t); others never do
        self._needs_t = any(a.func == "mergeable" for a in self.aggs)

    # -- the kernel protocol (edgeflow/ops/kernel.py) ------------------------------------
    def problems(self) -> list[str]:
        """The aggregations' argument problems (the window itself is already resolved)."""
        return [m for a in self.aggs for m in a.problems()]

    def process(self, state: WindowState, batch: Batch, now_ns: int) -> Emitted:
        return _emitted(self.step_batch(state, batch, now_ns))

    def finish(self, state: WindowState) -> Emitted:
        return _emitted(self.flush(state))

    # -- state ---------------------------------------------------------------------------
    def init(self) -> WindowState:
        return WindowState(len(self.fields))

    def snapshot(self, state: WindowState) -> bytes:
        return pickle.dumps(state.persistent(), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes, now_ns: int) -> WindowState:
        state = WindowState(len(self.fields))
        state.__dict__.update(pickle.loads(blob))
        # Idle time restarts on resume: downtime of the node is not silence of the sensor.
        state.last_seen = np.full_like(state.last_seen, now_ns)
        return state

    # -- input ----------------------------------------------------------------------------
    def step_batch(self, state: WindowState, batch: Batch, now_ns: int) -> StepOutput:
        """Add a batch; return windows that closed and readings that were late."""
        if len(batch) == 0:
            return StepOutput()
        if batch.fields != self.fields:
            idx = [batch.fields.index(f) for f in self.fields]
            vals = batch.values[idx]
        else:
            vals = batch.values
        lut = state.lookup(batch.keys)
        codes = lut.take(batch.key_idx)
        t = np.full(len(batch), now_ns, np.int64) if self.processing else batch.t
        state.last_seen[lut] = now_ns
        if state.last_expiry == 0:
            state.last_expiry = now_ns
        kind = self.spec.kind
        late_rb = None
        if kind == "count":
            k = self._count_index(state, codes)
            self._append(state, batch, codes, t, k, vals)
        else:
            s = self.spec
            wm_key: I64 | None = None
            if bool(np.all(t[1:] >= t[:-1])):
                # In time order: a reading's in-batch predecessors never close its own
                # windows (they end after it), so the watermark from before the batch
                # decides exactly as the per-reading one would: one per key.
                wm_key = np.maximum(_sat_sub(state.max_t, self.lateness), state.floor)
                np.maximum.at(state.max_t, codes, t)
            else:
                excl, state.max_t = group_exclusive_cummax(codes, t, state.max_t)
                wm_rows = np.maximum(_sat_sub(excl, self.lateness), state.floor[codes])
            if kind == "session":
                wm_row = wm_key[codes] if wm_key is not None else wm_rows
                late = t < wm_row
                k = np.zeros(len(t), np.int64)
            elif wm_key is not None and s.size == s.slide:
                # tumbling in time order: late exactly when the reading's window starts
                # before the key's first open one (k_open > k), and then k is its window
                open_start = self._first_open_k(wm_key) * s.slide + s.offset
                late = t < open_start.take(codes)
                k = _floor_div(t - s.offset if s.offset else t, s.slide)
            else:
                kmax = _floor_div(t - s.offset, s.slide)
                kmin = _floor_div(t - s.offset - s.size, s.slide) + 1
                if wm_key is not None:
                    k_open = self._first_open_k(wm_key).take(codes)
                else:
                    k_open = self._first_open_k(wm_rows)
                k = np.maximum(kmin, k_open)
                late = k > kmax
            if late.any():
                late_wm = wm_key[codes[late]] if wm_key is not None else wm_rows[late]
                late_rb = self._late_records(state, codes[late], t[late], vals[:, late], late_wm)
                keep = np.flatnonzero(~late)
                codes, t, k = codes.take(keep), t.take(keep), k.take(keep)
                vals = vals.take(keep, axis=1)
            self._append(state, batch, codes, t, k, vals)
        windows = self._close(state, self._watermarks(state, now_ns))
        return StepOutput(windows, late_rb)

    def on_time(self, state: WindowState, now_ns: int) -> StepOutput:
        """Wall clock moved: close processing-time windows and idle keys; expire old keys."""
        state.consolidate()
        parts: list[RecordBatch | None] = []
        if self.processing:
            parts.append(self._close(state, self._watermarks(state, now_ns)))
        if self.idle is not None and state.buffered():
            idle_keys = state.last_seen + self.idle <= now_ns
            if idle_keys.any():
                parts.append(self._flush_keys(state, idle_keys))
        if self.key_ttl is not None and now_ns - state.last_expiry >= min(self.key_ttl, 60 * 10**9):
            state.last_expiry = now_ns
            self._expire(state, now_ns)
        return StepOutput(_concat_records([p for p in parts if p is not None]))

    def flush(self, state: WindowState) -> StepOutput:
        """End of input: close every open window."""
        state.consolidate()
        return StepOutput(self._flush_keys(state, np.ones(len(state.names), bool)))

    def next_wakeup(self, state: WindowState) -> int | None:
        """Wall-clock ns at which :meth:`on_time` has work, or None.

        O(keys), not O(buffered readings): the engine asks after every batch."""
        times: list[int] = []
        if state.buffered() and (self.idle is not None or self.processing):
            kmin = state.kmin_per_key()
            holding = kmin < I64_MAX  # keys with buffered readings
            if self.idle is not None:
                times.append(int(state.last_seen[holding].min()) + self.idle)
            if self.processing:
                if self.spec.kind in ("tumbling", "hopping"):
                    times.append(int(self._window_end(kmin[holding].min(), None)))
                else:
                    state.consolidate()
                    times.append(int(state.buf_t.min()))
        if self.key_ttl is not None and state.names:
            times.append(state.last_expiry + min(self.key_ttl, 60 * 10**9))
        return min(times) if times else None

    # -- internals ---------------------------------------------------------------------------
    def _window_end(self, k: Any, t: Any) -> Any:
        if self.spec.kind in ("tumbling", "hopping"):
            return k * self.spec.slide + self.spec.offset + self.spec.size
        return t

    def _first_open_k(self, wm: I64) -> I64:
        """Smallest window index whose end is after the watermark."""
        s = self.spec
        base = np.where(wm == I64_MIN, I64_MIN // 2, wm)
        return _floor_div(base - s.offset - s.size, s.slide) + 1

    def newest_watermark(self, state: WindowState, now_ns: int) -> int | None:
        """The most advanced key's watermark (event time ns), or None before any reading."""
        if not len(state.names):
            return None
        wm = self._watermarks(state, now_ns)
        top = int(wm.max())
        return None if top <= I64_MIN // 2 else top

    def _watermarks(self, state: WindowState, now_ns: int) -> I64:
        if self.processing:
            return np.full(len(state.names), now_ns, np.int64)
        return np.maximum(_sat_sub(state.max_t, self.lateness), state.floor)

    def _count_index(self, state: WindowState, codes: I32) -> I64:
        order = stable_argsort(codes, len(state.names))
        c = codes[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
        pos = np.empty(len(c), np.int64)
        pos[order] = state.seen[c] + rank
        np.add.at(state.seen, c[starts], np.diff(np.r_[starts, len(c)]))
        return pos // self.spec.n

    def _append(
        self, state: WindowState, batch: Batch, codes: I32, t: I64, k: I64, vals: F64
    ) -> None:
        """Buffer the rows; arrays still shared with the batch are copied."""
        state.append(
            codes,
            t.copy() if t is batch.t else t,
            k,
            vals.copy() if vals is batch.values else vals,
        )

    def _clear(self, state: WindowState) -> None:
        state.buf_code = np.empty(0, np.int32)
        state.buf_t = np.empty(0, np.int64)
        state.buf_k = np.empty(0, np.int64)
        state.buf_vals = np.empty((len(self.fields), 0), np.float64)
        state.changed()

    def _take(self, state: WindowState, keep: npt.NDArray[np.bool_]) -> None:
        """Keep only the buffered rows in the mask ``keep`` (in their order)."""
        state.changed()
        rows = np.flatnonzero(keep)  # then take(): much faster than boolean indexing
        state.buf_code = state.buf_code.take(rows)
        state.buf_t = state.buf_t.take(rows)
        state.buf_k = state.buf_k.take(rows)
        state.buf_vals = state.buf_vals.take(rows, axis=1)

    def _close(self, state: WindowState, wm: I64, *, flush: bool = False) -> RecordBatch | None:
        """Emit every window whose end the per-key watermark ``wm`` has reached."""
        if not state.buffered():
            return None
        kind = self.spec.kind
        if kind == "count":
            state.consolidate()
            return self._close_count(state, flush)
        if kind == "session":
            state.consolidate()
            return self._close_session(state, wm)
        s = self.spec
        kc_key = self._first_open_k(wm) - 1  # each key's last closed window index
        if not bool(np.any(state.kmin_per_key() <= kc_key)):
            return None  # no key has a buffered reading in a closed window
        state.consolidate()
        kc = kc_key.take(state.buf_code)
        if s.slide == s.size:  # tumbling: one window per reading
            emit = state.buf_k <= kc
            n_emit = int(np.count_nonzero(emit))
            if n_emit == 0:
                return None
            if n_emit == state.buffered():  # everything buffered closes: no copies
                out = (state.buf_code, state.buf_k, state.buf_t, state.buf_vals)
                self._clear(state)
            elif bool(emit[:n_emit].all()):  # the oldest readings (in order): slices
                out = (
                    state.buf_code[:n_emit],
                    state.buf_k[:n_emit],
                    state.buf_t[:n_emit],
                    state.buf_vals[:, :n_emit],
                )
                state.buf_code = state.buf_code[n_emit:]
                state.buf_t = state.buf_t[n_emit:]
                state.buf_k = state.buf_k[n_emit:]
                state.buf_vals = state.buf_vals[:, n_emit:]
                state.changed()
            else:
                emitted = np.flatnonzero(emit)
                out = (
                    state.buf_code.take(emitted),
                    state.buf_k.take(emitted),
                    state.buf_t.take(emitted),
                    state.buf_vals.take(emitted, axis=1),
                )
                self._take(state, ~emit)
            return self._records(state, *out, None, None)
        kmax = _floor_div(state.buf_t - s.offset, s.slide)
        upto = np.minimum(kmax, kc)
        per_row = np.maximum(upto - state.buf_k + 1, 0)  # windows each row closes in
        total = int(per_row.sum())
        if total == 0:
            return None
        rows = np.repeat(np.arange(len(per_row)), per_row)
        first = np.repeat(np.cumsum(per_row) - per_row, per_row)
        kk = state.buf_k[rows] + (np.arange(total) - first)
        codes = state.buf_code[rows]
        t = state.buf_t[rows]
        vals = state.buf_vals[:, rows]
        done = kmax <= kc
        state.changed()
        if done.any():
            state.buf_k = np.where(done, state.buf_k, np.maximum(state.buf_k, kc + 1))
            self._take(state, ~done)
        else:
            state.buf_k = np.maximum(state.buf_k, kc + 1)
        return self._records(state, codes, kk, t, vals, None, None)

    def _close_session(self, state: WindowState, wm: I64) -> RecordBatch | None:
        order = np.lexsort((state.buf_t, state.buf_code))
        c = state.buf_code[order]
        t = state.buf_t[order]
        brk = np.r_[True, (c[1:] != c[:-1]) | (t[1:] - t[:-1] >= self.spec.gap)]
        sid = np.cumsum(brk) - 1
        starts = np.flatnonzero(brk)
        ends = np.r_[starts[1:], len(t)] - 1
        last_t = t[ends]
        key_wm = wm[c[ends]]
        closable = (key_wm != I64_MIN) & (
            last_t <= np.where(key_wm == I64_MIN, 0, key_wm) - self.spec.gap
        )
        if not closable.any():
            return None
        row_close = closable[sid]
        sel = order[row_close]
        out_c, out_t = c[row_close], t[row_close]
        out_sid = sid[row_close]
        out_vals = state.buf_vals[:, sel]
        keep = np.ones(state.buffered(), bool)
        keep[sel] = False
        self._take(state, keep)
        first_t = t[starts][out_sid]
        last = last_t[out_sid]
        return self._records(state, out_c, out_sid, out_t, out_vals, first_t, last, presorted=True)

    def _close_count(self, state: WindowState, flush: bool) -> RecordBatch | None:
        n = self.spec.n
        if flush:
            closable = np.ones(state.buffered(), bool)
        else:
            complete = state.seen[state.buf_code] // n
            closable = state.buf_k < complete
        if not closable.any():
            return None
        c, k, t = state.buf_code[closable], state.buf_k[closable], state.buf_t[closable]
        vals = state.buf_vals[:, closable]
        self._take(state, ~closable)
        return self._records(state, c, k, t, vals, None, None, seq=True)

    def _records(
        self,
        state: WindowState,
        codes: I32,
        k: I64,
        t: I64,
        vals: F64,
        start: I64 | None,
        end: I64 | None,
        *,
        presorted: bool = False,
        seq: bool = False,
    ) -> RecordBatch:
        """Group rows by (key, window) and aggregate."""
        if presorted:  # sessions: rows come grouped by (key, session) in time order
            order: npt.NDArray[np.intp] | None = None
            brk = np.r_[True, (codes[1:] != codes[:-1]) | (k[1:] != k[:-1])]
            heads = np.flatnonzero(brk)
            counts = np.diff(np.r_[heads, len(t)])
            g_code, g_k = codes[heads], k[heads]
        else:
            order, counts, g_code, g_k = _group(codes, k, len(state.names))
            if self._time_ordered or seq:
                order = _by_time_within_groups(order, counts, t)
            heads = np.cumsum(counts) - counts
        n_groups = len(counts)
        cols: dict[str, Any] = {}
        names = state.names
        cols["key"] = [names[i] for i in g_code.tolist()]
        if seq:  # count windows: span of the readings
            t_s = t[order] if order is not None else t
            cols["window_start"] = np.minimum.reduceat(t_s, heads)
            cols["window_end"] = np.maximum.reduceat(t_s, heads)
        elif start is None or end is None:  # tumbling / hopping: from the window index
            cols["window_start"] = g_k * self.spec.slide + self.spec.offset
            cols["window_end"] = cols["window_start"] + self.spec.size
        else:
            first = heads if order is None else order[heads]
            cols["window_start"] = start[first]
            cols["window_end"] = end[first]
        if seq:
            cols["window_seq"] = g_k
        grouped = vals if order is None else vals.take(order, axis=1)
        grouped_t = None
        if self._needs_t:
            grouped_t = t if order is None else t.take(order)
        cols.update(aggmod.compute_groups(self.aggs, self.fields, counts, grouped, grouped_t))
        ids = ("key", "window_seq") if seq else ("key", "window_start")
        return RecordBatch("window", self.step, cols, n_groups, ids)

    def _late_records(
        self, state: WindowState, codes: I32, t: I64, vals: F64, wm: I64
    ) -> RecordBatch:
        cols: dict[str, Any] = {"key": [state.names[i] for i in codes.tolist()], "t": t}
        for j, f in enumerate(self.fields):
            cols[f] = vals[j]
        cols["watermark"] = wm
        cols["reason"] = ["window closed"] * len(t)
        return RecordBatch("late", self.step, cols, len(t), ("key", "t"))

    def _flush_keys(self, state: WindowState, which: npt.NDArray[np.bool_]) -> RecordBatch | None:
        """Close every open window of the keys in ``which`` (a mask over key codes)."""
        state.consolidate()
        if not state.buffered():
            return None
        rows = which[state.buf_code]
        if not rows.any():
            return None
        kind = self.spec.kind
        if kind == "count":
            out = self._split_close(state, rows, lambda: self._close_count(state, True))
            # the next reading of these keys starts a new count window
            n = self.spec.n
            state.seen = np.where(which, -(-state.seen // n) * n, state.seen)
            return out
        wm = np.where(which, I64_MAX // 2, I64_MIN)
        if kind == "session":
            max_t = np.full(len(state.names), I64_MIN, np.int64)
            np.maximum.at(max_t, state.buf_code[rows], state.buf_t[rows])
            out = self._close_session(state, wm)
            new_floor = np.where(max_t == I64_MIN, I64_MIN, max_t + self.spec.gap)
        else:
            s = self.spec
            kmax = np.full(len(state.names), I64_MIN, np.int64)
            np.maximum.at(
                kmax, state.buf_code[rows], _floor_div(state.buf_t[rows] - s.offset, s.slide)
            )
            out = self._close(state, wm)
            new_floor = np.where(kmax == I64_MIN, I64_MIN, kmax * s.slide + s.offset + s.size)
        state.floor = np.maximum(state.floor, np.where(which, new_floor, I64_MIN))
        return out

    def _split_close(
        self, state: WindowState, rows: npt.NDArray[np.bool_], fn: Any
    ) -> RecordBatch | None:
        """Run ``fn`` on only the buffered ``rows``, keeping the others buffered."""
        rest = (
            state.buf_code[~rows],
            state.buf_t[~rows],
            state.buf_k[~rows],
            state.buf_vals[:, ~rows],
        )
        self._take(state, rows)
        out: RecordBatch | None = fn()
        state.buf_code, state.buf_t, state.buf_k, state.buf_vals = rest
        state.changed()
        return out

    def _expire(self, state: WindowState, now_ns: int) -> None:
        assert self.key_ttl is not None
        active = np.zeros(len(state.names), bool)
        active[state.buf_code] = True
        active |= state.last_seen + self.key_ttl > now_ns
        if active.all():
            return
        remap = np.cumsum(active) - 1
        state.names = [n for n, a in zip(state.names, active.tolist(), strict=True) if a]
        state.codes = {n: i for i, n in enumerate(state.names)}
        state.forget_lookup()
        for attr in ("max_t", "floor", "last_seen", "seen"):
            setattr(state, attr, getattr(state, attr)[active])
        state.buf_code = remap[state.buf_code].astype(np.int32)
        state.changed()


def _emitted(res: StepOutput) -> Emitted:
    out: Emitted = []
    if res.windows is not None:
        out.append(("windows", res.windows))
    if res.late is not None:
        out.append(("late", res.late))
    return out


def _group(
    codes: I32, k: I64, n_keys: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], I32, I64]:
    """Rows grouped by (window, key), window-major (older windows first), arrival order
    within a group. Returns (row order, rows per group, each group's key code and window)."""
    kmin = int(k.min())
    span = int(k.max()) - kmin + 1
    cells = n_keys * span
    if cells <= max(1 << 16, 4 * len(k)):  # a dense (window, key) grid: counting sort
        g = (k - kmin) * n_keys + codes
        order = stable_argsort(g, cells)
        per_cell = np.bincount(g, minlength=cells)
        used = np.flatnonzero(per_cell)
        return order, per_cell[used], (used % n_keys).astype(np.int32), used // n_keys + kmin
    order = np.lexsort((codes, k))
    c_s, k_s = codes[order], k[order]
    heads = np.flatnonzero(np.r_[True, (c_s[1:] != c_s[:-1]) | (k_s[1:] != k_s[:-1])])
    return order, np.diff(np.r_[heads, len(k)]), c_s[heads], k_s[heads]


def _by_time_within_groups(
    order: npt.NDArray[np.intp], counts: npt.NDArray[np.intp], t: I64
) -> npt.NDArray[np.intp]:
    """``order`` with each group's rows by event time (ties: arrival order)."""
    t_s = t[order]
    heads = np.cumsum(counts) - counts
    new_group = np.zeros(len(t_s), bool)
    new_group[heads] = True
    if bool(np.all((t_s[1:] >= t_s[:-1]) | new_group[1:])):
        return order  # rows usually arrive in time order per key
    gid = np.repeat(np.arange(len(counts)), counts)
    return order[np.lexsort((t_s, gid))]


def _concat_records(parts: list[RecordBatch]) -> RecordBatch | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    cols: dict[str, Any] = {}
    for name in parts[0].columns:
        vs = [p.columns[name] for p in parts]
        cols[name] = (
            np.concatenate(vs) if isinstance(vs[0], np.ndarray) else [x for v in vs for x in v]
        )
    return RecordBatch(
        parts[0].kind, parts[0].step, cols, sum(p.n for p in parts), parts[0].id_columns
    )
