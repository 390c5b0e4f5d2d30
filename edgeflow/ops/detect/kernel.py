"""The engine-facing detect step: :class:`DetectKernel` scores multi-key batches and emits
anomaly events (kind ``anomaly``).

Every detector with a stacked form (and ``auto()``, an ensemble of them) with a fixed
threshold keeps every key's state as rows of arrays and scores all keys of a batch at once
(:mod:`edgeflow.ops.detect.stacked`, live ticks by :meth:`Stacked.tick`), with no per-key
Python work; other set-ups go through the :class:`~edgeflow.ops.detect.driver.Driver` key by
key. Both give one-at-a-time semantics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import Batch, RecordBatch
from edgeflow.ops.detect.base import Detector
from edgeflow.ops.detect.decision import Decision
from edgeflow.ops.detect.driver import Driver, DriverOut
from edgeflow.ops.detect.ensemble import Ensemble, StackedEnsemble
from edgeflow.ops.detect.stacked import Events, Stacked, supports
from edgeflow.ops.kernel import RecordKernel
from edgeflow.ops.scipy_lazy import preload_scipy_signal

#: batches of up to this many readings per key, every key in every tick, are scored tick
#: by tick (cheaper than a 2-D pass for a few ticks, dearer for more)
MAX_TICKS = 8

EVENT_COLUMNS = ("score", "raw", "threshold", "expected_low", "expected_high")


FILTERING_DETECTORS = frozenset({"ewma", "cusum", "variance"})


def uses_filters(detector: Detector) -> bool:
    """Does ``detector`` (or a part of an ensemble) run first-order filters (``lfilter``)?"""
    if getattr(detector, "name", "") in FILTERING_DETECTORS:
        return True
    return any(uses_filters(p) for p in getattr(detector, "parts", None) or ())


def readings_by_key(key_idx: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(key code, row indices in arrival order) for each key in a batch."""
    order = np.argsort(key_idx, kind="stable")
    k = key_idx[order]
    bounds = np.flatnonzero(np.r_[True, k[1:] != k[:-1], True])
    return [(int(k[a]), order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class DetectKernel(RecordKernel):
    """A flow's detect step over multi-key batches (see the module docstring)."""

    port = "anomalies"

    inputs: tuple[str, ...] = ("readings",)
    outputs: tuple[str, ...] = ("anomalies",)

    def __init__(
        self,
        step: str,
        field: str,
        detector: Detector,
        decision: Decision,
        learn_anomalies: bool = False,
    ) -> None:
        self.step = step
        self.field = field
        self.reads: tuple[str, ...] | None = (field,)
        self.driver = Driver(detector, decision, learn_anomalies)
        self.vectorised = supports(detector, decision, learn_anomalies)
        if uses_filters(detector):
            # a flow step: load scipy.signal now, before readings flow, not in the middle of
            # a live run (about 1 s) the first time a pass is long enough to need it
            preload_scipy_signal()

    # -- the kernel protocol (edgeflow/ops/kernel.py) ------------------------------------
    def problems(self) -> list[str]:
        return [*self.driver.detector.problems(), *self.driver.decision.problems()]

    def init(self) -> dict[str, Any]:
        st: dict[str, Any] = {"keys": {}, "in": 0, "anomalies": 0}
        if self.vectorised:
            ens = isinstance(self.driver.detector, Ensemble)
            st["stacked"] = StackedEnsemble(self.driver) if ens else Stacked(self.driver)
        return st

    def step_batch(self, state: dict[str, Any], batch: Batch) -> RecordBatch | None:
        if not len(batch):
            return None
        state["in"] += len(batch)
        if self.vectorised:
            return self._stacked(state, batch)
        return self._per_key(state, batch)

    def _stacked(self, state: dict[str, Any], batch: Batch) -> RecordBatch | None:
        stacked: Stacked | StackedEnsemble = state["stacked"]
        x = batch.values[batch.fields.index(self.field)]
        t, codes = batch.t, batch.key_idx
        if not math.isfinite(float(x.sum())):  # (a finite sum: every value is finite)
            ok = np.isfinite(x)
            if not ok.all():
                x, t, codes = x[ok], t[ok], codes[ok]
                if not len(x):
                    return None
        lut = stacked.rows_of(batch.keys)
        n, nk = len(codes), len(batch.keys)
        one = stacked if isinstance(stacked, Stacked) and stacked.rows_in_order(lut) else None
        per = n // nk if nk else 0
        if (
            one is not None
            and 1 < per <= MAX_TICKS
            and n == per * nk
            and (codes.reshape(per, nk) == np.arange(nk)).all()
        ):
            # a few whole ticks (a source polled late): tick by tick is faster than a pass
            ticked = self._ticks(one, x, lut, nk, per)
            if ticked is not None:
                order = np.arange(n).reshape(per, nk).T.ravel()  # by key, then in time
                grid = (order, np.arange(nk) * per, codes[order])
                return self._records(state, stacked, ticked, lut, grid, x, t)
        if n == nk and (codes == self._every(n)).all():
            # a reading per key, keys in order (a live tick): the grid is the column itself
            if isinstance(stacked, Stacked) and stacked.rows_in_order(lut):
                found = stacked.tick(x)  # every key, in row order: the short path
                if found is not None:  # (the grid: row i is key row i, batch position i)
                    return self._records(state, stacked, found, lut, None, x, t)
            order = heads = np.arange(n)
            c, lens = codes, np.ones(n, np.int64)
            xmat = x[:, None]
        else:  # one grid row per key present, its points in arrival order
            order = np.argsort(codes, kind="stable")
            c = codes[order]
            heads = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
            lens = np.diff(np.r_[heads, len(c)])
            grid_of = np.repeat(np.arange(len(heads)), lens)
            col = np.arange(len(c)) - np.repeat(heads, lens)
            xmat = np.full((len(heads), int(lens.max())), np.nan)
            xmat[grid_of, col] = x[order]
        found = stacked.run(lut[c[heads]], xmat, lens)
        return self._records(state, stacked, found, lut, (order, heads, c), x, t)

    def _every(self, n: int) -> np.ndarray:
        """``np.arange(n)``, kept: a live tick's batch is checked against it every time."""
        every: np.ndarray | None = self.__dict__.get("_every_n")
        if every is None or len(every) != n:
            every = self.__dict__["_every_n"] = np.arange(n)
        return every

    @staticmethod
    def _ticks(
        stacked: Stacked, x: np.ndarray, lut: np.ndarray, nk: int, per: int
    ) -> Events | None:
        """``per`` ticks (reading j of key i at ``x[j * nk + i]``, keys in row order), one
        after another on the tick path. Events are (key row, tick). None: the first tick not
        taken, nothing done. (What the path does not take - another model, keys in warm-up -
        holds for every tick of a batch; the one-pass fallback for the rest is a safety net.)"""
        out, j = Events(), 0
        while j < per:
            found, took = stacked.tick(x[j * nk : (j + 1) * nk]), 1
            if found is None:
                if j == 0:
                    return None
                rest = np.ascontiguousarray(x[j * nk :].reshape(per - j, nk).T)
                found, took = stacked.run(lut, rest, np.full(nk, per - j, np.int64)), per - j
            for gi, ci, *cols in found.parts:
                out.add(gi, ci + j, *cols)
            j += took
        return out

    def _records(
        self,
        state: dict[str, Any],
        stacked: Stacked | StackedEnsemble,
        found: Events,
        lut: np.ndarray,
        grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        x: np.ndarray,
        t: np.ndarray,
    ) -> RecordBatch | None:
        """The anomaly records of the events ``found`` on the grid. ``grid`` is (order,
        heads, c): the batch positions sorted by key, where each grid row starts in that
        order, and the key codes in that order (see :meth:`_stacked`); None for a live
        tick, whose grid row i is batch position i and key row i."""
        if not found.parts:
            return None
        gi, ci, score, raw, low, high = found.arrays()
        if grid is None:
            src = key_rows = gi
        else:
            order, heads, c = grid
            src = order[heads[gi] + ci]  # batch positions of the events
            key_rows = lut[c[heads[gi]]]
        n = len(gi)
        state["anomalies"] += n
        names = stacked.names
        data: dict[str, Any] = {"key": [names[r] for r in key_rows.tolist()], "t": t[src]}
        data["field"] = [self.field] * n
        data["detector"] = [self.driver.detector.name] * n
        data["value"] = x[src]
        data["score"] = score
        data["raw"] = raw
        data["threshold"] = np.full(n, self.driver.decision.value)
        data["expected_low"] = low
        data["expected_high"] = high
        return RecordBatch("anomaly", self.step, data, n, ("key", "t", "field"))

    def _per_key(self, state: dict[str, Any], batch: Batch) -> RecordBatch | None:
        x_all = batch.values[batch.fields.index(self.field)]
        groups: list[tuple[str, np.ndarray, np.ndarray]] = []
        for code, rows in readings_by_key(batch.key_idx):
            x, t = x_all[rows], batch.t[rows]
            ok = np.isfinite(x)
            if not ok.all():
                x, t = x[ok], t[ok]
            if len(x):
                groups.append((batch.keys[code], t, x))
        if not groups:
            return None
        outs: list[DriverOut] = []
        for key, _, x in groups:
            st = state["keys"].get(key)
            if st is None:
                st = state["keys"][key] = self.driver.init()
            outs.append(self.driver.run(st, x))
        keys: list[str] = []
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "value", *EVENT_COLUMNS)}
        for (key, t, x), out in zip(groups, outs, strict=True):
            hit = np.flatnonzero(out.event)
            if not len(hit):
                continue
            keys.extend([key] * len(hit))
            cols["t"].append(t[hit])
            cols["value"].append(x[hit])
            for name, arr in zip(
                EVENT_COLUMNS, (out.score, out.raw, out.threshold, out.low, out.high), strict=True
            ):
                cols[name].append(arr[hit])
        n = len(keys)
        if not n:
            return None
        state["anomalies"] += n
        data: dict[str, Any] = {"key": keys, "t": np.concatenate(cols["t"])}
        data["field"] = [self.field] * n
        data["detector"] = [self.driver.detector.name] * n
        for name in ("value", *EVENT_COLUMNS):
            data[name] = np.concatenate(cols[name])
        return RecordBatch("anomaly", self.step, data, n, ("key", "t", "field"))

    def flush(self, state: dict[str, Any]) -> RecordBatch | None:
        return None  # detection emits as it goes; nothing is held back
