"""The shortcuts that make ``auto`` faster, each against the plain computation it replaces,
bit for bit (as tsdownsample tests its kernels): windows still filling up estimated apart
from full ones, the MAD by selection or by sorting on either side of the size where one
costs less, a reference MAD re-using the estimate its last pass made, fewer and wider
passes for an ensemble's parts whose results do not depend on a pass's span, and a pass's
joined history slid in place. A wrong shortcut changes the alarms a user gets."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.ops import detect
from edgeflow.ops.detect import stacked as stacked_mod
from edgeflow.ops.detect.driver import Driver
from edgeflow.ops.detect.ensemble import StackedEnsemble, TailMAD
from edgeflow.ops.detect.mad import (
    MAD,
    SELECT_FROM,
    _median_deviation_sorted,
    _order_stat_full,
    robust_spread,
)
from edgeflow.ops.detect.stacked import slide_joined_rows, slide_rows

RNG = np.random.default_rng(20261201)


def windows(n: int, w: int) -> np.ndarray:
    """Windows of noise, counts that mostly repeat and two-level values, mixed."""
    kind = RNG.integers(0, 3, n)[:, None]
    return np.where(
        kind == 0,
        RNG.normal(size=(n, w)),
        np.where(
            kind == 1, np.round(RNG.exponential(0.3, (n, w))), RNG.integers(0, 2, (n, w)) * 5.0
        ),
    )


@pytest.mark.parametrize("w", [4, 5, 31, 128, 255, 256])
@pytest.mark.parametrize("tails", [0.0, 0.01])
def test_a_block_with_filling_windows_gives_each_window_its_own_estimate(
    w: int, tails: float
) -> None:
    win = windows(60, w)
    empty = RNG.integers(0, w + 1, 60)  # leading empty slots (NaN), some windows full
    empty[:20] = 0
    win[np.arange(w)[None, :] < empty[:, None]] = np.nan
    block = win.reshape(6, 10, w)
    med, spread = robust_spread(block.copy(), tails=tails, scratch=True)
    for i, row in enumerate(win):
        m1, s1 = robust_spread(row[None, :].copy(), tails=tails)
        assert np.array_equal(med.reshape(-1)[i], m1[0], equal_nan=True), (i, empty[i])
        assert np.array_equal(spread.reshape(-1)[i], s1[0], equal_nan=True), (i, empty[i])


@pytest.mark.parametrize("w", [4, 7, 32, 128, 129, 256])
def test_the_mad_by_selection_or_by_sorting_is_the_median_of_sorted_deviations(w: int) -> None:
    # windows on both sides of SELECT_FROM values: the two methods meet there
    for n in (1, SELECT_FROM // w - 1, SELECT_FROM // w, SELECT_FROM // w + 3):
        srt = np.sort(windows(max(n, 1), w), axis=-1)
        med = _order_stat_full(srt, w, 0.5)
        want = _order_stat_full(np.sort(np.abs(srt - med[:, None]), axis=-1), w, 0.5)
        assert np.array_equal(_median_deviation_sorted(srt, med), want), (w, n)


def series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.sin(np.arange(n) / 40.0) + rng.normal(0, 0.2, n)
    x[rng.random(n) < 0.01] += 5.0  # spikes: passes end early, learn takes a prefix
    x[n // 2 :] += 3.0  # a lasting shift: the Driver adapts (a history re-cut)
    return x


@pytest.mark.parametrize(
    "make",
    [
        lambda: MAD(window=128, level=5.0, stride=32, diff=True, warmup=32),
        lambda: TailMAD(window=256, level=6.0, stride=16, warmup=32),
        lambda: MAD(window=16, level=3.0, stride=1),
    ],
)
def test_a_reference_mad_reusing_its_passes_estimates_scores_as_one_that_does_not(
    make: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = series(6000, 3)
    cuts = [0, 1, 50, 51, 700, 2049, 2100, 6000]

    def driven() -> list[np.ndarray]:
        driver = Driver(make(), detect.threshold())  # type: ignore[operator]
        st, outs = driver.init(), []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            out = driver.run(st, x[a:b])
            outs += [out.raw, out.score, out.event, out.low, out.high]
        return outs

    fast = driven()
    monkeypatch.setattr(MAD, "made_estimate", lambda self, st, y, r: None)
    slow = driven()
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_a_detectors_pickle_leaves_out_the_estimates_of_its_last_pass() -> None:
    import pickle

    det = MAD(window=32, stride=4)
    st = det.init()
    det.learn(st, series(40, 1))
    det.score(st, np.arange(9.0))
    assert "_made" in det.__dict__
    assert "_made" not in pickle.loads(pickle.dumps(det)).__dict__


def batches_of(x: np.ndarray, keys: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    codes = np.tile(np.arange(keys), len(x) // keys)
    return [(codes[a : a + size], x[a : a + size]) for a in range(0, len(codes), size)]


@pytest.mark.parametrize("size", [997, 20000])
def test_wide_passes_find_the_same_events_as_short_ones(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = 30
    x = np.concatenate([series(2000, s) for s in range(keys)]).reshape(keys, -1).T.reshape(-1)

    def events() -> list[tuple[np.ndarray, ...]]:
        driver = Driver(detect.auto(), detect.threshold())
        ens = StackedEnsemble(driver)
        names = tuple(f"k{i}" for i in range(keys))
        out = []
        for codes, xs in batches_of(x, keys, size):
            rows = ens.rows_of(names)
            order = np.argsort(codes, kind="stable")
            lens = np.bincount(codes, minlength=keys)
            xmat = np.full((keys, int(lens.max())), np.nan)
            for k in range(keys):
                got = xs[order][lens[:k].sum() : lens[: k + 1].sum()]
                xmat[k, : len(got)] = got
            found = ens.run(rows, xmat, lens)
            gi, ci, *cols = found.arrays()
            at = np.lexsort((ci, gi))
            out.append((gi[at], ci[at], *(c[at] for c in cols)))
        return out

    wide = events()
    monkeypatch.setattr(stacked_mod, "WIDE_PASS", 0)  # every later pass as short as before
    short = events()
    assert sum(len(e[0]) for e in wide) > 10
    for a, b in zip(wide, short, strict=True):
        for u, v in zip(a, b, strict=True):
            assert np.array_equal(u, v, equal_nan=True)


@pytest.mark.parametrize("w", [1, 3, 16])
def test_sliding_a_joined_history_keeps_what_sliding_old_and_new_keeps(w: int) -> None:
    for f in (np.zeros(5, np.int64), np.full(5, 2), np.array([0, 1, 2, 3, 40]), np.full(5, 40)):
        k, span = 5, 40
        old, new = RNG.normal(size=(k, w)), RNG.normal(size=(k, span))
        rows = np.array([4, 0, 2, 1, 3])
        h1, h2 = RNG.normal(size=(6, w)), np.empty((6, w))
        h2[:] = h1
        slide_rows(h1, rows, old, new, f)
        slide_joined_rows(h2, rows, np.concatenate([old, new], axis=1), f)
        assert np.array_equal(h1, h2)
