"""The fast paths of the stacked detectors, each against a plain reference on many sizes and
data shapes (as tsdownsample tests its kernels): the MAD found by selection instead of a sort,
the windows gathered from a strided view, the warm-up blocks of many keys learnt at once, and
a context part's ranges made only where they are read. A wrong fast path changes alarms a
user gets; these pin each one to the slow, obvious computation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from edgeflow.ops import detect
from edgeflow.ops.detect.decision import warm_up_inliers, warm_up_inliers_rows
from edgeflow.ops.detect.driver import Driver
from edgeflow.ops.detect.ensemble import SeenRange, StackedEnsemble
from edgeflow.ops.detect.mad import MAD, _order_stat_full, robust_spread
from edgeflow.ops.detect.stacked import Stacked, run_stacked, window_rows

RNG = np.random.default_rng(20261130)


def shapes(k: int, w: int) -> dict[str, np.ndarray]:
    """Realistic window contents: normal noise, quantised counts, a value that mostly repeats,
    a constant, heavy tails, a two-level square wave, a slow drift."""
    return {
        "normal": RNG.normal(size=(k, w)),
        "quantised": np.round(RNG.normal(0, 2, (k, w))),
        "mostly_repeats": np.where(RNG.random((k, w)) < 0.8, 3.0, RNG.normal(size=(k, w))),
        "constant": np.full((k, w), 7.25),
        "heavy_tails": RNG.standard_t(1.5, size=(k, w)),
        "square": np.where(np.arange(w) % 40 < 20, 0.0, 5.0) + RNG.normal(0, 0.01, (k, w)),
        "drift": np.cumsum(RNG.normal(size=(k, w)), axis=1),
    }


def reference_spread(win: np.ndarray, tails: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """robust_spread as first written: every window's deviations sorted."""
    w = win.shape[-1]
    srt = np.sort(win, axis=-1)
    med, q1, q3 = (_order_stat_full(srt, w, q) for q in (0.5, 0.25, 0.75))
    dev = np.abs(srt - med[..., None])
    mad = _order_stat_full(np.sort(dev, axis=-1), w, 0.5)
    spread = np.maximum(1.4826 * mad, (q3 - q1) / 1.349)
    if tails > 0:
        from statistics import NormalDist

        lo, hi = (_order_stat_full(srt, w, q) for q in (tails, 1 - tails))
        spread = np.fmax(spread, (hi - lo) / (2 * NormalDist().inv_cdf(1 - tails)))
    flat = ~(spread > 0)
    for i in zip(*np.nonzero(flat), strict=True):
        d = dev[i]
        moves = np.count_nonzero(d > 0)
        if moves:
            spread[i] = 1.2533 * d.sum() / moves
    return med, spread


@pytest.mark.parametrize("w", [5, 8, 31, 32, 127, 128, 255, 256])
@pytest.mark.parametrize("k", [1, 70, 300])  # few windows: sorted; many: selected
def test_robust_spread_equals_the_sorting_reference_bit_for_bit(k: int, w: int) -> None:
    for name, win in shapes(k, w).items():
        for tails in (0.0, 0.01):
            med, spread = robust_spread(win.copy(), tails=tails)
            ref_med, ref_spread = reference_spread(win, tails)
            assert np.array_equal(med, ref_med), name
            assert np.array_equal(spread, ref_spread), (name, w, k, tails)
            # sorting in place (the stacked passes' scratch blocks) changes nothing
            med2, spread2 = robust_spread(win.copy(), tails=tails, scratch=True)
            assert np.array_equal(spread2, spread) and np.array_equal(med2, med)


def test_robust_spread_leaves_a_callers_array_alone_unless_it_is_scratch() -> None:
    win = RNG.normal(size=(80, 64))
    before = win.copy()
    robust_spread(win)
    assert np.array_equal(win, before)


@pytest.mark.parametrize("w", [3, 16, 128])
def test_window_rows_equal_plain_slices(w: int) -> None:
    k, length = 9, w + 300
    z = RNG.normal(size=(k, length))
    starts = RNG.integers(0, length - w + 40, size=(k, 12))  # some past the end
    last = RNG.integers(0, length - w + 1, size=k)
    got = window_rows(z, starts, w, last)
    for i in range(k):
        for j in range(starts.shape[1]):
            s = starts[i, j] if starts[i, j] <= last[i] else 0
            assert np.array_equal(got[i, j], z[i, s : s + w])


@pytest.mark.parametrize("n", [3, 5, 16, 32, 64, 65])
def test_warm_up_inliers_rows_equal_the_per_key_rule(n: int) -> None:
    for name, blocks in shapes(40, n).items():
        blocks = blocks.copy()
        blocks[::3, :2] += 60.0  # two early outliers in some keys' blocks
        got = warm_up_inliers_rows(blocks)
        ref = np.array([warm_up_inliers(b) for b in blocks])
        assert np.array_equal(got, ref), name


FACTORIES = {
    "zscore": lambda: detect.zscore(),
    "ewma": lambda: detect.ewma(),
    "cusum": lambda: detect.cusum(),
    "mad": lambda: detect.mad(),
    "mad_diff": lambda: MAD(window=64, stride=8, diff=True),
    "seasonal": lambda: detect.seasonal(),
    "auto": lambda: detect.auto(),
}


def grid(n_keys: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.sin(np.arange(n) / 9.0)[None, :] * 2 + rng.normal(0, 0.3, (n_keys, n))
    x[:, 3] += 40.0  # an outlier inside every key's warm-up block
    x[::2] = np.round(x[::2] * 2) / 2  # half the keys quantised
    spikes = rng.random((n_keys, n)) < 0.01
    x[spikes] += 9.0
    x[n_keys // 2 :, n // 2 :] += 6.0  # a lasting shift in some keys
    return x


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_many_fresh_keys_warm_up_together_as_each_would_alone(name: str) -> None:
    """Fresh keys whose whole warm-up block is in one grid learn it in one stacked step;
    every key's events and anomalies equal its own Driver run, and so does its state."""
    make = FACTORIES[name]
    n_keys, n = 12, 900
    x = grid(n_keys, n, 3)
    drv = Driver(make(), detect.threshold())
    st = StackedEnsemble(drv) if drv.parts else Stacked(drv)
    rows = st.rows_of([f"k{i}" for i in range(n_keys)])
    # two grids: the second runs on the state the first (with the warm-up) left
    cut = 400
    ev1 = st.run(rows, x[:, :cut].copy(), np.full(n_keys, cut, np.int64)).arrays()
    ev2 = st.run(rows, x[:, cut:].copy(), np.full(n_keys, n - cut, np.int64)).arrays()
    got = sorted(
        [(int(g), int(c)) for g, c in zip(ev1[0], ev1[1], strict=True)]
        + [(int(g), cut + int(c)) for g, c in zip(ev2[0], ev2[1], strict=True)]
    )
    want = []
    for i in range(n_keys):
        d = Driver(make(), detect.threshold())
        ds = d.init()
        out1 = d.run(ds, x[i, :cut])
        out2 = d.run(ds, x[i, cut:])
        event = np.concatenate([out1.event, out2.event])
        want += [(i, int(c)) for c in np.flatnonzero(event)]
    assert got == sorted(want)
    assert len(want) > 0  # the series has alarms to compare


def test_a_context_part_scored_lazily_gives_the_full_ranges_where_read() -> None:
    """SeenRange (never an alarm) makes its estimates only where its range is read; its
    ranges there, and its state after the pass, equal a full pass's."""
    det = SeenRange(window=64, stride=8)
    n_keys, n = 10, 500
    x = grid(n_keys, n, 11)
    wanted = RNG.random((n_keys, n)) < 0.02
    full = Stacked(Driver(det, detect.threshold()))
    lazy = Stacked(Driver(SeenRange(window=64, stride=8), detect.threshold()))
    names = [f"k{i}" for i in range(n_keys)]
    out = []
    for st, want in ((full, None), (lazy, wanted)):
        rows = st.rows_of(names)
        rg = (np.empty_like(x), np.empty_like(x))
        for a, b in ((0, 200), (200, n)):  # a second grid on the learnt state
            part = (rg[0][:, a:b], rg[1][:, a:b])
            lo, hi = np.empty((n_keys, b - a)), np.empty((n_keys, b - a))
            run_stacked(
                st,
                rows,
                x[:, a:b].copy(),
                np.full(n_keys, b - a, np.int64),
                every_anomaly=True,
                ranges=(lo, hi),
                wanted=None if want is None else want[:, a:b].copy(),
            )
            part[0][:], part[1][:] = lo, hi
        out.append(rg)
    (flo, fhi), (llo, lhi) = out
    assert wanted.any()
    assert np.array_equal(flo[wanted], llo[wanted], equal_nan=True)
    assert np.array_equal(fhi[wanted], lhi[wanted], equal_nan=True)
    assert np.isfinite(flo[wanted]).sum() > 5  # (past the warm-up: real ranges compared)
    for name in ("h", "n", "med", "mad", "prev"):
        assert np.array_equal(getattr(full.model, name), getattr(lazy.model, name), equal_nan=True)


def test_a_snapshot_keeps_state_not_the_last_pass() -> None:
    """The arrays a pass keeps for its learn step (readings, windows' estimates) are not
    state: a snapshot of 1,000 keys does not carry them."""
    drv = Driver(detect.mad(), detect.threshold())
    st = Stacked(drv)
    rows = st.rows_of([f"k{i}" for i in range(1000)])
    st.run(rows, RNG.normal(size=(1000, 300)), np.full(1000, 300, np.int64))
    restored = pickle.loads(pickle.dumps(st))
    for name in ("hx", "y", "x", "ests", "z"):
        assert name not in restored.model.__dict__
    # and the restored state scores the next grid as the original does
    nxt = RNG.normal(size=(1000, 50))
    a = st.run(rows, nxt.copy(), np.full(1000, 50, np.int64)).arrays()
    b = restored.run(rows, nxt.copy(), np.full(1000, 50, np.int64)).arrays()
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_resolutions_skip_rows_whose_steps_cannot_lower_them() -> None:
    """A pass need not scan a row whose resolution is already at most the smallest step of
    its grid; the result equals the full scan, also across an anomaly skipped between two
    passes (the step from the last learnt reading to the next pass's first)."""
    from edgeflow.ops.detect.spread import (
        resolution_rows,
        resolution_rows_within,
        step_floor_rows,
    )

    for name, x in shapes(30, 60).items():
        lens = RNG.integers(1, 61, 30)
        x = np.where(np.arange(60)[None, :] < lens[:, None], x, np.nan)
        floor = step_floor_rows(x, lens)
        res = np.where(RNG.random(30) < 0.5, np.inf, RNG.choice([1e-3, 0.5, 2.0], 30))
        last = np.where(RNG.random(30) < 0.2, np.nan, RNG.normal(size=30))
        for start in (0, 7):
            sub = x[:, start:]
            learnt = np.minimum(RNG.integers(0, 61, 30), np.maximum(lens - start, 0))
            want = resolution_rows(res, last, sub, learnt)
            got = resolution_rows_within(res, last, sub, learnt, floor)
            assert np.array_equal(got[0], want[0]), name
            assert np.array_equal(got[1], want[1], equal_nan=True), name


@pytest.mark.parametrize("steps", [[1], [1, 2], [0, 1, 2, 3], [0, 5, 9, 40, 70]])
def test_slide_rows_equals_keeping_the_last_window_of_old_plus_learnt(steps: list[int]) -> None:
    """Rows that learnt different numbers of points (a live batch: 1 or 2 per key) keep the
    last w values of what they held plus what they learnt, as a plain concatenation does."""
    from edgeflow.ops.detect.stacked import slide_rows

    k, w, span = 30, 64, 80
    h = RNG.normal(size=(50, w))
    rows = RNG.choice(50, k, replace=False)
    old = h[rows].copy()
    new = RNG.normal(size=(k, span))
    f = RNG.choice(steps, k)
    want = h.copy()
    for i, r in enumerate(rows):
        want[r] = np.concatenate([old[i], new[i, : f[i]]])[-w:]
    slide_rows(h, rows, old, new, f)
    assert np.array_equal(h, want)


def test_zscore_windows_rotated_by_slices_equal_the_ring_in_order() -> None:
    """A live key's window is a ring; rows that ticked together are put in order by one
    rotation: the same values as reading each ring from its head."""
    drv = Driver(detect.zscore(window=16), detect.threshold())
    st = Stacked(drv)
    rows = st.rows_of([f"k{i}" for i in range(6)])
    st.run(rows, RNG.normal(size=(6, 40)), np.full(6, 40, np.int64))
    for _ in range(5):  # live ticks move every ring's head together
        st.tick(RNG.normal(size=6))
    m = st.model
    got = m._ordered(rows)
    for i, r in enumerate(rows):
        ring = m.h[r]
        assert np.array_equal(got[i], np.concatenate([ring[m.head[r] :], ring[: m.head[r]]]))
    assert m.head[rows].any()  # (the rotation was exercised)
