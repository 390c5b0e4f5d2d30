"""Two-sided CUSUM on EWMA-standardised values: :class:`CUSUM` (reference),
:class:`CUSUMStacked` (stacked passes and live ticks) and the :func:`cusum` constructor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg, counter, level, rate
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.decision import ADAPT_AFTER
from edgeflow.ops.detect.ewma import EWMA, RAW_CAP
from edgeflow.ops.detect.filters import (
    ERR_CAP,
    RHO_MAX,
    AnomalyRing,
    StackedEwma,
    ew_moments,
    floor_rows,
    long_run_factor,
    running_sum_matrix,
)
from edgeflow.ops.detect.spread import floored
from edgeflow.ops.detect.stacked import Rows, StackedModel


class CUSUM(Detector):
    """Two-sided CUSUM on values standardised by a slow EWMA: catches small sustained shifts.
    Statistic max(S+, S-) with drift ``k`` (in stds); classic alarm level ``h``. An anomaly
    restarts the sums.

    The standardising std is the EWMA's (see :mod:`edgeflow.ops.detect.filters`), floored by
    the key's resolution (see :mod:`edgeflow.ops.detect.spread`) and widened to the
    *long-run* std of a positively autocorrelated signal: by sqrt((1+r)/(1-r)) for the EW
    lag-1 autocorrelation r of the learnt prediction errors (0 <= r <= 0.95). A signal
    whose readings repeat or drift in runs (a slow sensor's repeats, a square wave) then does
    not look like a sustained shift; on independent noise r is about 0 and nothing changes.

    A lasting change re-bases the model: once :data:`~edgeflow.ops.detect.decision.ADAPT_AFTER`
    (16) anomalies came within as many learnt readings (16 of at most 32 readings in a row:
    a CUSUM lets a reading a little short of the alarm level pass, which would end a streak
    of "anomalies in a row"), they are learnt, the EWMA's mean jumps to their median and the
    sums restart. So a +8 sigma lasting step raises its alarms within the first
    :attr:`adapts_within` readings (measured on unit noise over 60 seeds: at most 16 alarms
    more than the same noise without the step raises, the last 27 readings after the step)."""

    name = "cusum"
    ARGS = (Arg("k", "number", 0, 1000), level("h"), rate("alpha"), counter("warmup"))
    #: the most alarms a lasting +8 sigma step raises (see the class docstring)
    adapts_within = 32

    def __init__(
        self, k: float = 0.5, h: float = 5.0, alpha: float = 0.01, warmup: int = 32
    ) -> None:
        self.k, self.level, self.warmup = k, h, warmup
        self.base = EWMA(alpha=alpha, warmup=0)

    def init(self) -> dict[str, Any]:
        return {
            "ew": self.base.init(),
            "sp": 0.0,
            "sn": 0.0,
            "n": 0,
            "anom": [],  # the latest anomalies (at most ADAPT_AFTER) ...
            "anom_n": [],  # ... and the readings learnt when each came
            "c": 0.0,  # EW lag-1 cross products of the learnt prediction errors
            "e": 0.0,  # the last learnt prediction error (0: none)
        }

    def _pass(self, st: dict[str, Any], x: F64) -> dict[str, F64]:
        """The prefix pass over one key's readings: sums, mean, std and what learning them
        would leave."""
        ew = st["ew"]
        m0 = np.array([np.nan if ew["m"] is None else ew["m"]])
        v0, n0 = np.array([ew["v"]]), np.array([ew["n"]])
        m, v, m_after, v_after = ew_moments(self.base.alpha, m0, v0, n0, x[None, :])
        std = floored(np.sqrt(v), st.get("res", math.inf), m)
        g, c_after, err = long_run_factor(
            self.base.alpha, x[None, :], m, v0, v_after, np.array([st["e"]]), np.array([st["c"]])
        )
        cap = RAW_CAP * self.level
        z = np.clip((x - m[0]) * g[0] / std[0], -cap, cap) * warm_up_mask(st, len(x), self.warmup)

        def lindley(y: F64, s0: float) -> F64:  # S_t = max(0, S_{t-1} + y_t), vectorised
            c = np.cumsum(y)
            out: F64 = c - np.minimum(np.minimum.accumulate(c), -s0)
            return out

        return {
            "sp": lindley(z - self.k, st["sp"]),
            "sn": lindley(-z - self.k, st["sn"]),
            "m": m[0],
            "std": std[0],
            "m_after": m_after[0],
            "v_after": v_after[0],
            "c_after": c_after[0],
            "err": err[0],
        }

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        p = self._pass(st, x)
        raw = np.minimum(np.maximum(p["sp"], p["sn"]), RAW_CAP * self.level)
        m, std = p["m"], p["std"]
        return Scores(raw, calibrate(raw, self.level), m - 3 * std, m + 3 * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        p = self._pass(st, x)
        st["sp"], st["sn"] = float(p["sp"][-1]), float(p["sn"][-1])
        ew = st["ew"]
        ew["m"], ew["v"] = float(p["m_after"][-1]), float(p["v_after"][-1])
        ew["n"] += len(x)
        st["c"], st["e"] = float(p["c_after"][-1]), float(p["err"][-1])
        st["n"] += len(x)

    def forget(self, st: dict[str, Any], x: float) -> None:
        st["sp"] = st["sn"] = 0.0  # restart after an alarm
        anom, at = st.setdefault("anom", []), st.setdefault("anom_n", [])
        anom.append(float(x))
        at.append(int(st["n"]))
        del anom[:-ADAPT_AFTER], at[:-ADAPT_AFTER]
        if len(anom) >= ADAPT_AFTER and at[0] >= st["n"] - ADAPT_AFTER:
            self._rebase(st)

    def _rebase(self, st: dict[str, Any]) -> None:
        """A lasting change (see the class docstring): the anomalies are learnt (the
        variance and autocorrelation take in the change), the mean jumps to their median."""
        run = np.asarray(st["anom"], dtype=np.float64)
        st["anom"], st["anom_n"] = [], []
        self.learn(st, run)
        st["ew"]["m"] = float(np.median(run))
        st["e"] = st["sp"] = st["sn"] = 0.0

    def adapt(self, st: dict[str, Any], recent: F64) -> None:
        """Nothing: a CUSUM re-bases itself when it meets a lasting change (see
        :meth:`forget`), by the time the runner adapts."""
        return None

    def arguments(self) -> dict[str, Any]:
        return {"k": self.k, "h": self.level, "alpha": self.base.alpha, "warmup": self.warmup}

    def stacked_model(self, states: list[dict[str, Any]]) -> CUSUMStacked:
        return CUSUMStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "h": self.level, "alpha": self.base.alpha}


class CUSUMStacked(StackedModel):
    """Stacked two-sided CUSUM: each key's EWMA (see
    :class:`~edgeflow.ops.detect.filters.StackedEwma`), autocorrelation and sums as a row, in
    2-D passes or a tick at a time."""

    PASS_DATA = (
        "m_after", "v_after", "c_after", "err", "sps", "sns", "t_err", "t_c", "tp", "tn",
    )  # fmt: skip

    def __init__(self, det: CUSUM, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = StackedEwma(det.base.alpha, [s["ew"] for s in sts])
        self.sp = np.array([s["sp"] for s in sts], np.float64)
        self.sn = np.array([s["sn"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.c = np.array([s.get("c", 0.0) for s in sts], np.float64)
        self.e = np.array([s.get("e", 0.0) for s in sts], np.float64)
        self.anom = AnomalyRing(
            ADAPT_AFTER, [s.get("anom", []) for s in sts], [s.get("anom_n", []) for s in sts]
        )

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        v0 = self.ew.v[rows]
        m, v, self.m_after, self.v_after = self.ew.prefix(rows, x)
        std = floor_rows(np.sqrt(v), self.resolution(rows), m)
        g, self.c_after, self.err = long_run_factor(
            self.det.base.alpha, x, m, v0, self.v_after, self.e[rows], self.c[rows]
        )
        # (NaN only in the padding past each row's points, which no decision reads)
        cap = RAW_CAP * self.det.level
        z = np.clip((x - m) * g / std, -cap, cap)
        n0 = self.n[rows]
        if len(n0) and n0.min() < max(1, self.det.warmup):
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
        return np.minimum(np.maximum(self.sps, self.sns), cap), m, 3 * std

    def learn(self, rows: Rows, f: Rows) -> None:
        moved = np.flatnonzero(f > 0)
        r, last = rows[moved], f[moved] - 1
        self.sp[r] = self.sps[moved, last]
        self.sn[r] = self.sns[moved, last]
        self.c[r] = self.c_after[moved, last]
        self.e[r] = self.err[moved, last]
        self.ew.learn(rows, f, self.m_after, self.v_after)
        self.n[rows] += f

    def tick(self, rows: Rows, x: F64) -> tuple[F64, F64, F64] | None:
        ew = self.ew
        got = ew.tick(0)
        if got is None:
            return None
        m, std = got
        std = self.tick_floor(rows, std, m)
        err = x - m
        self.t_err = te = np.minimum(np.maximum(err, -ERR_CAP), ERR_CAP)
        b = ew.b
        # the long-run factor of the autocorrelation before this reading (as long_run_factor)
        rho = np.divide(self.c, ew.v, out=np.zeros(len(x)), where=ew.v > 0)
        np.minimum(np.maximum(rho, 0.0, out=rho), RHO_MAX, out=rho)
        g = np.sqrt((1.0 - rho) / (1.0 + rho))
        self.t_c = (1 - b) * self.c + (b * (1 - b)) * (te * self.e)
        cap = RAW_CAP * self.det.level
        z = err * g
        z /= std
        np.minimum(np.maximum(z, -cap, out=z), cap, out=z)
        k = self.det.k
        self.tp = np.maximum(self.sp + (z - k), 0.0)  # S_t = max(0, S_(t-1) + y_t)
        self.tn = np.maximum(self.sn - (z + k), 0.0)
        return np.minimum(np.maximum(self.tp, self.tn), cap), m, 3 * std

    def learn_tick(self, rows: Rows, learnt: Rows | None, x: F64) -> None:
        if learnt is None:
            self.sp, self.sn = self.tp, self.tn
            self.c, self.e = self.t_c, self.t_err
            self.n += 1
        else:
            self.sp = np.where(learnt, self.tp, self.sp)
            self.sn = np.where(learnt, self.tn, self.sn)
            self.c = np.where(learnt, self.t_c, self.c)
            self.e = np.where(learnt, self.t_err, self.e)
            self.n += learnt
        self.ew.learn_tick(learnt, x)

    def forget(self, rows: Rows, x: F64 | None = None) -> None:
        self.sp[rows] = 0.0
        self.sn[rows] = 0.0
        if x is None:
            return
        self.anom.add(rows, x, self.n[rows])
        due = rows[self.anom.full_since(rows, self.n[rows] - ADAPT_AFTER)]
        if len(due):
            self._rebase(due)

    def _rebase(self, rows: Rows) -> None:
        """:meth:`CUSUM._rebase` for the rows ``rows``."""
        run = np.array([self.anom.values(i) for i in rows.tolist()])
        self.anom.clear(rows)
        self.score(rows, run)
        self.learn(rows, np.full(len(rows), run.shape[1]))
        self.ew.m[rows] = np.median(run, axis=1)
        self.e[rows] = self.sp[rows] = self.sn[rows] = 0.0

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s["ew"])
        s["sp"], s["sn"], s["n"] = float(self.sp[i]), float(self.sn[i]), int(self.n[i])
        anom = getattr(self, "anom", None)  # (None: a snapshot of an older layout)
        if anom is not None:
            s["c"], s["e"] = float(self.c[i]), float(self.e[i])
            s["anom"], s["anom_n"] = anom.values(i), anom.positions(i)

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.ew.load(i, s["ew"])
        self.sp[i], self.sn[i], self.n[i] = s["sp"], s["sn"], s["n"]
        self.c[i], self.e[i] = s.get("c", 0.0), s.get("e", 0.0)
        self.anom.load(i, s.get("anom", []), s.get("anom_n", []))

    def extend(self, other: CUSUMStacked) -> None:
        self.ew.extend(other.ew)
        self.anom.extend(other.anom)
        for name in ("sp", "sn", "n", "c", "e"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def cusum(*, k: float = 0.5, h: float = 5.0, alpha: float = 0.01, warmup: int = 32) -> CUSUM:
    """Two-sided CUSUM (see :class:`CUSUM`); the same defaults as ``edgeflow score --detector cusum``."""
    return CUSUM(k, h, alpha, warmup)
