"""Anomaly detection over multi-key batches: one :class:`~edgeflow.ops.detect.Driver` state per
key; emits anomaly events (kind ``anomaly``).

Every built-in detector but ``limits`` (and ``auto()``, an ensemble of them) with a fixed
threshold keeps every key's state as rows of arrays and scores all keys of a batch at once
(:mod:`edgeflow.ops.detect_bulk`, :mod:`edgeflow.ops.detect_bulk_auto`), with no per-key
Python work; other set-ups go through the Driver key by key. Both give one-at-a-time
semantics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import Batch, RecordBatch
from edgeflow.ops.detect import Decision, Detector, Driver, DriverOut, Ensemble
from edgeflow.ops.detect_bulk import Events, Stacked, supports
from edgeflow.ops.detect_bulk_auto import StackedEnsemble
from edgeflow.ops.downsample import _by_key

EVENT_COLUMNS = ("score", "raw", "threshold", "expected_low", "expected_high")


class DetectKernel:
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
        self.driver = Driver(detector, decision, learn_anomalies)
        self.vectorised = supports(detector, decision, learn_anomalies)

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
        n = len(codes)
        if n == len(batch.keys) and (codes == np.arange(n)).all():
            # a reading per key, keys in order (a live tick): the grid is the column itself
            if isinstance(stacked, Stacked) and stacked.rows_in_order(lut):
                found = stacked.tick(x)  # every key, in row order: the short path
                if found is not None:
                    every = np.arange(n)
                    return self._records(state, stacked, found, lut, (every, every, codes), x, t)
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

    def _records(
        self,
        state: dict[str, Any],
        stacked: Stacked | StackedEnsemble,
        found: Events,
        lut: np.ndarray,
        grid: tuple[np.ndarray, np.ndarray, np.ndarray],
        x: np.ndarray,
        t: np.ndarray,
    ) -> RecordBatch | None:
        """The anomaly records of the events ``found`` on the grid. ``grid`` is (order,
        heads, c): the batch positions sorted by key, where each grid row starts in that
        order, and the key codes in that order (see :meth:`_stacked`)."""
        if not found.parts:
            return None
        order, heads, c = grid
        gi, ci, score, raw, low, high = found.arrays()
        src = order[heads[gi] + ci]  # batch positions of the events
        n = len(gi)
        state["anomalies"] += n
        names = stacked.names
        key_rows = lut[c[heads[gi]]]
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
        for code, rows in _by_key(batch.key_idx):
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
