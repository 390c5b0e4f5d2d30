"""Robust z-score (median / MAD): :class:`MAD` (reference), :class:`MADStacked` (stacked
passes), the :func:`mad` constructor, and the two helpers the robust detectors share:
:func:`robust_spread` (median and a never-collapsing robust scale of windows of values) and
:func:`resolution_before` (each point's spread floor within a prefix pass).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg, counter, level, points
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.decision import ADAPT_AFTER
from edgeflow.ops.detect.spread import floored, resolution
from edgeflow.ops.detect.stacked import Rows, StackedModel, pack_rows, slide_rows, unpad_row

#: 1.4826 MAD, IQR / 1.349 and 1.2533 x the mean absolute deviation each estimate a normal
#: distribution's standard deviation
MAD_TO_STD, IQR_TO_STD, MEAN_DEV_TO_STD = 1.4826, 1.349, 1.2533
#: on a lasting change the window keeps this many times the streak's length of older points
CONTEXT = 3


class MAD(Detector):
    """Robust z-score: distance from the median of the last ``window`` normal points, in
    robust standard deviations (:func:`robust_spread`: 1.4826 MAD, or IQR / 1.349 for a
    two-level window such as a square wave, or a fallback for coarse or mostly repeating
    values; never below the key's resolution, see :mod:`edgeflow.ops.detect.spread`). The
    median and spread are re-estimated each time ``stride`` more points have been learnt
    (exactly at learnt counts stride, 2 stride, ...). ``diff=True`` scores first
    differences (a change from the previous reading), which ignores slow trends and
    seasonality and catches spikes and steps.

    A lasting change raises at most :attr:`adapts_within` alarms: after 16 anomalies in a
    row the runner adapts, and :meth:`adapt` makes the new level normal within a few more
    points. Measured on a +8 sigma step in unit noise (20 seeds): at most 20 alarms beyond
    the noise's own, none later than 26 points after the step. The default window (256)
    spans a whole period of a square wave with half-periods up to about 128, which is then
    learnt as normal."""

    name = "mad"
    ARGS = (
        points("window", 3),
        level(),
        points("stride", 1),
        counter("warmup"),
        Arg("diff", "bool"),
    )
    #: the most alarms a lasting +8 sigma step raises (see the class docstring)
    adapts_within = 32

    def __init__(
        self,
        window: int = 256,
        level: float = 3.5,
        stride: int = 8,
        warmup: int = 32,
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
        return {
            "hist": np.empty(0),
            "n": 0,
            "med": 0.0,
            "mad": 0.0,
            "prev": None,
            "pend": np.empty(0),
        }

    def _series(self, st: dict[str, Any], x: F64) -> F64:
        if not self.diff:
            return x
        prev = x[0] if st["prev"] is None else st["prev"]
        out: F64 = np.diff(np.concatenate([[prev], x]))
        return out

    def _estimates(self, st: dict[str, Any], y: F64) -> tuple[F64, F64]:
        """Median and robust spread (unfloored) in force before each point of y (learning y
        as it goes).

        The estimate for a point is the one made when the learnt count last reached a
        multiple of ``stride``, from the ``window`` points learnt before that moment."""
        n0, hist, s = int(st["n"]), st["hist"], self.stride
        base = n0 // s * s
        refresh = (n0 + np.arange(len(y))) // s * s
        new = refresh > base
        if not new.any():
            return np.full(len(y), st["med"]), np.full(len(y), st["mad"])
        z = np.concatenate([hist, y])
        rs = np.arange(base + s, int(refresh[-1]) + 1, s)
        # every refresh's window at once: rows of z ending where the count reached r
        ends = len(hist) + (rs - n0)
        cols = ends[:, None] - self.window + np.arange(self.window)
        full = cols[0, 0] >= 0  # every window within z: no padding
        win = z[cols] if full else np.where(cols >= 0, z[np.maximum(cols, 0)], np.nan)
        m, d = self.estimate(win)
        idx = np.maximum((refresh - base) // s - 1, 0)
        med = np.where(new, m[idx], st["med"])
        mad = np.where(new, d[idx], st["mad"])
        return med, mad

    def estimate(self, win: F64) -> tuple[F64, F64]:
        """The centre and spread of windows of values (the last axis; NaN: an empty slot):
        :func:`robust_spread`. Every form calls this, so a subclass may estimate otherwise."""
        return robust_spread(win)

    def _last(self, st: dict[str, Any]) -> float:
        """The last learnt reading (NaN: none)."""
        if self.diff:
            return math.nan if st["prev"] is None else float(st["prev"])
        h = st["hist"]
        return float(h[-1]) if len(h) else math.nan

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        y = self._series(st, x)
        med, mad = self._estimates(st, y)
        centre = x - y + med if self.diff else med
        spread = floored_before(mad, st.get("res", math.inf), self._last(st), x, centre)
        with np.errstate(invalid="ignore"):
            z = np.abs(y - med) / spread
        z = finite_raw(z) * warm_up_mask(st, len(x), self.warmup)
        half = self.level * spread
        return Scores(z, calibrate(z, self.level), centre - half, centre + half)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        y = self._series(st, x)
        z = np.concatenate([st["hist"], y])
        n0, s = int(st["n"]), self.stride
        last = (n0 + len(y)) // s * s  # the refresh in force next: only that window is needed
        if last > n0 // s * s:
            end = len(z) - (n0 + len(y) - last)
            cols = end - self.window + np.arange(self.window)
            win = z[cols] if cols[0] >= 0 else np.where(cols >= 0, z[np.maximum(cols, 0)], np.nan)
            m, d = self.estimate(win[None, :])
            st["med"], st["mad"] = float(m[0]), float(d[0])
        st["hist"] = z[-self.window :]
        if self.warmup and not st["n"]:  # the warm-up block: estimated from all of it
            m, d = self.estimate(st["hist"][None, :])
            st["med"], st["mad"] = float(m[0]), float(d[0])
        st["n"] = _counted(st["n"], len(x), self.warmup)
        st["prev"] = float(x[-1])  # an anomaly is not learnt: differences skip it
        st["pend"] = np.empty(0)  # a normal point ends a streak of anomalies

    def forget(self, st: dict[str, Any], x: float) -> None:
        """An anomaly is not learnt, but kept (the last :data:`ADAPT_AFTER` of a streak) in
        case the streak turns out to be a lasting change (see :meth:`adapt`)."""
        st["pend"] = np.append(st.get("pend", ()), x)[-ADAPT_AFTER:]

    def adapt(self, st: dict[str, Any], recent: F64) -> None:
        """A lasting change: the window keeps only its last :data:`CONTEXT` x as many
        points as the streak's anomalies (kept by :meth:`forget`), which it then learns. So
        the new level is at once over a quarter of the window: the spread (IQR) spans old
        and new level and the points that follow are normal, while the old level is still
        known (a square wave's other half-period is not an anomaly when it comes back)."""
        pend = st.get("pend", np.empty(0))  # (older snapshots lack it)
        if len(pend):
            st["hist"] = st["hist"][-CONTEXT * len(pend) :]
            self.learn(st, pend)
            # they are learnt readings now: the key's resolution moves on with them
            st["res"], st["res_last"] = resolution(
                st.get("res", math.inf), st.get("res_last"), pend
            )

    def stacked_model(self, states: list[dict[str, Any]]) -> MADStacked:
        return MADStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "level": self.level,
            "stride": self.stride,
            "diff": self.diff,
        }


class MADStacked(StackedModel):
    """Stacked robust z (MAD): history of learnt values (or differences), the median and
    robust spread in force, the last learnt reading. The estimates are re-made each time a
    key's learnt count reaches a multiple of ``stride``: all such refreshes of a pass at
    once, as order statistics over a (keys, refreshes, window) block."""

    def __init__(self, det: MAD, sts: list[dict[str, Any]]) -> None:
        self.det = det
        w = det.window
        self.h = pack_rows([s["hist"] for s in sts], w)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.med = np.array([s["med"] for s in sts], np.float64)
        self.mad = np.array([s["mad"] for s in sts], np.float64)
        self.prev = np.array([np.nan if s["prev"] is None else s["prev"] for s in sts])
        self.pend = pack_rows([s["pend"] for s in sts], ADAPT_AFTER)

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        det = self.det
        w, s = det.window, det.stride
        k, span = x.shape
        n0 = self.n[rows]
        p0 = self.prev[rows]
        if det.diff:
            y = np.diff(np.concatenate([np.where(np.isnan(p0), x[:, 0], p0)[:, None], x], axis=1))
        else:
            y = x
        self.hx, self.y, self.x = self.h[rows], y, x
        # refreshes: after j points of this pass, where n0 + j is a multiple of the stride
        self.first = first = s - n0 % s  # 1..s
        n_ref = int(max(0, (span - int(first.min())) // s + 1))
        if n_ref:
            z = np.concatenate([self.hx, y], axis=1)
            jr = first[:, None] + s * np.arange(n_ref)  # (k, R)
            # refreshes past a row's last point are never used: point them at a window
            # without padding, so the medians need no NaN handling
            rem = np.count_nonzero(~np.isnan(x), axis=1)
            jr = np.where(jr <= rem[:, None], jr, 0)
            win = z[np.arange(k)[:, None, None], jr[:, :, None] + np.arange(w)]  # (k, R, w)
            self.ests = det.estimate(win)
        else:
            self.ests = (np.empty((k, 0)), np.empty((k, 0)))
        med, mad = self._in_force(rows, np.arange(span)[None, :])
        centre = x - y + med if det.diff else med
        last = p0 if det.diff else self.hx[:, -1]
        spread = floored_before(mad, self.resolution(rows), last, x, centre)
        with np.errstate(invalid="ignore"):
            zz = np.abs(y - med) / spread
        zz = finite_raw(zz)
        if len(n0) and n0.min() < det.warmup:
            zz = zz * warm_up_rows(n0, span, det.warmup)
        return zz, centre, det.level * spread

    def _in_force(self, rows: Rows, j: Rows) -> tuple[F64, F64]:
        """Median and spread in force before point j of the pass (j: (k, m) or (k, 1))."""
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

    def learn(self, rows: Rows, f: Rows) -> None:
        moved = f > 0
        if not moved.any():
            return
        med, mad = self._in_force(rows, f[:, None])  # the estimates in force next
        self.med[rows] = med[:, 0]
        self.mad[rows] = mad[:, 0]
        slide_rows(self.h, rows, self.hx, self.y, f)
        self.prev[rows[moved]] = self.x[np.flatnonzero(moved), f[moved] - 1]
        if self.det.warmup:  # a warm-up block (the Driver's, usually): from all of it
            for r in rows[moved & (self.n[rows] == 0)].tolist():
                m, d = self.det.estimate(unpad_row(self.h[r])[None, :])
                self.med[r], self.mad[r] = m[0], d[0]
        self.n[rows] = _counted(self.n[rows], f, self.det.warmup)
        self.pend[rows[moved]] = np.nan

    def forget(self, rows: Rows, x: F64 | None = None) -> None:
        if x is None or not len(rows):
            return
        self.pend[rows] = np.concatenate([self.pend[rows][:, 1:], x[:, None]], axis=1)

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"] = unpad_row(self.h[i]), int(self.n[i])
        s["med"], s["mad"] = float(self.med[i]), float(self.mad[i])
        s["prev"] = None if np.isnan(self.prev[i]) else float(self.prev[i])
        pend = getattr(self, "pend", None)  # None: a snapshot of an older layout
        s["pend"] = np.empty(0) if pend is None else unpad_row(pend[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = pack_rows([s["hist"]], self.det.window)[0]
        self.n[i], self.med[i], self.mad[i] = s["n"], s["med"], s["mad"]
        self.prev[i] = np.nan if s["prev"] is None else s["prev"]
        self.pend[i] = pack_rows([s["pend"]], ADAPT_AFTER)[0]

    def extend(self, other: MADStacked) -> None:
        for name in ("h", "n", "med", "mad", "prev", "pend"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def _counted(n: Any, learnt: Any, warmup: int) -> Any:
    """The learnt count after learning ``learnt`` more points. A key's first block (its
    warm-up, learnt without its robust outliers, and estimated from all of it) counts as
    ``warmup`` points, so the refresh schedule and the warm-up do not depend on how many
    outliers were left out."""
    return np.where(n == 0, np.where(learnt > 0, np.maximum(learnt, warmup), 0), n + learnt)


def robust_spread(win: F64, tails: float = 0.0) -> tuple[F64, F64]:
    """The median and robust spread of each window of values (the last axis; NaN: an empty
    slot of a window still filling up; an all-NaN window gives NaN).

    The spread is the larger of 1.4826 x the median absolute deviation from the median and
    IQR / 1.349: both estimate a normal distribution's standard deviation, and the IQR keeps
    a bimodal window's spread (a square wave: the MAD of two equal levels is 0). When both
    are 0 (more than three quarters of the window share one value: a quantised signal that
    mostly repeats, or its differences) it is 1.2533 x the mean of the non-zero absolute
    deviations: how far the signal moves when it moves. 0 only for a constant window;
    callers floor it (:func:`edgeflow.ops.detect.spread.floored`).

    ``tails`` > 0: the spread is also at least the distance between the window's ``tails``
    and ``1 - tails`` quantiles over that of a normal distribution's (a heavy-tailed window
    spreads wider than its MAD says; a normal one's tails agree with it).

    The same arithmetic whatever the shape of the leading axes, so the reference and stacked
    forms agree to the last bit."""
    w = win.shape[-1]
    srt = np.sort(win, axis=-1)  # NaN last
    if np.isnan(srt[..., -1]).any():
        count = np.count_nonzero(~np.isnan(win), axis=-1)
        med, q1, q3 = (_order_stat(srt, count, q) for q in (0.5, 0.25, 0.75))
        if tails > 0:
            lo, hi = (_order_stat(srt, count, q) for q in (tails, 1 - tails))
        dev = np.abs(srt - med[..., None])  # V-shaped: sorts fast
        mad = _order_stat(np.sort(dev, axis=-1), count, 0.5)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_dev = np.nansum(dev, axis=-1) / count
    else:
        count = np.full(win.shape[:-1], w)
        med, q1, q3 = (_order_stat_full(srt, w, q) for q in (0.5, 0.25, 0.75))
        if tails > 0:
            lo, hi = (_order_stat_full(srt, w, q) for q in (tails, 1 - tails))
        # deviations of the sorted values fall then rise: numpy sorts them several times
        # faster than random values (and faster than np.partition finds their median)
        dev = np.abs(srt - med[..., None])
        mad = _order_stat_full(np.sort(dev, axis=-1), w, 0.5)
        mean_dev = dev.sum(axis=-1) / w
    spread = np.maximum(MAD_TO_STD * mad, (q3 - q1) / IQR_TO_STD)
    if tails > 0:
        spread = np.fmax(spread, (hi - lo) / (2 * NormalDist().inv_cdf(1 - tails)))
    collapsed = ~(spread > 0) & (mean_dev > 0)
    if collapsed.any():  # mean_dev > 0: some deviation is not 0
        moves = np.count_nonzero(dev[collapsed] > 0, axis=-1)  # NaN > 0 is False
        spread[collapsed] = MEAN_DEV_TO_STD * mean_dev[collapsed] * count[collapsed] / moves
    out: F64 = spread
    return med, out


def _order_stat_full(srt: F64, w: int, q: float) -> F64:
    """The q-quantile (linear between order statistics, as np.quantile) of sorted windows
    of ``w`` values each."""
    p = (w - 1) * q
    lo = math.floor(p)
    frac = p - lo
    if frac == 0.0:
        out: F64 = srt[..., lo]
        return out
    return srt[..., lo] + frac * (srt[..., lo + 1] - srt[..., lo])


def _order_stat(srt: F64, count: np.ndarray, q: float, start: Any = 0) -> F64:
    """:func:`_order_stat_full` for windows of ``count`` values each, from position
    ``start`` of each sorted window on (NaN sorted last)."""
    p = (count - 1) * q
    lo = np.floor(np.maximum(p, 0.0)).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    frac = np.maximum(p, 0.0) - lo
    a = np.take_along_axis(srt, (lo + start)[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(srt, (hi + start)[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):
        out: F64 = np.where(frac > 0, a + frac * (b - a), a)
    return np.where(count > 0, out, np.nan)


def finite_raw(raw: F64) -> F64:
    """Raw statistics as scored: NaN (no reading, a NaN reading) is 0, +inf is 1e6 (as
    ``np.nan_to_num(raw, nan=0.0, posinf=1e6)``, in a fraction of its time when all are
    finite, the usual case)."""
    if np.isfinite(raw).all():
        return raw
    out: F64 = np.where(np.isnan(raw), 0.0, np.where(np.isposinf(raw), 1e6, raw))
    return out


def floored_before(
    scale: F64 | float, res: F64 | float, last: F64 | float, x: F64, centre: F64 | float
) -> F64:
    """``floored(scale, resolution_before(res, last, x), centre)`` for the points ``x`` of a
    prefix pass (shaped like ``x``), without the prefix pass when it cannot matter: once a
    key has seen a step (``res`` finite) no point's resolution is above ``res``, so a scale
    of at least ``res`` everywhere is its own floor (the usual case: a continuous signal)."""
    r = np.asarray(res, dtype=np.float64)
    if np.isfinite(r).all():
        ok = np.asarray(scale >= (r[..., None] if r.ndim else r))
        if not ok.all():
            ok = ok | np.isnan(x)  # no reading (a row's padding): nothing to score there
        if ok.all():
            out: F64 = np.broadcast_to(np.asarray(scale, dtype=np.float64), x.shape)
            return out
    return floored(scale, resolution_before(res, last, x), centre)


def resolution_before(res: F64 | float, last: F64 | float, x: F64) -> F64:
    """Each point's resolution as a prefix pass sees it: the key's resolution ``res`` (inf:
    no step seen yet), lowered by the non-zero steps between ``last`` (the last learnt
    reading; NaN: none) and the points of ``x`` before it, all of which are learnt if the
    point is scored. The last axis of ``x`` is the points; ``res`` and ``last`` have its
    other axes (scalars for one key)."""
    if not x.shape[-1]:
        return np.empty(x.shape)
    r = np.asarray(res, dtype=np.float64)
    lead = np.asarray(last, dtype=np.float64)[..., None]
    steps = np.abs(x[..., :-1] - np.concatenate([lead, x[..., :-2]], axis=-1))
    steps = np.where(steps > 0, steps, np.inf)  # NaN (no neighbour) compares False
    out = np.empty(x.shape)
    out[..., 0] = r
    np.minimum(np.minimum.accumulate(steps, axis=-1), r[..., None], out=out[..., 1:])
    return out


def mad(*, window: int = 256, level: float = 3.5, stride: int = 8, warmup: int = 32) -> MAD:
    return MAD(window, level, stride, warmup)
