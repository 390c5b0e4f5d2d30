"""EWMA control chart: :class:`EWMA` (reference), :class:`EWMAStacked` (stacked passes and
live ticks) and the :func:`ewma` constructor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import counter, level, rate
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.decision import ADAPT_AFTER
from edgeflow.ops.detect.filters import (
    AnomalyRing,
    StackedEwma,
    ew_moments_one,
    floor_rows,
    remember_anomaly,
    streak_level,
)
from edgeflow.ops.detect.spread import floored
from edgeflow.ops.detect.stacked import Rows, StackedModel

#: raw statistics are capped at this many times the alarm level (scores stay below 1.0 and
#: distinct; a reading this far out is an anomaly whatever its exact distance)
RAW_CAP = 1e6


class EWMA(Detector):
    """EWMA control chart: |x - mean| / std, with an exponentially weighted mean (weight
    ``alpha``, bias-corrected, so the warm-up block is averaged) and an exponentially
    weighted variance of the prediction errors (weight ``alpha / 2``: see
    :mod:`edgeflow.ops.detect.filters`). The std is floored by the key's resolution (see
    :mod:`edgeflow.ops.detect.spread`): a quantised or flat signal is scored in quanta.

    A lasting change re-bases the mean: when the runner adapts (16 anomalies in a row, see
    :mod:`edgeflow.ops.detect.decision`) the streak's anomalies are learnt (the variance takes
    in the change, so two levels that keep taking turns, e.g. a square wave, become normal)
    and the mean jumps to their median, so a +8 sigma lasting step raises at most :attr:`adapts_within` alarms
    (measured on unit noise over 60 seeds: 16, the streak itself)."""

    name = "ewma"
    ARGS = (rate("alpha"), level(), counter("warmup"))
    #: the most alarms a lasting +8 sigma step raises (see the class docstring)
    adapts_within = 16

    def __init__(self, alpha: float = 0.05, level: float = 3.0, warmup: int = 16) -> None:
        self.alpha, self.level, self.warmup = alpha, level, warmup

    def init(self) -> dict[str, Any]:
        return {"m": None, "v": 0.0, "n": 0, "anom": []}

    def prefix(self, st: dict[str, Any], x: F64) -> tuple[F64, F64]:
        """Mean and (corrected) variance *before* each point, learning all previous points
        of x."""
        m, v, _, _ = ew_moments_one(self.alpha, st, x)
        return m, v

    def std(self, st: dict[str, Any], m: F64, v: F64) -> F64:
        """The floored std for means ``m`` and variances ``v`` of :meth:`prefix`."""
        return floored(np.sqrt(v), st.get("res", math.inf), m)

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        m, v = self.prefix(st, x)
        std = self.std(st, m, v)
        z = np.minimum(np.abs(x - m) / std, RAW_CAP * self.level)
        z = z * warm_up_mask(st, len(x), self.warmup)
        return Scores(z, calibrate(z, self.level), m - self.level * std, m + self.level * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        _, _, m, v = ew_moments_one(self.alpha, st, x)
        st["m"], st["v"] = float(m[-1]), float(v[-1])
        st["n"] += len(x)
        st["anom"] = []

    def forget(self, st: dict[str, Any], x: float) -> None:
        remember_anomaly(st, x, ADAPT_AFTER)

    def adapt(self, st: dict[str, Any], recent: F64) -> None:
        """A lasting change: the streak's anomalies are learnt (the variance takes in the
        change, so a level that keeps switching, e.g. a square wave, becomes normal) and the
        mean jumps to their median (the new level)."""
        if st["m"] is None:
            return
        run = np.asarray(st.get("anom") or recent, dtype=np.float64)
        centre = streak_level(st, recent)
        if centre is not None:
            self.learn(st, run)
            st["m"] = centre

    def stacked_model(self, states: list[dict[str, Any]]) -> EWMAStacked:
        return EWMAStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "level": self.level}


class EWMAStacked(StackedModel):
    """Stacked EWMA control chart: each key's EW mean and variance as a row (see
    :class:`~edgeflow.ops.detect.filters.StackedEwma`), in 2-D passes or a tick at a time."""

    PASS_DATA = ("m_after", "v_after")

    def __init__(self, det: EWMA, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = StackedEwma(det.alpha, sts)
        self.anom = AnomalyRing(ADAPT_AFTER, [s.get("anom", []) for s in sts])

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        m, v, self.m_after, self.v_after = self.ew.prefix(rows, x)
        std = floor_rows(np.sqrt(v), self.resolution(rows), m)
        # (NaN only in the padding past each row's points, which no decision reads)
        raw = np.minimum(np.abs(x - m) / std, RAW_CAP * self.det.level)
        n0 = self.ew.n[rows]
        if len(n0) and n0.min() < max(1, self.det.warmup):
            raw = raw * warm_up_rows(n0, x.shape[1], self.det.warmup)
        return raw, m, self.det.level * std

    def learn(self, rows: Rows, f: Rows) -> None:
        self.ew.learn(rows, f, self.m_after, self.v_after)
        self.anom.clear(rows[f > 0])

    def forget(self, rows: Rows, x: F64 | None = None) -> None:
        if x is not None:
            self.anom.add(rows, x)

    def tick(self, rows: Rows, x: F64) -> tuple[F64, F64, F64] | None:
        got = self.ew.tick(1)  # (learnt its warm-up block: see warm_up_rows)
        if got is None:
            return None
        m, std = got
        std = self.tick_floor(rows, std, m)
        # (past warm-up, m is finite and std is kept above 0: raw is finite)
        raw = np.minimum(np.abs(x - m) / std, RAW_CAP * self.det.level)
        return raw, m, self.det.level * std

    def learn_tick(self, rows: Rows, learnt: Rows | None, x: F64) -> None:
        self.ew.learn_tick(learnt, x)
        if learnt is None:
            self.anom.clear_all()
        else:
            self.anom.clear(learnt)  # (rows: every row, in order)

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s)
        anom = getattr(self, "anom", None)  # (None: a snapshot of an older layout)
        s["anom"] = anom.values(i) if anom is not None else []

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.ew.load(i, s)
        self.anom.load(i, s.get("anom", []))

    def extend(self, other: EWMAStacked) -> None:
        self.ew.extend(other.ew)
        self.anom.extend(other.anom)


def ewma(*, alpha: float = 0.05, level: float = 3.0, warmup: int = 16) -> EWMA:
    return EWMA(alpha, level, warmup)
