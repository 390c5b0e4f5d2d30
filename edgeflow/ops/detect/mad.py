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
from edgeflow.ops.detect.stacked import (
    Rows,
    StackedModel,
    pack_rows,
    slide_joined_rows,
    unpad_row,
    window_rows,
)

#: 1.4826 MAD, IQR / 1.349 and 1.2533 x the mean absolute deviation each estimate a normal
#: distribution's standard deviation
MAD_TO_STD, IQR_TO_STD, MEAN_DEV_TO_STD = 1.4826, 1.349, 1.2533
#: values per block of windows a stacked pass estimates at once (bounded memory with many keys)
ESTIMATE_BLOCK = 1 << 22
#: values (windows x window length) from which :func:`robust_spread` finds MADs by
#: selection, not by sorting each window's deviations (measured: sorting is cheaper below
#: about 64 k values, 256 windows of 256 or 512 of 128; the selection's steps cost the same
#: for any number of windows)
SELECT_FROM = 1 << 16
#: windows still filling up are estimated by their lengths, as full windows of each
#: length, when they have at most this many lengths or this many windows per length on
#: average (see :func:`_stats_by_count`)
PARTIAL_SIZES, PARTIAL_PER_SIZE = 32, 64
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
        w = self.window
        if ends[0] < w:  # a window reaching before z starts: NaN there (an empty slot)
            z, ends = np.concatenate([np.full(w, np.nan), z]), ends + w
        # whole windows copied from a strided view (not an index per value)
        win = np.lib.stride_tricks.sliding_window_view(z, w)[ends - w]
        m, d = self.estimate(win)
        # (learn, next, needs one of these again: kept until then, see made_estimate)
        self._made = (st, hist, n0, st["prev"], y, rs, m, d)
        idx = np.maximum((refresh - base) // s - 1, 0)
        med = np.where(new, m[idx], st["med"])
        mad = np.where(new, d[idx], st["mad"])
        return med, mad

    def estimate(self, win: F64) -> tuple[F64, F64]:
        """The centre and spread of windows of values (the last axis; NaN: an empty slot):
        :func:`robust_spread`. Every form calls this, so a subclass may estimate otherwise.
        ``win`` is the caller's scratch block: an estimate may reorder it (sort in place)."""
        return robust_spread(win, scratch=True)

    def made_estimate(self, st: dict[str, Any], y: F64, r: int) -> tuple[float, float] | None:
        """The estimate at refresh ``r`` when the last :meth:`score` made it, for this
        key's state as it is (the same history, count and last reading) and a series ``y``
        that is the start of the one scored (a Driver scores a pass, then learns the points
        up to its first anomaly): the same window, so the same estimate. None otherwise. Used
        once: the state moves on."""
        made = self.__dict__.pop("_made", None)
        if made is None:
            return None
        key, hist, n0, prev, ys, rs, m, d = made
        if key is not st or hist is not st["hist"] or n0 != st["n"] or prev != st["prev"]:
            return None
        if len(y) > len(ys) or not np.array_equal(y, ys[: len(y)]):
            return None
        i = (r - int(rs[0])) // self.stride
        if not 0 <= i < len(rs) or rs[i] != r:
            return None
        return float(m[i]), float(d[i])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_made", None)  # a pass's working data, never state
        return state

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
        made = self.made_estimate(st, y, last) if last > n0 // s * s else None
        if made is not None:
            st["med"], st["mad"] = made
        elif last > n0 // s * s:
            end = len(z) - (n0 + len(y) - last)
            cols = end - self.window + np.arange(self.window)
            win = z[cols] if cols[0] >= 0 else np.where(cols >= 0, z[np.maximum(cols, 0)], np.nan)
            m, d = self.estimate(win[None, :])
            st["med"], st["mad"] = float(m[0]), float(d[0])
        st["hist"] = z[-self.window :]
        if self.warmup and not st["n"]:  # the warm-up block: estimated from all of it
            m, d = self.estimate(st["hist"][None, :].copy())
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

    PASS_DATA = ("hx", "y", "x", "first", "ests", "made", "z")
    SPAN_EXACT = True  # order statistics and elementwise arithmetic only
    made: np.ndarray | None = None
    #: ``score`` takes ``wanted`` (see :meth:`score`)
    LAZY = True

    def __init__(self, det: MAD, sts: list[dict[str, Any]]) -> None:
        self.det = det
        # (MAD's adapt reads the key's own pending anomalies, not the ones it is given)
        self.adapts_in_pass = type(det).adapt is MAD.adapt
        w = det.window
        self.h = pack_rows([s["hist"] for s in sts], w)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.med = np.array([s["med"] for s in sts], np.float64)
        self.mad = np.array([s["mad"] for s in sts], np.float64)
        self.prev = np.array([np.nan if s["prev"] is None else s["prev"] for s in sts])
        self.pend = pack_rows([s["pend"] for s in sts], ADAPT_AFTER)

    def score(self, rows: Rows, x: F64, wanted: np.ndarray | None = None) -> tuple[F64, F64, F64]:
        """(See :class:`StackedModel`.) ``wanted``: where the caller reads the results (a
        bool matrix shaped like ``x``; None: everywhere). Only the estimates in force at
        those points, and at each row's last point (for :meth:`learn`), are made: a context
        part's range is read where another part alarmed, a few points a pass."""
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
        self.z = z = np.concatenate([self.hx, y], axis=1)  # the windows' values; learn slides it
        # refreshes: after j points of this pass, where n0 + j is a multiple of the stride
        self.first = first = s - n0 % s  # 1..s
        n_ref = int(max(0, (span - int(first.min())) // s + 1))
        self.made = None  # which estimates were made (None: all)
        if not n_ref:
            self.ests = (np.empty((k, 0)), np.empty((k, 0)))
        elif wanted is None:
            jr = first[:, None] + s * np.arange(n_ref)  # (k, R)
            # refreshes past a row's last point are never used: point them at a window
            # without padding, so the medians need no NaN handling
            rem = np.count_nonzero(~np.isnan(x), axis=1)
            # in blocks of rows of at most about ESTIMATE_BLOCK values (many keys: bounded
            # memory; smaller blocks are slower)
            step = max(1, ESTIMATE_BLOCK // (n_ref * w))
            parts = [
                det.estimate(window_rows(z[a : a + step], jr[a : a + step], w, rem[a : a + step]))
                for a in range(0, k, step)
            ]
            self.ests = (
                (parts[0][0], parts[0][1])
                if len(parts) == 1
                else (np.concatenate([q[0] for q in parts]), np.concatenate([q[1] for q in parts]))
            )
        else:
            self.ests = (np.full((k, n_ref), np.nan), np.full((k, n_ref), np.nan))
            self.made = np.zeros((k, n_ref), bool)
            rem = np.count_nonzero(~np.isnan(x), axis=1)
            at = (np.arange(span)[None, :] - first[:, None]) // s  # refresh in force - 1
            wi, wc = np.nonzero(wanted & (at >= 0))
            ends = (rem - first) // s
            has_end = ends >= 0
            self._make(
                np.concatenate([wi, np.flatnonzero(has_end)]),
                np.minimum(np.concatenate([at[wi, wc], ends[has_end]]), n_ref - 1),
            )
        if wanted is not None:  # (a context part's: no verdicts) the ranges where wanted
            wi, wc = np.nonzero(wanted)
            return self._ranges_at(rows, x, y, (wi, wc))
        med, mad = self._in_force(rows, span)
        centre = x - y + med if det.diff else med
        last = p0 if det.diff else self.hx[:, -1]
        spread = floored_before(mad, self.resolution(rows), last, x, centre)
        with np.errstate(invalid="ignore"):
            zz = np.abs(y - med) / spread
        zz = finite_raw(zz)
        if len(n0) and n0.min() < det.warmup:
            zz = zz * warm_up_rows(n0, span, det.warmup)
        return zz, centre, det.level * spread

    def _ranges_at(
        self, rows: Rows, x: F64, y: F64, points: tuple[Rows, Rows]
    ) -> tuple[F64, F64, F64]:
        """A lazy pass's (raw, centre, half): raw 0, the range only at ``points`` (pass
        row, column), NaN elsewhere."""
        det = self.det
        wi, wc = points
        centre, half = np.full(x.shape, np.nan), np.full(x.shape, np.nan)
        if len(wi):
            med, mad = self._in_force(rows[wi], wc[:, None], self.first[wi], wi)
            at = x[wi, wc] - y[wi, wc] + med[:, 0] if det.diff else med[:, 0]
            last = self.prev[rows][wi] if det.diff else self.hx[wi, -1]
            res = resolution_before(self.resolution(rows)[wi], last, x[wi])[np.arange(len(wi)), wc]
            centre[wi, wc] = at
            half[wi, wc] = det.level * floored(mad[:, 0], res, at)
        return np.zeros(x.shape), centre, half

    def _make(self, ri: Rows, ref: Rows) -> None:
        """Make the estimates of refreshes ``ref`` of pass rows ``ri`` (a lazy pass)."""
        assert self.made is not None
        todo = ~self.made[ri, ref]
        ri, ref = ri[todo], ref[todo]
        if not len(ri):
            return
        w, s = self.det.window, self.det.stride
        view = np.lib.stride_tricks.sliding_window_view(self.z, w, axis=1)
        start = np.minimum(self.first[ri] + s * ref, view.shape[1] - 1)
        m, d = self.det.estimate(view[ri, start])  # (a copy: the estimate's scratch)
        self.ests[0][ri, ref], self.ests[1][ri, ref] = m, d
        self.made[ri, ref] = True

    def _in_force(
        self, rows: Rows, j: Rows | int, first: Rows | None = None, ri: Rows | None = None
    ) -> tuple[F64, F64]:
        """Median and spread in force before point j of the pass (j: (k, m) or (k, 1); an
        int: every point of a pass that long, as ``arange(j)[None, :]``): the estimate of
        the pass's last refresh at or before j (``first`` is 1..stride, so a point before the
        first refresh counts 0: the row's estimate from before the pass).
        ``first``, ``ri``: the rows' refresh offsets and places in the pass (default: the
        pass's rows, in order)."""
        m, d = self.ests
        if ri is not None:
            m, d = m[ri], d[ri]
        first = self.first if first is None else first
        if not m.shape[1]:
            shape = np.broadcast_shapes((1, j) if isinstance(j, int) else j.shape, (len(rows), 1))
            return (
                np.broadcast_to(self.med[rows][:, None], shape),
                np.broadcast_to(self.mad[rows][:, None], shape),
            )
        s, n_ref = self.det.stride, m.shape[1]
        if isinstance(j, int):  # every point: each row's counts are a window of those of
            # points -s, 1 - s, ... (whole-row copies, no integer division per point)
            ramp = np.minimum(np.arange(-s, j) // s + 1, n_ref)
            cnt = np.lib.stride_tricks.sliding_window_view(ramp, j)[s - first]
        else:
            cnt = np.minimum((j - first[:, None]) // s + 1, n_ref)
        cnt += (np.arange(len(rows)) * (n_ref + 1))[:, None]  # flat: row-major (k, R + 1)
        med = np.concatenate([self.med[rows][:, None], m], axis=1).ravel().take(cnt)
        mad = np.concatenate([self.mad[rows][:, None], d], axis=1).ravel().take(cnt)
        return med, mad

    def learn(self, rows: Rows, f: Rows) -> None:
        moved = f > 0
        if not moved.any():
            return
        if self.made is not None and self.made.shape[1]:  # a lazy pass: the ones needed now
            at = (f - self.first) // self.det.stride
            due = at >= 0
            self._make(np.flatnonzero(due), np.minimum(at[due], self.made.shape[1] - 1))
        med, mad = self._in_force(rows, f[:, None])  # the estimates in force next
        self.med[rows] = med[:, 0]
        self.mad[rows] = mad[:, 0]
        slide_joined_rows(self.h, rows, self.z, f)
        self.prev[rows[moved]] = self.x[np.flatnonzero(moved), f[moved] - 1]
        if self.det.warmup:  # a warm-up block (the Driver's, usually): from all of it
            starting = rows[moved & (self.n[rows] == 0)]
            if len(starting):  # keys whose blocks are as long: estimated together
                held = np.count_nonzero(~np.isnan(self.h[starting]), axis=1)
                for size in np.unique(held).tolist():
                    at = starting[held == size]
                    m, d = self.det.estimate(self.h[at, self.h.shape[1] - size :])
                    self.med[at], self.mad[at] = m, d
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


def robust_spread(win: F64, tails: float = 0.0, scratch: bool = False) -> tuple[F64, F64]:
    """The median and robust spread of each window of values (the last axis; NaN: an empty
    slot of a window still filling up; an all-NaN window gives NaN).

    The spread is the larger of 1.4826 x the median absolute deviation from the median and
    IQR / 1.349: both estimate a normal distribution's standard deviation, and the IQR keeps
    a bimodal window's spread (a square wave: the MAD of two equal levels is 0). When both
    are 0 (more than three quarters of the window share one value: a quantised signal that
    mostly repeats, or its differences) it is 1.2533 x the mean of the non-zero absolute
    deviations: how far the signal moves when it moves. 0 only for a constant window;
    callers floor it (:func:`edgeflow.ops.detect.spread.floored`).

    ``scratch``: ``win`` may be sorted in place (the caller's own copy).

    ``tails`` > 0: the spread is also at least the distance between the window's ``tails``
    and ``1 - tails`` quantiles over that of a normal distribution's (a heavy-tailed window
    spreads wider than its MAD says; a normal one's tails agree with it).

    The same arithmetic whatever the shape of the leading axes, so the reference and stacked
    forms agree to the last bit."""
    w = win.shape[-1]
    if scratch:  # the caller's own copy: sorted in place (a copy of a large block saved)
        win.sort(axis=-1)
        srt = win
    else:
        srt = np.sort(win, axis=-1)  # NaN last
    part = np.isnan(srt[..., -1])  # windows still filling up
    if part.any() and not part.all():  # full ones by the faster path: the same bits each
        if _by_lengths(np.unique(np.count_nonzero(~np.isnan(srt), axis=-1)), part.size):
            return _spread_sorted(srt, tails)  # (by lengths: the full ones are one)
        rows, part = srt.reshape(-1, w), part.reshape(-1)
        med, spread = np.empty(len(part)), np.empty(len(part))
        for which in (part, ~part):
            med[which], spread[which] = _spread_sorted(rows[which], tails)
        return med.reshape(srt.shape[:-1]), spread.reshape(srt.shape[:-1])
    return _spread_sorted(srt, tails)


def _spread_sorted(srt: F64, tails: float) -> tuple[F64, F64]:
    """:func:`robust_spread` of windows already sorted (NaN last)."""
    w = srt.shape[-1]
    if np.isnan(srt[..., -1]).any():
        count = np.count_nonzero(~np.isnan(srt), axis=-1)
        sizes = np.unique(count)
        if _by_lengths(sizes, count.size):  # (few lengths: as full windows of each)
            med, q1, q3, lo, hi, mad = _stats_by_count(srt, count, sizes, tails)
        else:
            med, q1, q3 = (_order_stat(srt, count, q) for q in (0.5, 0.25, 0.75))
            if tails > 0:
                lo, hi = (_order_stat(srt, count, q) for q in (tails, 1 - tails))
            dev = np.abs(srt - med[..., None])  # V-shaped: sorts fast
            mad = _order_stat(np.sort(dev, axis=-1), count, 0.5)
    else:
        med, q1, q3 = (_order_stat_full(srt, w, q) for q in (0.5, 0.25, 0.75))
        if tails > 0:
            lo, hi = (_order_stat_full(srt, w, q) for q in (tails, 1 - tails))
        mad = _median_deviation_sorted(srt, med)
    spread = np.maximum(MAD_TO_STD * mad, (q3 - q1) / IQR_TO_STD)
    if tails > 0:
        spread = np.fmax(spread, (hi - lo) / (2 * NormalDist().inv_cdf(1 - tails)))
    flat = ~(spread > 0)
    if flat.any():  # 0 (or NaN): the mean of the non-zero deviations, where there are any
        dev_flat = np.abs(srt[flat] - med[flat][..., None])
        moves = np.count_nonzero(dev_flat > 0, axis=-1)  # NaN > 0 is False
        with np.errstate(invalid="ignore", divide="ignore"):
            moved = MEAN_DEV_TO_STD * np.nansum(dev_flat, axis=-1) / moves
        spread[flat] = np.where(moves > 0, moved, spread[flat])
    out: F64 = spread
    return med, out


def _by_lengths(sizes: np.ndarray, windows: int) -> bool:
    """Whether windows still filling up, of ``sizes`` lengths (distinct, ``windows`` in
    all), are estimated by their lengths (:func:`_stats_by_count`): few lengths, or many
    windows of each (a fixed cost per length, a gather per window and order statistic
    otherwise)."""
    return len(sizes) <= max(PARTIAL_SIZES, windows // PARTIAL_PER_SIZE)


def _stats_by_count(
    srt: F64, count: np.ndarray, sizes: np.ndarray, tails: float
) -> tuple[F64, F64, F64, F64, F64, F64]:
    """(median, q1, q3, tails' low and high quantiles (NaN without ``tails``), median
    absolute deviation) of sorted windows with ``count`` values each (NaN after them),
    the windows of each length in ``sizes`` (every count, ascending) taken together as
    full windows of that length: the same order statistics of the same values, so the
    same bits as :func:`_order_stat` of the padded windows, without their per-window
    gathers and the sort of every window's deviations. NaN for an empty window."""
    w = srt.shape[-1]
    rows, cnt = srt.reshape(-1, w), count.reshape(-1)
    qs = (0.5, 0.25, 0.75, tails, 1 - tails)
    out = [np.full(len(cnt), np.nan) for _ in range(6)]
    for c in sizes.tolist():
        if c <= 0:
            continue
        at = np.flatnonzero(cnt == c) if len(sizes) > 1 else slice(None)
        sub = rows[at, :c]
        got = [_order_stat_full(sub, c, q) for q in (qs if tails > 0 else qs[:3])]
        got.append(_median_deviation_sorted(sub, got[0]))
        for o, g in zip((*out[: len(got) - 1], out[5]), got, strict=True):
            o[at] = g
    shape = srt.shape[:-1]
    med, q1, q3, lo, hi, mad = (o.reshape(shape) for o in out)
    return med, q1, q3, lo, hi, mad


def _median_deviation_sorted(srt: F64, med: F64) -> F64:
    """The median of ``|srt - med|`` for full sorted windows (the last axis) with their
    medians ``med``: exactly :func:`_order_stat_full` of the sorted deviations. Left of the
    middle the deviations rise leftwards, right of it rightwards: two sorted runs, whose k-th
    smallest a binary search over how many come from the left run finds (about log2(w / 2)
    vectorised steps instead of sorting every window's deviations; a few windows are sorted,
    where the steps' fixed cost is more)."""
    w = srt.shape[-1]
    if srt.size < SELECT_FROM or w < 4:
        dev = np.abs(srt - med[..., None])
        return _order_stat_full(np.sort(dev, axis=-1), w, 0.5)
    flat = srt.reshape(-1)
    m = med.reshape(-1)
    c = w // 2  # left run: srt[c-1], srt[c-2], ...; right run: srt[c], srt[c+1], ...
    na, nb = c, w - c
    base = np.arange(len(m)) * w
    left0, right0 = base + (c - 1), base + c

    def left(i: np.ndarray) -> F64:  # the i-th smallest left deviation (0 <= i < na)
        v: F64 = np.abs(flat[left0 - i] - m)
        return v

    def right(j: np.ndarray) -> F64:  # the j-th smallest right deviation (0 <= j < nb)
        v: F64 = np.abs(flat[right0 + j] - m)
        return v

    p = (w - 1) * 0.5
    k = math.floor(p)  # the k-th smallest (0-based), and the next when p is between
    # a: how many of the k + 1 smallest deviations are on the left: the largest a with
    # left[a - 1] <= right[k + 1 - a] (true for small a, false for large)
    lo = np.full(len(m), max(0, k + 1 - nb), np.int64)
    hi = np.full(len(m), min(k + 1, na), np.int64)
    for _ in range(int(hi[0] - lo[0]).bit_length() + 1):
        mid = (lo + hi + 1) // 2
        b = k + 1 - mid
        ok = (mid == 0) | (b >= nb)
        ok |= left(np.maximum(mid - 1, 0)) <= right(np.minimum(b, nb - 1))
        ok &= lo < hi
        lo = np.where(ok, mid, lo)
        hi = np.where(ok | (lo >= hi), hi, mid - 1)
    a, b = lo, k + 1 - lo
    last_left = np.where(a > 0, left(np.maximum(a - 1, 0)), -np.inf)
    last_right = np.where(b > 0, right(np.maximum(b - 1, 0)), -np.inf)
    kth = np.maximum(last_left, last_right)
    frac = p - k
    if frac != 0.0:
        next_left = np.where(a < na, left(np.minimum(a, na - 1)), np.inf)
        next_right = np.where(b < nb, right(np.minimum(b, nb - 1)), np.inf)
        kth = kth + frac * (np.minimum(next_left, next_right) - kth)
    out: F64 = kth.reshape(med.shape)
    return out


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
