"""Spread floors: a scale estimate that is never 0, from the data itself.

A quantised signal (counts, CPU % in whole steps, a slow sensor repeating its value) often has
a median absolute deviation of 0, and a sensor that sat still for a while has a standard
deviation of 0. Dividing by such a scale makes every later change look infinitely unusual,
and since anomalies are not learnt the scale would stay 0 for good. Every detector therefore
divides by ``max(scale, floor)`` where the floor is

* the key's **resolution**: the smallest non-zero step between two consecutive readings it
  has learnt (one quantum of a quantised signal; for a continuous signal it is tiny and
  never binds), and
* before any step was seen (a constant signal), a relative floor ``1e-6 * (1 + |centre|)``.

This module holds the two operations every form of every detector uses: updating the
resolution from learnt readings (one key, or rows of many keys) and applying the floor.
"""

from __future__ import annotations

import math

import numpy as np

from edgeflow.batch import F64

#: the floor relative to the level when no step has been seen yet
RELATIVE_FLOOR = 1e-6


def resolution(res: float, last: float | None, x: F64) -> tuple[float, float | None]:
    """The resolution after learning ``x`` (one key's readings, in order) after ``last``.

    Returns ``(res, last)``: ``res`` is ``inf`` until a non-zero step has been seen."""
    if not len(x):
        return res, last
    z = x if last is None else np.concatenate([[last], x])
    steps = np.abs(np.diff(z))
    steps = steps[steps > 0]
    if len(steps):
        res = min(res, float(steps.min()))
    return res, float(x[-1])


def resolution_rows(res: F64, last: F64, x: F64, learnt: np.ndarray) -> tuple[F64, F64]:
    """Rows of keys at once: row i learnt the first ``learnt[i]`` values of ``x[i]`` after
    ``last[i]`` (NaN: nothing learnt yet). Returns the new ``(res, last)`` arrays."""
    n, w = x.shape
    if not n or not w:
        return res, last
    z = np.concatenate([last[:, None], x], axis=1)
    steps = np.abs(np.diff(z, axis=1))
    valid = np.arange(w)[None, :] < learnt[:, None]
    steps = np.where(valid & (steps > 0), steps, np.inf)  # NaN neighbours compare False
    new_res: F64 = np.minimum(res, steps.min(axis=1))
    idx = np.maximum(learnt - 1, 0)
    tail = x[np.arange(n), idx]
    new_last: F64 = np.where(learnt > 0, tail, last)
    return new_res, new_last


def floored(scale: F64 | float, res: F64 | float, centre: F64 | float) -> F64:
    """``max(scale, floor)``: the resolution once a step was seen, else a relative floor
    (a NaN scale - nothing to estimate from - is the floor)."""
    r = np.asarray(res, dtype=np.float64)
    floor: F64 | float
    if r.ndim == 0 and math.isfinite(float(r)):
        floor = float(r)
    else:
        rel = RELATIVE_FLOOR * (1.0 + np.abs(np.asarray(centre, dtype=np.float64)))
        floor = np.where(np.isfinite(r), r, rel)
    out: F64 = np.fmax(np.asarray(scale, dtype=np.float64), floor)
    return out


def step_floor_rows(x: F64, lens: np.ndarray) -> F64:
    """The smallest non-zero step between consecutive readings within each row's first
    ``lens[i]`` values of ``x`` (inf: none): no pass over a stretch of the row can learn a
    smaller step between two of its readings."""
    n, w = x.shape
    if w < 2:
        return np.full(n, np.inf)
    steps = np.abs(np.diff(x, axis=1))
    steps[~(steps > 0)] = np.inf  # (NaN: padding)
    if (lens < w).any():
        steps[np.arange(w - 1)[None, :] >= (lens - 1)[:, None]] = np.inf
    out: F64 = steps.min(axis=1)
    return out


def resolution_rows_within(
    res: F64, last: F64, x: F64, learnt: np.ndarray, floor: F64
) -> tuple[F64, F64]:
    """:func:`resolution_rows` for passes over stretches of rows whose own steps are no
    smaller than ``floor`` (:func:`step_floor_rows` of the grid): a row whose resolution is
    already at most its floor can only move by the step from its last learnt reading to the
    pass's first; only the other rows are scanned."""
    scan = floor < res
    if scan.all():
        return resolution_rows(res, last, x, learnt)
    new_res, new_last = res.copy(), last.copy()
    if scan.any():
        at = np.flatnonzero(scan)
        new_res[at], new_last[at] = resolution_rows(res[at], last[at], x[at], learnt[at])
    keep = np.flatnonzero(~scan & (learnt > 0))
    if len(keep):
        first = np.abs(x[keep, 0] - last[keep])
        first[~(first > 0)] = np.inf  # no move, or nothing learnt before (NaN)
        new_res[keep] = np.minimum(res[keep], first)
        new_last[keep] = x[keep, learnt[keep] - 1]
    return new_res, new_last
