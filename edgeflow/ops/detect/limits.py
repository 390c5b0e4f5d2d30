"""Fixed alarm limits: :class:`Limits` (reference only: it learns nothing, so it has no
stacked form) and the :func:`limits` constructor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg
from edgeflow.ops.detect.base import Detector, Scores, calibrate


class Limits(Detector):
    """Fixed alarm limits (clinical or engineering ranges): anomalous outside [low, high].

    ``raw`` is 0 inside the range and 1 + the distance outside it relative to the limit's
    size, so any value outside scores at least 0.999 (the default threshold). It learns
    nothing, so it needs no warm-up; use it for rules the physics or the standard gives."""

    name = "limits"
    level = 1.0
    warmup = 0
    ARGS = (Arg("low", "number", optional=True), Arg("high", "number", optional=True))

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high
        if low is None and high is None:
            raise ValueError("detect.limits: give low=, high= or both")
        if not self.problems() and low is not None and high is not None and not low < high:
            raise ValueError(f"detect.limits: low={low} must be below high={high}")

    def init(self) -> dict[str, Any]:
        return {"n": 0}

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        lo = -np.inf if self.low is None else self.low
        hi = np.inf if self.high is None else self.high
        below = np.maximum(lo - x, 0.0) / (abs(lo) + 1e-12) if self.low is not None else 0.0
        above = np.maximum(x - hi, 0.0) / (abs(hi) + 1e-12) if self.high is not None else 0.0
        outside = (x < lo) | (x > hi)
        raw = np.where(outside, 1.0 + np.maximum(below, above), 0.0)
        return Scores(raw, calibrate(raw, self.level), np.full(len(x), lo), np.full(len(x), hi))

    def learn(self, st: dict[str, Any], x: F64) -> None:
        st["n"] += len(x)

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


def limits(*, low: float | None = None, high: float | None = None) -> Limits:
    """Fixed limits: anomalous below ``low`` or above ``high`` (see :class:`Limits`)."""
    return Limits(low, high)
