"""Rolling z-score: :class:`ZScore` (reference), :class:`ZScoreStacked` (stacked passes
and live ticks) and the :func:`zscore` constructor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import counter, level, points
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.decision import ADAPT_AFTER
from edgeflow.ops.detect.filters import ERR_CAP, AnomalyRing, floor_rows, remember_anomaly
from edgeflow.ops.detect.spread import floored
from edgeflow.ops.detect.stacked import Rows, StackedModel, pack_rows, slide_rows, unpad_row

#: raw statistics are capped at this many times the alarm level (scores stay below 1.0 and
#: distinct; a reading this far out is an anomaly whatever its exact distance)
RAW_CAP = 1e6

#: when adapting to a lasting change, readings kept from before the streak per anomaly of it
ADAPT_KEEP = 4


class ZScore(Detector):
    """Rolling z-score: distance from the mean of the last ``window`` normal points, in stds
    (floored by the key's resolution, see :mod:`edgeflow.ops.detect.spread`: a quantised or
    flat signal is scored in quanta).

    A lasting change: when the runner adapts (16 anomalies in a row, see
    :mod:`edgeflow.ops.detect.decision`) the window is cut so that the streak is a fifth of it
    (:meth:`adapt`), so a +8 sigma lasting step raises at most :attr:`adapts_within` alarms
    (measured on unit noise over 60 seeds: 16, the streak itself)."""

    name = "zscore"
    ARGS = (points("window", 2), level(), counter("warmup"))
    #: the most alarms a lasting +8 sigma step raises (see the class docstring)
    adapts_within = 16

    def __init__(self, window: int = 256, level: float = 3.0, warmup: int = 16) -> None:
        self.window, self.level, self.warmup = window, level, warmup

    def init(self) -> dict[str, Any]:
        return {"hist": np.empty(0), "n": 0, "anom": []}

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        h = st["hist"]
        w = self.window
        z = np.concatenate([h, x])
        base = float(h.mean()) if len(h) else float(x[0])
        d = np.clip(z - base, -ERR_CAP, ERR_CAP)  # (an absurd reading: no overflow)
        c1 = np.concatenate([[0.0], np.cumsum(d)])
        c2 = np.concatenate([[0.0], np.cumsum(d * d)])
        end = len(h) + np.arange(len(x))  # window for point j: z[start:end]
        start = np.maximum(end - w, 0)
        cnt = end - start
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (c1[end] - c1[start]) / cnt
            var = np.maximum((c2[end] - c2[start]) / cnt - mean**2, 0.0)
            std = np.sqrt(var)
            m = base + np.nan_to_num(mean, nan=0.0)
            std = floored(std, st.get("res", math.inf), m)
            rawz = np.abs(x - m) / std
        rawz = np.where(cnt > 0, np.minimum(rawz, RAW_CAP * self.level), 0.0)
        rawz = rawz * warm_up_mask(st, len(x), self.warmup)
        return Scores(rawz, calibrate(rawz, self.level), m - self.level * std, m + self.level * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        st["hist"] = np.concatenate([st["hist"], x])[-self.window :]
        st["n"] += len(x)
        st["anom"] = []

    def forget(self, st: dict[str, Any], x: float) -> None:
        remember_anomaly(st, x, ADAPT_AFTER)

    def adapt(self, st: dict[str, Any], recent: F64) -> None:
        """A lasting change: the window keeps only the :data:`ADAPT_KEEP` x as many readings
        before the streak as the streak has, and learns the streak's anomalies, so the new
        level is a fifth of the window: a reading at the new level then scores about
        sqrt(4/1) = 2 stds or less whatever the size of the step (below the alarm level of
        3), while the old level still counts (a square wave's two levels both stay normal).
        The window fills up again with the readings that follow."""
        run = np.asarray(st.get("anom") or recent, dtype=np.float64)
        st["anom"] = []
        if not len(run):
            return
        st["hist"] = st["hist"][-ADAPT_KEEP * len(run) :]
        self.learn(st, run)

    def stacked_model(self, states: list[dict[str, Any]]) -> ZScoreStacked:
        return ZScoreStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "level": self.level}


class ZScoreStacked(StackedModel):
    """Stacked rolling z-score: each key's window of learnt values as a row (a ring for live
    ticks, with running sums), scored in 2-D passes or a tick at a time."""

    PASS_DATA = ("hx", "x")

    def __init__(self, det: ZScore, sts: list[dict[str, Any]]) -> None:
        self.det = det
        w = det.window
        self.h = pack_rows([s["hist"] for s in sts], w)
        self.n = np.array([s["n"] for s in sts], np.int64)
        # live ticks keep a row as a ring (oldest value at ``head``) with running sums of
        # its values less ``c`` (``fresh``: the sums are those of the row as it is)
        k = len(sts)
        self.head = np.zeros(k, np.int64)
        self.c, self.s1, self.s2 = np.zeros(k), np.zeros(k), np.zeros(k)
        self.cnt = np.zeros(k)  # values in the window (its size once full)
        self.fresh = np.zeros(k, bool)
        self.full = False  # every row's window full (rows added or loaded reset it)
        self.ticks = 0
        self.warm = False  # every row past warm-up (rows added or loaded reset it)
        self.anom = AnomalyRing(ADAPT_AFTER, [s.get("anom", []) for s in sts])

    def _ordered(self, rows: Rows) -> F64:
        """The rows' histories, oldest first."""
        head = self.head[rows]
        if not head.any():
            out: F64 = self.h[rows]
            return out
        if (head == head[0]).all():  # rows that ticked together: one rotation, by slices
            hd = int(head[0])
            out = np.concatenate([self.h[rows, hd:], self.h[rows, :hd]], axis=1)
            return out
        cols = (head[:, None] + np.arange(self.det.window)) % self.det.window
        out = np.take_along_axis(self.h[rows], cols, axis=1)
        return out

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
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
        xv = ~np.isnan(x)
        full = bool(hv.all())
        if full:  # full histories (after warm-up): no masking needed
            base = h.mean(axis=1)
            dh = h - base[:, None]
        else:
            cnt_h = np.count_nonzero(hv, axis=1)
            has = cnt_h > 0
            base = np.where(has, np.where(hv, h, 0.0).sum(axis=1) / np.maximum(cnt_h, 1), x[:, 0])
            dh = np.where(hv, h - base[:, None], 0.0)
        whole = full and bool(xv.all())  # every window holds w values: no counting
        dx = x - base[:, None] if whole else np.where(xv, x - base[:, None], 0.0)
        # exclusive prefix sums: points 0..j-1 of the batch entered point j's window, history
        # columns 0..j-1 left it (column 0: the history's own sums)
        sum1 = np.empty((k, n))
        sum2 = np.empty((k, n))
        sum1[:, 0] = dh.sum(axis=1)
        sum2[:, 0] = np.einsum("ij,ij->i", dh, dh)
        if n > 1:
            ent, left = dx[:, : n - 1], dh[:, : n - 1]
            np.subtract(ent, left, out=sum1[:, 1:])
            np.subtract(ent * ent, left * left, out=sum2[:, 1:])
            np.cumsum(sum1, axis=1, out=sum1)
            np.cumsum(sum2, axis=1, out=sum2)
        cnt: Rows | int
        if whole:
            cnt = w
        else:
            moved = np.zeros((k, n), np.int64)
            moved[:, 0] = w if full else cnt_h
            if n > 1:
                moved[:, 1:] = xv[:, : n - 1].astype(np.int64) - hv[:, : n - 1]
            cnt = np.cumsum(moved, axis=1)
        return self._finish(rows, x, base, sum1, sum2, cnt)

    def tick(self, rows: Rows, x: F64) -> tuple[F64, F64, F64] | None:
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
            if self.n.min() < 1:  # (learnt its warm-up block: see warm_up_rows)
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
        # (in place where a result is not handed out: the same operations, fewer arrays)
        mean = self.s1 / den
        var = self.s2 / den
        var -= mean * mean
        np.maximum(var, 0.0, out=var)
        std = np.sqrt(var, out=var)
        centre = self.c + mean
        std = self.tick_floor(rows, std, centre)
        # std is kept above 0 and x is finite: raw is finite
        raw = x - centre
        np.abs(raw, out=raw)
        raw /= std
        np.minimum(raw, RAW_CAP * det.level, out=raw)
        return raw, centre, det.level * std

    def _refresh(self, r: Rows) -> None:
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
        self.fresh[r] = True

    def learn_tick(self, rows: Rows, learnt: Rows | None, x: F64) -> None:
        """Rows (all of them) learnt their reading where ``learnt`` (None: every row): it
        replaces the oldest value of the ring, and the running sums move with it. In a
        window still filling up the oldest slot is empty (NaN): counted as the centre ``c``
        (adding nothing to the sums), and the window's count grows."""
        w = self.det.window
        if learnt is None:
            self.anom.clear_all()
        else:
            self.anom.clear(learnt)  # (rows: every row, in order)
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
        # whole arrays, where the rows that do not learn (a few) put back their oldest value:
        # a step of 0 (their sums stay as they are, to the bit), their slot keeps what it
        # held and their ring does not turn
        held = old = self.h[rows, self.head]
        if not self.full:
            empty = old != old
            old = np.where(empty, self.c, old)
            self.cnt += empty & learnt
        out = np.flatnonzero(~learnt)
        xe = x.copy()
        xe[out] = old[out]
        step = xe - old
        self.s1 += step
        self.s2 += step * (xe + old - 2 * self.c)
        if not self.full:
            xe[out] = held[out]  # (an empty slot stays empty)
        self.h[rows, self.head] = xe
        np.add(self.head, learnt, out=self.head)
        np.remainder(self.head, w, out=self.head)
        np.add(self.n, learnt, out=self.n)

    def adapt_tick(self, rows: Rows) -> bool:
        """Rows starting to adapt on this tick cut their window as :meth:`ZScore.adapt` does
        (the last :data:`ADAPT_KEEP` x as many readings as the streak has, then the streak's
        anomalies), laid out oldest first from slot 0 with the sums :meth:`tick` scores from;
        what they were is kept for :meth:`undo_adapt`. False (nothing done) when a row is not
        ready to tick."""
        if not len(self.n) or self.n.min() < 1:
            return False
        w = self.det.window
        self._undo: list[tuple[int, F64, int, int, int]] = []
        for r in rows.tolist():
            row, hd = self.h[r], int(self.head[r])  # (row: a view, written in place below)
            saved = row.copy()
            self._undo.append((r, saved, hd, int(self.n[r]), int(self.anom.cnt[r])))
            ordered = np.concatenate((saved[hd:], saved[:hd])) if hd else saved
            hist = ordered[ordered == ordered]  # (unpad_row; a new array)
            run = self._streak_of(r)
            if len(run):
                hist = np.concatenate([hist[-ADAPT_KEEP * len(run) :], run])[-w:]
                self.n[r] += len(run)
            row[: w - len(hist)] = np.nan
            row[w - len(hist) :] = hist
            if len(hist):  # the sums of the adapted window (the next tick re-makes them)
                c = float(hist.mean())
                d = hist - c
                self.c[r], self.s1[r], self.s2[r] = c, float(d.sum()), float((d * d).sum())
                self.cnt[r] = len(hist)
                self.fresh[r] = True
            else:
                self.fresh[r] = False
        self.head[rows] = 0
        self.anom.clear(rows)
        self.full = False
        return True

    def _streak_of(self, r: int) -> F64:
        """Row r's anomalies of its streak, oldest first (``self.anom.values(r)`` as an array,
        by slices: a live tick's few µs)."""
        ring = self.anom
        c, size = int(ring.cnt[r]), ring.size
        vals = ring.vals[r]
        if c <= size:
            out: F64 = vals[:c]
            return out
        at = c % size
        out = np.concatenate((vals[at:], vals[:at]))
        return out

    def undo_adapt(self, rows: Rows) -> None:
        """Rows adapted by the last :meth:`adapt_tick` back as they were."""
        back = set(rows.tolist())
        for r, row, hd, n, anom in self._undo:
            if r in back:
                self.h[r], self.head[r], self.n[r], self.anom.cnt[r] = row, hd, n, anom
                self.fresh[r] = False
        self.full = False

    def settle_adapted(self, rows: Rows) -> None:
        """After the adapting rows learnt their reading: each window oldest first from slot 0
        (the adapted window began at slot 0 with its empty slots first: one turn of the ring
        by its head) and its sums to be re-made from it, as :meth:`load` leaves a row (the
        Driver's path for a key that starts adapting), so the rows' next scores are that
        path's to the bit."""
        for r in rows.tolist():
            hd = int(self.head[r])
            if hd:
                self.h[r] = np.concatenate((self.h[r, hd:], self.h[r, :hd]))
        self.head[rows] = 0
        self.fresh[rows] = False
        self.full = False

    def _finish(
        self, rows: Rows, x: F64, base: F64, sum1: F64, sum2: F64, cnt: Rows | int
    ) -> tuple[F64, F64, F64]:
        """Scores from each point's window sums (of values less ``base``) and counts."""
        empty = np.min(cnt) <= 0  # a window with nothing learnt (only before warm-up)
        den = np.maximum(cnt, 1) if empty else cnt
        mean = sum1 / den
        var = sum2 / den - mean * mean
        np.maximum(var, 0.0, out=var)
        std = np.sqrt(var)
        m = base[:, None] + mean
        std = floor_rows(std, self.resolution(rows), m)
        raw = np.abs(x - m)
        raw /= std
        np.minimum(raw, RAW_CAP * self.det.level, out=raw)
        if empty:
            raw = np.where(cnt > 0, raw, 0.0)
        n0 = self.n[rows]
        if len(n0) and n0.min() < max(1, self.det.warmup):
            raw = raw * warm_up_rows(n0, x.shape[1], self.det.warmup)
        return raw, m, self.det.level * std

    def _score_long(self, rows: Rows, h: F64, x: F64) -> tuple[F64, F64, F64]:
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

    def learn(self, rows: Rows, f: Rows) -> None:
        slide_rows(self.h, rows, self.hx, self.x, f)  # rows that moved are now oldest first
        moved = rows[f > 0]
        self.head[moved] = 0
        self.fresh[moved] = False
        self.n[rows] += f
        self.anom.clear(moved)

    def forget(self, rows: Rows, x: F64 | None = None) -> None:
        if x is not None:
            self.anom.add(rows, x)

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"] = unpad_row(self._ordered(np.array([i]))[0]), int(self.n[i])
        anom = getattr(self, "anom", None)  # (None: a snapshot of an older layout)
        s["anom"] = anom.values(i) if anom is not None else []

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = pack_rows([s["hist"]], self.det.window)[0]
        self.n[i] = s["n"]
        self.anom.load(i, s.get("anom", []))
        self.head[i], self.fresh[i] = 0, False
        self.warm = self.full = False

    def extend(self, other: ZScoreStacked) -> None:
        self.h = np.concatenate([self.h, other.h])
        self.n = np.concatenate([self.n, other.n])
        self.warm = self.full = False
        self.anom.extend(other.anom)
        for name in ("head", "c", "s1", "s2", "cnt", "fresh"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def zscore(*, window: int = 256, level: float = 3.0, warmup: int = 16) -> ZScore:
    """Rolling z-score over the last ``window`` normal points (the 3-sigma rule at the default)."""
    return ZScore(window, level, warmup)
