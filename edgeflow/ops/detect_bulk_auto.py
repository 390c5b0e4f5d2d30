"""Stacked (across keys) forms of ``detect.auto()``'s other parts, and of ensembles.

:func:`model_of` gives the stacked models of the seasonal-residual and variance-change
detectors (see :mod:`edgeflow.ops.detect_bulk` for the stacked contract).
:class:`StackedEnsemble` runs an ensemble the way :class:`~edgeflow.ops.detect.Driver`
does: every part on its own state rows, deciding and learning on its own; a point is
anomalous when any part says so, its score and raw statistic are those of the part that
scores it highest, its expected range is the first part's, and the ensemble's cooldown
turns anomalies into events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect import Detector, Driver, Seasonal, seasonal_estimate
from edgeflow.ops.detect import _VarianceChange as VarianceChange
from edgeflow.ops.detect_bulk import Arr, Events, Model, Stacked, _pack, _slide, _unpad, run_stacked
from edgeflow.ops.scipy_lazy import lfilter


def _nan_or(values: list[float | None]) -> F64:
    return np.array([np.nan if v is None else v for v in values], np.float64)


class _V(Model):
    """Stacked variance change: fast and slow EW variances of the first difference."""

    def __init__(self, det: VarianceChange, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.prev = _nan_or([s["prev"] for s in sts])
        self.vf = _nan_or([s["vf"] for s in sts])
        self.vs = _nan_or([s["vs"] for s in sts])
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
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
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.abs(np.log((vf + 1e-12) / (vs_before + 1e-12)))
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e6)
        n0 = self.n[rows]
        if len(n0) and n0.min() < det.warmup:
            raw = raw * ((n0[:, None] + np.arange(x.shape[1])) >= det.warmup)
        self.vf_after, self.vs_after, self.x = vf, vs, x
        nan = np.broadcast_to(np.nan, raw.shape)  # no expected range of values
        return raw, nan, nan

    def learn(self, rows: Arr, f: Arr) -> None:
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

    def extend(self, other: _V) -> None:
        for name in ("prev", "vf", "vs", "n"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


class _S(Model):
    """Stacked seasonal residual: history, points learnt, and the period, median and scale
    in force. A row decides no further than its next re-estimate (every ``refresh`` learnt
    points), where all rows due are re-estimated at once (one FFT over their histories)."""

    def __init__(self, det: Seasonal, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.h = _pack([s["hist"] for s in sts], det.window)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.period = np.array([s["period"] for s in sts], np.int64)
        self.med = np.array([s["med"] for s in sts], np.float64)
        self.scale = np.array([s["scale"] for s in sts], np.float64)

    def limit(self, rows: Arr) -> Arr | None:
        every = self.det.refresh
        out: Arr = every - self.n[rows] % every
        return out

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        det = self.det
        w = det.window
        span = x.shape[1]
        self.hx, self.x = self.h[rows], x
        z = np.concatenate([self.hx, x], axis=1)
        # the point one period back (periods are at most half the window: always in z)
        back = w + np.arange(span) - self.period[rows][:, None]
        prev = np.take_along_axis(z, back, axis=1)
        prev = np.where(np.isnan(prev), x, prev)  # before the history starts: no residual
        med = self.med[rows][:, None]
        scale = self.scale[rows][:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.abs(x - prev - med) / np.maximum(scale, 1e-12 * (1 + np.abs(med)))
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e6)
        n0 = self.n[rows]
        if len(n0) and n0.min() < det.warmup:
            raw = raw * ((n0[:, None] + np.arange(span)) >= det.warmup)
        return raw, prev + med, np.broadcast_to(det.level * scale, raw.shape)

    def learn(self, rows: Arr, f: Arr) -> None:
        _slide(self.h, rows, self.hx, self.x, f)
        every = self.det.refresh
        before = self.n[rows] // every
        self.n[rows] += f
        due = self.n[rows] // every != before
        if due.any():
            self._estimate(rows[due])

    def _estimate(self, rows: Arr) -> None:
        """Re-estimate period, median and scale of these rows, as Seasonal._estimate does:
        rows with a full history all at once, the others (a key's first window) one by one."""
        hist = self.h[rows]
        full = ~np.isnan(hist[:, 0])  # histories are right-aligned
        for r in rows[~full].tolist():
            h = _unpad(self.h[r])
            if len(h) >= 16:
                period, med, scale = seasonal_estimate(h[None, :])
                self.period[r], self.med[r], self.scale[r] = period[0], med[0], scale[0]
        if full.any():
            period, med, scale = seasonal_estimate(hist[full])
            rows = rows[full]
            self.period[rows], self.med[rows], self.scale[rows] = period, med, scale

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"], s["period"] = _unpad(self.h[i]), int(self.n[i]), int(self.period[i])
        s["med"], s["scale"] = float(self.med[i]), float(self.scale[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = _pack([s["hist"]], self.det.window)[0]
        self.n[i], self.period[i] = s["n"], s["period"]
        self.med[i], self.scale[i] = s["med"], s["scale"]

    def extend(self, other: _S) -> None:
        for name in ("h", "n", "period", "med", "scale"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def model_of(det: Detector, sts: list[dict[str, Any]]) -> Model:
    if isinstance(det, Seasonal):
        return _S(det, sts)
    if isinstance(det, VarianceChange):
        return _V(det, sts)
    raise TypeError(f"no stacked form of detector {det.name!r}")


class StackedEnsemble:
    """An ensemble's detection state for every key of a shard: one :class:`Stacked` per part
    (the keys get the same row in each) and the ensemble's own cooldown counter."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.parts = [Stacked(p) for p in driver.parts]
        self.since = np.zeros(0, np.int64)

    @property
    def names(self) -> list[str]:
        return self.parts[0].names

    def __len__(self) -> int:
        return len(self.parts[0])

    def rows_of(self, names: tuple[str, ...] | list[str]) -> Arr:
        rows = self.parts[0].rows_of(names)
        for part in self.parts[1:]:
            part.rows_of(names)
        grow = len(self.parts[0]) - len(self.since)
        if grow:
            self.since = np.concatenate([self.since, np.full(grow, 1 << 30, np.int64)])
        return rows

    def run(self, rows: Arr, xmat: F64, lens: Arr) -> Events:
        """The ensemble's events over a grid of keys' points (as :func:`run_stacked`)."""
        low, high = np.empty_like(xmat), np.empty_like(xmat)
        found = []
        for i, part in enumerate(self.parts):
            ranges = (low, high) if i == 0 else None
            gi, ci, score, raw, _, _ = run_stacked(
                part, rows, xmat, lens, every_anomaly=True, ranges=ranges
            ).arrays()
            found.append((gi, ci, score, raw, np.full(len(gi), i)))
        gi, ci, score, raw, part_of = (np.concatenate(c) for c in zip(*found, strict=True))
        out = Events()
        if not len(gi):
            self.since[rows] += lens
            return out
        # one anomaly per point: the part scoring it highest (the first of equals)
        order = np.lexsort((part_of, -score, ci, gi))
        gi, ci, score, raw = gi[order], ci[order], score[order], raw[order]
        first = np.r_[True, (gi[1:] != gi[:-1]) | (ci[1:] != ci[:-1])]
        gi, ci, score, raw = gi[first], ci[first], score[first], raw[first]
        ev = self._events(rows, lens, gi, ci)
        gi, ci = gi[ev], ci[ev]
        out.add(gi, ci, score[ev], raw[ev], low[gi, ci], high[gi, ci])
        return out

    def _events(self, rows: Arr, lens: Arr, gi: Arr, ci: Arr) -> Arr:
        """Which anomalies (sorted by grid row, then column) raise an event: none within
        ``cooldown`` points of the key's last event (the ensemble's counter moves on)."""
        cooldown = self.driver.decision.cooldown
        since = self.since
        start = np.r_[True, gi[1:] != gi[:-1]]
        gap = np.where(start, since[rows[gi]] + ci + 1, np.diff(ci, prepend=0))
        event = gap > cooldown
        for g in np.unique(gi[~event]).tolist():  # keys with close anomalies: in order
            at = np.flatnonzero(gi == g)
            last, before = -1, int(since[rows[g]])
            for j in at.tolist():
                c = int(ci[j])
                event[j] = (c - last if last >= 0 else before + c + 1) > cooldown
                if event[j]:
                    last = c
        since[rows] += lens  # keys without events
        at_event = np.flatnonzero(event)
        g_last = gi[at_event]
        last_col = np.full(len(rows), -1, np.int64)
        np.maximum.at(last_col, g_last, ci[at_event])
        hit = last_col >= 0
        since[rows[hit]] = lens[hit] - 1 - last_col[hit]
        return event
