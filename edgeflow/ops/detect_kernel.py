"""Anomaly detection over multi-key batches: one :class:`~edgeflow.ops.detect.Driver` state per
key; emits anomaly events (kind ``anomaly``).

Z-score, EWMA and CUSUM with a fixed threshold are scored across keys at once
(:mod:`edgeflow.ops.detect_bulk`); other detectors go through the Driver key by key. Both
give one-at-a-time semantics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import Batch, RecordBatch
from edgeflow.ops.detect import Decision, Detector, Driver, DriverOut
from edgeflow.ops.detect_bulk import run_bulk, supports
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
        return {"keys": {}, "in": 0, "anomalies": 0}

    def step_batch(self, state: dict[str, Any], batch: Batch) -> RecordBatch | None:
        if not len(batch):
            return None
        x_all = batch.values[batch.fields.index(self.field)]
        state["in"] += len(batch)
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
        states = []
        for key, _, _ in groups:
            st = state["keys"].get(key)
            if st is None:
                st = state["keys"][key] = self.driver.init()
            states.append(st)
        outs: list[DriverOut]
        xs = [x for _, _, x in groups]
        if self.vectorised:
            outs = run_bulk(self.driver, states, xs)
        else:
            outs = [self.driver.run(st, x) for st, x in zip(states, xs, strict=True)]
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
