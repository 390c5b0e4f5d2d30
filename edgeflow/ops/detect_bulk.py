"""Detection vectorised across keys: all keys of a batch in repeated 2-D passes.

Each key's state is a row of arrays kept between batches (:class:`Stacked`), so a batch
costs no per-key Python work. This serves live batches (a reading or a few per key:
usually one pass) and bulk ones (a replay: a pass per anomaly). Each key's readings of the
batch form one row of a NaN-padded matrix. A pass scores every row with the prefix
semantics of :mod:`edgeflow.ops.detect` (each point against the state after the points
before it), using cumulative sums and ``lfilter(axis=1)``. For each key, the points up to
its first anomaly are final and are learnt straight from the pass's arrays. The anomaly is
decided (streak, cooldown, forget), and the key's rest goes into the next pass. Passes
repeat until every key is done, so a batch costs about (anomalies per key + 1) vectorised
passes.

The semantics are the Driver's (one point at a time) with a fixed threshold: for z-score,
EWMA, CUSUM and MAD here, for the seasonal and variance-change detectors and ensembles
such as ``auto()`` in :mod:`edgeflow.ops.detect_bulk_auto`. A key that starts adapting (a
long streak of anomalies) finishes its batch in the Driver. Scores equal the Driver's up to
floating-point rounding: short passes filter and sum by small matrix products instead of
``lfilter`` and ``cumsum``.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect import (
    CUSUM,
    EWMA,
    MAD,
    Decision,
    Detector,
    Driver,
    Ensemble,
    Seasonal,
    ZScore,
    calibrate,
)
from edgeflow.ops.detect import _VarianceChange as VarianceChange
from edgeflow.ops.scipy_lazy import lfilter

Arr = np.ndarray
SUPPORTED = (ZScore, EWMA, CUSUM, MAD, Seasonal, VarianceChange)


def supports(det: Detector, decision: Decision, learn_anomalies: bool) -> bool:
    """Whether ``det`` runs stacked: the supported detectors, or an ensemble of them, with
    a fixed threshold and anomalies not learnt."""
    if decision.kind != "threshold" or learn_anomalies:
        return False
    if isinstance(det, Ensemble):
        return all(type(p) in SUPPORTED for p in det.parts)
    return type(det) in SUPPORTED


def _pack(hists: list[F64], w: int) -> F64:
    """Histories as rows of a (keys, w) matrix, right-aligned, NaN where still empty."""
    h = np.full((len(hists), w), np.nan)
    for i, hist in enumerate(hists):
        if len(hist):
            h[i, w - len(hist) :] = hist
    return h


def _unpad(row: F64) -> F64:
    out: F64 = row[~np.isnan(row)].copy()
    return out


def _slide(h: F64, rows: Arr, old: F64, new: F64, f: Arr) -> None:
    """Row i of ``h[rows]`` (which held ``old[i]``) learnt the first ``f[i]`` of ``new[i]``:
    keep the last w values of old + those."""
    moved = f > 0
    if not moved.any():
        return
    w = h.shape[1]
    if moved.all() and (f == f[0]).all():  # the common case: every row learnt f points
        step = int(f[0])
        if step >= w:
            h[rows] = new[:, step - w : step]
        else:
            h[rows] = np.concatenate([old[:, step:], new[:, :step]], axis=1)
        return
    z = np.concatenate([old[moved], new[moved]], axis=1)
    cols = f[moved][:, None] + np.arange(w)  # the w columns of z ending before w + f
    h[rows[moved]] = np.take_along_axis(z, cols, axis=1)


@functools.lru_cache(maxsize=256)
def _decay(a: float, span: int) -> tuple[F64, F64]:
    """For an exponential filter y_t = b x_t + (1-a) y_(t-1) over ``span`` points: the
    matrix D with D[s, t] = (1-a)^(t-s) for s <= t (else 0) and the powers (1-a)^(t+1)."""
    t = np.arange(span)
    lag = t[None, :] - t[:, None]
    mat: F64 = np.where(lag >= 0, (1 - a) ** np.maximum(lag, 0), 0.0)
    power: F64 = np.power(1.0 - a, t + 1.0)
    return mat, power


@functools.lru_cache(maxsize=128)
def _ones_upper(span: int) -> F64:
    """U with U[s, t] = 1 for s <= t: y @ U is the running sum of each row of y."""
    out: F64 = np.triu(np.ones((span, span)))
    return out


def _exp_filter(a: float, b: float, x: F64, y0: F64) -> F64:
    """y_t = b x_t + (1-a) y_(t-1) along each row, from y_(-1) = y0. Short rows (later
    passes) as one small matrix product, which costs less than lfilter's set-up; long ones
    with lfilter. NaN padding at the end of a row gives finite values there, never read."""
    span = x.shape[1]
    if span > 96:
        out: F64 = lfilter([b], [1.0, -(1 - a)], x, axis=1, zi=((1 - a) * y0)[:, None])[0]
        return out
    mat, power = _decay(a, span)
    out = b * (np.where(x == x, x, 0.0) @ mat) + y0[:, None] * power
    return out


class Model:
    """A stacked model: per-key state as rows of arrays (one row per key).

    ``score(rows, x)`` scores the (k, span) points of the state rows ``rows`` with prefix
    semantics and returns (raw, centre, half): the statistic and the expected range
    centre -/+ half. ``learn(rows, f)`` learns each row's first ``f`` points of the last
    pass, ``forget(rows)`` is told of an anomaly (not learnt; by default nothing to do).
    ``limit(rows)`` caps how many points each row may decide in a pass (by default None,
    no cap): a model re-estimated every N learnt points must learn up to that point before
    scoring past it."""

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        raise NotImplementedError

    def learn(self, rows: Arr, f: Arr) -> None:
        raise NotImplementedError

    def forget(self, rows: Arr) -> None:
        return None

    def limit(self, rows: Arr) -> Arr | None:
        return None

    def tick(self, rows: Arr, x: F64) -> tuple[F64, F64, F64] | None:
        """A live tick: one reading ``x`` for every row (``rows``: all of them, in order),
        scored as :meth:`score` would in fewer operations; None (nothing done) when the
        model has no tick form or a row is not ready for it. Followed by :meth:`learn_tick`."""
        return None

    def learn_tick(self, rows: Arr, learnt: Arr | None, x: F64) -> None:
        """After :meth:`tick`: rows learnt their reading where ``learnt`` (None: all)."""
        raise NotImplementedError

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        raise NotImplementedError

    def load(self, i: int, s: dict[str, Any]) -> None:
        raise NotImplementedError

    def extend(self, other: Any) -> None:
        raise NotImplementedError


class _Threshold:
    """The fixed-threshold decision on raw statistics: score >= thr where score is
    ``calibrate(raw, level)``, an increasing function, so raw is compared with the
    threshold's raw value and calibrate() runs only within rounding of it (almost never)."""

    def __init__(self, level: float, thr: float) -> None:
        self.level, self.thr = level, thr
        raw_thr = -level / 3.0 * math.log10(1.0 - thr) if thr < 1 else math.inf
        self.near, self.sure = raw_thr * (1 - 1e-9), raw_thr * (1 + 1e-9)

    def flags(self, raw: F64, inside: Arr | None = None) -> tuple[Arr, bool]:
        """(anomalous points, whether there is any)."""
        flagged = raw >= self.near
        if inside is not None:
            flagged &= inside
        if not flagged.any():
            return flagged, False
        edge = np.flatnonzero(flagged & (raw < self.sure))
        if len(edge):
            flagged.flat[edge] = calibrate(raw.flat[edge], self.level) >= self.thr
        return flagged, True


class _Ewma:
    """Stacked EWMA state (mean, variance, points learnt) and its 2-D prefix pass."""

    def __init__(self, alpha: float, sts: list[dict[str, Any]]) -> None:
        self.a = alpha
        self.m = np.array([np.nan if s["m"] is None else s["m"] for s in sts])
        self.v = np.array([s["v"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.ready = self.settled = False  # see tick(); rows added or loaded reset them

    def prefix(self, rows: Arr, x: F64) -> tuple[F64, F64, F64, F64]:
        """(mean before, bias-corrected variance before, mean after, raw variance after)."""
        a = self.a
        m0 = self.m[rows]
        if np.isnan(m0).any():  # keys with nothing learnt start at their first point
            m0 = np.where(np.isnan(m0), x[:, 0], m0)
        v0 = self.v[rows]
        m_after = _exp_filter(a, a, x, m0)
        m_before = np.empty_like(m_after)
        m_before[:, 0], m_before[:, 1:] = m0, m_after[:, :-1]
        d = a * (1 - a) * (x - m_before) ** 2
        v_after = _exp_filter(a, 1.0, d, v0)
        v_before = np.empty_like(v_after)
        v_before[:, 0], v_before[:, 1:] = v0, v_after[:, :-1]
        n0 = self.n[rows]
        if len(n0) and n0.min() * -np.log1p(-a) > 40:  # (1-a)^n < 1e-17: no bias left
            return m_before, v_before, m_after, v_after
        seen = n0[:, None] + np.arange(x.shape[1])
        corr = -np.expm1(seen * np.log1p(-a))
        v = np.where(corr > 0, v_before / np.where(corr > 0, corr, 1.0), v_before)
        return m_before, v, m_after, v_after

    def learn(self, rows: Arr, f: Arr, m_after: F64, v_after: F64) -> None:
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

    def learn_tick(self, learnt: Arr | None, x: F64) -> None:
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

    def extend(self, other: _Ewma) -> None:
        self.ready = self.settled = False
        self.m = np.concatenate([self.m, other.m])
        self.v = np.concatenate([self.v, other.v])
        self.n = np.concatenate([self.n, other.n])


class _Z(Model):
    def __init__(self, det: ZScore, sts: list[dict[str, Any]]) -> None:
        self.det = det
        w = det.window
        self.h = _pack([s["hist"] for s in sts], w)
        self.n = np.array([s["n"] for s in sts], np.int64)
        # live ticks keep a row as a ring (oldest value at ``head``) with running sums of
        # its values less ``c`` (``fresh``: the sums are those of the row as it is)
        k = len(sts)
        self.head = np.zeros(k, np.int64)
        self.c, self.s1, self.s2 = np.zeros(k), np.zeros(k), np.zeros(k)
        self.floor = np.zeros(k)  # the least std: 1e-12 (1 + |c|)
        self.cnt = np.zeros(k)  # values in the window (its size once full)
        self.fresh = np.zeros(k, bool)
        self.full = False  # every row's window full (rows added or loaded reset it)
        self.ticks = 0
        self.warm = False  # every row past warm-up (rows added or loaded reset it)

    def _ordered(self, rows: Arr) -> F64:
        """The rows' histories, oldest first."""
        head = self.head[rows]
        if not head.any():
            out: F64 = self.h[rows]
            return out
        cols = (head[:, None] + np.arange(self.det.window)) % self.det.window
        out = np.take_along_axis(self.h[rows], cols, axis=1)
        return out

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        """Each point against the mean and std of the ``window`` points before it: the
        history's sums, minus the history points that have left each point's window, plus
        the batch points that entered it (prefix sums over the batch's columns only)."""
        w = self.det.window
        k, n = x.shape
        self.hx = h = self._ordered(rows)
        self.x = x
        if n > w:  # a long segment: windows reach past the history; sums over [h | x]
            return self._score_long(rows, h, x)
        hv = ~np.isnan(h)
        if hv.all():  # full histories (after warm-up): no masking needed
            cnt_h = np.full(k, w)
            base = h.mean(axis=1)
            dh = h - base[:, None]
        else:
            cnt_h = np.count_nonzero(hv, axis=1)
            has = cnt_h > 0
            base = np.where(has, np.where(hv, h, 0.0).sum(axis=1) / np.maximum(cnt_h, 1), x[:, 0])
            dh = np.where(hv, h - base[:, None], 0.0)
        xv = ~np.isnan(x)
        dx = np.where(xv, x - base[:, None], 0.0)
        s1 = dh.sum(axis=1)[:, None]
        s2 = np.einsum("ij,ij->i", dh, dh)[:, None]
        if n == 1:
            sum1, sum2, cnt = s1, s2, cnt_h[:, None]
        else:  # exclusive prefix sums: points 0..j-1 of the batch, history columns 0..j-1
            left, left2, leftc = dh[:, : n - 1], dh[:, : n - 1] ** 2, hv[:, : n - 1]
            ent, ent2, entc = dx[:, : n - 1], dx[:, : n - 1] ** 2, xv[:, : n - 1]
            zero = np.zeros((k, 1))
            sum1 = s1 + np.concatenate([zero, np.cumsum(ent - left, axis=1)], axis=1)
            sum2 = s2 + np.concatenate([zero, np.cumsum(ent2 - left2, axis=1)], axis=1)
            moved = entc.astype(np.int64) - leftc
            cnt = cnt_h[:, None] + np.concatenate([zero, np.cumsum(moved, axis=1)], axis=1)
        return self._finish(rows, x, base, sum1, sum2, cnt)

    def tick(self, rows: Arr, x: F64) -> tuple[F64, F64, F64] | None:
        """One reading for every row (``rows``: all of them), every row past warm-up:
        :meth:`score` from running sums kept per row, so a live tick reads and writes a few
        values per key instead of whole windows, in few array operations (its latency is
        mostly their fixed cost). The sums (and ``cnt``, the values in the window) are
        re-made from the window when a bulk pass changed the row, and for one key every 16
        ticks (each key in turn), so rounding does not build up. None when a row is not past
        warm-up (or has learnt nothing)."""
        det = self.det
        w = det.window
        if not self.warm:  # (n only grows: once every row is past warm-up, it stays so)
            if self.n.min() < max(1, det.warmup):
                return None
            self.warm = True
        self.ticks += 1
        if self.ticks % 16 == 0:  # every 16 ticks the next key's sums are re-made
            self.fresh[(self.ticks // 16) % len(self.fresh)] = False
        if not self.fresh.all():
            self._refresh(np.flatnonzero(~self.fresh))
        if not self.full:  # (windows only fill: once every window is full, it stays so)
            self.full = bool((self.cnt == w).all())
        den = w if self.full else self.cnt
        mean = self.s1 / den
        std = np.sqrt(np.maximum(self.s2 / den - mean * mean, 0.0))
        centre = self.c + mean
        # std is kept above 0 and x is finite: raw is finite
        raw = np.abs(x - centre) / np.maximum(std, self.floor)
        return raw, centre, det.level * std

    def _refresh(self, r: Arr) -> None:
        """Re-make the running sums of rows ``r`` from their windows (NaN: not filled yet)."""
        h = self.h[r]
        if self.full:
            c = h.mean(axis=1)
            d = h - c[:, None]
        else:
            valid = h == h
            cnt = np.count_nonzero(valid, axis=1)
            c = np.where(valid, h, 0.0).sum(axis=1) / np.maximum(cnt, 1)
            d = np.where(valid, h - c[:, None], 0.0)
            self.cnt[r] = cnt
        self.c[r], self.s1[r], self.s2[r] = c, d.sum(axis=1), np.einsum("ij,ij->i", d, d)
        self.floor[r] = 1e-12 * (1 + np.abs(c))
        self.fresh[r] = True

    def learn_tick(self, rows: Arr, learnt: Arr | None, x: F64) -> None:
        """Rows (all of them) learnt their reading where ``learnt`` (None: every row): it
        replaces the oldest value of the ring, and the running sums move with it. In a
        window still filling up the oldest slot is empty (NaN): counted as the centre ``c``
        (adding nothing to the sums), and the window's count grows."""
        w = self.det.window
        if learnt is None:  # every row: whole arrays, no indexing
            old = self.h[rows, self.head]
            if not self.full:
                empty = old != old
                old = np.where(empty, self.c, old)
                self.cnt += empty
            step = x - old
            self.s1 += step
            self.s2 += step * (x + old - 2 * self.c)  # (x-c)^2 - (old-c)^2
            self.h[rows, self.head] = x
            np.remainder(self.head + 1, w, out=self.head)
            self.n += 1
            return
        r = np.flatnonzero(learnt)
        head, xr, cr = self.head[r], x[r], self.c[r]
        old = self.h[r, head]
        if not self.full:
            empty = old != old
            old = np.where(empty, cr, old)
            self.cnt[r] += empty
        step = xr - old
        self.s1[r] += step
        self.s2[r] += step * (xr + old - 2 * cr)
        self.h[r, head] = xr
        self.head[r] = (head + 1) % w
        self.n[r] += 1

    def _finish(
        self, rows: Arr, x: F64, base: F64, sum1: F64, sum2: F64, cnt: Arr
    ) -> tuple[F64, F64, F64]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sum1 / cnt
            std = np.sqrt(np.maximum(sum2 / cnt - mean**2, 0.0))
            raw = np.abs(x - base[:, None] - mean) / np.maximum(
                std, 1e-12 * (1 + np.abs(base[:, None]))
            )
        raw = np.where(cnt > 0, np.nan_to_num(raw, nan=0.0, posinf=1e6), 0.0)
        raw = raw * ((self.n[rows][:, None] + np.arange(x.shape[1])) >= self.det.warmup)
        m = base[:, None] + np.nan_to_num(mean, nan=0.0)
        return raw, m, self.det.level * std

    def _score_long(self, rows: Arr, h: F64, x: F64) -> tuple[F64, F64, F64]:
        w = self.det.window
        k, n = x.shape
        has = np.asarray(~np.isnan(h).all(axis=1))
        base = np.where(has, np.nanmean(np.where(has[:, None], h, 0.0), axis=1), x[:, 0])
        z = np.concatenate([h, x], axis=1)
        valid = ~np.isnan(z)
        d = np.where(valid, z - base[:, None], 0.0)
        zero = np.zeros((k, 1))
        c1 = np.concatenate([zero, np.cumsum(d, axis=1)], axis=1)
        c2 = np.concatenate([zero, np.cumsum(d * d, axis=1)], axis=1)
        cn = np.concatenate([zero, np.cumsum(valid, axis=1)], axis=1)
        end = w + np.arange(n)
        cnt = cn[:, end] - cn[:, end - w]
        return self._finish(
            rows, x, base, c1[:, end] - c1[:, end - w], c2[:, end] - c2[:, end - w], cnt
        )

    def learn(self, rows: Arr, f: Arr) -> None:
        _slide(self.h, rows, self.hx, self.x, f)  # rows that moved are now oldest first
        moved = rows[f > 0]
        self.head[moved] = 0
        self.fresh[moved] = False
        self.n[rows] += f

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"] = _unpad(self._ordered(np.array([i]))[0]), int(self.n[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = _pack([s["hist"]], self.det.window)[0]
        self.n[i] = s["n"]
        self.head[i], self.fresh[i] = 0, False
        self.warm = self.full = False

    def extend(self, other: _Z) -> None:
        self.h = np.concatenate([self.h, other.h])
        self.n = np.concatenate([self.n, other.n])
        self.warm = self.full = False
        for name in ("head", "c", "s1", "s2", "floor", "cnt", "fresh"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


class _E(Model):
    def __init__(self, det: EWMA, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = _Ewma(det.alpha, sts)

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        m, v, self.m_after, self.v_after = self.ew.prefix(rows, x)
        std = np.sqrt(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.abs(x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e6) * (
            (self.ew.n[rows][:, None] + np.arange(x.shape[1])) >= self.det.warmup
        )
        return raw, m, self.det.level * std

    def learn(self, rows: Arr, f: Arr) -> None:
        self.ew.learn(rows, f, self.m_after, self.v_after)

    def tick(self, rows: Arr, x: F64) -> tuple[F64, F64, F64] | None:
        got = self.ew.tick(self.det.warmup)
        if got is None:
            return None
        m, std = got
        # (past warm-up, m is finite and std is kept above 0: raw is finite)
        raw = np.abs(x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        return raw, m, self.det.level * std

    def learn_tick(self, rows: Arr, learnt: Arr | None, x: F64) -> None:
        self.ew.learn_tick(learnt, x)

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s)

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.ew.load(i, s)

    def extend(self, other: _E) -> None:
        self.ew.extend(other.ew)


class _C(Model):
    def __init__(self, det: CUSUM, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = _Ewma(det.base.alpha, [s["ew"] for s in sts])
        self.sp = np.array([s["sp"] for s in sts], np.float64)
        self.sn = np.array([s["sn"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        m, v, self.m_after, self.v_after = self.ew.prefix(rows, x)
        std = np.sqrt(v)
        # (x is finite where it counts and std is kept above 0: z is finite there; NaN only
        # in the padding past each row's points, which no decision reads)
        z = (x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        n0 = self.n[rows]
        if len(n0) and n0.min() < self.det.warmup:
            z = z * ((n0[:, None] + np.arange(x.shape[1])) >= self.det.warmup)
        # both one-sided sums at once: S_t = max(0, S_{t-1} + y_t), vectorised (Lindley)
        y = np.empty((2, *z.shape))
        np.subtract(z, self.det.k, out=y[0])
        np.subtract(-self.det.k, z, out=y[1])
        span = z.shape[1]
        # running sums; for short passes as a product with a triangle of ones (faster)
        short = span <= 96
        c = np.where(y == y, y, 0.0) @ _ones_upper(span) if short else np.cumsum(y, axis=2)
        s0 = np.empty((2, len(rows), 1))
        s0[0, :, 0], s0[1, :, 0] = self.sp[rows], self.sn[rows]
        sums = c - np.minimum(np.minimum.accumulate(c, axis=2), -s0)
        self.sps, self.sns = sums[0], sums[1]
        return np.maximum(self.sps, self.sns), m, 3 * std

    def learn(self, rows: Arr, f: Arr) -> None:
        moved = np.flatnonzero(f > 0)
        self.sp[rows[moved]] = self.sps[moved, f[moved] - 1]
        self.sn[rows[moved]] = self.sns[moved, f[moved] - 1]
        self.ew.learn(rows, f, self.m_after, self.v_after)
        self.n[rows] += f

    def tick(self, rows: Arr, x: F64) -> tuple[F64, F64, F64] | None:
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

    def learn_tick(self, rows: Arr, learnt: Arr | None, x: F64) -> None:
        if learnt is None:
            self.sp, self.sn = self.tp, self.tn
            self.n += 1
        else:
            self.sp = np.where(learnt, self.tp, self.sp)
            self.sn = np.where(learnt, self.tn, self.sn)
            self.n += learnt
        self.ew.learn_tick(learnt, x)

    def forget(self, rows: Arr) -> None:
        self.sp[rows] = 0.0
        self.sn[rows] = 0.0

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s["ew"])
        s["sp"], s["sn"], s["n"] = float(self.sp[i]), float(self.sn[i]), int(self.n[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.ew.load(i, s["ew"])
        self.sp[i], self.sn[i], self.n[i] = s["sp"], s["sn"], s["n"]

    def extend(self, other: _C) -> None:
        self.ew.extend(other.ew)
        self.sp = np.concatenate([self.sp, other.sp])
        self.sn = np.concatenate([self.sn, other.sn])
        self.n = np.concatenate([self.n, other.n])


class _M(Model):
    """Stacked robust z (MAD): history of learnt values (or differences), the median and
    scaled MAD in force, the last learnt reading. The estimates are re-made each time a
    key's learnt count reaches a multiple of ``stride``: all such refreshes of a pass at once,
    as medians over a (keys, refreshes, window) block."""

    def __init__(self, det: MAD, sts: list[dict[str, Any]]) -> None:
        self.det = det
        w = det.window
        self.h = _pack([s["hist"] for s in sts], w)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.med = np.array([s["med"] for s in sts], np.float64)
        self.mad = np.array([s["mad"] for s in sts], np.float64)
        self.prev = np.array([np.nan if s["prev"] is None else s["prev"] for s in sts])

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        det = self.det
        w, s = det.window, det.stride
        k, span = x.shape
        n0 = self.n[rows]
        if det.diff:
            p0 = self.prev[rows]
            p0 = np.where(np.isnan(p0), x[:, 0], p0)
            y = np.diff(np.concatenate([p0[:, None], x], axis=1), axis=1)
        else:
            y = x
        self.hx, self.y, self.x = self.h[rows], y, x
        z = np.concatenate([self.hx, y], axis=1)
        # refreshes: after j points of this pass, where n0 + j is a multiple of the stride
        self.first = first = s - n0 % s  # 1..s
        n_ref = int(max(0, (span - int(first.min())) // s + 1))
        if n_ref:
            jr = first[:, None] + s * np.arange(n_ref)  # (k, R)
            # refreshes past a row's last point are never used: point them at a window
            # without padding, so the medians need no NaN handling
            rem = np.count_nonzero(~np.isnan(x), axis=1)
            jr = np.where(jr <= rem[:, None], jr, 0)
            win = z[np.arange(k)[:, None, None], jr[:, :, None] + np.arange(w)]  # (k, R, w)
            if np.isnan(win).any():  # histories still filling up (a window may be empty)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    m = np.nanmedian(win, axis=2)
                    d = np.nanmedian(np.abs(win - m[:, :, None]), axis=2) * 1.4826
            else:
                m = _median_last(win)
                d = _median_last(np.abs(win - m[:, :, None])) * 1.4826
            self.ests = (m, d)
        else:
            self.ests = (np.empty((k, 0)), np.empty((k, 0)))
        med, mad = self._in_force(rows, np.arange(span)[None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            zz = np.abs(y - med) / np.maximum(mad, 1e-12 * (1 + np.abs(med)))
        zz = np.nan_to_num(zz, nan=0.0, posinf=1e6)
        if len(n0) and n0.min() < det.warmup:
            zz = zz * ((n0[:, None] + np.arange(span)) >= det.warmup)
        centre = x - y + med if det.diff else med
        return zz, centre, det.level * mad

    def _in_force(self, rows: Arr, j: Arr) -> tuple[F64, F64]:
        """Median and MAD in force before point j of the pass (j: (k, m) or (k, 1))."""
        m, d = self.ests
        cnt = np.where(
            j >= self.first[:, None], (j - self.first[:, None]) // self.det.stride + 1, 0
        )
        if not m.shape[1]:
            return (
                np.broadcast_to(self.med[rows][:, None], cnt.shape),
                np.broadcast_to(self.mad[rows][:, None], cnt.shape),
            )
        at = np.clip(cnt - 1, 0, m.shape[1] - 1)
        ri = np.arange(len(rows))[:, None]
        med = np.where(cnt > 0, m[ri, at], self.med[rows][:, None])
        mad = np.where(cnt > 0, d[ri, at], self.mad[rows][:, None])
        return med, mad

    def learn(self, rows: Arr, f: Arr) -> None:
        moved = f > 0
        if not moved.any():
            return
        med, mad = self._in_force(rows, f[:, None])  # the estimates in force next
        self.med[rows] = med[:, 0]
        self.mad[rows] = mad[:, 0]
        _slide(self.h, rows, self.hx, self.y, f)
        self.prev[rows[moved]] = self.x[np.flatnonzero(moved), f[moved] - 1]
        self.n[rows] += f

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"] = _unpad(self.h[i]), int(self.n[i])
        s["med"], s["mad"] = float(self.med[i]), float(self.mad[i])
        s["prev"] = None if np.isnan(self.prev[i]) else float(self.prev[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = _pack([s["hist"]], self.det.window)[0]
        self.n[i], self.med[i], self.mad[i] = s["n"], s["med"], s["mad"]
        self.prev[i] = np.nan if s["prev"] is None else s["prev"]

    def extend(self, other: _M) -> None:
        for name in ("h", "n", "med", "mad", "prev"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def _median_last(a: F64) -> F64:
    """np.median(a, axis=-1) for arrays without NaN (the same values: the middle element, or
    the mean of the two middle ones). A full sort along the last axis (numpy's SIMD sort)
    is several times faster here than np.median's partition at two positions."""
    w = a.shape[-1]
    h = w // 2
    srt = np.sort(a, axis=-1)
    if w % 2:
        out: F64 = srt[..., h]
        return out
    return (srt[..., h - 1] + srt[..., h]) / 2.0


def _model(det: Detector, sts: list[dict[str, Any]]) -> Model:
    if isinstance(det, MAD):
        return _M(det, sts)
    if isinstance(det, ZScore):
        return _Z(det, sts)
    if isinstance(det, CUSUM):
        return _C(det, sts)
    if isinstance(det, EWMA):
        return _E(det, sts)
    from edgeflow.ops.detect_bulk_auto import model_of  # auto's other parts

    return model_of(det, sts)


class Stacked:
    """The detection state of every key of a shard, as rows of arrays: the model's
    (:class:`_Z`, :class:`_E`, :class:`_C`), and the Driver's streak and cooldown counters.
    Keys get a row the first time they are seen; rows are never reused."""

    reach_hint: int | None = None  # the first pass's span, None: the whole grid (run_stacked)
    #: the layout of the arrays of this class and its models, kept in snapshots (pickles of
    #: the arrays: fast). Bump it when their attributes change: a snapshot of another
    #: layout is then converted on load (see __setstate__).
    LAYOUT = 2

    def __init__(self, driver: Driver) -> None:
        self.layout = Stacked.LAYOUT
        self.driver = driver
        self.rows: dict[str, int] = {}
        self.names: list[str] = []
        self.model = _model(driver.detector, [])
        self.all_rows = np.zeros(0, np.int64)  # every row, in order
        self.streak = np.zeros(0, np.int64)
        self.since = np.zeros(0, np.int64)
        self._last_names: object = None
        self._last_rows = np.empty(0, np.int64)
        self._in_order = False
        self.quiet = False  # known: no key in a streak of anomalies (every streak is 0)

    def __len__(self) -> int:
        return len(self.names)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A snapshot of another layout (an older edgeflow's) is read out key by key with
        today's methods, as each key's Driver state, and laid out again."""
        self.__dict__.update(state)
        if state.get("layout") != Stacked.LAYOUT:
            keys = [self.driver_state(r) for r in range(len(self.names))]
            self.__dict__ = _restore(self.driver, list(self.names), keys).__dict__

    def rows_of(self, names: tuple[str, ...] | list[str]) -> Arr:
        """The row of each name, adding rows for names not seen before."""
        if names is self._last_names:  # a source reuses its key tuple batch after batch
            return self._last_rows
        out = np.empty(len(names), np.int64)
        new: list[str] = []
        for i, name in enumerate(names):
            r = self.rows.get(name)
            if r is None:
                r = self.rows[name] = len(self.names)
                self.names.append(name)
                new.append(name)
            out[i] = r
        if new:
            det = self.driver.detector
            self.model.extend(_model(det, [det.init() for _ in new]))
            self.all_rows = np.arange(len(self.names))
            self.streak = np.concatenate([self.streak, np.zeros(len(new), np.int64)])
            self.since = np.concatenate([self.since, np.full(len(new), 1 << 30, np.int64)])
        self._last_names, self._last_rows = names, out
        self._in_order = len(out) == len(self.names) and bool((out == np.arange(len(out))).all())
        return out

    def rows_in_order(self, rows: Arr) -> bool:
        """Whether ``rows`` (as :meth:`rows_of` last returned) is every row, in order."""
        return rows is self._last_rows and self._in_order

    def driver_state(self, r: int) -> dict[str, Any]:
        """Row r as the Driver's per-key state (for a key that adapts, finishing in the Driver)."""
        st = self.driver.init()
        self.model.scatter(r, st["det"])
        st["streak"], st["since_event"] = int(self.streak[r]), int(self.since[r])
        return st

    def load(self, r: int, st: dict[str, Any]) -> None:
        self.model.load(r, st["det"])
        self.streak[r], self.since[r] = st["streak"], st["since_event"]
        self.quiet = False

    def run(self, rows: Arr, xmat: F64, lens: Arr) -> Events:
        """The events of a grid of keys' points (see :func:`run_stacked`)."""
        return run_stacked(self, rows, xmat, lens)

    def tick(self, x: F64) -> Events | None:
        """A live tick: one reading for every key, keys in row order. The same result as
        :meth:`run` with the fewest array operations, for models that have a tick form;
        None (nothing done) when the model or a key's state needs the general path (another
        model, a new key, a key in warm-up). Keys adapting to a lasting change (``adapt_after``
        anomalies in a row) learn their reading, anomalous or not, as the Driver's do."""
        model = self.model
        if len(x) != len(self.names):
            return None
        driver = self.driver
        adapt = driver.adapt_after
        adapting = None  # keys past ``adapt_after`` anomalies in a row learn this one too
        if not self.quiet and adapt is not None:
            past = self.streak >= adapt
            adapting = past if past.any() else None
        rows = self.all_rows
        got = model.tick(rows, x)
        if got is None:
            return None
        raw, centre, half = got
        flagged, anomalous = _Threshold(driver.detector.level, driver.decision.value).flags(raw)
        events = Events()
        if not anomalous:
            model.learn_tick(rows, None, x)  # every key learns
            self.since += 1
            if not self.quiet:
                self.streak[:] = 0
                self.quiet = True  # no key has a streak of anomalies
            return events
        self.quiet = False
        learnt = ~flagged if adapting is None else ~flagged | adapting
        model.learn_tick(rows, learnt, x)
        model.forget(rows[~learnt])  # anomalies not learnt (CUSUM restarts its sums)
        since, streak = self.since, self.streak
        since += 1  # learnt: one more point; flagged: the anomaly counts too
        ev = flagged & (since > driver.decision.cooldown)
        since[ev] = 0
        np.copyto(streak, np.where(flagged, streak + 1, 0))
        r = np.flatnonzero(ev)
        if len(r):
            mid, dev, rr = centre[r], half[r], raw[r]
            events.add(r, np.zeros(len(r), np.int64), calibrate(rr, driver.detector.level), rr,
                       mid - dev, mid + dev)  # fmt: skip
        return events


def _restore(driver: Driver, names: list[str], keys: list[dict[str, Any]]) -> Stacked:
    """A :class:`Stacked` from each key's Driver state."""
    out = Stacked(driver)
    for r, st in zip(out.rows_of(names).tolist(), keys, strict=True):
        out.load(r, st)
    return out


class Events:
    """What :func:`run_stacked` found: the anomalies that raise an event, as grid row and
    column with their score, raw statistic and expected range."""

    def __init__(self) -> None:
        self.parts: list[tuple[Arr, ...]] = []

    def add(self, *cols: Arr) -> None:
        if len(cols[0]):
            self.parts.append(cols)

    def arrays(self) -> tuple[Arr, ...]:
        """(grid row, column, score, raw, low, high), in no particular order."""
        if not self.parts:
            return tuple(np.empty(0, t) for t in (np.int64, np.int64, *[np.float64] * 4))
        return tuple(np.concatenate(c) for c in zip(*self.parts, strict=True))


def run_stacked(
    stacked: Stacked,
    rows: Arr,
    xmat: F64,
    lens: Arr,
    *,
    every_anomaly: bool = False,
    ranges: tuple[F64, F64] | None = None,
) -> Events:
    """Score and learn ``xmat`` (row i: the points of the key at state row ``rows[i]``, the
    first ``lens[i]`` of them valid) with one-at-a-time semantics; the state moves on.

    Returns the anomalies that raise an event or, with ``every_anomaly``, every anomaly
    (an ensemble decides its events over all its parts' anomalies). ``ranges``: (low, high)
    matrices shaped like ``xmat`` that receive every point's expected range."""
    driver = stacked.driver
    det, dec = driver.detector, driver.decision
    thr, cooldown, adapt = dec.value, dec.cooldown, driver.adapt_after
    k, width = xmat.shape
    events = Events()
    model, streak, since = stacked.model, stacked.streak, stacked.since
    stacked.quiet = False  # streaks change here
    pos = np.zeros(k, np.int64)
    handoff: list[int] = []
    adapting = streak[rows] >= adapt if adapt is not None else np.zeros(k, bool)
    handoff.extend(np.flatnonzero(adapting).tolist())
    active = np.flatnonzero(~adapting & (lens > 0))
    first = True
    # points per later pass: about twice the recent gap between anomalies. A shard whose
    # keys alarm often starts the next batch with passes of that size too (scoring a whole
    # grid when each key's first anomaly comes within a few points wastes most of it)
    hint = stacked.reach_hint
    reach = 96 if hint is None else hint
    found = 0
    decide = _Threshold(det.level, thr)
    while len(active):
        g = rows[active]  # state rows of the active grid rows
        rem = lens[active] - pos[active]
        lim = model.limit(g)
        # after the first pass only keys that hit an anomaly remain: short passes suffice
        span = int(rem.max()) if first and hint is None else min(int(rem.max()), reach)
        if lim is not None:  # a row decides no further than its model's next refresh
            span = min(int(rem.max()), int(lim.max()))
            rem = np.minimum(rem, lim)
        inside = np.arange(span) < rem[:, None]
        whole = first and span == width and len(active) == k
        if whole:
            x = xmat  # the whole grid: no gather
        else:
            cols = pos[active][:, None] + np.arange(span)
            x = np.where(inside, xmat[active[:, None], np.minimum(cols, width - 1)], np.nan)
        first = False
        raw, centre, half = model.score(g, x)  # expected range: centre -/+ half
        flagged, _ = decide.flags(raw, inside)
        has = flagged.any(axis=1)
        # points before the first anomaly, and points decided in this pass
        f = np.where(has, np.argmax(flagged, axis=1), np.minimum(rem, span))
        if ranges is not None:
            _keep_ranges(ranges, active, pos, centre, half, np.where(has, f + 1, f), whole)
        model.learn(g, f)
        since[g] += f
        streak[g] = np.where(f > 0, 0, streak[g])
        if has.any():
            hit, gh, fh = active[has], g[has], f[has]
            # scoring past a key's next anomaly is wasted: size the next pass to the gaps
            reach = int(min(96, max(8, 2 * (int(fh.sum()) / len(fh) + 1))))
            found += len(fh)
            model.forget(gh)
            ev = since[gh] + 1 > cooldown
            keep = np.ones(len(gh), bool) if every_anomaly else ev
            if keep.any():
                r = np.flatnonzero(has)[keep]
                c = fh[keep]
                mid, dev = centre[r, c], half[r, c]
                rc = raw[r, c]
                events.add(
                    hit[keep],
                    pos[hit][keep] + c,
                    calibrate(rc, det.level),
                    rc,
                    mid - dev,
                    mid + dev,
                )
            since[gh] = np.where(ev, 0, since[gh] + 1)
            streak[gh] += 1
        else:  # no key met an anomaly within reach: look further
            reach = min(4 * reach, width)
        pos[active] += np.where(has, f + 1, f)
        done = pos[active] >= lens[active]
        if adapt is not None:
            start = (streak[g] >= adapt) & ~done
            handoff.extend(active[start].tolist())
            done |= start
        active = active[~done]
    # (many anomalies: on average 8 or more a key)
    stacked.reach_hint = reach if found >= 8 * k else None
    for i in handoff:  # adapting keys finish their points in the Driver (one at a time)
        r, p, n = int(rows[i]), int(pos[i]), int(lens[i])
        st = stacked.driver_state(r)
        rest = driver.run(st, xmat[i, p:n])
        stacked.load(r, st)
        at = np.flatnonzero(rest.anomaly if every_anomaly else rest.event)
        events.add(
            np.full(len(at), i), p + at, rest.score[at], rest.raw[at], rest.low[at], rest.high[at]
        )
        if ranges is not None:
            ranges[0][i, p:n], ranges[1][i, p:n] = rest.low, rest.high
    return events


def _keep_ranges(
    ranges: tuple[F64, F64], active: Arr, pos: Arr, centre: F64, half: F64, d: Arr, whole: bool
) -> None:
    """Write the expected range of each active row's first ``d`` points of the pass (the
    points it decided) into the (low, high) matrices, at the row's position."""
    low, high = ranges
    if whole:  # the first pass over the whole grid: later passes overwrite what is redecided
        np.subtract(centre, half, out=low)
        np.add(centre, half, out=high)
        return
    r, c = np.nonzero(np.arange(centre.shape[1]) < d[:, None])
    if len(r):
        mid, dev = centre[r, c], half[r, c]
        low[active[r], pos[active][r] + c] = mid - dev
        high[active[r], pos[active][r] + c] = mid + dev
