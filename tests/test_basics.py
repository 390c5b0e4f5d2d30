"""Durations, timestamps, sharding and aggregation kernels against plain references."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.batch import Batch
from edgeflow.engine.shard import Sharder
from edgeflow.errors import BatchError, DurationError
from edgeflow.ops import agg
from edgeflow.timeutil import format_duration, ns_to_iso, parse_duration, parse_iso_ns


@pytest.mark.parametrize(
    "text, ns",
    [
        ("500ms", 500_000_000),
        ("10s", 10**10),
        ("5m", 300 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("1.5s", 1_500_000_000),
        ("250us", 250_000),
        (2, 2 * 10**9),
        (timedelta(milliseconds=3), 3_000_000),
    ],
)
def test_durations(text: object, ns: int) -> None:
    assert parse_duration(text) == ns  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "10", "ten s", "5 parsecs", "-1s", True, float("nan"), None])
def test_bad_durations_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(DurationError, match=r"duration|negative|finite|boolean"):
        parse_duration(bad)  # type: ignore[arg-type]


def test_duration_formatting_round_trips() -> None:
    for ns in (1, 1000, 5_000_000, 10**9, 90 * 10**9, 3600 * 10**9):
        assert parse_duration(format_duration(ns)) == ns


def test_iso_timestamps_need_an_offset_and_keep_nanoseconds() -> None:
    assert parse_iso_ns("2026-01-01T00:00:00.123456789Z") == 1767225600123456789
    assert parse_iso_ns("2026-01-01T02:00:00+02:00") == 1767225600 * 10**9
    assert ns_to_iso(1767225600123456789) == "2026-01-01T00:00:00.123456789Z"
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_iso_ns("2026-01-01T00:00:00")


def test_batch_validates_its_arrays() -> None:
    with pytest.raises(BatchError, match="int64"):
        Batch(("x",), ("a",), np.zeros(1, np.int32), np.zeros(1, np.float64), np.zeros((1, 1)))  # type: ignore[arg-type]
    with pytest.raises(BatchError, match="shape"):
        Batch(("x", "y"), ("a",), np.zeros(1, np.int32), np.zeros(1, np.int64), np.zeros((1, 1)))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([f"k{i}" for i in range(30)]), st.floats(-1, 1)), max_size=300
    ),
    st.integers(1, 9),
)
def test_sharding_keeps_every_reading_and_each_key_in_one_shard(
    rows: list[tuple[str, float]], shards: int
) -> None:
    if not rows:
        return
    b = Batch.from_columns([k for k, _ in rows], np.arange(len(rows)), {"x": [v for _, v in rows]})
    parts = Sharder(shards).split(b)
    seen: dict[str, str] = {}
    got = []
    for shard, sub in parts:
        assert set(sub.key_array().tolist()) == set(sub.keys), (
            "sub-batches list only their own keys"
        )
        for k in sub.keys:
            assert seen.setdefault(k, shard) == shard
        got.extend(zip(sub.key_array().tolist(), sub.t.tolist(), strict=True))
    assert sorted(got) == sorted((k, i) for i, (k, _) in enumerate(rows))


def np_reference(func: str, q: float | None, xs: list[float]) -> float:
    a = np.asarray(xs)
    return {
        "sum": a.sum, "mean": a.mean, "min": a.min, "max": a.max, "std": a.std, "var": a.var,
        "rms": lambda: math.sqrt((a * a).mean()), "median": lambda: np.median(a),
        "percentile": lambda: np.percentile(a, q), "ptp": lambda: a.max() - a.min(),
    }[func]()  # fmt: skip


@pytest.mark.parametrize(
    "sizes", [[1], [5, 5, 5], [1, 200, 3], [1000, 1, 1, 1, 1], [2, 0, 7], list(range(1, 40))]
)
def test_aggregation_kernels_match_numpy_on_many_group_shapes(sizes: list[int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    gid = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    x = rng.normal(size=gid.size)
    specs = [
        agg.sum("x"),
        agg.mean("x"),
        agg.min("x"),
        agg.max("x"),
        agg.std("x"),
        agg.var("x"),
        agg.rms("x"),
        agg.median("x"),
        agg.percentile("x", 37.5),
        agg.p99("x"),
        agg.ptp("x"),
    ]
    out = agg.compute(specs, ["x"], gid, x[None, :], len(sizes))
    start = 0
    for g, n in enumerate(sizes):
        xs = x[start : start + n].tolist()
        start += n
        for a in specs:
            got = out[a.output_name][g]
            if n == 0:
                assert math.isnan(got)
            else:
                assert math.isclose(
                    got, np_reference(a.func, a.q, xs), rel_tol=1e-9, abs_tol=1e-12
                ), (a, g)


@pytest.mark.parametrize("sizes", [[64, 1, 200, 0, 37], [1000]])
def test_vibration_features_match_references(sizes: list[int]) -> None:
    from scipy import stats

    rng = np.random.default_rng(len(sizes))
    gid = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    t = np.arange(gid.size) / 1000.0
    x = rng.normal(size=gid.size) + 2 * np.sin(2 * np.pi * 120 * t)  # 120 Hz tone, fs = 1 kHz
    specs = [
        agg.kurtosis("x"),
        agg.crest_factor("x"),
        agg.band_energy("x", 0, 500, fs=1000),
        agg.band_energy("x", 100, 140, fs=1000),
    ]
    out = agg.compute(specs, ["x"], gid, x[None, :], len(sizes))
    start = 0
    for g, n in enumerate(sizes):
        xs = x[start : start + n]
        start += n
        if n < 2:
            continue
        assert math.isclose(out["kurtosis_x"][g], stats.kurtosis(xs), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(
            out["crest_factor_x"][g], np.abs(xs).max() / np.sqrt(np.mean(xs**2)), rel_tol=1e-12
        )
        assert math.isclose(out["band_0_500hz_x"][g], np.mean(xs**2), rel_tol=1e-9), (
            "all bands sum to mean(x**2)"
        )
        if n >= 200:
            assert out["band_100_140hz_x"][g] > 1.9, "the tone (power A**2/2 = 2) lies in its band"
    assert "Nyquist" in agg.band_energy("x", 10, 900, fs=1000).problems()[0]


def test_heart_rate_and_rr_irregularity_from_r_peaks_match_the_beats() -> None:
    fs = 250.0
    rng = np.random.default_rng(4)
    for rr_mean, jitter in ((0.8, 0.01), (0.4, 0.01), (1.5, 0.01), (0.65, 0.25)):
        rr = rr_mean * (1 + jitter * rng.standard_normal(40))
        beats = 0.5 + np.cumsum(rr)
        beats = beats[beats < 29.5]
        t = np.arange(int(30 * fs)) / fs
        # R (tall, narrow), T (a third as tall, wide, 0.25 s later), baseline wander, noise
        x = np.zeros_like(t)
        for b in beats:
            x += np.exp(-0.5 * ((t - b) / 0.01) ** 2) + 0.3 * np.exp(
                -0.5 * ((t - b - 0.25) / 0.04) ** 2
            )
        x += 0.1 * np.sin(2 * np.pi * 0.25 * t) + 0.02 * rng.standard_normal(len(t))
        gid = np.zeros(len(t), np.int64)
        out = agg.compute(
            [agg.heart_rate("ecg", fs=fs), agg.rr_irregularity("ecg", fs=fs)], ["ecg"], gid,
            x[None, :], 1,
        )  # fmt: skip
        intervals = np.diff(beats)
        assert abs(out["heart_rate_ecg"][0] - 60 / intervals.mean()) < 0.5, rr_mean
        assert abs(out["rr_irregularity_ecg"][0] - intervals.std() / intervals.mean()) < 0.01
    flat = agg.compute([agg.heart_rate("ecg", fs=fs)], ["ecg"], np.zeros(100, np.int64),
                       np.zeros((1, 100)), 1)  # fmt: skip
    assert np.isnan(flat["heart_rate_ecg"][0]), "no peaks: no heart rate, not a made-up one"
    assert "fs=250" in agg.Agg("heart_rate", "ecg").problems()[0]
