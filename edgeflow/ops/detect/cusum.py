"""Two-sided CUSUM on EWMA-standardised values: :class:`CUSUM` (reference),
:class:`CUSUMStacked` (stacked passes and live ticks) and the :func:`cusum` constructor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg, counter, level, rate
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.ewma import EWMA
from edgeflow.ops.detect.filters import StackedEwma, running_sum_matrix
from edgeflow.ops.detect.stacked import Rows, StackedModel


class CUSUM(Detector):
    """Two-sided CUSUM on values standardised by a slow EWMA: catches small sustained shifts.
    Statistic max(S+, S-) with drift ``k`` (in stds); classic alarm level ``h``."""

    name = "cusum"
    ARGS = (Arg("k", "number", 0, 1000), level("h"), rate("alpha"), counter("warmup"))

    def __init__(
        self, k: float = 0.5, h: float = 5.0, alpha: float = 0.01, warmup: int = 32
    ) -> None:
        self.k, self.level, self.warmup = k, h, warmup
        self.base = EWMA(alpha=alpha, warmup=0)

    def init(self) -> dict[str, Any]:
        return {"ew": self.base.init(), "sp": 0.0, "sn": 0.0, "n": 0}

    def _sums(self, st: dict[str, Any], x: F64) -> tuple[F64, F64, F64, F64]:
        m, v = self.base.prefix(st["ew"], x)
        std = np.sqrt(self.base.unbiased(st["ew"], v))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.nan_to_num(
                (x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m))), nan=0.0, posinf=1e6, neginf=-1e6
            )
        z = z * warm_up_mask(st, len(x), self.warmup)

        def lindley(y: F64, s0: float) -> F64:  # S_t = max(0, S_{t-1} + y_t), vectorised
            c = np.cumsum(y)
            out: F64 = c - np.minimum(np.minimum.accumulate(c), -s0)
            return out

        return lindley(z - self.k, st["sp"]), lindley(-z - self.k, st["sn"]), m, std

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        sp, sn, m, std = self._sums(st, x)
        raw = np.maximum(sp, sn)
        return Scores(raw, calibrate(raw, self.level), m - 3 * std, m + 3 * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        sp, sn, _, _ = self._sums(st, x)
        st["sp"], st["sn"] = float(sp[-1]), float(sn[-1])
        self.base.learn(st["ew"], x)
        st["n"] += len(x)

    def forget(self, st: dict[str, Any], x: float) -> None:
        st["sp"] = st["sn"] = 0.0  # restart after an alarm

    def arguments(self) -> dict[str, Any]:
        return {"k": self.k, "h": self.level, "alpha": self.base.alpha, "warmup": self.warmup}

    def stacked_model(self, states: list[dict[str, Any]]) -> CUSUMStacked:
        return CUSUMStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "h": self.level, "alpha": self.base.alpha}


class CUSUMStacked(StackedModel):
    """Stacked two-sided CUSUM: each key's EWMA (see
    :class:`~edgeflow.ops.detect.filters.StackedEwma`) and sums as a row, in 2-D passes or a
    tick at a time."""

    def __init__(self, det: CUSUM, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = StackedEwma(det.base.alpha, [s["ew"] for s in sts])
        self.sp = np.array([s["sp"] for s in sts], np.float64)
        self.sn = np.array([s["sn"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        m, v, self.m_after, self.v_after = self.ew.prefix(rows, x)
        std = np.sqrt(v)
        # (x is finite where it counts and std is kept above 0: z is finite there; NaN only
        # in the padding past each row's points, which no decision reads)
        z = (x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        n0 = self.n[rows]
        if len(n0) and n0.min() < self.det.warmup:
            z = z * warm_up_rows(n0, x.shape[1], self.det.warmup)
        # both one-sided sums at once: S_t = max(0, S_{t-1} + y_t), vectorised (Lindley)
        y = np.empty((2, *z.shape))
        np.subtract(z, self.det.k, out=y[0])
        np.subtract(-self.det.k, z, out=y[1])
        span = z.shape[1]
        # running sums; for short passes as a product with a triangle of ones (faster)
        short = span <= 96
        c = np.where(y == y, y, 0.0) @ running_sum_matrix(span) if short else np.cumsum(y, axis=2)
        s0 = np.empty((2, len(rows), 1))
        s0[0, :, 0], s0[1, :, 0] = self.sp[rows], self.sn[rows]
        sums = c - np.minimum(np.minimum.accumulate(c, axis=2), -s0)
        self.sps, self.sns = sums[0], sums[1]
        return np.maximum(self.sps, self.sns), m, 3 * std

    def learn(self, rows: Rows, f: Rows) -> None:
        moved = np.flatnonzero(f > 0)
        self.sp[rows[moved]] = self.sps[moved, f[moved] - 1]
        self.sn[rows[moved]] = self.sns[moved, f[moved] - 1]
        self.ew.learn(rows, f, self.m_after, self.v_after)
        self.n[rows] += f

    def tick(self, rows: Rows, x: F64) -> tuple[F64, F64, F64] | None:
        got = self.ew.tick(0)
        if got is None:
            return None
        m, std = got
        z = (x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        if self.n.min() < self.det.warmup:
            z = z * (self.n >= self.det.warmup)
        k = self.det.k
        self.tp = np.maximum(self.sp + (z - k), 0.0)  # S_t = max(0, S_(t-1) + y_t)
        self.tn = np.maximum(self.sn + (-k - z), 0.0)
        return np.maximum(self.tp, self.tn), m, 3 * std

    def learn_tick(self, rows: Rows, learnt: Rows | None, x: F64) -> None:
        if learnt is None:
            self.sp, self.sn = self.tp, self.tn
            self.n += 1
        else:
            self.sp = np.where(learnt, self.tp, self.sp)
            self.sn = np.where(learnt, self.tn, self.sn)
            self.n += learnt
        self.ew.learn_tick(learnt, x)

    def forget(self, rows: Rows) -> None:
        self.sp[rows] = 0.0
        self.sn[rows] = 0.0

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s["ew"])
        s["sp"], s["sn"], s["n"] = float(self.sp[i]), float(self.sn[i]), int(self.n[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.ew.load(i, s["ew"])
        self.sp[i], self.sn[i], self.n[i] = s["sp"], s["sn"], s["n"]

    def extend(self, other: CUSUMStacked) -> None:
        self.ew.extend(other.ew)
        self.sp = np.concatenate([self.sp, other.sp])
        self.sn = np.concatenate([self.sn, other.sn])
        self.n = np.concatenate([self.n, other.n])


def cusum(*, k: float = 0.5, h: float = 5.0, alpha: float = 0.01, warmup: int = 100) -> CUSUM:
    return CUSUM(k, h, alpha, warmup)
