"""Downsampling kernels: stated error bounds hold, streaming equals offline, tsdownsample parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import firwin, lfilter
from tsdownsample import LTTBDownsampler, M4Downsampler

from edgeflow.batch import Batch
from edgeflow.ops import downsample
from edgeflow.ops.downsample import DownsampleKernel
from tests.helpers import records

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


# -- issue 12 item 5: duplicate and out-of-order times, tsdownsample's limits ---------------------
def test_swinging_door_with_two_readings_at_one_time_takes_the_first() -> None:
    """The issue's case raised ZeroDivisionError: (10, 1.0) and (10, 2.0) share a time."""
    t = np.array([0, 10, 10, 20], np.int64) * S
    x = np.array([1.0, 1.0, 2.0, 1.0])
    for cuts in ([], [2], [3], [1, 2, 3]):
        ot, ov, _, state = run(downsample.swinging_door("v", deviation=0.01), t, x, cuts)
        assert ot.tolist() == [0, 20 * S] and ov.tolist() == [1.0, 1.0], cuts
        assert state["skipped"] == 1, "the second reading at t=10 is skipped, and counted"


@settings(max_examples=150, deadline=None)
@given(
    xs=signals,
    dev=st.floats(0.01, 50),
    steps=st.lists(st.integers(0, 3), min_size=400, max_size=400),
    seed=st.integers(0, 2**32 - 1),
)
def test_swinging_door_keeps_its_bound_on_shuffled_readings_with_equal_times(
    xs: list[float], dev: float, steps: list[int], seed: int
) -> None:
    """One batch in any order, times repeating: the bound holds for the first reading at
    each time (in arrival order), the others are skipped and counted."""
    x = np.asarray(xs)
    t = np.cumsum(steps[: len(x)]).astype(np.int64) * S
    order = np.random.default_rng(seed).permutation(len(x))
    ot, ov, _, state = run(downsample.swinging_door("v", deviation=dev), t[order], x[order], [])
    srt = np.argsort(t[order], kind="stable")
    ts, xs_ = t[order][srt], x[order][srt]
    first = np.r_[True, ts[1:] != ts[:-1]]
    assert state.get("skipped", 0) == int((~first).sum())
    assert np.all(np.diff(ot) > 0), "reported times go forward"
    assert ot[0] == ts[0] and ot[-1] == ts[-1]
    recon = np.interp(ts[first], ot, ov)
    assert np.all(np.abs(recon - xs_[first]) <= dev * (1 + 1e-9) + 1e-9)


KINDS = {
    "deadband": downsample.deadband("v", band=0.3),
    "changes": downsample.changes("v"),
    "swinging_door": downsample.swinging_door("v", deviation=0.2),
    "decimate": downsample.decimate("v", 3),
    "lttb": downsample.lttb("v", every="5s", points=3),
    "m4": downsample.m4("v", every="5s", points=4),
    "minmax": downsample.minmax("v", every="5s", points=2),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_late_readings_are_skipped_and_reported_points_never_go_back_in_time(kind: str) -> None:
    """Batches overlap in time and hold readings out of order: each batch is taken in time
    order, readings older than the newest one already taken are skipped (counted)."""
    rng = np.random.default_rng(3)
    t = (np.arange(300) // 2 + rng.integers(-6, 7, 300)).astype(np.int64) * S  # jittered, ties
    x = np.cumsum(rng.normal(size=300))
    cuts = [40, 90, 91, 150, 230]
    ot, _, _, state = run(KINDS[kind], t, x, cuts)
    assert len(ot) and np.all(np.diff(ot) >= 0), "reported times never decrease"
    newest, late = None, 0
    for a, b in zip([0, *cuts], [*cuts, len(t)], strict=True):
        part = np.sort(t[a:b])
        if newest is not None:
            late += int(
                (part < newest).sum() if kind != "swinging_door" else (part <= newest).sum()
            )
            part = part[part >= newest] if kind != "swinging_door" else part[part > newest]
        if kind == "swinging_door":
            late += int((part[1:] == part[:-1]).sum())
        newest = part[-1] if len(part) else newest
    assert state.get("skipped", 0) == late > 0


@pytest.mark.parametrize(
    "spec, picks",
    [
        (downsample.m4("v", every="10s", points=4), "first min max last"),
        (downsample.minmax("v", every="10s", points=2), "min max"),
        (downsample.m4("v", every="10s", points=8), "tsdownsample"),
    ],
)
def test_m4_and_minmax_with_one_bin_reduce_full_windows(
    spec: downsample.DownsampleSpec, picks: str
) -> None:
    """tsdownsample panics with one bin (nb_bins >= 2) once a window holds more points than
    ``points``: one bin is reduced here; a window whose readings share one time too."""
    rng = np.random.default_rng(8)
    t = np.arange(200, dtype=np.int64) * (S // 10)  # 100 per 10 s window
    x = rng.normal(size=200)
    ot, ov, _, _ = run(spec, t, x, [33, 120])
    assert len(ot) == 2 * (
        4 if spec.kind == "m4" and picks != "tsdownsample" else 2 if spec.kind == "minmax" else 8
    )
    for w in range(2):
        sel = slice(100 * w, 100 * (w + 1))
        tw, xw = t[sel], x[sel]
        got = [
            (a, b) for a, b in zip(ot.tolist(), ov.tolist(), strict=True) if tw[0] <= a <= tw[-1]
        ]
        if picks == "tsdownsample":
            idx = M4Downsampler().downsample(tw, xw, n_out=8)
        else:
            ends = [0, 99] if spec.kind == "m4" else []
            idx = np.sort([*ends, int(np.argmin(xw)), int(np.argmax(xw))])
        assert got == list(zip(tw[idx].tolist(), xw[idx].tolist(), strict=True))
    same = np.full(50, 7 * S, np.int64)  # every reading of the window at one time
    ot, ov, _, _ = run(downsample.m4("v", every="10s", points=8), same, x[:50], [])
    assert ot.tolist() == [7 * S] * 4 and sorted(ov.tolist())[0] == x[:50].min()


def test_swinging_door_heartbeat_shorter_than_the_gap_between_readings() -> None:
    """max_interval below the spacing of the readings crashed (no previous reading to close
    the door at): each reading is then reported as it is."""
    t = np.arange(20, dtype=np.int64) * S
    x = np.sin(np.arange(20.0))
    ot, ov, _, _ = run(
        downsample.swinging_door("v", deviation=0.5, max_interval="500ms"), t, x, [7]
    )
    assert ot.tolist() == t.tolist() and ov.tolist() == x.tolist()


def test_flows_with_duplicate_times_and_one_bin_run_to_the_end(tmp_path: Path) -> None:
    """The issue's flows pass validate and ran into ZeroDivisionError and a tsdownsample
    panic; they run to the end now."""
    from edgeflow import Flow
    from edgeflow.connectors import files
    from edgeflow.engine import run as run_flow

    src = tmp_path / "in.csv"
    T0 = 1_700_000_000 * S  # noqa: N806
    rows = [(0, 1.0), (10, 1.0), (10, 2.0), (20, 1.0)]
    rows += [(30 + i // 10, float(i % 7)) for i in range(100)]  # 10 readings per second
    src.write_text("device,ts,v\n" + "".join(f"d1,{T0 + t * S},{v}\n" for t, v in rows))
    flow = Flow("dups")
    r = flow.source(files.source(str(src)), key="device", time="ts")
    outs = {}
    for name, spec in (
        ("door", downsample.swinging_door("v", deviation=0.01)),
        ("m4", downsample.m4("v", every="5s", points=4)),
        ("minmax", downsample.minmax("v", every="5s", points=2)),
    ):
        outs[name] = tmp_path / f"{name}.jsonl"
        r.downsample(spec, name=name).to(files.sink(str(outs[name])))
    summary = run_flow(flow.plan())
    assert summary.counters["readings_in"] == len(rows)
    for name, path in outs.items():
        times = [rec["t"] for rec in records(path)]
        assert times and times == sorted(times), name
    assert [rec["t"] for rec in records(outs["door"])][:2] == [T0, T0 + 20 * S]
