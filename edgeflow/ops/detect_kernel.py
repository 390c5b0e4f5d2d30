"""Anomaly detection over multi-key batches: one :class:`~edgeflow.ops.detect.Driver` state per
key; emits anomaly events (kind ``anomaly``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import Batch, RecordBatch
from edgeflow.ops.detect import Decision, Detector, Driver, DriverOut
from edgeflow.ops.downsample import _by_key


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

    def init(self) -> dict[str, Any]:
        return {"keys": {}, "in": 0, "anomalies": 0}

    def run_key(self, state: dict[str, Any], key: str, x: np.ndarray) -> DriverOut:
        st = state["keys"].get(key)
        if st is None:
            st = state["keys"][key] = self.driver.init()
        return self.driver.run(st, x)

    def step_batch(self, state: dict[str, Any], batch: Batch) -> RecordBatch | None:
        if not len(batch):
            return None
        x_all = batch.values[batch.fields.index(self.field)]
        state["in"] += len(batch)
        cols: dict[str, list[Any]] = {
            k: []
            for k in (
                "key",
                "t",
                "value",
                "score",
                "raw",
                "threshold",
                "expected_low",
                "expected_high",
            )
        }
        for code, rows in _by_key(batch.key_idx):
            x = x_all[rows]
            ok = np.isfinite(x)
            t = batch.t[rows]
            if not ok.all():
                x, t = x[ok], t[ok]
            if not len(x):
                continue
            out = self.run_key(state, batch.keys[code], x)
            hit = np.flatnonzero(out.event)
            if not len(hit):
                continue
            cols["key"].extend([batch.keys[code]] * len(hit))
            cols["t"].append(t[hit])
            cols["value"].append(x[hit])
            for name, arr in (
                ("score", out.score),
                ("raw", out.raw),
                ("threshold", out.threshold),
                ("expected_low", out.low),
                ("expected_high", out.high),
            ):
                cols[name].append(arr[hit])
        n = len(cols["key"])
        if not n:
            return None
        state["anomalies"] += n
        data: dict[str, Any] = {"key": cols["key"], "t": np.concatenate(cols["t"])}
        data["field"] = [self.field] * n
        data["detector"] = [self.driver.detector.name] * n
        for name in ("value", "score", "raw", "threshold", "expected_low", "expected_high"):
            data[name] = np.concatenate(cols[name])
        return RecordBatch("anomaly", self.step, data, n, ("key", "t", "field"))

    def flush(self, state: dict[str, Any]) -> RecordBatch | None:
        return None  # detection emits as it goes; nothing is held back
