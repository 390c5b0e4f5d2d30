"""Rolling z-score: :class:`ZScore` (reference), :class:`ZScoreStacked` (stacked passes
and live ticks) and the :func:`zscore` constructor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import counter, level, points
from edgeflow.ops.detect.base import Detector, Scores, calibrate, warm_up_mask, warm_up_rows
from edgeflow.ops.detect.stacked import Rows, StackedModel, pack_rows, slide_rows, unpad_row


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
        rawz = np.where(cnt > 0, np.nan_to_num(rawz, nan=0.0, posinf=1e6), 0.0) * warm_up_mask(
            st, len(x), self.warmup
        )
        m = base + np.nan_to_num(mean, nan=0.0)
        return Scores(rawz, calibrate(rawz, self.level), m - self.level * std, m + self.level * std)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        st["hist"] = np.concatenate([st["hist"], x])[-self.window :]
        st["n"] += len(x)

    def stacked_model(self, states: list[dict[str, Any]]) -> ZScoreStacked:
        return ZScoreStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "level": self.level}


class ZScoreStacked(StackedModel):
    """Stacked rolling z-score: each key's window of learnt values as a row (a ring for live
    ticks, with running sums), scored in 2-D passes or a tick at a time."""

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
        self.floor = np.zeros(k)  # the least std: 1e-12 (1 + |c|)
        self.cnt = np.zeros(k)  # values in the window (its size once full)
        self.fresh = np.zeros(k, bool)
        self.full = False  # every row's window full (rows added or loaded reset it)
        self.ticks = 0
        self.warm = False  # every row past warm-up (rows added or loaded reset it)

    def _ordered(self, rows: Rows) -> F64:
        """The rows' histories, oldest first."""
        head = self.head[rows]
        if not head.any():
            out: F64 = self.h[rows]
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
        if hv.all():  # full histories (after warm-up): no masking needed
            cnt_h = np.full(k, w)
            base = h.mean(axis=1)
            dh = h - base[:, None]
        else:
            cnt_h = np.count_nonzero(hv, axis=1)
            has = cnt_h > 0
            base = np.where(has, np.where(hv, h, 0.0).sum(axis=1) / np.maximum(cnt_h, 1), x[:, 0])
            dh = np.where(hv, h - base[:, None], 0.0)
        xv = ~np.isnan(x)
        dx = np.where(xv, x - base[:, None], 0.0)
        s1 = dh.sum(axis=1)[:, None]
        s2 = np.einsum("ij,ij->i", dh, dh)[:, None]
        if n == 1:
            sum1, sum2, cnt = s1, s2, cnt_h[:, None]
        else:  # exclusive prefix sums: points 0..j-1 of the batch, history columns 0..j-1
            left, left2, leftc = dh[:, : n - 1], dh[:, : n - 1] ** 2, hv[:, : n - 1]
            ent, ent2, entc = dx[:, : n - 1], dx[:, : n - 1] ** 2, xv[:, : n - 1]
            zero = np.zeros((k, 1))
            sum1 = s1 + np.concatenate([zero, np.cumsum(ent - left, axis=1)], axis=1)
            sum2 = s2 + np.concatenate([zero, np.cumsum(ent2 - left2, axis=1)], axis=1)
            moved = entc.astype(np.int64) - leftc
            cnt = cnt_h[:, None] + np.concatenate([zero, np.cumsum(moved, axis=1)], axis=1)
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
            if self.n.min() < max(1, det.warmup):
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
        mean = self.s1 / den
        std = np.sqrt(np.maximum(self.s2 / den - mean * mean, 0.0))
        centre = self.c + mean
        # std is kept above 0 and x is finite: raw is finite
        raw = np.abs(x - centre) / np.maximum(std, self.floor)
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
        self.floor[r] = 1e-12 * (1 + np.abs(c))
        self.fresh[r] = True

    def learn_tick(self, rows: Rows, learnt: Rows | None, x: F64) -> None:
        """Rows (all of them) learnt their reading where ``learnt`` (None: every row): it
        replaces the oldest value of the ring, and the running sums move with it. In a
        window still filling up the oldest slot is empty (NaN): counted as the centre ``c``
        (adding nothing to the sums), and the window's count grows."""
        w = self.det.window
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
        r = np.flatnonzero(learnt)
        head, xr, cr = self.head[r], x[r], self.c[r]
        old = self.h[r, head]
        if not self.full:
            empty = old != old
            old = np.where(empty, cr, old)
            self.cnt[r] += empty
        step = xr - old
        self.s1[r] += step
        self.s2[r] += step * (xr + old - 2 * cr)
        self.h[r, head] = xr
        self.head[r] = (head + 1) % w
        self.n[r] += 1

    def _finish(
        self, rows: Rows, x: F64, base: F64, sum1: F64, sum2: F64, cnt: Rows
    ) -> tuple[F64, F64, F64]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sum1 / cnt
            std = np.sqrt(np.maximum(sum2 / cnt - mean**2, 0.0))
            raw = np.abs(x - base[:, None] - mean) / np.maximum(
                std, 1e-12 * (1 + np.abs(base[:, None]))
            )
        raw = np.where(cnt > 0, np.nan_to_num(raw, nan=0.0, posinf=1e6), 0.0)
        raw = raw * warm_up_rows(self.n[rows], x.shape[1], self.det.warmup)
        m = base[:, None] + np.nan_to_num(mean, nan=0.0)
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

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["hist"], s["n"] = unpad_row(self._ordered(np.array([i]))[0]), int(self.n[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.h[i] = pack_rows([s["hist"]], self.det.window)[0]
        self.n[i] = s["n"]
        self.head[i], self.fresh[i] = 0, False
        self.warm = self.full = False

    def extend(self, other: ZScoreStacked) -> None:
        self.h = np.concatenate([self.h, other.h])
        self.n = np.concatenate([self.n, other.n])
        self.warm = self.full = False
        for name in ("head", "c", "s1", "s2", "floor", "cnt", "fresh"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def zscore(*, window: int = 256, level: float = 3.0, warmup: int = 16) -> ZScore:
    """Rolling z-score over the last ``window`` normal points (the 3-sigma rule at the default)."""
    return ZScore(window, level, warmup)
