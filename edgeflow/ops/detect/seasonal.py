"""Seasonal residual: :class:`Seasonal` (reference), :func:`seasonal_estimate` (period,
median and scale from the spectrum), :class:`SeasonalStacked` (stacked passes) and the
:func:`seasonal` constructor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import counter, level, points
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.decision import ADAPT_AFTER
from edgeflow.ops.detect.mad import finite_raw, floored_before, robust_spread
from edgeflow.ops.detect.spread import floored, resolution
from edgeflow.ops.detect.stacked import (
    Rows,
    StackedModel,
    pack_rows,
    slide_joined_rows,
    unpad_row,
)

#: a period is searched for only when the history holds at least this many points
MIN_HISTORY = 16
#: an anomaly's place in the history takes the expected value moved towards the anomaly
#: by at most this fraction of the alarm width (see :class:`Seasonal`)
CLIP = 0.5
#: a minimum of the mean square seasonal differences is sharp (kept as the period, not
#: refined) when the lags beside it are this many times larger
SHARP = 1.5
#: a lasting change that alarms only now and then: when this many of the last :data:`RING`
#: readings were anomalies off the pattern on the same side, the history moves by their
#: median residual (see :class:`Seasonal`)
SHIFT_AFTER, RING = 12, 16
#: what :func:`seasonal_estimate` returns, by the names of the state
ESTIMATES = ("period", "med", "scale", "vmed", "vscale")
#: a period is used only if the signal differs from itself one period back by less than
#: this fraction of how it differs half a period back (see :func:`seasonal_estimate`)
REPEATS = 0.5


class Seasonal(Detector):
    """Seasonal residual: the dominant period P is found from the spectrum (FFT) of the last
    ``window`` readings (estimated at the end of the warm-up, then every ``refresh``
    readings and, while no period is known, also at 2, 4, 8, ... times the warm-up:
    :meth:`next_estimate`; see :func:`seasonal_estimate`), and a point is scored by the robust z of its
    seasonal difference x(t) - x(t - P) against the recent differences (their median and
    robust spread, :func:`~edgeflow.ops.detect.mad.robust_spread`, never below the key's
    resolution). Catches broken seasonality and frequency changes that stay inside the
    usual range of values. For a signal with no clear period, or one too long to be seen
    twice in the window, it falls back to P = 1, and a point is then scored by the smaller
    of the robust z of its first difference and the robust z of its value in the window:
    an alarm is an unusual change to an unusual value, so a square wave whose period is not
    yet known does not alarm at an edge back to a level the window holds.

    The history is kept in time order: an anomaly is not learnt, but its place is taken by
    what the model expected there (x(t - P) plus the median difference) moved towards the
    anomaly by at most half the alarm width, so the readings one period back stay one
    period back (skipping anomalies would shift the phase and turn a square wave's every
    edge into an alarm) and a spike leaves no echo one period later. A lasting change that
    only sometimes alarms (a step near the alarm level) is caught up with: when
    :data:`SHIFT_AFTER` of the last :data:`RING` readings were anomalies on the same side of
    the pattern, the history before the change moves by their median residual and the
    anomalies since take their places (:func:`rebased`). Without a period (P = 1) the
    anomaly itself stays: the next reading is compared with it, so a lasting step is one
    alarm and a spike two (its rise and its fall, one event).

    A lasting change raises at most :attr:`adapts_within` alarms. Without a period a step
    is one alarm (measured on a +8 sigma step in unit noise, 20 seeds: at most 2). With one,
    the history is re-based after :data:`SHIFT_AFTER` anomalies on one side of the pattern
    (or by :meth:`adapt` after 16 in a row): on a +8 sigma step of a 5-sigma sine of period
    32, 64 or 200 (20 seeds each) at most 13 alarms beyond the noise's own, none later than
    13 points after the step."""

    name = "seasonal"
    #: the period is estimated from at least 16 points (see :func:`seasonal_estimate`)
    ARGS = (points("window", 16), level(), points("refresh", 1), counter("warmup"))
    #: the most alarms a lasting +8 sigma step raises (see the class docstring)
    adapts_within = 32
    #: the warm-up block is learnt whole, in time order: leaving out its outliers would
    #: shift the phase of everything after them (the period and the spread of seasonal
    #: differences are robust to a few outliers anyway)
    warm_up_in_order = True

    def __init__(
        self, window: int = 512, level: float = 4.0, refresh: int = 256, warmup: int = 128
    ) -> None:
        self.window, self.level, self.refresh, self.warmup = window, level, refresh, warmup

    def init(self) -> dict[str, Any]:
        return {
            "hist": np.empty(0),
            "n": 0,
            "period": 1,
            "med": 0.0,
            "scale": 0.0,
            "vmed": 0.0,
            "vscale": 0.0,
            "last": None,
            "pend": np.empty(0),
            "ring": np.empty(0),
            "rest": np.empty(0),
        }

    def _estimate(self, st: dict[str, Any]) -> None:
        h = st["hist"]
        if len(h) < MIN_HISTORY:
            return
        period, med, scale, vmed, vscale = seasonal_estimate(h[None, :])
        st["period"], st["med"], st["scale"] = int(period[0]), float(med[0]), float(scale[0])
        st["vmed"], st["vscale"] = float(vmed[0]), float(vscale[0])

    def _back(self, st: dict[str, Any], x: F64) -> F64:
        """Each point's reading one period back (the point itself before the history
        reaches that far: no residual)."""
        h = st["hist"]
        p = st["period"]
        z = np.concatenate([h, x])
        idx = len(h) + np.arange(len(x)) - p
        out: F64 = np.where(idx >= 0, z[np.maximum(idx, 0)], x)
        return out

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        prev = self._back(st, x)
        last = st.get("last")
        last = math.nan if last is None else last
        res = st.get("res", math.inf)
        scale = floored_before(st["scale"], res, last, x, prev)
        raw = np.abs(x - prev - st["med"]) / scale
        if st["period"] == 1:  # no season: an unusual change to an unusual value
            vmed = st.get("vmed", 0.0)
            vscale = floored_before(st.get("vscale", 0.0), res, last, x, vmed)
            raw = np.minimum(raw, np.abs(x - vmed) / vscale)
        raw = finite_raw(raw) * warm_up_mask(st, len(x), self.warmup)
        width = self.level * scale
        return Scores(
            raw, calibrate(raw, self.level), prev + st["med"] - width, prev + st["med"] + width
        )

    def next_estimate(self, n: Any, period: Any) -> Any:
        """The learnt count at which the estimates are next re-made, after ``n`` (scalars or
        arrays): every ``refresh`` readings (at its multiples), and while no period is known
        also at the warm-up's doublings (2, 4, 8, ... times ``warmup``), so a period about
        a quarter of the window long is found once the history holds two of it, not only at
        the next multiple of ``refresh``."""
        every = self.refresh
        regular = (n // every + 1) * every
        base = max(self.warmup, MIN_HISTORY)
        if isinstance(n, int) and isinstance(period, int):  # one key (the Driver): no numpy
            if period > 1:
                return regular
            doubled = base
            while doubled <= n:
                doubled *= 2
            return min(doubled, regular)
        with np.errstate(divide="ignore"):
            k = np.floor(np.log2(np.maximum(n, 1) / base)).astype(np.int64) + 1
        early = np.where(n < base, base, base * 2 ** np.maximum(k, 0))
        return np.where(period > 1, regular, np.minimum(early, regular))

    def points_to_refresh(self, st: dict[str, Any]) -> int:
        """Readings until the next re-estimate (the Driver ends a pass there)."""
        n = int(st["n"])
        return int(self.next_estimate(n, int(st["period"]))) - n

    def _append(self, st: dict[str, Any], x: F64) -> None:
        st["hist"] = np.concatenate([st["hist"], x])[-self.window :]
        due = int(self.next_estimate(int(st["n"]), int(st["period"])))
        first = not st["n"]  # the warm-up block: estimated at once
        st["n"] = _counted(st["n"], len(x), self.warmup)
        if first or st["n"] >= due:
            self._estimate(st)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        tail = x[-RING:]  # the ring's new entries: residuals of the last readings
        resid = np.zeros(len(tail))
        if st["period"] > 1:
            h, p = st["hist"], st["period"]
            at = len(h) + len(x) - len(tail) + np.arange(len(tail)) - p
            back = np.where(at < len(h), h[np.clip(at, 0, max(len(h) - 1, 0))], 0.0)
            back = np.where(at >= len(h), x[np.clip(at - len(h), 0, len(x) - 1)], back)
            back = np.where(at >= 0, back, tail)
            resid = np.where(back == tail, 0.0, tail - (back + st["med"]))
        self._append(st, x)
        st["last"] = float(x[-1])
        st["pend"] = np.empty(0)  # a normal point ends a streak of anomalies
        st["ring"] = np.concatenate([st.get("ring", ()), resid])[-RING:]
        st["rest"] = np.concatenate([st.get("rest", ()), np.zeros(len(tail))])[-RING:]

    def forget(self, st: dict[str, Any], x: float) -> None:
        """An anomaly: the history takes what the model expected in its place (see the
        class docstring); the anomaly is kept (the last :data:`ADAPT_AFTER` of a streak)
        for :meth:`adapt`."""
        kept, resid = x, 0.0
        if st["period"] > 1:
            back = float(self._back(st, np.array([x]))[0])
            if back != x:
                res = st.get("res", math.inf)
                width = CLIP * self.level * float(floored(st["scale"], res, back))
                resid = x - (back + st["med"])
                kept = back + st["med"] + min(max(resid, -width), width)
        ring = np.append(st.get("ring", ()), resid)[-RING:]
        rest = np.append(st.get("rest", ()), x - kept)[-RING:]
        side = (rest != 0) & (ring * np.sign(resid) > 0)  # off the pattern, this side
        if side.sum() >= SHIFT_AFTER:  # a lasting change: the history moves with it
            st["hist"] = rebased(st["hist"], ring, rest, side)
            ring, rest, kept = np.zeros(0), np.zeros(0), x
        st["ring"], st["rest"] = ring, rest
        self._append(st, np.array([kept]))
        st["pend"] = np.append(st.get("pend", ()), x)[-ADAPT_AFTER:]

    def adapt(self, st: dict[str, Any], recent: F64) -> None:
        """A lasting change: the history moves by the change (the median of the streak's
        anomalies less what was kept in their place) and the anomalies take their places,
        so the seasonal differences that follow are against the new level, and the history
        keeps its shape (the period and the spread of its seasonal differences)."""
        pend = st.get("pend", np.empty(0))  # (older snapshots lack it)
        if not len(pend):
            return
        h = st["hist"].copy()
        m = min(len(pend), len(h))
        pend = pend[len(pend) - m :]
        shift = float(np.median(pend - h[len(h) - m :]))
        h += shift
        h[len(h) - m :] = pend
        st["hist"], st["pend"] = h, np.empty(0)
        st["last"] = float(pend[-1])
        # they are learnt readings now: the key's resolution moves on with them
        st["res"], st["res_last"] = resolution(st.get("res", math.inf), st.get("res_last"), pend)

    def stacked_model(self, states: list[dict[str, Any]]) -> SeasonalStacked:
        return SeasonalStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "level": self.level, "refresh": self.refresh}


def rebased(hist: F64, ring: F64, rest: F64, side: np.ndarray) -> F64:
    """The history after a lasting change (before the reading that confirmed it is added):
    ``ring`` holds the residuals of the last readings from the pattern, ``rest`` how far
    each anomaly's reading was from what the history kept in its place (0: learnt),
    ``side`` which are the change's anomalies (the last entry: the confirming reading, not
    yet in ``hist``). The change moved the readings by the median residual of its anomalies
    and began at the first reading off the pattern by over half that: the history before it
    moves by that much, and from there on the anomalies' places take their readings."""
    out = hist.copy()
    shift = float(np.median(ring[side]))
    start = int(np.argmax(ring * np.sign(shift) > abs(shift) / 2))
    since = min(len(ring) - 1 - start, len(out))  # history entries from the change on
    cut = len(out) - since
    out[:cut] += shift
    out[cut:] += rest[len(rest) - 1 - since : len(rest) - 1]
    return out


def _counted(n: Any, added: Any, warmup: int) -> Any:
    """The history count after ``added`` more readings; a key's first block (its warm-up)
    counts as at least ``warmup`` readings, as in :class:`~edgeflow.ops.detect.mad.MAD`."""
    return np.where(n == 0, np.where(added > 0, np.maximum(added, warmup), 0), n + added)


#: rows estimated at once: the spectra and lag tables of a block of rows are several times
#: its size, so thousands of keys re-estimating together go in blocks (bounded memory)
ESTIMATE_ROWS = 128


def seasonal_estimate(h: F64) -> tuple[np.ndarray, F64, F64, F64, F64]:
    """:func:`estimate_rows` on blocks of at most :data:`ESTIMATE_ROWS` rows (row by row the
    same result, in bounded memory)."""
    if len(h) <= ESTIMATE_ROWS:
        return estimate_rows(h)
    parts = [estimate_rows(h[a : a + ESTIMATE_ROWS]) for a in range(0, len(h), ESTIMATE_ROWS)]
    period, med, scale, vmed, vscale = (np.concatenate(c) for c in zip(*parts, strict=True))
    return period, med, scale, vmed, vscale


def estimate_rows(h: F64) -> tuple[np.ndarray, F64, F64, F64, F64]:
    """Period, median and robust spread of the seasonal difference, and median and robust
    spread of the readings, for each row of ``h`` (rows of readings, oldest first, all of
    one length W >= 16).

    The period is the dominant one of the spectrum: the row, detrended and Hann-windowed,
    is transformed (FFT), the highest peak is located between bins (Gaussian interpolation),
    and P = W / that frequency when the peak stands out (over 8 times the median bin) and
    the period fits the window at least twice; otherwise P = 1 (no usable season: the
    difference from the previous reading). A peak only locates the period to within a few
    percent when the window holds few cycles, so P is then refined to the lag within 15 %
    of it at which the row best matches itself (the smallest mean square seasonal
    difference): a square wave's edges line up exactly. A spectral peak of noise (a count
    that mostly repeats has a red spectrum) is rejected: the row must match itself one
    period back much better than half a period back (:data:`REPEATS`). The spread is
    :func:`~edgeflow.ops.detect.mad.robust_spread` of the seasonal differences."""
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
    strong = peak > 8 * _median_rows(spec[:, 1:], bins - 1) if bins > 4 else np.zeros(m, bool)
    usable = strong & (freq >= 2.0)  # seen at least twice
    period = np.where(usable, np.rint(w / np.maximum(freq, 1.0)), 1).astype(np.int64)
    period = np.clip(period, 1, w // 2)
    period = _refine(h, period, usable)
    med, scale = np.empty(m), np.empty(m)
    for p in np.unique(period).tolist():  # rows of one period at a time: no padding
        at = period == p
        med[at], scale[at] = robust_spread(h[at, p:] - h[at, :-p])
    # the readings' own median and spread: read only while there is no season (P = 1)
    vmed, vscale = np.zeros(m), np.zeros(m)
    flat = period == 1
    if flat.any():
        vmed[flat], vscale[flat] = robust_spread(h[flat])
    return period, med, scale, vmed, vscale


def _refine(h: F64, period: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """For rows with a usable period: the lag within 15 % of it (at most half the window)
    with the smallest mean square seasonal difference (the first of equals; squares, so
    that a square wave's edges one point out of line outweigh noise), kept only if its root
    is under :data:`REPEATS` times the one at half the lag (a periodic signal repeats after
    a period and differs most after half of one; noise, a random walk or a mostly
    repeating count do not: P = 1 for them)."""
    if not usable.any():
        return period
    w = h.shape[1]
    out = period.copy()
    rows = np.flatnonzero(usable)
    msd = _mean_square_diffs(h[rows])  # (r, w // 2 + 1): every lag at once
    p = period[rows]
    lo = np.maximum(2, np.floor(p / 1.15)).astype(np.int64)
    hi = np.minimum(w // 2, np.ceil(p * 1.15)).astype(np.int64)
    lags = np.arange(msd.shape[1])
    inside = (lags >= lo[:, None]) & (lags <= hi[:, None])
    best = _vertex(msd, np.argmin(np.where(inside, msd, np.inf), axis=1))
    ar = np.arange(len(rows))
    out[rows] = np.where(msd[ar, best] < REPEATS**2 * msd[ar, best // 2], best, 1)
    return out


def _vertex(msd: F64, best: np.ndarray) -> np.ndarray:
    """The lag nearest the vertex of a parabola fitted (least squares) to each row's mean
    square differences within about 6 % of its lag ``best`` (the smallest one): for a
    smooth rhythm in noise the curve is flat near its minimum and the smallest value falls
    a few lags off; the fit finds the middle. Where the curve is sharp (a square wave's
    V: its neighbours over :data:`SHARP` times the smallest value) the smallest is kept."""
    top = msd.shape[1] - 1
    half = np.clip(best // 16, 2, 32)
    width = int(half.max())
    u = np.arange(-width, width + 1)[None, :]
    use = np.abs(u) <= half[:, None]
    y = np.take_along_axis(msd, np.clip(best[:, None] + u, 1, top), axis=1)
    uu = np.where(use, u, 0)
    k = use.sum(axis=1)
    sq = np.where(use, u * u, 0)
    q = np.where(use, sq - (sq.sum(axis=1) / k)[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (uu * y).sum(axis=1) / (uu * uu).sum(axis=1)
        curve = (q * y).sum(axis=1) / (q * q).sum(axis=1)
        shift = np.where(curve > 0, -slope / (2.0 * curve), 0.0)
    shift = np.clip(np.nan_to_num(shift), -half, half)
    ar = np.arange(len(best))
    around = (msd[ar, np.clip(best - 1, 1, top)] + msd[ar, np.clip(best + 1, 1, top)]) / 2
    sharp = around > SHARP * msd[ar, best]  # a V (edges line up at one lag only): keep it
    out: np.ndarray = np.where(sharp, best, np.clip(np.rint(best + shift), 1, top)).astype(np.int64)
    return out


def _mean_square_diffs(h: F64) -> F64:
    """Mean (x(t + L) - x(t))^2 over the window, for each row and every lag L from 0 to
    half the window, from the autocorrelation (one FFT) and running sums of squares."""
    w = h.shape[1]
    c = h - h.mean(axis=1, keepdims=True)  # differences do not see the level
    f = np.fft.rfft(c, 2 * w, axis=1)
    half = w // 2 + 1
    acf = np.fft.irfft(f.real**2 + f.imag**2, 2 * w, axis=1)[:, :half]  # sum c(t) c(t+L)
    cs = np.concatenate([np.zeros((len(h), 1)), np.cumsum(c * c, axis=1)], axis=1)
    lags = np.arange(half)
    head = cs[:, w - lags]  # sum of c(t)^2, t < w - L
    tail = cs[:, w : w + 1] - cs[:, lags]  # sum of c(t)^2, t >= L
    out: F64 = np.maximum(head + tail - 2.0 * acf, 0.0) / (w - lags)
    return out


def _median_rows(a: F64, count: np.ndarray | int) -> F64:
    """The median of each row's first ``count`` values after sorting (NaN sorts last): what
    np.median gives for the row's valid values."""
    srt = np.sort(a, axis=1)
    c = np.broadcast_to(np.asarray(count, np.int64), (len(a),))
    ar = np.arange(len(a))
    out: F64 = (srt[ar, (c - 1) // 2] + srt[ar, c // 2]) / 2.0
    return out


class SeasonalStacked(StackedModel):
    """Stacked seasonal residual: history (in time order, anomalies replaced by what was
    expected), readings counted, the period, median and scale in force, the last learnt
    reading and a streak's anomalies. A row decides no further than its next re-estimate
    (every ``refresh`` readings), where all rows due are re-estimated at once (one FFT over
    their histories)."""

    PASS_DATA = ("z", "x", "expected", "half", "same", "g", "f")

    def __init__(self, det: Seasonal, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.h = pack_rows([s["hist"] for s in sts], det.window)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.period = np.array([s["period"] for s in sts], np.int64)
        self.med = np.array([s["med"] for s in sts], np.float64)
        self.scale = np.array([s["scale"] for s in sts], np.float64)
        self.vmed = np.array([s["vmed"] for s in sts], np.float64)
        self.vscale = np.array([s["vscale"] for s in sts], np.float64)
        self.last = np.array([np.nan if s["last"] is None else s["last"] for s in sts])
        self.pend = pack_rows([s["pend"] for s in sts], ADAPT_AFTER)
        self.ring = np.nan_to_num(pack_rows([s.get("ring", ()) for s in sts], RING))
        self.rest = np.nan_to_num(pack_rows([s.get("rest", ()) for s in sts], RING))

    def limit(self, rows: Rows) -> Rows | None:
        n = self.n[rows]
        out: Rows = self.det.next_estimate(n, self.period[rows]) - n
        return out

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        det = self.det
        w = det.window
        span = x.shape[1]
        self.x = x
        self.z = z = np.concatenate([self.h[rows], x], axis=1)  # (learn slides it)
        # the point one period back (periods are at most half the window: always in z)
        back = w + np.arange(span) - self.period[rows][:, None]
        prev = np.take_along_axis(z, back, axis=1)
        prev = np.where(np.isnan(prev), x, prev)  # before the history starts: no residual
        med = self.med[rows][:, None]
        res, last = self.resolution(rows), self.last[rows]
        scale = floored_before(self.scale[rows][:, None], res, last, x, prev)
        raw = np.abs(x - prev - med) / scale
        flat = self.period[rows] == 1
        if flat.any():  # no season: an unusual change to an unusual value
            vmed = self.vmed[rows][:, None]
            vscale = floored_before(self.vscale[rows][:, None], res, last, x, vmed)
            raw = np.where(flat[:, None], np.minimum(raw, np.abs(x - vmed) / vscale), raw)
        raw = finite_raw(raw)
        n0 = self.n[rows]
        if len(n0) and n0.min() < det.warmup:
            raw = raw * warm_up_rows(n0, span, det.warmup)
        self.expected, self.half = prev + med, det.level * scale
        self.same = prev == x  # no reading one period back: the anomaly itself stays
        self.g = rows
        return raw, self.expected, self.half

    def learn(self, rows: Rows, f: Rows) -> None:
        slide_joined_rows(self.h, rows, self.z, f)
        moved = f > 0
        self.last[rows[moved]] = self.x[np.flatnonzero(moved), f[moved] - 1]
        self.pend[rows[moved]] = np.nan
        if moved.any():  # learnt readings: their residuals, and rest 0 (kept as they are)
            flat = (self.period[rows] == 1)[:, None]
            resid = np.where(self.same | flat, 0.0, self.x - self.expected)
            ring = np.concatenate([self.ring[rows], resid], axis=1)
            self.ring[rows] = np.take_along_axis(ring, f[:, None] + np.arange(RING), axis=1)
            rest = np.concatenate([self.rest[rows], np.zeros((len(rows), RING))], axis=1)
            cols = np.minimum(f, RING)[:, None] + np.arange(RING)
            self.rest[rows] = np.take_along_axis(rest, cols, axis=1)
        self.f = f
        self._count(rows, f)

    def _count(self, rows: Rows, f: Rows) -> None:
        n0 = self.n[rows]
        at = self.det.next_estimate(n0, self.period[rows])
        self.n[rows] = _counted(n0, f, self.det.warmup)
        due = (self.n[rows] >= at) | ((n0 == 0) & (f > 0))
        if due.any():
            self._estimate(rows[due])

    def forget(self, rows: Rows, x: F64 | None = None) -> None:
        """Rows met an anomaly (the point after the ones they learnt in the last pass): the
        history takes what was expected there, the anomaly is kept for the Driver's adapt."""
        if x is None or not len(rows):
            return
        at = np.flatnonzero(np.isin(self.g, rows))  # rows' places in the pass, in order
        col = self.f[at]
        keep = self.same[at, col] | (self.period[rows] == 1)
        exp, width = self.expected[at, col], CLIP * self.half[at, col]
        expected = np.where(keep, x, exp + np.clip(x - exp, -width, width))
        resid = np.where(keep, 0.0, x - exp)
        ring = np.concatenate([self.ring[rows][:, 1:], resid[:, None]], axis=1)
        rest = np.concatenate([self.rest[rows][:, 1:], (x - expected)[:, None]], axis=1)
        side = (rest != 0) & (ring * np.sign(resid)[:, None] > 0)  # off the pattern
        for i in np.flatnonzero(side.sum(axis=1) >= SHIFT_AFTER).tolist():  # rare
            r = rows[i]
            valid = ~np.isnan(self.h[r])
            self.h[r, valid] = rebased(self.h[r, valid], ring[i], rest[i], side[i])
            ring[i], rest[i], expected[i] = 0.0, 0.0, x[i]
        self.ring[rows], self.rest[rows] = ring, rest
        self.h[rows] = np.concatenate([self.h[rows][:, 1:], expected[:, None]], axis=1)
        self.pend[rows] = np.concatenate([self.pend[rows][:, 1:], x[:, None]], axis=1)
        self._count(rows, np.ones(len(rows), np.int64))

    def _estimate(self, rows: Rows) -> None:
        """Re-estimate period, median and scale of these rows, as Seasonal._estimate does:
        rows with histories of the same length (full, or a key's first window: keys that
        started together) together."""
        hist = self.h[rows]
        length = np.count_nonzero(~np.isnan(hist), axis=1)  # histories are right-aligned
        w = hist.shape[1]
        for n in np.unique(length[length >= MIN_HISTORY]).tolist():
            at = np.flatnonzero(length == n)
            got = seasonal_estimate(hist[at, w - n :])
            for name, v in zip(ESTIMATES, got, strict=True):
                getattr(self, name)[rows[at]] = v

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"], s["period"] = unpad_row(self.h[i]), int(self.n[i]), int(self.period[i])
        s["med"], s["scale"] = float(self.med[i]), float(self.scale[i])
        # a snapshot of an older layout lacks these: what init() starts with
        vmed, vscale = getattr(self, "vmed", None), getattr(self, "vscale", None)
        s["vmed"] = 0.0 if vmed is None else float(vmed[i])
        s["vscale"] = 0.0 if vscale is None else float(vscale[i])
        last = getattr(self, "last", None)
        s["last"] = None if last is None or np.isnan(last[i]) else float(last[i])
        pend = getattr(self, "pend", None)
        s["pend"] = np.empty(0) if pend is None else unpad_row(pend[i])
        for name in ("ring", "rest"):
            ring = getattr(self, name, None)
            s[name] = np.zeros(RING) if ring is None else ring[i].copy()

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = pack_rows([s["hist"]], self.det.window)[0]
        self.n[i], self.period[i] = s["n"], s["period"]
        self.med[i], self.scale[i] = s["med"], s["scale"]
        self.vmed[i], self.vscale[i] = s["vmed"], s["vscale"]
        self.last[i] = np.nan if s["last"] is None else s["last"]
        self.pend[i] = pack_rows([s["pend"]], ADAPT_AFTER)[0]
        self.ring[i] = np.nan_to_num(pack_rows([s.get("ring", ())], RING)[0])
        self.rest[i] = np.nan_to_num(pack_rows([s.get("rest", ())], RING)[0])

    def extend(self, other: SeasonalStacked) -> None:
        for name in ("h", "n", *ESTIMATES, "last", "pend", "ring", "rest"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def seasonal(
    *, window: int = 512, level: float = 4.0, refresh: int = 256, warmup: int = 128
) -> Seasonal:
    """Seasonal residual against the dominant period found by FFT (see :class:`Seasonal`)."""
    return Seasonal(window, level, refresh, warmup)
