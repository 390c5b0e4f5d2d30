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
