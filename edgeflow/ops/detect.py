"""Streaming anomaly detectors: one contract, a separate decision step, no engine code.

Contract (every detector):

* ``init()`` -> per-key state (small and bounded); ``learn(state, x)`` absorbs normal points;
  ``score(state, x)`` scores points *as if each were seen right after the ones before it*
  (a vectorised "prefix" pass that does not change the state); ``forget(state)`` is called
  for an anomalous point, which is never learnt (unless ``learn_anomalies=True``).
* A score is in [0, 1), higher = more anomalous, calibrated so that **0.999 is each
  detector's classic alarm level** (3 sigma for z-scores, h=5 for CUSUM, ...): score =
  1 - 10^(-3 * raw / level), where ``raw`` is the detector's own statistic (reported too).
* Deciding is separate: :func:`threshold` (fixed) or :func:`quantile` (adaptive: the
  q-quantile of the key's recent normal scores, refreshed every ``every`` points).

:class:`Driver` runs a detector on one key's points exactly as a one-at-a-time loop would
(results do not depend on how points are batched): it scores the rest of the segment in one
vectorised pass, takes the points up to the first anomaly as final, learns them, skips the
anomaly, and repeats from there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg, check, counter, level, points, rate

LN10 = math.log(10.0)


def calibrate(raw: F64, level: float) -> F64:
    """1 - 10^(-3 raw/level): 0 for raw <= 0, 0.999 at the classic alarm level."""
    out: F64 = np.asarray(-np.expm1(-3.0 * LN10 * np.maximum(raw, 0.0) / level), dtype=np.float64)
    return out


@dataclass
class Scores:
    raw: F64
    score: F64
    low: F64  # the expected range: values outside it are unusual
    high: F64


class Detector(ABC):
    name: str = "detector"
    level: float = 3.0
    warmup: int = 16
    #: the constructor's arguments and their valid values (see :mod:`edgeflow.ops.args`)
    ARGS: ClassVar[tuple[Arg, ...]] = ()

    @abstractmethod
    def init(self) -> dict[str, Any]: ...

    @abstractmethod
    def score(self, st: dict[str, Any], x: F64) -> Scores: ...

    @abstractmethod
    def learn(self, st: dict[str, Any], x: F64) -> None: ...

    def forget(self, st: dict[str, Any], x: float) -> None:
        """An anomalous point was seen (not learnt). CUSUM restarts here."""
        return None

    def params(self) -> dict[str, Any]:
        return {}

    def arguments(self) -> dict[str, Any]:
        """The arguments this detector was built with, by the names of :attr:`ARGS`."""
        return {a.name: getattr(self, a.name, None) for a in self.ARGS}

    def problems(self) -> list[str]:
        """One line per bad argument (empty when valid); the flow's validation calls it."""
        return check(f"detect.{self.name}", self.ARGS, self.arguments())


def _warm(st: dict[str, Any], n: int, warmup: int) -> F64:
    """1.0 for points scored after warm-up, else 0.0 (no verdict while learning)."""
    seen = int(st["n"]) + np.arange(n)
    out: F64 = (seen >= warmup).astype(np.float64)
    return out


class ZScore(Detector):
    """Rolling z-score: distance from the mean of the last ``window`` normal points, in stds."""

    name = "zscore"
    ARGS = (points("window", 2), level(), counter("warmup"))

    def __init__(self, window: int = 256, level: float = 3.0, warmup: int = 16) -> None:
        self.window, self.level, self.warmup = window, level, warmup

    def init(self) -> dict[str, Any]:
        return {"hist": np.empty(0), "n": 0}

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        h = st["hist"]
        w = self.window
        z = np.concatenate([h, x])
        base = float(h.mean()) if len(h) else float(x[0])
        c1 = np.concatenate([[0.0], np.cumsum(z - base)])
        c2 = np.concatenate([[0.0], np.cumsum((z - base) ** 2)])
        end = len(h) + np.arange(len(x))  # window for point j: z[start:end]
        start = np.maximum(end - w, 0)
        cnt = end - start
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (c1[end] - c1[start]) / cnt
            var = np.maximum((c2[end] - c2[start]) / cnt - mean**2, 0.0)
            std = np.sqrt(var)
            rawz = np.abs(x - base - mean) / np.maximum(std, 1e-12 * (1 + abs(base)))
        rawz = np.where(cnt > 0, np.nan_to_num(rawz, nan=0.0, posinf=1e6), 0.0) * _warm(
            st, len(x), self.warmup
        )
        m = base + np.nan_to_num(mean, nan=0.0)
        return Scores(rawz, calibrate(rawz, self.level), m - self.level * std, m + self.level * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        st["hist"] = np.concatenate([st["hist"], x])[-self.window :]
        st["n"] += len(x)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "level": self.level}


class EWMA(Detector):
    """EWMA control chart: exponentially weighted mean and variance; |x - mean| / std."""

    name = "ewma"
    ARGS = (rate("alpha"), level(), counter("warmup"))

    def __init__(self, alpha: float = 0.05, level: float = 3.0, warmup: int = 16) -> None:
        self.alpha, self.level, self.warmup = alpha, level, warmup

    def init(self) -> dict[str, Any]:
        return {"m": None, "v": 0.0, "n": 0}

    def _prefix(self, st: dict[str, Any], x: F64) -> tuple[F64, F64]:
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
        m, v = self._prefix(st, x)
        std = np.sqrt(self.unbiased(st, v))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        z = np.nan_to_num(z, nan=0.0, posinf=1e6) * _warm(st, len(x), self.warmup)
        return Scores(z, calibrate(z, self.level), m - self.level * std, m + self.level * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        a = self.alpha
        m, v = self._prefix(st, x)
        last = x[-1] - m[-1]
        st["m"] = float(m[-1] + a * last)
        st["v"] = float((1 - a) * (v[-1] + a * last * last))
        st["n"] += len(x)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "level": self.level}


class MAD(Detector):
    """Robust z-score: distance from the median of the last ``window`` normal points, in
    scaled MADs (1.4826 MAD estimates a std). The median and MAD are re-estimated each time
    ``stride`` more points have been learnt (exactly at learnt counts stride, 2 stride, ...).
    ``diff=True`` scores first differences (a change from the previous reading), which
    ignores slow trends and seasonality and catches spikes and steps."""

    name = "mad"
    ARGS = (
        points("window", 3),
        level(),
        points("stride", 1),
        counter("warmup"),
        Arg("diff", "bool"),
    )

    def __init__(
        self,
        window: int = 64,
        level: float = 3.5,
        stride: int = 8,
        warmup: int = 16,
        diff: bool = False,
    ) -> None:
        self.window, self.level, self.stride, self.warmup, self.diff = (
            window,
            level,
            stride,
            warmup,
            diff,
        )

    def init(self) -> dict[str, Any]:
        return {"hist": np.empty(0), "n": 0, "med": 0.0, "mad": 0.0, "prev": None}

    def _series(self, st: dict[str, Any], x: F64) -> F64:
        if not self.diff:
            return x
        prev = x[0] if st["prev"] is None else st["prev"]
        out: F64 = np.diff(np.concatenate([[prev], x]))
        return out

    def _estimates(self, st: dict[str, Any], y: F64) -> tuple[F64, F64]:
        """Median and scaled MAD in force before each point of y (learning y as it goes).

        The estimate for a point is the one made when the learnt count last reached a
        multiple of ``stride``, from the ``window`` points learnt before that moment."""
        n0, hist, s = int(st["n"]), st["hist"], self.stride
        z = np.concatenate([hist, y])
        refresh = (n0 + np.arange(len(y))) // s * s
        med = np.full(len(y), st["med"])
        mad = np.full(len(y), st["mad"])
        rs = np.unique(refresh[refresh > n0 // s * s])
        if len(rs):
            # every refresh's window at once: rows of z ending where the count reached r
            ends = len(hist) + (rs - n0)
            cols = ends[:, None] - self.window + np.arange(self.window)
            win = np.where(cols >= 0, z[np.maximum(cols, 0)], np.nan)
            if np.isnan(win).any():
                m = np.nanmedian(win, axis=1)
                d = np.nanmedian(np.abs(win - m[:, None]), axis=1) * 1.4826
            else:
                m = np.median(win, axis=1)
                d = np.median(np.abs(win - m[:, None]), axis=1) * 1.4826
            idx = np.searchsorted(rs, refresh)
            new = refresh > n0 // s * s
            med = np.where(new, m[np.minimum(idx, len(rs) - 1)], med)
            mad = np.where(new, d[np.minimum(idx, len(rs) - 1)], mad)
        return med, mad

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        y = self._series(st, x)
        med, mad = self._estimates(st, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(y - med) / np.maximum(mad, 1e-12 * (1 + np.abs(med)))
        z = np.nan_to_num(z, nan=0.0, posinf=1e6) * _warm(st, len(x), self.warmup)
        centre = x - y + med if self.diff else med
        return Scores(
            z, calibrate(z, self.level), centre - self.level * mad, centre + self.level * mad
        )

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        y = self._series(st, x)
        med, mad = self._estimates(st, np.concatenate([y, [0.0]]))  # what is in force next
        st["med"], st["mad"] = float(med[-1]), float(mad[-1])
        st["hist"] = np.concatenate([st["hist"], y])[-self.window :]
        st["n"] += len(x)
        st["prev"] = float(x[-1])  # an anomaly is not learnt: differences skip it

    def params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "level": self.level,
            "stride": self.stride,
            "diff": self.diff,
        }


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
        m, v = self.base._prefix(st["ew"], x)
        std = np.sqrt(self.base.unbiased(st["ew"], v))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.nan_to_num(
                (x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m))), nan=0.0, posinf=1e6, neginf=-1e6
            )
        z = z * _warm(st, len(x), self.warmup)

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

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "h": self.level, "alpha": self.base.alpha}


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
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e6) * _warm(st, len(x), self.warmup)
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


class Limits(Detector):
    """Fixed alarm limits (clinical or engineering ranges): anomalous outside [low, high].

    ``raw`` is 0 inside the range and 1 + the distance outside it relative to the limit's
    size, so any value outside scores at least 0.999 (the default threshold). It learns
    nothing, so it needs no warm-up; use it for rules the physics or the standard gives."""

    name = "limits"
    level = 1.0
    warmup = 0
    ARGS = (Arg("low", "number", optional=True), Arg("high", "number", optional=True))

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high
        if low is None and high is None:
            raise ValueError("detect.limits: give low=, high= or both")
        if not self.problems() and low is not None and high is not None and not low < high:
            raise ValueError(f"detect.limits: low={low} must be below high={high}")

    def init(self) -> dict[str, Any]:
        return {"n": 0}

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        lo = -np.inf if self.low is None else self.low
        hi = np.inf if self.high is None else self.high
        below = np.maximum(lo - x, 0.0) / (abs(lo) + 1e-12) if self.low is not None else 0.0
        above = np.maximum(x - hi, 0.0) / (abs(hi) + 1e-12) if self.high is not None else 0.0
        outside = (x < lo) | (x > hi)
        raw = np.where(outside, 1.0 + np.maximum(below, above), 0.0)
        return Scores(raw, calibrate(raw, self.level), np.full(len(x), lo), np.full(len(x), hi))

    def learn(self, st: dict[str, Any], x: F64) -> None:
        st["n"] += len(x)

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


class Ensemble(Detector):
    """Several detectors on the same field, each deciding and learning on its own; the score
    is the highest of theirs and a point is anomalous when any of them says so."""

    name = "ensemble"

    def __init__(self, parts: list[Detector], name: str = "ensemble") -> None:
        self.parts = parts
        self.name = name

    # An ensemble is run by Driver part by part; these are never called directly.
    def init(self) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        raise NotImplementedError

    def learn(self, st: dict[str, Any], x: F64) -> None:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {"parts": [{"name": p.name, **p.params()} for p in self.parts]}

    def problems(self) -> list[str]:
        if not self.parts or not all(isinstance(p, Detector) for p in self.parts):
            return [f"detect.{self.name}: parts={self.parts!r} must be a list of detectors"]
        return [m for p in self.parts for m in p.problems()]


def Auto() -> Ensemble:  # noqa: N802 - reads as a class at call sites
    """The default: spikes/dips/steps (robust z of changes), sustained shifts and drifts
    (CUSUM), variance and frequency changes (fast/slow variance of changes)."""
    return Ensemble(
        [
            MAD(window=128, level=6.0, stride=16, diff=True, warmup=32),
            CUSUM(k=1.5, h=10.0, alpha=0.005, warmup=64),
            _VarianceChange(level=3.0),
            Seasonal(level=6.0),
        ],
        name="auto",
    )


class _VarianceChange(Detector):
    """Log ratio of a fast to a slow EW variance of the first difference: variance changes."""

    name = "variance"
    ARGS = (rate("fast"), rate("slow"), level(), counter("warmup"))

    def __init__(
        self, fast: float = 0.1, slow: float = 0.005, level: float = 2.5, warmup: int = 64
    ) -> None:
        self.fast, self.slow, self.level, self.warmup = fast, slow, level, warmup

    def init(self) -> dict[str, Any]:
        return {"prev": None, "vf": None, "vs": None, "n": 0}

    def _prefix(self, st: dict[str, Any], x: F64) -> tuple[F64, F64]:
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
        vf, vs = self._prefix(st, x)
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = np.abs(np.log((vf + 1e-12) / (vs + 1e-12)))
        raw = np.nan_to_num(raw, nan=0.0, posinf=1e6) * _warm(st, len(x), self.warmup)
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


# -- decisions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """Turns scores into anomaly verdicts. ``kind`` is ``threshold`` or ``quantile``."""

    kind: str = "threshold"
    value: float = 0.999
    every: int = 256
    floor: float = 0.99
    cooldown: int = 64  # after an event, anomalous points within this many points raise no new one

    def init(self) -> dict[str, Any]:
        return {
            "thr": self.value if self.kind == "threshold" else 1.0,
            "scores": np.empty(0),
            "since": 0,
        }

    def problems(self) -> list[str]:
        """One line per bad argument (empty when valid); the flow's validation calls it."""
        rules: tuple[Arg, ...]
        if self.kind == "threshold":
            rules = (rate("score"), counter("cooldown"))
            values = {"score": self.value, "cooldown": self.cooldown}
        elif self.kind == "quantile":
            rules = (
                rate("q"),
                points("every", 1),
                Arg("floor", "number", 0, 1),
                counter("cooldown"),
            )
            values = {"q": self.value, "every": self.every, "floor": self.floor}
            values["cooldown"] = self.cooldown
        else:
            return [
                f"decision kind={self.kind!r}: use detect.threshold(...) or detect.quantile(...)"
            ]
        return check(f"detect.{self.kind}", rules, values)


def threshold(score: float = 0.999, *, cooldown: int = 64) -> Decision:
    """Anomalous when the score reaches ``score`` (0.999 = the detector's classic alarm level).
    One event per episode: anomalous points within ``cooldown`` points of the last event are
    still kept out of the model but raise no new event."""
    return Decision("threshold", score, cooldown=cooldown)


def quantile(
    q: float = 0.999, *, every: int = 256, floor: float = 0.99, cooldown: int = 64
) -> Decision:
    """Adaptive: anomalous above the q-quantile of the key's recent normal scores (refreshed
    every ``every`` points, never below ``floor``; 1.0 = nothing flagged until the first refresh)."""
    return Decision("quantile", q, every, floor, cooldown)


@dataclass
class DriverOut:
    raw: F64
    score: F64
    anomaly: np.ndarray
    low: F64
    high: F64
    threshold: F64
    event: np.ndarray = field(
        default_factory=lambda: np.zeros(0, bool)
    )  # anomalies that raise an event


@dataclass
class Driver:
    """Runs a detector and a decision on one key's points with one-at-a-time semantics.

    ``adapt_after``: after that many anomalies in a row (a lasting change of level, not a
    glitch), the detector learns them, so it settles on the new normal."""

    detector: Detector
    decision: Decision = field(default_factory=Decision)
    learn_anomalies: bool = False
    max_pass: int = 4096
    min_pass: int = 32
    adapt_after: int | None = 256

    def __post_init__(self) -> None:
        self.parts = (
            [
                Driver(
                    p,
                    self.decision,
                    self.learn_anomalies,
                    self.max_pass,
                    self.min_pass,
                    self.adapt_after,
                )
                for p in self.detector.parts
            ]
            if isinstance(self.detector, Ensemble)
            else []
        )

    def init(self) -> dict[str, Any]:
        if self.parts:
            return {"parts": [p.init() for p in self.parts]}
        return {"det": self.detector.init(), "dec": self.decision.init(), "streak": 0}

    def run(self, st: dict[str, Any], x: F64) -> DriverOut:
        out = self._combined(st, x)
        out.event = self._events(st, out.anomaly)
        return out

    def _events(self, st: dict[str, Any], anomaly: np.ndarray) -> np.ndarray:
        """An anomaly raises an event unless one was raised within ``cooldown`` points."""
        event = np.zeros(len(anomaly), bool)
        since = st.setdefault("since_event", 1 << 30)
        last = -1
        for i in np.flatnonzero(anomaly).tolist():
            gap = i - last if last >= 0 else since + i + 1
            if gap > self.decision.cooldown:
                event[i] = True
                last = i
        st["since_event"] = (len(anomaly) - 1 - last) if last >= 0 else since + len(anomaly)
        return event

    def _combined(self, st: dict[str, Any], x: F64) -> DriverOut:
        if self.parts:
            outs = [p.run(s, x) for p, s in zip(self.parts, st["parts"], strict=True)]
            best = np.argmax(np.stack([o.score for o in outs]), axis=0)
            pick = np.arange(len(x))

            def sel(name: str) -> F64:
                arr: F64 = np.stack([getattr(o, name) for o in outs])[best, pick]
                return arr

            return DriverOut(
                sel("raw"),
                sel("score"),
                np.any([o.anomaly for o in outs], axis=0),
                outs[0].low,
                outs[0].high,
                sel("threshold"),
            )
        return self._run(st, x)

    def _run(self, st: dict[str, Any], x: F64) -> DriverOut:
        n = len(x)
        raw, score, low, high, thr_out = (np.empty(n) for _ in range(5))
        anomaly = np.zeros(n, bool)
        dec, det = st["dec"], st["det"]
        i = 0
        span = self.max_pass  # shrinks after an anomaly (they cluster), doubles after clean passes
        while i < n:
            # never let one pass cross a decision (quantile) or model refresh boundary
            stop = (
                n
                if self.decision.kind == "threshold"
                else min(n, i + self.decision.every - dec["since"])
            )
            every = getattr(
                self.detector, "refresh", 0
            )  # a model re-estimated every N learnt points
            if every:
                stop = min(stop, i + every - det["n"] % every)
            stop = min(stop, i + span)
            s = self.detector.score(det, x[i:stop])
            flagged = s.score >= dec["thr"]
            adapting = self.adapt_after is not None and st["streak"] >= self.adapt_after
            if self.learn_anomalies or adapting:
                # everything is learnt; adapting lasts until the first normal point
                normal = np.flatnonzero(~flagged)
                end = stop if self.learn_anomalies or not len(normal) else i + int(normal[0]) + 1
                k = end - i
                self._emit(
                    s, k, slice(i, end), (raw, score, low, high, thr_out, anomaly), dec["thr"]
                )
                self.detector.learn(det, x[i:end])
                self._decided(dec, s.score[:k][~flagged[:k]], count=int(flagged[:k].sum()))
                st["streak"] = 0 if not flagged[k - 1] else st["streak"] + k
                i = end
                continue
            hit = np.flatnonzero(flagged)
            j = i + int(hit[0]) if len(hit) else stop  # the first anomaly, or none in this pass
            end = j + 1 if j < stop else stop
            self._emit(
                s, end - i, slice(i, end), (raw, score, low, high, thr_out, anomaly), dec["thr"]
            )
            if j > i:
                st["streak"] = 0
            self.detector.learn(det, x[i:j])
            self._decided(dec, s.score[: j - i])
            if j < stop:  # the anomaly at j: not learnt
                st["streak"] += 1
                self.detector.forget(det, float(x[j]))
                self._decided(dec, np.empty(0), count=1)
                i = j + 1
                span = self.min_pass
            else:
                i = stop
                span = min(self.max_pass, span * 2)
        return DriverOut(raw, score, anomaly, low, high, thr_out)

    @staticmethod
    def _emit(
        s: Scores, k: int, seg: slice, outs: tuple[F64, F64, F64, F64, F64, np.ndarray], thr: float
    ) -> None:
        raw, score, low, high, thr_out, anomaly = outs
        raw[seg], score[seg], low[seg], high[seg] = s.raw[:k], s.score[:k], s.low[:k], s.high[:k]
        thr_out[seg] = thr
        anomaly[seg] = s.score[:k] >= thr

    def _decided(self, dec: dict[str, Any], normal_scores: F64, count: int = 0) -> None:
        if self.decision.kind != "quantile":
            return
        dec["scores"] = np.concatenate([dec["scores"], normal_scores])[-8 * self.decision.every :]
        dec["since"] += len(normal_scores) + count
        if dec["since"] >= self.decision.every:
            dec["since"] = 0
            if len(dec["scores"]):
                dec["thr"] = max(
                    self.decision.floor, float(np.quantile(dec["scores"], self.decision.value))
                )


DETECTORS: dict[str, Any] = {
    "zscore": ZScore, "ewma": EWMA, "mad": MAD, "cusum": CUSUM, "seasonal": Seasonal,
    "limits": Limits,
}  # fmt: skip


def make(name: str, **params: Any) -> Detector:
    if name == "auto":
        return Auto()
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)}")
    try:
        det: Detector = DETECTORS[name](**params)
        return det
    except TypeError as exc:
        raise ValueError(f"detector {name!r}: {exc}") from None


# -- constructors users call: detect.zscore(...), detect.auto() --------------------------------
def zscore(*, window: int = 256, level: float = 3.0, warmup: int = 16) -> ZScore:
    """Rolling z-score over the last ``window`` normal points (the 3-sigma rule at the default)."""
    return ZScore(window, level, warmup)


def ewma(*, alpha: float = 0.05, level: float = 3.0, warmup: int = 16) -> EWMA:
    return EWMA(alpha, level, warmup)


def mad(*, window: int = 64, level: float = 3.5, stride: int = 8, warmup: int = 16) -> MAD:
    return MAD(window, level, stride, warmup)


def cusum(*, k: float = 0.5, h: float = 5.0, alpha: float = 0.01, warmup: int = 100) -> CUSUM:
    return CUSUM(k, h, alpha, warmup)


def seasonal(
    *, window: int = 512, level: float = 4.0, refresh: int = 128, warmup: int = 128
) -> Seasonal:
    """Seasonal residual against the dominant period found by FFT (see :class:`Seasonal`)."""
    return Seasonal(window, level, refresh, warmup)


def limits(*, low: float | None = None, high: float | None = None) -> Limits:
    """Fixed limits: anomalous below ``low`` or above ``high`` (see :class:`Limits`)."""
    return Limits(low, high)


def auto() -> Ensemble:
    """A sensible default needing no tuning: spikes/dips, level shifts/drifts, variance changes."""
    return Auto()
