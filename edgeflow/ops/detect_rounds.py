"""Detection vectorised across keys, for live traffic (a few readings per key per batch).

The per-key :class:`~edgeflow.ops.detect.Driver` pays ~50 us of numpy call overhead per key
per batch; with hundreds of keys and one reading each that is most of a flow's time (and
its latency). Here round r scores the r-th reading of every key at once, decides, and
learns the normal ones - the same one-at-a-time semantics and the same per-key state as the
Driver (gathered from and scattered back to it), for z-score, EWMA and CUSUM with a fixed
threshold. Results equal the Driver's up to floating-point rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect import CUSUM, EWMA, Decision, Detector, DriverOut, ZScore, calibrate

SUPPORTED = (ZScore, EWMA, CUSUM)


def supports(det: Detector, decision: Decision, learn_anomalies: bool) -> bool:
    return type(det) in SUPPORTED and decision.kind == "threshold" and not learn_anomalies


def run_rounds(
    det: Detector,
    decision: Decision,
    adapt_after: int | None,
    states: list[dict[str, Any]],
    xs: list[F64],
) -> list[DriverOut]:
    """Score each key's points (``xs[i]`` with Driver state ``states[i]``) round by round."""
    grid = Grid(xs, states)
    lens, pad, outs, anomaly, event = grid.lens, grid.x, grid.out, grid.anomaly, grid.event
    streak, since = grid.streak, grid.since
    rounds = pad.shape[1]
    model = _Model.gather(det, [s["det"] for s in states])
    thr = decision.value
    for r in range(rounds):
        active = lens > r
        x = pad[:, r]
        raw, low, high = model.score(x)
        score = calibrate(raw, det.level)
        flagged = active & (score >= thr)
        learn = active & (
            ~flagged | ((streak >= adapt_after) if adapt_after is not None else False)
        )
        model.learn(x, learn)
        model.forget(active & flagged & ~learn)
        streak = np.where(active, np.where(flagged, streak + 1, 0), streak)
        gap = since + 1
        ev = flagged & (gap > decision.cooldown)
        since = np.where(active, np.where(ev, 0, since + 1), since)
        for name, arr in (("raw", raw), ("score", score), ("low", low), ("high", high)):
            outs[name][:, r] = arr
        anomaly[:, r] = flagged
        event[:, r] = ev
    model.scatter([s["det"] for s in states])
    grid.streak, grid.since = streak, since
    return grid.results(states, thr)


class Grid:
    """Each key's points in a NaN-padded row, with per-point outputs filled in place and the
    Driver's streak and cooldown counters stacked; ``results`` writes the counters back."""

    def __init__(self, xs: list[F64], states: list[dict[str, Any]]) -> None:
        k = len(xs)
        self.lens = np.array([len(x) for x in xs])
        width = int(self.lens.max())
        self.x = np.full((k, width), np.nan)
        for i, x in enumerate(xs):
            self.x[i, : len(x)] = x
        self.out = {name: np.full((k, width), np.nan) for name in ("raw", "score", "low", "high")}
        self.anomaly = np.zeros((k, width), bool)
        self.event = np.zeros((k, width), bool)
        self.streak = np.array([s["streak"] for s in states], np.int64)
        self.since = np.array([s.get("since_event", 1 << 30) for s in states], np.int64)

    def results(self, states: list[dict[str, Any]], thr: float) -> list[DriverOut]:
        res = []
        for i, s in enumerate(states):
            s["streak"], s["since_event"] = int(self.streak[i]), int(self.since[i])
            n = self.lens[i]
            o = self.out
            res.append(
                DriverOut(
                    o["raw"][i, :n],
                    o["score"][i, :n],
                    self.anomaly[i, :n],
                    o["low"][i, :n],
                    o["high"][i, :n],
                    np.full(n, thr),
                    self.event[i, :n],
                )
            )
        return res


class _Model:
    """Stacked per-key state of one detector type; ``score`` is the state before each point."""

    @staticmethod
    def gather(det: Detector, sts: list[dict[str, Any]]) -> _Model:
        if isinstance(det, ZScore):
            return _ZModel(det, sts)
        if isinstance(det, CUSUM):
            return _CusumModel(det, sts)
        if isinstance(det, EWMA):
            return _EwmaModel(det, sts)
        raise TypeError(type(det))

    def score(self, x: F64) -> tuple[F64, F64, F64]:
        raise NotImplementedError

    def learn(self, x: F64, mask: np.ndarray) -> None:
        raise NotImplementedError

    def forget(self, mask: np.ndarray) -> None:
        return None

    def scatter(self, sts: list[dict[str, Any]]) -> None:
        raise NotImplementedError


class _ZModel(_Model):
    def __init__(self, det: ZScore, sts: list[dict[str, Any]]) -> None:
        self.det = det
        w = det.window
        self.h = np.full((len(sts), w), np.nan)  # oldest first, right-aligned
        for i, s in enumerate(sts):
            hist = s["hist"]
            if len(hist):
                self.h[i, w - len(hist) :] = hist
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, x: F64) -> tuple[F64, F64, F64]:
        cnt = np.sum(~np.isnan(self.h), axis=1)
        has = cnt > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            base = np.where(has, np.nanmean(np.where(has[:, None], self.h, 0.0), axis=1), x)
            d = self.h - base[:, None]
            mean = np.where(has, np.nansum(d, axis=1) / cnt, np.nan)
            var = np.maximum(np.nansum(d * d, axis=1) / cnt - mean**2, 0.0)
            std = np.sqrt(var)
            z = np.abs(x - base - mean) / np.maximum(std, 1e-12 * (1 + np.abs(base)))
        z = np.where(has, np.nan_to_num(z, nan=0.0, posinf=1e6), 0.0) * (self.n >= self.det.warmup)
        m = base + np.nan_to_num(mean, nan=0.0)
        return z, m - self.det.level * std, m + self.det.level * std

    def learn(self, x: F64, mask: np.ndarray) -> None:
        if mask.any():
            rows = np.flatnonzero(mask)
            self.h[rows, :-1] = self.h[rows, 1:]
            self.h[rows, -1] = x[rows]
            self.n[rows] += 1

    def scatter(self, sts: list[dict[str, Any]]) -> None:
        for i, s in enumerate(sts):
            row = self.h[i]
            s["hist"] = row[~np.isnan(row)].copy()
            s["n"] = int(self.n[i])


class _EwmaModel(_Model):
    def __init__(self, det: EWMA, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.m = np.array([np.nan if s["m"] is None else s["m"] for s in sts])
        self.v = np.array([s["v"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)

    def before(self, x: F64) -> tuple[F64, F64]:
        """Mean and bias-corrected std before x (a key's first point is its own mean)."""
        m = np.where(np.isnan(self.m), x, self.m)
        corr = -np.expm1(self.n * np.log1p(-self.det.alpha))
        v = np.where(corr > 0, self.v / np.where(corr > 0, corr, 1.0), self.v)
        return m, np.sqrt(v)

    def score(self, x: F64) -> tuple[F64, F64, F64]:
        m, std = self.before(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m)))
        z = np.nan_to_num(z, nan=0.0, posinf=1e6) * (self.n >= self.det.warmup)
        return z, m - self.det.level * std, m + self.det.level * std

    def learn(self, x: F64, mask: np.ndarray) -> None:
        a = self.det.alpha
        m = np.where(np.isnan(self.m), x, self.m)
        d = x - m
        self.m = np.where(mask, m + a * d, self.m)
        self.v = np.where(mask, (1 - a) * (self.v + a * d * d), self.v)
        self.n = np.where(mask, self.n + 1, self.n)

    def scatter(self, sts: list[dict[str, Any]]) -> None:
        for i, s in enumerate(sts):
            s["m"] = None if np.isnan(self.m[i]) else float(self.m[i])
            s["v"] = float(self.v[i])
            s["n"] = int(self.n[i])


class _CusumModel(_Model):
    def __init__(self, det: CUSUM, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = _EwmaModel(det.base, [s["ew"] for s in sts])
        self.sp = np.array([s["sp"] for s in sts], np.float64)
        self.sn = np.array([s["sn"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)
        self.next_sp = self.sp
        self.next_sn = self.sn

    def score(self, x: F64) -> tuple[F64, F64, F64]:
        m, std = self.ew.before(x)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.nan_to_num(
                (x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m))), nan=0.0, posinf=1e6, neginf=-1e6
            )
        z = z * (self.n >= self.det.warmup)
        self.next_sp = np.maximum(0.0, self.sp + z - self.det.k)
        self.next_sn = np.maximum(0.0, self.sn - z - self.det.k)
        return np.maximum(self.next_sp, self.next_sn), m - 3 * std, m + 3 * std

    def learn(self, x: F64, mask: np.ndarray) -> None:
        self.sp = np.where(mask, self.next_sp, self.sp)
        self.sn = np.where(mask, self.next_sn, self.sn)
        self.ew.learn(x, mask)
        self.n = np.where(mask, self.n + 1, self.n)

    def forget(self, mask: np.ndarray) -> None:
        self.sp = np.where(mask, 0.0, self.sp)
        self.sn = np.where(mask, 0.0, self.sn)

    def scatter(self, sts: list[dict[str, Any]]) -> None:
        self.ew.scatter([s["ew"] for s in sts])
        for i, s in enumerate(sts):
            s["sp"], s["sn"], s["n"] = float(self.sp[i]), float(self.sn[i]), int(self.n[i])
