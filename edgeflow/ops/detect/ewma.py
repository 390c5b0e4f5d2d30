"""EWMA control chart: :class:`EWMA` (reference), :class:`EWMAStacked` (stacked passes and
live ticks) and the :func:`ewma` constructor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import counter, level, rate
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.filters import StackedEwma
from edgeflow.ops.detect.stacked import Rows, StackedModel


class EWMA(Detector):
    """EWMA control chart: exponentially weighted mean and variance; |x - mean| / std."""

    name = "ewma"
    ARGS = (rate("alpha"), level(), counter("warmup"))

    def __init__(self, alpha: float = 0.05, level: float = 3.0, warmup: int = 16) -> None:
        self.alpha, self.level, self.warmup = alpha, level, warmup

    def init(self) -> dict[str, Any]:
        return {"m": None, "v": 0.0, "n": 0}

    def prefix(self, st: dict[str, Any], x: F64) -> tuple[F64, F64]:
        """Mean and variance *before* each point, learning all previous points of x."""
        from edgeflow.ops.scipy_lazy import lfilter

        a = self.alpha
        m0 = x[0] if st["m"] is None else st["m"]
        m_after = lfilter([a], [1.0, -(1 - a)], x, zi=[(1 - a) * m0])[0]
        m_before = np.concatenate([[m0], m_after[:-1]])
        d = a * (1 - a) * (x - m_before) ** 2
        v_after = lfilter([1.0], [1.0, -(1 - a)], d, zi=[(1 - a) * st["v"]])[0]
        v_before = np.concatenate([[st["v"]], v_after[:-1]])
        return m_before, v_before

    def unbiased(self, st: dict[str, Any], v: F64) -> F64:
        """Bias-corrected variance (the recursion starts at 0): v / (1 - (1-a)^points learnt)."""
        seen = st["n"] + np.arange(len(v))
        corr = -np.expm1(seen * np.log1p(-self.alpha))
        out: F64 = np.where(corr > 0, v / np.where(corr > 0, corr, 1.0), v)
        return out

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        m, v = self.prefix(st, x)
        std = np.sqrt(self.unbiased(st, v))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        z = np.nan_to_num(z, nan=0.0, posinf=1e6) * warm_up_mask(st, len(x), self.warmup)
        return Scores(z, calibrate(z, self.level), m - self.level * std, m + self.level * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        a = self.alpha
        m, v = self.prefix(st, x)
        last = x[-1] - m[-1]
        st["m"] = float(m[-1] + a * last)
        st["v"] = float((1 - a) * (v[-1] + a * last * last))
        st["n"] += len(x)

    def stacked_model(self, states: list[dict[str, Any]]) -> EWMAStacked:
        return EWMAStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "level": self.level}


class EWMAStacked(StackedModel):
    """Stacked EWMA control chart: each key's EW mean and variance as a row (see
    :class:`~edgeflow.ops.detect.filters.StackedEwma`), in 2-D passes or a tick at a time."""

    def __init__(self, det: EWMA, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = StackedEwma(det.alpha, sts)

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        m, v, self.m_after, self.v_after = self.ew.prefix(rows, x)
        std = np.sqrt(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.abs(x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e6) * warm_up_rows(
            self.ew.n[rows], x.shape[1], self.det.warmup
        )
        return raw, m, self.det.level * std

    def learn(self, rows: Rows, f: Rows) -> None:
        self.ew.learn(rows, f, self.m_after, self.v_after)

    def tick(self, rows: Rows, x: F64) -> tuple[F64, F64, F64] | None:
        got = self.ew.tick(self.det.warmup)
        if got is None:
            return None
        m, std = got
        # (past warm-up, m is finite and std is kept above 0: raw is finite)
        raw = np.abs(x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        return raw, m, self.det.level * std

    def learn_tick(self, rows: Rows, learnt: Rows | None, x: F64) -> None:
        self.ew.learn_tick(learnt, x)

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s)

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.ew.load(i, s)

    def extend(self, other: EWMAStacked) -> None:
        self.ew.extend(other.ew)


def ewma(*, alpha: float = 0.05, level: float = 3.0, warmup: int = 16) -> EWMA:
    return EWMA(alpha, level, warmup)
