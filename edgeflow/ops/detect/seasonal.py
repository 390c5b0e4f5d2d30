"""Seasonal residual: :class:`Seasonal` (reference), :func:`seasonal_estimate` (period,
median and scale from the spectrum), :class:`SeasonalStacked` (stacked passes) and the
:func:`seasonal` constructor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import counter, level, points
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.stacked import Rows, StackedModel, pack_rows, slide_rows, unpad_row


class Seasonal(Detector):
    """Seasonal residual: the dominant period P is found from the spectrum (FFT) of the last
    ``window`` normal points (re-estimated every ``refresh`` learnt points; see
    :func:`seasonal_estimate`), and a point is scored by the robust z of its seasonal
    difference x(t) - x(t - P) against the recent differences. Catches broken seasonality
    and frequency changes that stay inside the usual range of values. For a signal with no
    clear period, or one too long to be seen twice in the window, it falls back to P = 1."""

    name = "seasonal"
    #: the period is estimated from at least 16 points (see :func:`seasonal_estimate`)
    ARGS = (points("window", 16), level(), points("refresh", 1), counter("warmup"))

    def __init__(
        self, window: int = 512, level: float = 4.0, refresh: int = 128, warmup: int = 128
    ) -> None:
        self.window, self.level, self.refresh, self.warmup = window, level, refresh, warmup

    def init(self) -> dict[str, Any]:
        return {"hist": np.empty(0), "n": 0, "period": 1, "med": 0.0, "scale": 0.0}

    def _estimate(self, st: dict[str, Any]) -> None:
        h = st["hist"]
        if len(h) < 16:
            return
        period, med, scale = seasonal_estimate(h[None, :])
        st["period"], st["med"], st["scale"] = int(period[0]), float(med[0]), float(scale[0])

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        h = st["hist"]
        p = st["period"]
        z = np.concatenate([h, x])
        idx = len(h) + np.arange(len(x))
        prev = np.where(idx - p >= 0, z[np.maximum(idx - p, 0)], x)
        r = x - prev
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.abs(r - st["med"]) / max(st["scale"], 1e-12 * (1 + abs(st["med"])))
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e6) * warm_up_mask(st, len(x), self.warmup)
        width = self.level * st["scale"]
        return Scores(
            raw, calibrate(raw, self.level), prev + st["med"] - width, prev + st["med"] + width
        )

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        st["hist"] = np.concatenate([st["hist"], x])[-self.window :]
        before = st["n"] // self.refresh
        st["n"] += len(x)
        if st["n"] // self.refresh != before:
            self._estimate(st)

    def stacked_model(self, states: list[dict[str, Any]]) -> SeasonalStacked:
        return SeasonalStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "level": self.level, "refresh": self.refresh}


def seasonal_estimate(h: F64) -> tuple[np.ndarray, F64, F64]:
    """Period, median and scaled MAD of the seasonal difference, for each row of ``h``
    (rows of learnt values, oldest first, all of one length W >= 16).

    The period is the dominant one of the spectrum: the row, detrended and Hann-windowed,
    is transformed (FFT), the highest peak is located between bins (Gaussian interpolation),
    and P = W / that frequency when the peak stands out (over 8 times the median bin) and
    the period fits the window at least twice; otherwise P = 1 (no usable season: the
    difference from the previous reading)."""
    m, w = h.shape
    t = np.arange(w) - (w - 1) / 2.0
    centred = h - h.mean(axis=1, keepdims=True)
    slope = centred @ t / (t @ t)
    flat = centred - slope[:, None] * t  # no level, no trend
    spec = np.abs(np.fft.rfft(flat * np.hanning(w), axis=1))
    spec[:, 0] = 0.0
    bins = spec.shape[1]
    k = np.argmax(spec, axis=1)
    rows = np.arange(m)
    peak = spec[rows, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.log(spec[rows, np.clip(k - 1, 0, bins - 1)] + 1e-300)
        lb = np.log(peak + 1e-300)
        lc = np.log(spec[rows, np.clip(k + 1, 0, bins - 1)] + 1e-300)
        bend = la - 2 * lb + lc
        shift = np.where((k > 0) & (k < bins - 1) & (bend < 0), 0.5 * (la - lc) / bend, 0.0)
    freq = k + np.clip(shift, -0.5, 0.5)  # cycles per window
    strong = peak > 8 * median_rows(spec[:, 1:], bins - 1) if bins > 4 else np.zeros(m, bool)
    usable = strong & (freq >= 2.0)  # seen at least twice
    period = np.where(usable, np.rint(w / np.maximum(freq, 1.0)), 1).astype(np.int64)
    period = np.clip(period, 1, w // 2)
    ahead = np.arange(w) + period[:, None]
    resid = np.where(ahead < w, np.take_along_axis(h, np.minimum(ahead, w - 1), axis=1) - h, np.nan)
    count = w - period  # residuals per row (the rest is NaN padding)
    med = median_rows(resid, count)
    scale = median_rows(np.abs(resid - med[:, None]), count) * 1.4826
    return period, med, scale


def median_rows(a: F64, count: np.ndarray | int) -> F64:
    """The median of each row's first ``count`` values after sorting (NaN sorts last): what
    np.median gives for the row's valid values."""
    srt = np.sort(a, axis=1)
    c = np.broadcast_to(np.asarray(count, np.int64), (len(a),))
    ar = np.arange(len(a))
    out: F64 = (srt[ar, (c - 1) // 2] + srt[ar, c // 2]) / 2.0
    return out


class SeasonalStacked(StackedModel):
    """Stacked seasonal residual: history, points learnt, and the period, median and scale
    in force. A row decides no further than its next re-estimate (every ``refresh`` learnt
    points), where all rows due are re-estimated at once (one FFT over their histories)."""

    def __init__(self, det: Seasonal, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.h = pack_rows([s["hist"] for s in sts], det.window)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.period = np.array([s["period"] for s in sts], np.int64)
        self.med = np.array([s["med"] for s in sts], np.float64)
        self.scale = np.array([s["scale"] for s in sts], np.float64)

    def limit(self, rows: Rows) -> Rows | None:
        every = self.det.refresh
        out: Rows = every - self.n[rows] % every
        return out

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
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
            raw = raw * warm_up_rows(n0, span, det.warmup)
        return raw, prev + med, np.broadcast_to(det.level * scale, raw.shape)

    def learn(self, rows: Rows, f: Rows) -> None:
        slide_rows(self.h, rows, self.hx, self.x, f)
        every = self.det.refresh
        before = self.n[rows] // every
        self.n[rows] += f
        due = self.n[rows] // every != before
        if due.any():
            self._estimate(rows[due])

    def _estimate(self, rows: Rows) -> None:
        """Re-estimate period, median and scale of these rows, as Seasonal._estimate does:
        rows with a full history all at once, the others (a key's first window) one by one."""
        hist = self.h[rows]
        full = ~np.isnan(hist[:, 0])  # histories are right-aligned
        for r in rows[~full].tolist():
            h = unpad_row(self.h[r])
            if len(h) >= 16:
                period, med, scale = seasonal_estimate(h[None, :])
                self.period[r], self.med[r], self.scale[r] = period[0], med[0], scale[0]
        if full.any():
            period, med, scale = seasonal_estimate(hist[full])
            rows = rows[full]
            self.period[rows], self.med[rows], self.scale[rows] = period, med, scale

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"], s["period"] = unpad_row(self.h[i]), int(self.n[i]), int(self.period[i])
        s["med"], s["scale"] = float(self.med[i]), float(self.scale[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = pack_rows([s["hist"]], self.det.window)[0]
        self.n[i], self.period[i] = s["n"], s["period"]
        self.med[i], self.scale[i] = s["med"], s["scale"]

    def extend(self, other: SeasonalStacked) -> None:
        for name in ("h", "n", "period", "med", "scale"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def seasonal(
    *, window: int = 512, level: float = 4.0, refresh: int = 128, warmup: int = 128
) -> Seasonal:
    """Seasonal residual against the dominant period found by FFT (see :class:`Seasonal`)."""
    return Seasonal(window, level, refresh, warmup)
