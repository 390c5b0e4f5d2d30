"""Robust z-score (median / MAD): :class:`MAD` (reference), :class:`MADStacked` (stacked
passes) and the :func:`mad` constructor.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg, counter, level, points
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.stacked import Rows, StackedModel, pack_rows, slide_rows, unpad_row


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
        z = np.nan_to_num(z, nan=0.0, posinf=1e6) * warm_up_mask(st, len(x), self.warmup)
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
    scaled MAD in force, the last learnt reading. The estimates are re-made each time a
    key's learnt count reaches a multiple of ``stride``: all such refreshes of a pass at once,
    as medians over a (keys, refreshes, window) block."""

    def __init__(self, det: MAD, sts: list[dict[str, Any]]) -> None:
        self.det = det
        w = det.window
        self.h = pack_rows([s["hist"] for s in sts], w)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.med = np.array([s["med"] for s in sts], np.float64)
        self.mad = np.array([s["mad"] for s in sts], np.float64)
        self.prev = np.array([np.nan if s["prev"] is None else s["prev"] for s in sts])

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
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
            zz = zz * warm_up_rows(n0, span, det.warmup)
        centre = x - y + med if det.diff else med
        return zz, centre, det.level * mad

    def _in_force(self, rows: Rows, j: Rows) -> tuple[F64, F64]:
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

    def learn(self, rows: Rows, f: Rows) -> None:
        moved = f > 0
        if not moved.any():
            return
        med, mad = self._in_force(rows, f[:, None])  # the estimates in force next
        self.med[rows] = med[:, 0]
        self.mad[rows] = mad[:, 0]
        slide_rows(self.h, rows, self.hx, self.y, f)
        self.prev[rows[moved]] = self.x[np.flatnonzero(moved), f[moved] - 1]
        self.n[rows] += f

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"] = unpad_row(self.h[i]), int(self.n[i])
        s["med"], s["mad"] = float(self.med[i]), float(self.mad[i])
        s["prev"] = None if np.isnan(self.prev[i]) else float(self.prev[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = pack_rows([s["hist"]], self.det.window)[0]
        self.n[i], self.med[i], self.mad[i] = s["n"], s["med"], s["mad"]
        self.prev[i] = np.nan if s["prev"] is None else s["prev"]

    def extend(self, other: MADStacked) -> None:
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


def mad(*, window: int = 64, level: float = 3.5, stride: int = 8, warmup: int = 16) -> MAD:
    return MAD(window, level, stride, warmup)
