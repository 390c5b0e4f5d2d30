"""First-order exponential filters shared by the EWMA-based detectors (EWMA, CUSUM).

:func:`exp_filter` runs y_t = b x_t + (1-a) y_(t-1) along the rows of a matrix (a small
matrix product for short rows, ``lfilter`` for long ones); :func:`ew_moments` is the
exponentially weighted mean and variance of rows of readings (the prefix pass both forms of
both detectors use); :class:`StackedEwma` keeps them for many keys as rows, with a live tick
form; :func:`long_run_factor` turns a z-score into one against the long-run std of an
autocorrelated signal (CUSUM); :class:`AnomalyRing` keeps each key's latest anomalous
readings (the level a key re-centres on when it adapts to a lasting change);
:func:`floor_rows` is the spread floor (:mod:`edgeflow.ops.detect.spread`) for rows of keys;
:func:`running_sum_matrix` gives running sums as a matrix product.

The EW mean and variance, for mean weight ``a`` and variance weight ``b = a / 2``:

* the mean is bias-corrected: the weighted mean of the readings learnt so far, with weights
  (1-a)^age normalised to 1 (so the first readings are averaged, not dominated by the very
  first one); ``m`` in a state is that corrected mean (None / NaN: nothing learnt yet);
* the variance is the EW mean of squared prediction errors (x - mean before x), with the
  slower weight ``b`` (an estimate from about 2 / b readings: a 3-sigma rule with a noisy
  variance alarms far more often than 0.27 % of the time) and corrected for its start at 0
  and for the (1-b) factor of its recursion, so it estimates E[(x - mean)^2].
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect.spread import floored
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


#: prediction errors are clipped to this size before they are squared (an absurd reading,
#: 1e200, must not make a variance infinite: inf x 0 in the short filters' matrix products
#: would spread NaN to the other readings of the pass)
ERR_CAP = 1e150


def variance_weight(alpha: float) -> float:
    """The EW variance's weight for a mean weight ``alpha`` (see the module docstring)."""
    return alpha / 2.0


def _bias(w: float, seen: np.ndarray) -> F64:
    """1 - (1-w)^seen: the total weight of ``seen`` readings in an EW recursion from 0."""
    out: F64 = -np.expm1(seen * math.log1p(-w))
    return out


def _settled(w: float, n: np.ndarray) -> bool:
    """Whether every count in ``n`` is large enough that (1-w)^n < 1e-17 (no bias left)."""
    return bool(len(n) == 0 or n.min() * -math.log1p(-w) > 40)


def ew_moments(a: float, m0: F64, v0: F64, n0: np.ndarray, x: F64) -> tuple[F64, F64, F64, F64]:
    """The EW mean and variance of rows of readings ``x`` (k, span), each row starting from
    a key's state: corrected mean ``m0`` (NaN: nothing learnt), variance accumulator ``v0``,
    readings learnt ``n0``. Returns (mean before each reading, variance before each reading
    (corrected), mean after, variance accumulator after): each reading is scored against the
    state after the readings before it, as if learnt one at a time. NaN padding at the end of
    a row gives values there that are never read."""
    b = variance_weight(a)
    span = x.shape[1]
    least = int(n0.min()) if len(n0) else 0
    settled_v = least * -math.log1p(-b) > 40  # (1-b)^n < 1e-17 for every row: no bias left
    settled_m = settled_v or least * -math.log1p(-a) > 40  # (b < a: the mean's goes first)
    if settled_v:  # every row has learnt (thousands of readings): m0 is a number
        raw0 = m0
    else:
        empty = np.isnan(m0)
        raw0 = np.where(empty, 0.0, m0)
        if not settled_m:
            raw0 = raw0 * _bias(a, n0)
    m_after = exp_filter(a, a, x, raw0)
    if not settled_m:
        seen = n0[:, None] + np.arange(span)
        m_after = m_after / _bias(a, seen + 1)
    m_before = np.empty_like(m_after)
    m_before[:, 0] = m0 if settled_v or not empty.any() else np.where(empty, x[:, 0], m0)
    m_before[:, 1:] = m_after[:, :-1]
    err = x - m_before
    np.minimum(np.maximum(err, -ERR_CAP, out=err), ERR_CAP, out=err)
    v_after = exp_filter(b, b * (1 - b), err * err, v0)
    v_before = np.empty_like(v_after)
    v_before[:, 0], v_before[:, 1:] = v0, v_after[:, :-1]
    if settled_v:
        v_before *= 1.0 / (1 - b)
        return m_before, v_before, m_after, v_after
    corr = _bias(b, n0[:, None] + np.arange(span)) * (1 - b)
    v: F64 = np.where(corr > 0, v_before / np.where(corr > 0, corr, 1.0), v_before)
    return m_before, v, m_after, v_after


def ew_moments_one(a: float, st: dict[str, Any], x: F64) -> tuple[F64, F64, F64, F64]:
    """:func:`ew_moments` of one key's readings ``x`` from its state ``st`` (m, v, n)."""
    m0 = np.array([np.nan if st["m"] is None else st["m"]])
    mb, v, ma, va = ew_moments(a, m0, np.array([st["v"]]), np.array([st["n"]]), x[None, :])
    return mb[0], v[0], ma[0], va[0]


def floor_rows(scale: F64, res: F64, centre: F64) -> F64:
    """:func:`~edgeflow.ops.detect.spread.floored` for the scales of rows of keys (a (rows,
    span) matrix or one per row) with each row's resolution ``res`` (rows,): in one
    operation once every row has seen a step (``fmax``: a NaN scale, of a window with
    nothing learnt, gives the floor as ``floored`` does)."""
    r = res[:, None] if scale.ndim == 2 else res
    if len(res) and res.max() < math.inf:
        out: F64 = np.fmax(scale, r)
        return out
    return floored(scale, r, centre)


class AnomalyRing:
    """Each key's latest anomalous readings (at most ``size``) and when each came (the
    key's count of learnt readings then): the level a key re-centres on when it adapts to a
    lasting change is their median (see :meth:`values`)."""

    def __init__(
        self, size: int, lists: list[list[float]], at: list[list[int]] | None = None
    ) -> None:
        self.size = size
        self.vals = np.full((len(lists), size), np.nan)
        self.pos = np.zeros((len(lists), size), np.int64)
        self.cnt = np.zeros(len(lists), np.int64)
        self.any = False  # some row holds an anomaly (clear_all has something to clear)
        for i, vals in enumerate(lists):
            self._put(i, vals, None if at is None else at[i])

    def _put(self, i: int, vals: list[float], at: list[int] | None) -> None:
        tail = list(vals)[-self.size :]
        self.vals[i], self.pos[i] = np.nan, 0
        self.vals[i, : len(tail)] = tail
        if at is not None:
            self.pos[i, : len(tail)] = list(at)[-self.size :]
        self.cnt[i] = len(tail)
        self.any = self.any or bool(tail)

    def add(self, rows: np.ndarray, x: F64, at: np.ndarray | None = None) -> None:
        """Rows met the anomalous readings ``x`` (one each; rows distinct), after ``at``
        learnt readings."""
        if not len(rows):
            return
        slot = self.cnt[rows] % self.size
        self.vals[rows, slot] = x
        if at is not None:
            self.pos[rows, slot] = at
        self.cnt[rows] += 1
        self.any = True

    def clear(self, rows: np.ndarray) -> None:
        """Rows forget their anomalies (learnt a reading: their streak is over). ``rows``:
        row indices, or a mask over every row."""
        if self.any:
            self.cnt[rows] = 0

    def clear_all(self) -> None:
        if self.any:
            self.cnt[:] = 0
            self.any = False

    def full_since(self, rows: np.ndarray, since: np.ndarray) -> np.ndarray:
        """Whether each row holds ``size`` anomalies, all met after ``since`` learnt readings."""
        out: np.ndarray = (self.cnt[rows] >= self.size) & (self.pos[rows].min(axis=1) >= since)
        return out

    def _order(self, i: int) -> np.ndarray:
        c = int(self.cnt[i])
        if c <= self.size:
            return np.arange(c)
        return (c % self.size + np.arange(self.size)) % self.size

    def values(self, i: int) -> list[float]:
        """Row i's anomalies, oldest first."""
        return [float(v) for v in self.vals[i, self._order(i)]]

    def positions(self, i: int) -> list[int]:
        """When row i met each of its anomalies (as :meth:`values`)."""
        return [int(v) for v in self.pos[i, self._order(i)]]

    def load(self, i: int, vals: list[float], at: list[int] | None = None) -> None:
        self._put(i, vals, at)

    def extend(self, other: AnomalyRing) -> None:
        self.vals = np.concatenate([self.vals, other.vals])
        self.pos = np.concatenate([self.pos, other.pos])
        self.cnt = np.concatenate([self.cnt, other.cnt])
        self.any = self.any or other.any


def remember_anomaly(st: dict[str, Any], x: float, size: int) -> None:
    """The reference form of :meth:`AnomalyRing.add`: ``st["anom"]`` keeps the latest
    ``size`` anomalous readings of the key's current streak."""
    anom = st.setdefault("anom", [])
    anom.append(float(x))
    del anom[:-size]


def streak_level(st: dict[str, Any], recent: F64) -> float | None:
    """The level a key adapting to a lasting change re-centres on: the median of its
    streak's anomalies (``st["anom"]``, else the runner's ``recent``), None when it has none.
    Consumes them (a later call while the key still adapts does nothing)."""
    anom = st.get("anom") or [float(v) for v in recent]
    st["anom"] = []
    return float(np.median(anom)) if anom else None


class StackedEwma:
    """Stacked EW mean and variance (see :func:`ew_moments`): state rows and the 2-D pass."""

    def __init__(self, alpha: float, sts: list[dict[str, Any]]) -> None:
        self.a = alpha
        self.b = variance_weight(alpha)
        self.m = np.array([np.nan if s["m"] is None else s["m"] for s in sts])
        self.v = np.array([s["v"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.ready = self.settled = False  # see tick(); rows added or loaded reset them

    def prefix(self, rows: np.ndarray, x: F64) -> tuple[F64, F64, F64, F64]:
        """(mean before, corrected variance before, mean after, variance accumulator after)."""
        return ew_moments(self.a, self.m[rows], self.v[rows], self.n[rows], x)

    def learn(self, rows: np.ndarray, f: np.ndarray, m_after: F64, v_after: F64) -> None:
        """Rows learnt their first f points (f may be 0)."""
        moved = f > 0
        r, last = rows[moved], f[moved] - 1
        idx = np.flatnonzero(moved)
        self.m[r] = m_after[idx, last]
        self.v[r] = v_after[idx, last]
        self.n[rows] += f

    def recentre(self, i: int, level: float) -> None:
        self.m[i] = level

    def tick(self, warmup: int) -> tuple[F64, F64] | None:
        """Every row's mean and (corrected) std before this tick; None while a row has
        learnt fewer than ``max(1, warmup)`` points."""
        if not self.ready:  # (n only grows: once every row is ready it stays so)
            if not len(self.n) or self.n.min() < max(1, warmup):
                return None
            self.ready = True
        b = self.b
        if not self.settled:  # the recursions start at 0: undo their bias
            if _settled(b, self.n):
                self.settled = True
            else:
                return self.m, np.sqrt(self.v / (_bias(b, self.n) * (1 - b)))
        return self.m, np.sqrt(self.v * (1.0 / (1 - b)))

    def learn_tick(self, learnt: np.ndarray | None, x: F64) -> None:
        """Rows learnt their reading where ``learnt`` (None: all), as :meth:`learn` would
        (every row has learnt a reading before: :meth:`tick` said so)."""
        a, b = self.a, self.b
        err = np.clip(x - self.m, -ERR_CAP, ERR_CAP)
        gain = a if self.settled else a / _bias(a, self.n + 1)
        m = self.m + gain * err
        v = b * (1 - b) * err * err + (1 - b) * self.v
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


#: the most lag-1 autocorrelation :func:`long_run_factor` credits (a factor of 0.16)
RHO_MAX = 0.95


def long_run_factor(
    a: float, x: F64, m_before: F64, v0: F64, v_after: F64, e0: F64, c0: F64
) -> tuple[F64, F64, F64]:
    """For rows of readings ``x`` with the EW means before them ``m_before`` (see
    :func:`ew_moments`; ``v0``/``v_after``: its variance accumulator before the rows and
    after each reading): the factor sqrt((1-r)/(1+r)) that turns a prediction error's
    z-score into one against the long-run std of a positively autocorrelated signal, r the
    EW lag-1 autocorrelation of the learnt prediction errors before each reading (clipped to
    [0, :data:`RHO_MAX`]); and what learning the readings would leave: the cross-product
    accumulator after each reading and each reading's prediction error. ``e0``: each row's
    last learnt prediction error (0: none), ``c0``: its cross-product accumulator, kept with
    the variance's weight and recursion so that r = c / v."""
    b = variance_weight(a)
    err = np.clip(x - m_before, -ERR_CAP, ERR_CAP)
    prev = np.empty_like(err)
    prev[:, 0], prev[:, 1:] = e0, err[:, :-1]
    c_after = exp_filter(b, b * (1 - b), err * prev, c0)
    c_before = np.empty_like(c_after)
    c_before[:, 0], c_before[:, 1:] = c0, c_after[:, :-1]
    v_before = np.empty_like(v_after)
    v_before[:, 0], v_before[:, 1:] = v0, v_after[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip(c_before / np.where(v_before > 0, v_before, np.inf), 0.0, RHO_MAX)
    g: F64 = np.sqrt((1.0 - rho) / (1.0 + rho))
    return g, c_after, err
