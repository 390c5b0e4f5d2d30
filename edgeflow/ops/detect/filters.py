"""First-order exponential filters shared by the EWMA-based detectors (EWMA, CUSUM).

:func:`exp_filter` runs y_t = b x_t + (1-a) y_(t-1) along the rows of a matrix (a small
matrix product for short rows, ``lfilter`` for long ones); :class:`StackedEwma` is the
stacked (one row per key) exponentially weighted mean and variance with its 2-D prefix pass
and its live tick form; :func:`running_sum_matrix` gives running sums as a matrix product.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.scipy_lazy import lfilter


@functools.lru_cache(maxsize=256)
def decay_matrix(a: float, span: int) -> tuple[F64, F64]:
    """For an exponential filter y_t = b x_t + (1-a) y_(t-1) over ``span`` points: the
    matrix D with D[s, t] = (1-a)^(t-s) for s <= t (else 0) and the powers (1-a)^(t+1)."""
    t = np.arange(span)
    lag = t[None, :] - t[:, None]
    mat: F64 = np.where(lag >= 0, (1 - a) ** np.maximum(lag, 0), 0.0)
    power: F64 = np.power(1.0 - a, t + 1.0)
    return mat, power


@functools.lru_cache(maxsize=128)
def running_sum_matrix(span: int) -> F64:
    """U with U[s, t] = 1 for s <= t: y @ U is the running sum of each row of y."""
    out: F64 = np.triu(np.ones((span, span)))
    return out


def exp_filter(a: float, b: float, x: F64, y0: F64) -> F64:
    """y_t = b x_t + (1-a) y_(t-1) along each row, from y_(-1) = y0. Short rows (later
    passes) as one small matrix product, which costs less than lfilter's set-up; long ones
    with lfilter. NaN padding at the end of a row gives finite values there, never read."""
    span = x.shape[1]
    if span > 96:
        out: F64 = lfilter([b], [1.0, -(1 - a)], x, axis=1, zi=((1 - a) * y0)[:, None])[0]
        return out
    mat, power = decay_matrix(a, span)
    out = b * (np.where(x == x, x, 0.0) @ mat) + y0[:, None] * power
    return out


class StackedEwma:
    """Stacked EWMA state (mean, variance, points learnt) and its 2-D prefix pass."""

    def __init__(self, alpha: float, sts: list[dict[str, Any]]) -> None:
        self.a = alpha
        self.m = np.array([np.nan if s["m"] is None else s["m"] for s in sts])
        self.v = np.array([s["v"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.ready = self.settled = False  # see tick(); rows added or loaded reset them

    def prefix(self, rows: np.ndarray, x: F64) -> tuple[F64, F64, F64, F64]:
        """(mean before, bias-corrected variance before, mean after, raw variance after)."""
        a = self.a
        m0 = self.m[rows]
        if np.isnan(m0).any():  # keys with nothing learnt start at their first point
            m0 = np.where(np.isnan(m0), x[:, 0], m0)
        v0 = self.v[rows]
        m_after = exp_filter(a, a, x, m0)
        m_before = np.empty_like(m_after)
        m_before[:, 0], m_before[:, 1:] = m0, m_after[:, :-1]
        d = a * (1 - a) * (x - m_before) ** 2
        v_after = exp_filter(a, 1.0, d, v0)
        v_before = np.empty_like(v_after)
        v_before[:, 0], v_before[:, 1:] = v0, v_after[:, :-1]
        n0 = self.n[rows]
        if len(n0) and n0.min() * -np.log1p(-a) > 40:  # (1-a)^n < 1e-17: no bias left
            return m_before, v_before, m_after, v_after
        seen = n0[:, None] + np.arange(x.shape[1])
        corr = -np.expm1(seen * np.log1p(-a))
        v = np.where(corr > 0, v_before / np.where(corr > 0, corr, 1.0), v_before)
        return m_before, v, m_after, v_after

    def learn(self, rows: np.ndarray, f: np.ndarray, m_after: F64, v_after: F64) -> None:
        """Rows learnt their first f points (f may be 0)."""
        moved = f > 0
        r, last = rows[moved], f[moved] - 1
        idx = np.flatnonzero(moved)
        self.m[r] = m_after[idx, last]
        self.v[r] = v_after[idx, last]
        self.n[rows] += f

    def tick(self, warmup: int) -> tuple[F64, F64] | None:
        """Every row's mean and (bias-corrected) std before this tick; None while a row
        has learnt fewer than ``max(1, warmup)`` points."""
        if not self.ready:  # (n only grows: once every row is ready it stays so)
            if not len(self.n) or self.n.min() < max(1, warmup):
                return None
            self.ready = True
        v = self.v
        if not self.settled:  # the variance recursion starts at 0: undo its bias
            if self.n.min() * -np.log1p(-self.a) > 40:  # (1-a)^n < 1e-17: none left
                self.settled = True
            else:
                corr = -np.expm1(self.n * np.log1p(-self.a))
                v = v / corr
        return self.m, np.sqrt(v)

    def learn_tick(self, learnt: np.ndarray | None, x: F64) -> None:
        """Rows learnt their reading where ``learnt`` (None: all), as :meth:`learn` would."""
        a = self.a
        d = a * (1 - a) * (x - self.m) ** 2
        m = a * x + (1 - a) * self.m
        v = d + (1 - a) * self.v
        # new arrays, never written in place: tick() handed out the means before this
        if learnt is None:
            self.m, self.v = m, v
            self.n += 1
        else:
            self.m, self.v = np.where(learnt, m, self.m), np.where(learnt, v, self.v)
            self.n += learnt

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["m"] = None if np.isnan(self.m[i]) else float(self.m[i])
        s["v"], s["n"] = float(self.v[i]), int(self.n[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.m[i] = np.nan if s["m"] is None else s["m"]
        self.v[i], self.n[i] = s["v"], s["n"]
        self.ready = self.settled = False

    def extend(self, other: StackedEwma) -> None:
        self.ready = self.settled = False
        self.m = np.concatenate([self.m, other.m])
        self.v = np.concatenate([self.v, other.v])
        self.n = np.concatenate([self.n, other.n])
