"""The swinging door a segment at a time (edgeflow/ops/door_segments.py) reports exactly the
per-reading loop's points and leaves exactly its state, on many shapes of data, sizes and
batch cuts (tsdownsample style: the fast form against the plain one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgeflow.batch import Batch
from edgeflow.ops import door_segments
from edgeflow.ops.door_segments import run_segments
from edgeflow.ops.downsample import DownsampleKernel, _Door, swinging_door


def shapes(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    t = np.arange(n)
    return {
        "walk": np.cumsum(rng.normal(0, 1, n)),
        "quantised": np.round(np.cumsum(rng.normal(0, 0.6, n))),
        "flat": np.full(n, 3.0),
        "flat_then_moving": np.r_[np.zeros(n // 2), np.cumsum(rng.normal(0, 1, n - n // 2))],
        "square": np.where((t // 17) % 2 == 0, 0.0, 5.0),
        "smooth_seasonal": 22 + 2.5 * np.sin(t / 300.0) + rng.normal(0, 0.01, n),
        "drift": t * 0.001 + rng.normal(0, 0.02, n),
        "heavy_tailed": rng.standard_t(2, n),
        "shifted": np.where(t < n // 3, 0.0, 40.0) + rng.normal(0, 0.05, n),
    }


def times(rng: np.random.Generator, n: int, gaps: bool) -> np.ndarray:
    step = rng.integers(1, 5, n) * 1_000_000 if gaps else np.full(n, 10_000_000)
    if gaps:  # a few long silences (longer than max_interval)
        step[rng.random(n) < 0.01] *= 1000
    return np.cumsum(step).astype(np.int64)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_interval", [None, 2_000_000_000, 10_000_000])
@pytest.mark.parametrize("dev", [1e-9, 0.05, 0.5, 50.0])
def test_segments_equal_the_loop_point_for_point(
    seed: int, max_interval: int | None, dev: float
) -> None:
    rng = np.random.default_rng(seed)
    door = _Door(dev, max_interval)
    size = int(rng.choice([1, 2, 31, 32, 33, 200, 3000]))
    for name, x in shapes(rng, size).items():
        for gaps in (False, True):
            t = times(rng, size, gaps)
            loop_st: dict[str, Any] = {}
            fast_st: dict[str, Any] = {}
            # batch cuts: the state carried from one batch to the next
            cuts = sorted({0, size, *rng.integers(0, size + 1, 3).tolist()})
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                wt, wv = door.run(loop_st, t[a:b], x[a:b])
                gt, gv = run_segments(dev, max_interval, fast_st, t[a:b], x[a:b], door.run)
                assert gt.tolist() == wt, (name, gaps, a, b)
                np.testing.assert_array_equal(gv, np.asarray(wv, np.float64))
                assert fast_st == loop_st, (name, gaps, a, b)
            assert door.flush(fast_st) == door.flush(loop_st)


def test_long_smooth_segments_take_the_array_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A smooth signal (hundreds of readings per reported point) is not handed to the loop;
    a noisy one with a deviation below its noise is, after a few points."""
    calls: list[int] = []

    def counting_loop(st: dict[str, Any], t: Any, x: Any) -> Any:
        calls.append(len(t))
        return _Door(0.2, None).run(st, t, x)

    t = np.arange(20_000, dtype=np.int64) * 10_000_000
    smooth = 22 + 2.5 * np.sin(t / 3e10)
    out_t, _ = run_segments(0.2, None, {}, t, smooth, counting_loop)
    assert calls == [] and 2 <= len(out_t) < 200
    noisy = np.random.default_rng(1).normal(0, 1, len(t))
    run_segments(0.2, None, {}, t, noisy, counting_loop)
    assert len(calls) == 1 and calls[0] > 19_000
    monkeypatch.setattr(door_segments, "MIN_READINGS", 10**9)
    calls.clear()
    run_segments(0.2, None, {}, t, smooth, counting_loop)
    assert calls == [len(t)]


def test_the_kernel_reports_the_loops_points() -> None:
    """The downsample step with many keys, NaN readings, repeated timestamps and a late
    batch reports what the per-reading door reports for each key."""
    rng = np.random.default_rng(4)
    keys, per = 50, 400
    t = np.repeat(np.arange(per, dtype=np.int64) * 10_000_000, keys)
    k = np.tile(np.arange(keys, dtype=np.int32), per)
    x = (22 + np.sin(t / 2e9) + rng.normal(0, 0.02, len(t))).astype(np.float64)
    x[rng.random(len(x)) < 0.01] = np.nan
    names = tuple(f"k{i}" for i in range(keys))
    spec = swinging_door("v", deviation=0.1, max_interval="2s")
    kern = DownsampleKernel("trend", spec)
    st = kern.init()
    got: dict[str, list[tuple[int, float]]] = {}
    half = len(t) // 2
    for a, b in ((0, half), (half - 500, len(t))):  # the second batch repeats some readings
        rb = kern.step_batch(st, Batch(("v",), names, k[a:b], t[a:b], x[None, a:b]))
        assert rb is not None
        for key, ti, vi in zip(rb.columns["key"], rb.columns["t"], rb.columns["v"], strict=True):
            got.setdefault(key, []).append((int(ti), float(vi)))
    door = _Door(0.1, 2_000_000_000)
    for i, key in enumerate(names):
        rows = np.flatnonzero((k == i) & np.isfinite(x))
        wt, wv = door.run({}, t[rows], x[rows])
        assert got[key] == list(zip(wt, wv, strict=True)), key
    assert st["skipped"] > 0
