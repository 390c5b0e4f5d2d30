"""Variance change (log ratio of a fast to a slow EW variance of the first difference):
:class:`VarianceChange` (reference) and :class:`VarianceChangeStacked` (stacked passes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import counter, level, rate
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.mad import finite_raw, floored_before
from edgeflow.ops.detect.stacked import Rows, StackedModel
from edgeflow.ops.scipy_lazy import lfilter


class VarianceChange(Detector):
    """Log ratio of a fast to a slow EW variance of the first difference: variance changes.

    Both variances are floored by the square of the key's resolution (see
    :mod:`edgeflow.ops.detect.spread`; :func:`variance_ratio`), so a quantised or flat
    signal never divides by 0 and one-quantum moves are not a variance change."""

    name = "variance"
    ARGS = (rate("fast"), rate("slow"), level(), counter("warmup"))

    def __init__(
        self, fast: float = 0.1, slow: float = 0.005, level: float = 2.5, warmup: int = 64
    ) -> None:
        self.fast, self.slow, self.level, self.warmup = fast, slow, level, warmup

    def init(self) -> dict[str, Any]:
        return {"prev": None, "vf": None, "vs": None, "n": 0}

    def prefix(self, st: dict[str, Any], x: F64) -> tuple[F64, F64]:
        from edgeflow.ops.scipy_lazy import lfilter

        prev = x[0] if st["prev"] is None else st["prev"]
        d2 = np.diff(np.concatenate([[prev], x])) ** 2
        v0 = float(d2[0]) if st["vf"] is None else st["vf"]
        s0 = float(d2[0]) if st["vs"] is None else st["vs"]
        vf = lfilter([self.fast], [1, -(1 - self.fast)], d2, zi=[(1 - self.fast) * v0])[0]
        vs = lfilter([self.slow], [1, -(1 - self.slow)], d2, zi=[(1 - self.slow) * s0])[0]
        vs_before = np.concatenate([[s0], vs[:-1]])
        return vf, vs_before

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        vf, vs = self.prefix(st, x)
        last = math.nan if st["prev"] is None else st["prev"]
        raw = variance_ratio(vf, vs, st.get("res", math.inf), last, x)
        raw = raw * warm_up_mask(st, len(x), self.warmup)
        nan = np.full(len(x), np.nan)
        return Scores(raw, calibrate(raw, self.level), nan, nan)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        from edgeflow.ops.scipy_lazy import lfilter

        prev = x[0] if st["prev"] is None else st["prev"]
        d2 = np.diff(np.concatenate([[prev], x])) ** 2
        v0 = float(d2[0]) if st["vf"] is None else st["vf"]
        s0 = float(d2[0]) if st["vs"] is None else st["vs"]
        st["vf"] = float(
            lfilter([self.fast], [1, -(1 - self.fast)], d2, zi=[(1 - self.fast) * v0])[0][-1]
        )
        st["vs"] = float(
            lfilter([self.slow], [1, -(1 - self.slow)], d2, zi=[(1 - self.slow) * s0])[0][-1]
        )
        st["prev"] = float(x[-1])
        st["n"] += len(x)

    def stacked_model(self, states: list[dict[str, Any]]) -> VarianceChangeStacked:
        return VarianceChangeStacked(self, states)


def variance_ratio(vf: F64, vs: F64, res: F64 | float, last: F64 | float, x: F64) -> F64:
    """|log(vf / vs)| for the points ``x`` of a prefix pass, with both variances floored by
    the square of each point's spread floor (:func:`~edgeflow.ops.detect.mad.floored_before`
    of the key's resolution ``res`` and last learnt reading ``last``)."""
    fast = floored_before(np.sqrt(np.maximum(vf, 0.0)), res, last, x, x)
    slow = floored_before(np.sqrt(np.maximum(vs, 0.0)), res, last, x, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = 2.0 * np.abs(np.log(fast / slow))
    return finite_raw(raw)


def nan_for_none(values: list[float | None]) -> F64:
    """The values as an array, NaN for None (nothing learnt yet)."""
    return np.array([np.nan if v is None else v for v in values], np.float64)


class VarianceChangeStacked(StackedModel):
    """Stacked variance change: fast and slow EW variances of the first difference."""

    PASS_DATA = ("vf_after", "vs_after", "x")
    SPAN_EXACT = True  # lfilter whatever the span (no short-pass matrix products)

    def __init__(self, det: VarianceChange, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.prev = nan_for_none([s["prev"] for s in sts])
        self.vf = nan_for_none([s["vf"] for s in sts])
        self.vs = nan_for_none([s["vs"] for s in sts])
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        det = self.det
        p0 = self.prev[rows]
        p0 = np.where(np.isnan(p0), x[:, 0], p0)
        d2 = np.diff(np.concatenate([p0[:, None], x], axis=1), axis=1) ** 2
        v0 = self.vf[rows]
        v0 = np.where(np.isnan(v0), d2[:, 0], v0)
        s0 = self.vs[rows]
        s0 = np.where(np.isnan(s0), d2[:, 0], s0)
        fa, sa = det.fast, det.slow
        vf = lfilter([fa], [1, -(1 - fa)], d2, axis=1, zi=((1 - fa) * v0)[:, None])[0]
        vs = lfilter([sa], [1, -(1 - sa)], d2, axis=1, zi=((1 - sa) * s0)[:, None])[0]
        vs_before = np.empty_like(vs)
        vs_before[:, 0], vs_before[:, 1:] = s0, vs[:, :-1]
        raw = variance_ratio(vf, vs_before, self.resolution(rows), self.prev[rows], x)
        n0 = self.n[rows]
        if len(n0) and n0.min() < det.warmup:
            raw = raw * warm_up_rows(n0, x.shape[1], det.warmup)
        self.vf_after, self.vs_after, self.x = vf, vs, x
        nan = np.broadcast_to(np.nan, raw.shape)  # no expected range of values
        return raw, nan, nan

    def learn(self, rows: Rows, f: Rows) -> None:
        moved = f > 0
        idx, last = np.flatnonzero(moved), f[moved] - 1
        r = rows[moved]
        self.vf[r] = self.vf_after[idx, last]
        self.vs[r] = self.vs_after[idx, last]
        self.prev[r] = self.x[idx, last]
        self.n[rows] += f

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        for name in ("prev", "vf", "vs"):
            v = float(getattr(self, name)[i])
            s[name] = None if np.isnan(v) else v
        s["n"] = int(self.n[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        for name in ("prev", "vf", "vs"):
            getattr(self, name)[i] = np.nan if s[name] is None else s[name]
        self.n[i] = s["n"]

    def extend(self, other: VarianceChangeStacked) -> None:
        for name in ("prev", "vf", "vs", "n"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
