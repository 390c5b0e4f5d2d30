"""Detection vectorised across keys: all keys of a batch in repeated 2-D passes.

This serves live batches (a reading or a few per key: usually one pass) and bulk ones (a
replay: a pass per anomaly). Each key's remaining readings form one row of a NaN-padded matrix. A pass scores every row
with the prefix semantics of :mod:`edgeflow.ops.detect` (each point against the state after
the points before it), using cumulative sums and ``lfilter(axis=1)``. For each key, the
points up to its first anomaly are final and are learnt straight from the pass's arrays.
The anomaly is decided (streak, cooldown, forget), and the key's rest goes into the next
pass. Passes repeat until every key is done, so a batch costs about (anomalies per key + 1)
vectorised passes instead of per-key Python work.

The semantics are the Driver's (one point at a time), for z-score, EWMA and CUSUM with a
fixed threshold. A key that starts adapting (a long streak of anomalies) finishes its batch
in the Driver. Scores equal the Driver's up to floating-point rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.signal import lfilter

from edgeflow.batch import F64
from edgeflow.ops.detect import (
    CUSUM,
    EWMA,
    Decision,
    Detector,
    Driver,
    DriverOut,
    ZScore,
    calibrate,
)

Arr = np.ndarray
SUPPORTED = (ZScore, EWMA, CUSUM)


def supports(det: Detector, decision: Decision, learn_anomalies: bool) -> bool:
    return type(det) in SUPPORTED and decision.kind == "threshold" and not learn_anomalies


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


class _Ewma:
    """Stacked EWMA state (mean, variance, points learnt) and its 2-D prefix pass."""

    def __init__(self, alpha: float, sts: list[dict[str, Any]]) -> None:
        self.a = alpha
        self.m = np.array([np.nan if s["m"] is None else s["m"] for s in sts])
        self.v = np.array([s["v"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)

    def prefix(self, rows: Arr, x: F64) -> tuple[F64, F64, F64, F64]:
        """(mean before, bias-corrected variance before, mean after, raw variance after)."""
        a = self.a
        m0 = np.where(np.isnan(self.m[rows]), x[:, 0], self.m[rows])
        v0 = self.v[rows]
        m_after = lfilter([a], [1.0, -(1 - a)], x, axis=1, zi=((1 - a) * m0)[:, None])[0]
        m_before = np.concatenate([m0[:, None], m_after[:, :-1]], axis=1)
        d = a * (1 - a) * (x - m_before) ** 2
        v_after = lfilter([1.0], [1.0, -(1 - a)], d, axis=1, zi=((1 - a) * v0)[:, None])[0]
        v_before = np.concatenate([v0[:, None], v_after[:, :-1]], axis=1)
        seen = self.n[rows][:, None] + np.arange(x.shape[1])
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

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["m"] = None if np.isnan(self.m[i]) else float(self.m[i])
        s["v"], s["n"] = float(self.v[i]), int(self.n[i])


class _Z:
    def __init__(self, det: ZScore, sts: list[dict[str, Any]]) -> None:
        self.det = det
        w = det.window
        self.h = np.full((len(sts), w), np.nan)  # right-aligned history
        for i, s in enumerate(sts):
            if len(s["hist"]):
                self.h[i, w - len(s["hist"]) :] = s["hist"]
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        w = self.det.window
        k, n = x.shape
        h = self.h[rows]
        has = ~np.isnan(h).all(axis=1)
        base = np.where(has, np.nanmean(np.where(has[:, None], h, 0.0), axis=1), x[:, 0])
        self.z = z = np.concatenate([h, x], axis=1)
        valid = ~np.isnan(z)
        d = np.where(valid, z - base[:, None], 0.0)
        zero = np.zeros((k, 1))
        c1 = np.concatenate([zero, np.cumsum(d, axis=1)], axis=1)
        c2 = np.concatenate([zero, np.cumsum(d * d, axis=1)], axis=1)
        cn = np.concatenate([zero, np.cumsum(valid, axis=1)], axis=1)
        end = w + np.arange(n)
        cnt = cn[:, end] - cn[:, end - w]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (c1[:, end] - c1[:, end - w]) / cnt
            std = np.sqrt(np.maximum((c2[:, end] - c2[:, end - w]) / cnt - mean**2, 0.0))
            raw = np.abs(x - base[:, None] - mean) / np.maximum(
                std, 1e-12 * (1 + np.abs(base[:, None]))
            )
        raw = np.where(cnt > 0, np.nan_to_num(raw, nan=0.0, posinf=1e6), 0.0)
        raw = raw * ((self.n[rows][:, None] + np.arange(n)) >= self.det.warmup)
        m = base[:, None] + np.nan_to_num(mean, nan=0.0)
        return raw, m - self.det.level * std, m + self.det.level * std

    def learn(self, rows: Arr, f: Arr) -> None:
        w = self.det.window
        cols = f[:, None] + np.arange(w)  # the w columns of z ending before column w + f
        self.h[rows] = np.take_along_axis(self.z, cols, axis=1)
        self.n[rows] += f

    def forget(self, rows: Arr) -> None:
        return None

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        row = self.h[i]
        s["hist"], s["n"] = row[~np.isnan(row)].copy(), int(self.n[i])


class _E:
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
        return raw, m - self.det.level * std, m + self.det.level * std

    def learn(self, rows: Arr, f: Arr) -> None:
        self.ew.learn(rows, f, self.m_after, self.v_after)

    def forget(self, rows: Arr) -> None:
        return None

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s)


class _C:
    def __init__(self, det: CUSUM, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.ew = _Ewma(det.base.alpha, [s["ew"] for s in sts])
        self.sp = np.array([s["sp"] for s in sts], np.float64)
        self.sn = np.array([s["sn"] for s in sts], np.float64)
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, rows: Arr, x: F64) -> tuple[F64, F64, F64]:
        m, v, self.m_after, self.v_after = self.ew.prefix(rows, x)
        std = np.sqrt(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.nan_to_num(
                (x - m) / np.maximum(std, 1e-12 * (1 + np.abs(m))), nan=0.0, posinf=1e6, neginf=-1e6
            )
        z = z * ((self.n[rows][:, None] + np.arange(x.shape[1])) >= self.det.warmup)

        def lindley(y: F64, s0: F64) -> F64:
            c = np.cumsum(y, axis=1)
            out: F64 = c - np.minimum(np.minimum.accumulate(c, axis=1), -s0[:, None])
            return out

        self.sps = lindley(z - self.det.k, self.sp[rows])
        self.sns = lindley(-z - self.det.k, self.sn[rows])
        return np.maximum(self.sps, self.sns), m - 3 * std, m + 3 * std

    def learn(self, rows: Arr, f: Arr) -> None:
        moved = np.flatnonzero(f > 0)
        self.sp[rows[moved]] = self.sps[moved, f[moved] - 1]
        self.sn[rows[moved]] = self.sns[moved, f[moved] - 1]
        self.ew.learn(rows, f, self.m_after, self.v_after)
        self.n[rows] += f

    def forget(self, rows: Arr) -> None:
        self.sp[rows] = 0.0
        self.sn[rows] = 0.0

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        self.ew.scatter(i, s["ew"])
        s["sp"], s["sn"], s["n"] = float(self.sp[i]), float(self.sn[i]), int(self.n[i])


def _model(det: Detector, sts: list[dict[str, Any]]) -> _Z | _E | _C:
    if isinstance(det, ZScore):
        return _Z(det, sts)
    if isinstance(det, CUSUM):
        return _C(det, sts)
    if isinstance(det, EWMA):
        return _E(det, sts)
    raise TypeError(type(det))


def run_bulk(driver: Driver, states: list[dict[str, Any]], xs: list[F64]) -> list[DriverOut]:
    det, dec = driver.detector, driver.decision
    thr, cooldown, adapt = dec.value, dec.cooldown, driver.adapt_after
    grid = Grid(xs, states)
    lens, xmat, out, anomaly, event = grid.lens, grid.x, grid.out, grid.anomaly, grid.event
    streak, since = grid.streak, grid.since
    k, width = xmat.shape
    model = _model(det, [s["det"] for s in states])
    pos = np.zeros(k, np.int64)
    handoff: list[int] = []
    adapting = streak >= adapt if adapt is not None else np.zeros(k, bool)
    handoff.extend(np.flatnonzero(adapting).tolist())
    active = np.flatnonzero(~adapting & (lens > 0))
    first = True
    while len(active):
        rem = lens[active] - pos[active]
        # after the first pass only keys that hit an anomaly remain: short passes suffice
        span = int(rem.max()) if first else min(int(rem.max()), 96)
        first = False
        cols = pos[active][:, None] + np.arange(span)
        inside = np.arange(span) < rem[:, None]
        x = np.where(
            inside, np.take_along_axis(xmat[active], np.minimum(cols, width - 1), axis=1), np.nan
        )
        raw, low, high = model.score(active, x)
        score = calibrate(raw, det.level)
        flagged = (score >= thr) & inside
        has = flagged.any(axis=1)
        f = np.where(
            has, np.argmax(flagged, axis=1), np.minimum(rem, span)
        )  # points before the first anomaly
        upto = np.where(has, f + 1, f)  # points decided in this pass
        keep = np.arange(span) < upto[:, None]
        r_idx, c_idx = np.nonzero(keep)
        rows, cc = active[r_idx], cols[r_idx, c_idx]
        for name, arr in (("raw", raw), ("score", score), ("low", low), ("high", high)):
            out[name][rows, cc] = arr[r_idx, c_idx]
        anomaly[rows, cc] = flagged[r_idx, c_idx]
        model.learn(active, f)
        since[active] += f
        streak[active] = np.where(f > 0, 0, streak[active])
        hit = active[has]
        if len(hit):
            at = pos[hit] + f[has]
            model.forget(hit)
            ev = since[hit] + 1 > cooldown
            event[hit, at] = ev
            since[hit] = np.where(ev, 0, since[hit] + 1)
            streak[hit] += 1
        pos[active] += upto
        if adapt is not None:
            start = active[(streak[active] >= adapt) & (pos[active] < lens[active])]
            handoff.extend(start.tolist())
        else:
            start = np.empty(0, np.int64)
        active = active[(pos[active] < lens[active]) & ~np.isin(active, start)]
    for i, s in enumerate(states):
        model.scatter(i, s["det"])
        s["streak"], s["since_event"] = int(streak[i]), int(since[i])
    for i in handoff:  # adapting keys finish their points in the Driver, one at a time semantics
        rest = driver.run(states[i], xs[i][pos[i] :])
        p = int(pos[i])
        for name in ("raw", "score", "low", "high"):
            out[name][i, p : lens[i]] = getattr(rest, name)
        anomaly[i, p : lens[i]] = rest.anomaly
        event[i, p : lens[i]] = rest.event
        streak[i], since[i] = (
            states[i]["streak"],
            states[i]["since_event"],
        )  # as the Driver left them
    return grid.results(states, thr)
