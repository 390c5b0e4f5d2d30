"""Swinging door a segment at a time: the same points as the per-reading loop
(:meth:`edgeflow.ops.downsample._Door.run`), found with array operations.

From the last reported point (the anchor), every later reading narrows the door to the
slopes ``[lo, hi]`` it still allows: ``lo`` is the running maximum of ``(x - dev - va) /
(t - ta)``, ``hi`` the running minimum of ``(x + dev - va) / (t - ta)``. The door closes at
the first reading where ``lo > hi`` (or that is more than ``max_interval`` after the anchor).
Running maxima and minima are exact, so ``np.maximum.accumulate`` over a stretch of readings
gives the loop's values bit for bit, and the division, product and clamp that report a point
are the loop's operations on the same numbers: the reported points and the state left behind
are identical, and a key may go through either form from one batch to the next.

A stretch is looked at in chunks (each a dozen array operations); a long segment (a smooth
signal, the case the door is for: hundreds of readings per reported point) costs a few
chunks, where the loop pays for every reading. When a key's segments turn out short (a
noisy signal, a deviation below the noise) the rest of its readings go through the loop,
which is then the cheaper form.

Many keys at once (:func:`run_rows`, what the downsample step uses for a batch): the keys are
rows of a matrix (key x reading) and one round of 2-D array operations runs every row's door
over its next readings, each from its own anchor; rows that closed report their point and go
on from there in the next round, until every row has reached its last reading. The per-key
cost of a batch is then a few Python operations per reported point, not a dozen array
calls per key; the same exactness argument holds row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

#: readings looked at per chunk at first; a chunk grows to twice the last segment
FIRST_CHUNK = 64
#: after this many reported points, a key whose segments average fewer readings than
#: :data:`SHORT_SEGMENT` finishes the batch in the loop
PROBE_POINTS = 4
SHORT_SEGMENT = 24
#: a run shorter than this goes through the loop (array set-up costs more)
MIN_READINGS = 32

Loop = Callable[[dict[str, Any], I64, F64], tuple[list[int], list[float]]]
Point = tuple[int, float]


def close_door(
    a: Point,
    prev: Point | None,
    lo: float,
    hi: float,
    ti: int,
    xi: float,
    dev: float,
    max_interval: int | None,
    out_t: list[int],
    out_v: list[float],
) -> tuple[Point, float, float, Point | None]:
    """The door from anchor ``a`` closed at reading ``(ti, xi)``: report the point on the
    door at the previous reading (when there is one; ``lo``/``hi`` are the slopes it still
    allowed) and open the next segment from there, or from the reading itself when there is
    no previous reading or the gap to it is longer than ``max_interval``. Appends the
    reported points; returns the new (anchor, lo, hi, prev). Shared by both forms."""
    ta, va = a
    if prev is not None:
        tp, vp = prev
        s = min(max((vp - va) / (tp - ta), lo), hi)
        a = (tp, va + s * (tp - ta))
        out_t.append(a[0])
        out_v.append(a[1])
        ta, va = a
    dt = ti - ta
    if prev is None or (max_interval is not None and dt > max_interval):
        out_t.append(ti)
        out_v.append(xi)
        return (ti, xi), -np.inf, np.inf, None
    return a, (xi - dev - va) / dt, (xi + dev - va) / dt, (ti, xi)


def run_segments(
    dev: float, max_interval: int | None, st: dict[str, Any], t: I64, x: F64, loop: Loop
) -> tuple[I64, F64]:
    """The points the door reports for one key's readings ``t`` (strictly increasing, after
    the anchor) and ``x`` (finite); ``st`` is the loop's state, updated in place. ``loop``
    is the per-reading form, used for short runs and keys with short segments."""
    n = len(t)
    a = st.get("a")
    if n < MIN_READINGS or (a is not None and t[0] <= a[0]) or not bool((t[1:] > t[:-1]).all()):
        lt, lv = loop(st, t, x)
        return np.asarray(lt, np.int64), np.asarray(lv, np.float64)
    e, mi = dev, max_interval
    out_t: list[int] = []
    out_v: list[float] = []
    lo: float = st.get("lo", -np.inf)
    hi: float = st.get("hi", np.inf)
    prev: tuple[int, float] | None = st.get("prev")
    i = 0
    if a is None:  # the first reading starts the first segment
        a = (int(t[0]), float(x[0]))
        out_t.append(a[0])
        out_v.append(a[1])
        lo, hi, prev = -np.inf, np.inf, None
        i = 1
    chunk = FIRST_CHUNK
    seg_start = i
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while i < n:
            if len(out_t) >= PROBE_POINTS and i < SHORT_SEGMENT * len(out_t):
                st["a"], st["lo"], st["hi"], st["prev"] = a, lo, hi, prev
                lt, lv = loop(st, t[i:], x[i:])
                out_t.extend(lt)
                out_v.extend(lv)
                return np.asarray(out_t, np.int64), np.asarray(out_v, np.float64)
            ta, va = a
            j = min(n, i + chunk)
            tc, xc = t[i:j], x[i:j]
            dt = tc - ta
            m = j - i
            buf_lo = np.empty(m + 1)
            buf_lo[0] = lo
            np.divide(xc - e - va, dt, out=buf_lo[1:])
            run_lo = np.maximum.accumulate(buf_lo)[1:]
            buf_hi = np.empty(m + 1)
            buf_hi[0] = hi
            np.divide(xc + e - va, dt, out=buf_hi[1:])
            run_hi = np.minimum.accumulate(buf_hi)[1:]
            closes = run_lo > run_hi
            if mi is not None:
                closes |= dt > mi
            hit = np.flatnonzero(closes)
            if not len(hit):  # the door stays open through the chunk
                lo, hi = float(run_lo[-1]), float(run_hi[-1])
                prev = (int(tc[-1]), float(xc[-1]))
                i = j
                chunk *= 2
                continue
            c = int(hit[0])
            if c > 0:  # the readings before the closing one narrowed the door
                lo, hi = float(run_lo[c - 1]), float(run_hi[c - 1])
                prev = (int(tc[c - 1]), float(xc[c - 1]))
            ti, xi = int(tc[c]), float(xc[c])
            a, lo, hi, prev = close_door(a, prev, lo, hi, ti, xi, e, mi, out_t, out_v)
            i += c + 1
            chunk = max(FIRST_CHUNK, 2 * (i - seg_start))
            seg_start = i
    st["a"], st["lo"], st["hi"], st["prev"] = a, lo, hi, prev
    return np.asarray(out_t, np.int64), np.asarray(out_v, np.float64)


# -- many keys in lockstep ---------------------------------------------------------------
#: rows (keys) with more readings than this many columns go through :func:`run_segments`
#: one by one (a padded matrix would be mostly padding)
LONG_ROW_COLUMNS = 16
#: columns looked at per round: the 90th percentile of the rows' lengths, within these bounds
MIN_COLUMNS, MAX_COLUMNS = 16, 128
#: magnitudes above this go through the per-key form (the lockstep form's intermediate
#: values must stay finite for its running maxima to equal the loop's ``max``)
MAX_MAGNITUDE = 1e100
#: when the rows still open have this few readings left, the loop finishes them (a round
#: of array operations costs about as much as the loop over this many readings)
LOOP_READINGS = 512
#: a row that has closed this many times with segments shorter than :data:`SHORT_SEGMENT`
#: on average finishes the batch in the loop (every close costs the row a round)
LOCKSTEP_PROBE = 2


def lockstep_fits(x: F64) -> bool:
    """Whether readings ``x`` (finite) are in the range :func:`run_rows` takes."""
    return not len(x) or float(np.abs(x).max()) < MAX_MAGNITUDE


def run_rows(
    dev: float,
    max_interval: int | None,
    states: list[dict[str, Any]],
    t: I64,
    x: F64,
    starts: I64,
    ends: I64,
    loop: Loop,
) -> tuple[list[list[int]], list[list[float]]]:
    """The door for many keys at once: row ``r`` is one key, its readings ``t[starts[r]:
    ends[r]]`` (strictly increasing, finite, after the key's last reading) with the loop's
    state ``states[r]`` (updated in place). Returns each row's reported times and values:
    those of :func:`run_segments` (and of the loop) for that key, bit for bit.

    All rows advance together over a window of columns (readings): one set of 2-D array
    operations per round finds every row's running slopes from its own anchor and its first
    close; a row that closed reports its point (:func:`close_door`) and starts its next
    segment from there in the next round. Rows much longer than the others go through
    :func:`run_segments`; rows whose segments turn out short finish in ``loop``."""
    nrows = len(states)
    out_t: list[list[int]] = [[] for _ in range(nrows)]
    out_v: list[list[float]] = [[] for _ in range(nrows)]
    if not nrows:
        return out_t, out_v
    lengths = ends - starts
    width = int(np.sort(lengths)[(9 * (nrows - 1)) // 10])  # the 90th percentile
    cols = min(MAX_COLUMNS, max(MIN_COLUMNS, 1 << max(0, width - 1).bit_length()))
    e, mi = dev, max_interval
    # per row: anchor (ta, va), door (lo, hi), last reading (pt, px) when has_prev, position p
    anchors = [st.get("a") for st in states]
    first_t = t[starts].tolist()
    solo = [
        r
        for r, (a, n, t0) in enumerate(zip(anchors, lengths.tolist(), first_t, strict=True))
        if n > LONG_ROW_COLUMNS * cols or (a is not None and t0 <= a[0])
    ]
    lockstep = np.ones(nrows, bool)
    blank: dict[str, Any] = {"lo": -np.inf, "hi": np.inf}  # a new segment's door
    for r in solo:
        st, s, n = states[r], int(starts[r]), int(lengths[r])
        seg_t, seg_v = run_segments(e, mi, st, t[s : s + n], x[s : s + n], loop)
        out_t[r], out_v[r] = seg_t.tolist(), seg_v.tolist()
        lockstep[r] = False
        anchors[r] = (0, 0.0)
    fresh = [r for r, a in enumerate(anchors) if a is None]
    olds = [blank if a is None else st for a, st in zip(anchors, states, strict=True)]
    p = starts.astype(np.int64)
    for r in fresh:  # the first reading starts the first segment
        s = int(starts[r])
        a = anchors[r] = (int(t[s]), float(x[s]))
        out_t[r].append(a[0])
        out_v[r].append(a[1])
        p[r] = s + 1
    ta = np.array([a[0] for a in anchors], np.int64)  # type: ignore[index]
    va = np.array([a[1] for a in anchors], np.float64)  # type: ignore[index]
    lo = np.array([st["lo"] for st in olds], np.float64)
    hi = np.array([st["hi"] for st in olds], np.float64)
    prevs = [st.get("prev") for st in olds]
    has_prev = np.array([q is not None for q in prevs], bool)
    pt = np.array([q[0] if q is not None else 0 for q in prevs], np.int64)
    px = np.array([q[1] if q is not None else 0.0 for q in prevs], np.float64)
    closes = np.zeros(nrows, np.int64)
    to_loop: list[int] = []
    looped = np.zeros(nrows, bool)
    active = np.flatnonzero(lockstep & (p < ends))
    # row r's next w readings are t[p[r] : p[r] + w]; past a row's end they are the next
    # row's readings (or the last reading, repeated): a close found there is not taken,
    # and the running slopes up to the row's end do not depend on them
    span = np.arange(cols)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while len(active):
            pa = p[active]
            rem = ends[active] - pa
            w = min(cols, int(rem.max()))
            idx = pa[:, None] + span[:w]
            tc, xc = t.take(idx, mode="clip"), x.take(idx, mode="clip")
            dt = tc - ta[active, None]
            va_a = va[active, None]
            run_lo = (xc - e - va_a) / dt
            run_hi = (xc + e - va_a) / dt
            run_lo[:, 0] = np.maximum(lo[active], run_lo[:, 0])
            run_hi[:, 0] = np.minimum(hi[active], run_hi[:, 0])
            np.maximum.accumulate(run_lo, axis=1, out=run_lo)
            np.minimum.accumulate(run_hi, axis=1, out=run_hi)
            shut = run_lo > run_hi
            if mi is not None:
                shut |= dt > mi
            first = shut.argmax(axis=1)
            hit = shut[np.arange(len(active)), first] & (first < rem)
            # rows whose door stays open through their columns
            open_k = np.flatnonzero(~hit)
            if len(open_k):
                rows = active[open_k]
                end_c = np.minimum(rem[open_k], w) - 1
                lo[rows] = run_lo[open_k, end_c]
                hi[rows] = run_hi[open_k, end_c]
                pt[rows] = tc[open_k, end_c]
                px[rows] = xc[open_k, end_c]
                has_prev[rows] = True
                p[rows] += end_c + 1
            for k in np.flatnonzero(hit).tolist():
                r = int(active[k])
                c = int(first[k])
                prev: Point | None = None
                if c > 0:  # the readings before the closing one narrowed the door
                    lo_r, hi_r = float(run_lo[k, c - 1]), float(run_hi[k, c - 1])
                    prev = (int(tc[k, c - 1]), float(xc[k, c - 1]))
                else:
                    lo_r, hi_r = float(lo[r]), float(hi[r])
                    if has_prev[r]:
                        prev = (int(pt[r]), float(px[r]))
                a, lo_r, hi_r, prev = close_door(
                    (int(ta[r]), float(va[r])),
                    prev,
                    lo_r,
                    hi_r,
                    int(tc[k, c]),
                    float(xc[k, c]),
                    e,
                    mi,
                    out_t[r],
                    out_v[r],
                )
                ta[r], va[r], lo[r], hi[r] = a[0], a[1], lo_r, hi_r
                has_prev[r] = prev is not None
                if prev is not None:
                    pt[r], px[r] = prev
                p[r] += c + 1
                closes[r] += 1
                if closes[r] >= LOCKSTEP_PROBE and p[r] - starts[r] < SHORT_SEGMENT * closes[r]:
                    to_loop.append(r)  # short segments: the loop is the cheaper form
                    looped[r] = True
            active = active[(p[active] < ends[active]) & ~looped[active]]
            if len(active) and int((ends[active] - p[active]).sum()) <= LOOP_READINGS:
                to_loop.extend(active.tolist())  # a round costs more than the loop would
                break
    done = np.flatnonzero(lockstep)
    for r, a0, a1, l0, h0, hp, p0, p1 in zip(
        done.tolist(),
        ta[done].tolist(),
        va[done].tolist(),
        lo[done].tolist(),
        hi[done].tolist(),
        has_prev[done].tolist(),
        pt[done].tolist(),
        px[done].tolist(),
        strict=True,
    ):
        st = states[r]
        st["a"], st["lo"], st["hi"], st["prev"] = (a0, a1), l0, h0, (p0, p1) if hp else None
    for r in to_loop:
        if p[r] < ends[r]:
            lt, lv = loop(states[r], t[p[r] : ends[r]], x[p[r] : ends[r]])
            out_t[r].extend(lt)
            out_v[r].extend(lv)
    return out_t, out_v
