"""Downsampling kernels: stated error bounds hold, streaming equals offline, tsdownsample parity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import firwin, lfilter
from tsdownsample import LTTBDownsampler, M4Downsampler

from edgeflow.batch import Batch
from edgeflow.ops import downsample
from edgeflow.ops.downsample import DownsampleKernel

S = 1_000_000_000


def run(
    spec: downsample.DownsampleSpec, t: np.ndarray, x: np.ndarray, cuts: list[int], key: str = "k"
) -> tuple[np.ndarray, np.ndarray, DownsampleKernel, dict]:
    k = DownsampleKernel("reduce", spec)
    state = k.init()
    ts, vs = [], []
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(t))), len(t)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out = k.step_batch(state, Batch.from_columns([key] * (b - a), t[a:b], {spec.field: x[a:b]}))
        if out is not None:
            ts.append(out.columns["t"])
            vs.append(out.columns[spec.field])
    fin = k.flush(state)
    if fin is not None:
        ts.append(fin.columns["t"])
        vs.append(fin.columns[spec.field])
    if not ts:
        return np.empty(0, np.int64), np.empty(0), k, state
    return np.concatenate(ts), np.concatenate(vs), k, state


signals = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=400)


@settings(max_examples=200, deadline=None)
@given(
    xs=signals,
    dev=st.floats(0.01, 50),
    cuts=st.lists(st.integers(0, 400), max_size=5),
    steps=st.lists(st.integers(1, 5), min_size=400, max_size=400),
)
def test_swinging_door_reconstruction_never_exceeds_its_deviation(
    xs: list[float], dev: float, cuts: list[int], steps: list[int]
) -> None:
    x = np.asarray(xs)
    t = np.cumsum(steps[: len(x)]).astype(np.int64) * S
    ot, ov, _, _ = run(downsample.swinging_door("v", deviation=dev), t, x, cuts)
    assert ot[0] == t[0] and ot[-1] == t[-1], "the first and last readings are covered"
    recon = np.interp(t, ot, ov)
    assert np.all(np.abs(recon - x) <= dev * (1 + 1e-9) + 1e-9), np.max(np.abs(recon - x))


@settings(max_examples=200, deadline=None)
@given(xs=signals, band=st.floats(0, 20), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_deadband_hold_last_value_stays_within_the_band(
    xs: list[float], band: float, cuts: list[int]
) -> None:
    x = np.asarray(xs)
    t = np.arange(len(x), dtype=np.int64) * S
    ot, ov, _, _ = run(downsample.deadband("v", band=band), t, x, cuts)
    held = ov[np.searchsorted(ot, t, side="right") - 1]  # value in force at each reading
    assert np.all(np.abs(held - x) <= band + 1e-9)
    whole_t, _, _, _ = run(downsample.deadband("v", band=band), t, x, [])
    assert np.array_equal(ot, whole_t), "batching does not change what is reported"


def test_deadband_heartbeat_and_changes_are_lossless() -> None:
    t = np.arange(100, dtype=np.int64) * S
    x = np.repeat([1.0, 2.0, 2.0, 5.0], 25)
    ot, _, _, _ = run(downsample.deadband("v", band=10, max_interval="30s"), t, x, [])
    assert np.diff(ot).max() <= 30 * S
    _, cv, k, st_ = run(downsample.changes("v"), t, x, [13, 50])
    assert cv.tolist() == [1.0, 2.0, 5.0] and k.ratio(st_) == pytest.approx(100 / 3)


@pytest.mark.parametrize("n, q", [(50, 2), (1000, 4), (4096, 10), (777, 3)])
def test_streaming_decimation_equals_filtering_offline(n: int, q: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    t = np.arange(n, dtype=np.int64) * S
    ot, ov, _, _ = run(downsample.decimate("v", q), t, x, sorted(rng.integers(1, n, 7).tolist()))
    offline = lfilter(firwin(8 * q + 1, 1.0 / q), 1.0, x)[q - 1 :: q]
    np.testing.assert_allclose(ov, offline, rtol=1e-12, atol=1e-12)
    assert np.array_equal(ot, t[q - 1 :: q])


@pytest.mark.parametrize("kind", ["lttb", "m4"])
@pytest.mark.parametrize("n", [7, 100, 1000, 5001])
def test_lttb_and_m4_equal_tsdownsample_on_each_window(kind: str, n: int) -> None:
    rng = np.random.default_rng(n)
    t = np.sort(rng.choice(np.arange(60 * n), n, replace=False)).astype(np.int64) * (S // 100)
    x = np.cumsum(rng.normal(size=n))
    spec = (
        downsample.lttb("v", every="10s", points=20)
        if kind == "lttb"
        else downsample.m4("v", every="10s", points=20)
    )
    ot, ov, _, _ = run(spec, t, x, [n // 3, n // 2])
    want_t, want_v = [], []
    w = t // (10 * S)
    for win in np.unique(w):
        sel = w == win
        tt, xx = t[sel], x[sel]
        if len(tt) <= 20:
            want_t.append(tt)
            want_v.append(xx)
            continue
        ds = LTTBDownsampler() if kind == "lttb" else M4Downsampler()
        idx = ds.downsample(tt, xx, n_out=20)
        want_t.append(tt[idx])
        want_v.append(xx[idx])
    assert np.array_equal(ot, np.concatenate(want_t))
    assert np.array_equal(ov, np.concatenate(want_v))


def test_bad_reduction_arguments_say_what_to_fix() -> None:
    assert "exactly one of band" in downsample.deadband("v").problems()[0]
    assert "deviation=0" in downsample.swinging_door("v", deviation=0).problems()[0]
    assert "multiple of 4" in downsample.m4("v", every="1s", points=10).problems()[0]
    assert "every='10s'" in downsample.DownsampleSpec("lttb", "v", {"points": 10}).problems()[0]
