"""The grouped aggregation paths (one grouped view per field: sums, deviations, min/max,
one partial sort for every percentile) against the plain-Python reference, for each
layout the kernel picks: equal-length windows, ragged windows (padded rows), a few very
long windows among short ones (sort within groups), long windows (np.partition), missing
values, and empty groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeflow.ops import agg
from tests.reference_windows import aggregate

SPECS = [
    agg.count("x"), agg.sum("x"), agg.mean("x"), agg.min("x"), agg.max("x"), agg.std("x"),
    agg.var("x"), agg.rms("x"), agg.first("x"), agg.last("x"), agg.median("x"), agg.p95("x"),
    agg.p99("x"), agg.percentile("x", 0), agg.percentile("x", 100), agg.percentile("x", 37.5),
    agg.ptp("x"),
]  # fmt: skip

LAYOUTS = {
    "equal": [100] * 40,
    "equal_long": [1000] * 5,  # partitioned at the ranks
    "ragged": [64, 1, 200, 37, 99, 3],
    "ragged_long": [300, 257, 900, 256, 511],
    "skewed": [1] * 300 + [5000],  # a padded matrix would be mostly padding
    "with_empty": [10, 0, 0, 7, 0, 1],
    "one": [1],
}


def _check(sizes: list[int], x: np.ndarray) -> None:
    gid = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    out = agg.compute(SPECS, ["x"], gid, x[None, :], len(sizes))
    start = 0
    for g, n in enumerate(sizes):
        xs = x[start : start + n]
        start += n
        items = [(i, i, float(v)) for i, v in enumerate(xs.tolist()) if math.isfinite(v)]
        for a in SPECS:
            want = aggregate(a.func, a.q, items)
            got = out[a.output_name][g]
            if want is None:
                assert math.isnan(got), (a, g)
            else:
                assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (a, g, got, want)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_grouped_aggregations_equal_the_reference(layout: str) -> None:
    sizes = LAYOUTS[layout]
    rng = np.random.default_rng(len(sizes))
    x = rng.normal(size=sum(sizes)) * 50 + 1000
    _check(sizes, x)
    # ties and repeated values (ranks fall on equal values)
    _check(sizes, np.round(rng.normal(size=sum(sizes)) * 2))


@pytest.mark.parametrize("layout", ["equal", "ragged_long", "skewed"])
def test_missing_values_are_skipped_in_every_layout(layout: str) -> None:
    sizes = LAYOUTS[layout]
    rng = np.random.default_rng(7)
    x = rng.normal(size=sum(sizes))
    x[rng.random(len(x)) < 0.2] = np.nan
    x[rng.random(len(x)) < 0.01] = np.inf
    x[: sizes[0]] = np.nan  # a window with no value at all
    _check(sizes, x)


def test_vibration_features_on_the_grouped_view() -> None:
    sizes = [100] * 8 + [0, 3]
    rng = np.random.default_rng(2)
    x = rng.normal(size=sum(sizes)) * 3 + 10
    gid = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    out = agg.compute(
        [agg.kurtosis("x"), agg.crest_factor("x")], ["x"], gid, x[None, :], len(sizes)
    )
    start = 0
    for g, n in enumerate(sizes):
        xs = x[start : start + n]
        start += n
        if n == 0:
            assert math.isnan(out["kurtosis_x"][g]) and math.isnan(out["crest_factor_x"][g])
            continue
        d = xs - xs.mean()
        kurt = float(np.mean(d**4) / np.mean(d**2) ** 2 - 3.0)
        crest = float(np.abs(xs).max() / np.sqrt(np.mean(xs**2)))
        assert math.isclose(out["kurtosis_x"][g], kurt, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(out["crest_factor_x"][g], crest, rel_tol=1e-12)
