"""The quantile sketch (edgeflow/ops/sketch.py): its stated error guarantee on many shapes and
sizes, exact merging (bit-exact JSON), bounded buckets, JSON round trip and refusal of
malformed JSON with a one-line reason."""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.ops.sketch import MAX_BUCKETS, QuantileSketch, sketches_by_group

QS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
SIZES = (1, 2, 3, 10, 101, 1000, 20_000)


def _shape(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if name == "uniform":
        return rng.uniform(0, 100, n)
    if name == "lognormal":
        return rng.lognormal(0, 2, n)
    if name == "heavy_tailed":
        return rng.pareto(0.8, n) + 1e-3
    if name == "negative":
        return -rng.lognormal(1, 1, n)
    if name == "mixed_with_zeros":
        x = rng.normal(0, 10, n)
        x[rng.random(n) < 0.2] = 0.0
        return x
    if name == "constant":
        return np.full(n, 3.7)
    if name == "quantised":
        return np.round(rng.normal(50, 5, n))
    if name == "span_1e-6_1e6":
        return 10.0 ** rng.uniform(-6, 6, n)
    raise AssertionError(name)


SHAPES = (
    "uniform", "lognormal", "heavy_tailed", "negative", "mixed_with_zeros", "constant",
    "quantised", "span_1e-6_1e6",
)  # fmt: skip


def _within(sketch: QuantileSketch, x: np.ndarray, alpha: float) -> tuple[float, int]:
    """The worst relative error of the sketch's quantiles against the documented rank, over
    the values the guarantee covers: all but those collapsed (magnitudes more than
    gamma**2046 below the largest of their sign)."""
    xs = np.sort(x)
    gamma = (1 + alpha) / (1 - alpha)
    top = {s: float(np.abs(x[np.sign(x) == s]).max(initial=0.0)) for s in (-1.0, 1.0)}
    worst, skipped = 0.0, 0
    for q in QS:
        exact = float(xs[math.floor(q * (len(xs) - 1))])
        got = sketch.quantile(q)
        if exact == 0.0:
            assert got == 0.0, (q, got)
            continue
        if abs(exact) * gamma ** (MAX_BUCKETS - 2) < top[float(np.sign(exact))]:
            skipped += 1  # collapsed: outside the guarantee (see the collapsing test)
            continue
        worst = max(worst, abs(got - exact) / abs(exact))
    return worst, skipped


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.01, 0.001, 0.05])
def test_quantiles_are_within_alpha_of_the_documented_rank(shape: str, alpha: float) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{shape}/{alpha}".encode()))
    for n in SIZES:
        x = _shape(shape, n, rng)
        s = QuantileSketch.from_values(x, alpha)
        assert s.count == n
        worst, skipped = _within(s, x, alpha)
        assert worst <= alpha * (1 + 1e-9), (shape, n)
        assert skipped == 0 or alpha < 0.01  # at 0.01 nothing here collapses (1e-6..1e6)
        assert len(s.pos) <= MAX_BUCKETS and len(s.neg) <= MAX_BUCKETS


def test_single_value_empty_and_non_finite_values() -> None:
    one = QuantileSketch.from_values(np.array([-2.5]))
    assert all(abs(one.quantile(q) + 2.5) <= 0.01 * 2.5 for q in QS)
    empty = QuantileSketch.from_values(np.array([]))
    assert empty.count == 0 and math.isnan(empty.quantile(0.5))
    assert empty.to_json() == {"alpha": 0.01, "zero": 0, "pos": [0, []], "neg": [0, []]}
    skipped = QuantileSketch.from_values(np.array([np.nan, np.inf, -np.inf, 1.0, -0.0]))
    assert skipped.count == 2 and skipped.zero == 1
    assert skipped.quantile(0.0) == 0.0 and abs(skipped.quantile(1.0) - 1.0) <= 0.01


def test_out_of_range_q_and_alpha_are_refused() -> None:
    s = QuantileSketch.from_values(np.arange(10.0))
    for q in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="quantile q="):
            s.quantile(q)
    for alpha in (0.0, 0.9, -1, float("nan")):
        with pytest.raises(ValueError, match="relative accuracy"):
            QuantileSketch.from_values(np.arange(3.0), alpha)
    with pytest.raises(ValueError, match="cannot merge sketches of relative accuracy"):
        s.merge(QuantileSketch.from_values(np.arange(3.0), 0.02))


def _dump(s: QuantileSketch) -> bytes:
    return orjson.dumps(s.to_json())


@pytest.mark.parametrize("shape", [*SHAPES, "collapsing"])
def test_merge_of_sketches_equals_the_sketch_of_the_union_bit_exact(shape: str) -> None:
    rng = np.random.default_rng(7)
    if shape == "collapsing":  # magnitudes 1e-300..1e300: far more than 2048 buckets
        x = (10.0 ** rng.uniform(-300, 300, 5000)) * rng.choice([-1.0, 1.0], 5000)
    else:
        x = _shape(shape, 5000, rng)
    whole = QuantileSketch.from_values(x)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 7, replace=False))
    parts = [QuantileSketch.from_values(p) for p in np.split(x, cuts)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert _dump(merged) == _dump(whole)
    # any order, any grouping
    order = rng.permutation(len(parts))
    left = parts[order[0]]
    for i in order[1:]:
        left = parts[i].merge(left)
    assert _dump(left) == _dump(whole)
    pairs = [parts[i].merge(parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
    tree = pairs[0]
    for p in [*pairs[1:], *parts[len(pairs) * 2 :]]:
        tree = tree.merge(p)
    assert _dump(tree) == _dump(whole)


def test_collapsing_keeps_2048_buckets_and_the_guarantee_for_the_top_values() -> None:
    rng = np.random.default_rng(11)
    x = 10.0 ** rng.uniform(-300, 300, 20_000)
    s = QuantileSketch.from_values(x)
    assert len(s.pos) == MAX_BUCKETS and s.count == len(x)
    # gamma**2047 at alpha=0.01 is ~6e17: every value above max / 6e17 keeps the guarantee
    xs = np.sort(x)
    for q in (0.99, 0.995, 0.999, 1.0):
        exact = xs[math.floor(q * (len(xs) - 1))]
        assert exact > xs[-1] / 6e17
        assert abs(s.quantile(q) - exact) <= 0.01 * exact * (1 + 1e-9)
    # the collapsed (smallest) values are over-estimated, never below the true value
    assert s.quantile(0.0) >= xs[0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.one_of(
                st.floats(-1e12, 1e12, allow_nan=False), st.just(0.0), st.integers(-5, 5)
            ).map(float),
            max_size=40,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_merge_is_exact_associative_and_commutative(parts: list[list[float]]) -> None:
    sk = [QuantileSketch.from_values(np.array(p, float)) for p in parts]
    union = QuantileSketch.from_values(np.array([v for p in parts for v in p], float))
    fwd = sk[0]
    for s in sk[1:]:
        fwd = fwd.merge(s)
    back = sk[-1]
    for s in reversed(sk[:-1]):
        back = s.merge(back)
    assert _dump(fwd) == _dump(back) == _dump(union)


def test_json_round_trip_through_orjson() -> None:
    x = np.random.default_rng(3).normal(0, 100, 3000)
    x[::50] = 0.0
    s = QuantileSketch.from_values(x, 0.02)
    d = orjson.loads(orjson.dumps(s.to_json()))
    back = QuantileSketch.from_json(d)
    assert back == s and _dump(back) == _dump(s)
    assert all(back.quantile(q) == s.quantile(q) for q in QS)
    assert set(d) == {"alpha", "zero", "pos", "neg"}
    for side in ("pos", "neg"):  # canonical: counts at both ends, no 0, runs of empties
        tokens = d[side][1]
        assert tokens[0] > 0 and tokens[-1] > 0 and 0 not in tokens
        assert all(a > 0 or b > 0 for a, b in zip(tokens, tokens[1:], strict=False))
    # plain dense counts (0 for an empty bucket, zero buckets at the ends) read the same
    dense = np.repeat(
        [0 if c < 0 else c for c in d["pos"][1]], [-c if c < 0 else 1 for c in d["pos"][1]]
    ).tolist()
    padded = {**d, "pos": [d["pos"][0] - 2, [0, 0, *dense, 0]]}
    assert QuantileSketch.from_json(padded) == s


def test_empty_buckets_are_runs_so_a_wide_sparse_sketch_stays_small() -> None:
    s = QuantileSketch.from_values(np.array([1.0, 1.0, 1.5, -2.0, 1e-6, 1e6]))
    d = s.to_json()
    assert d["neg"] == [35, [1]]
    assert len(d["pos"][1]) == 7  # 4 buckets, 3 runs of empty ones (dense: 1383 buckets)
    assert QuantileSketch.from_json(d) == s and s.count == 6


GOOD: dict[str, Any] = {"alpha": 0.01, "zero": 1, "pos": [3, [1, 2]], "neg": [0, []]}


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ([1, 2], "JSON object"),
        (None, "JSON object"),
        ({**GOOD, "extra": 1}, "unexpected"),
        ({k: v for k, v in GOOD.items() if k != "pos"}, "missing"),
        ({**GOOD, "alpha": "0.01"}, "relative accuracy"),
        ({**GOOD, "alpha": 2.0}, "relative accuracy"),
        ({**GOOD, "zero": -1}, "zero"),
        ({**GOOD, "zero": 1.5}, "zero"),
        ({**GOOD, "pos": [3]}, "not \\[offset"),
        ({**GOOD, "pos": "3,1,2"}, "not \\[offset"),
        ({**GOOD, "pos": [3.5, [1]]}, "offset"),
        ({**GOOD, "pos": [2**50, [1]]}, "offset"),
        ({**GOOD, "pos": [3, [1, 2.5]]}, "not all whole numbers"),
        ({**GOOD, "pos": [3, ["a"]]}, "not all whole numbers"),
        ({**GOOD, "pos": [3, [None]]}, "not all whole numbers"),
        ({**GOOD, "pos": [3, [True]]}, "not all whole numbers"),
        ({**GOOD, "pos": [3, [[1]]]}, "not all whole numbers"),
        ({**GOOD, "pos": [3, [1, -(2**62), 1]]}, "not all whole numbers"),
        ({**GOOD, "neg": [3, [2**70]]}, "not all whole numbers"),
        ({**GOOD, "neg": [3, {"a": 1}]}, "not a list"),
        ({**GOOD, "neg": [0, [1] * (MAX_BUCKETS + 1)]}, "more than 2048"),
        ({**GOOD, "neg": [0, [1, -MAX_BUCKETS, 1]]}, "spans 2050 buckets"),
    ],
)
def test_malformed_json_is_a_one_line_value_error(bad: Any, why: str) -> None:
    assert QuantileSketch.from_json(GOOD).count == 4
    with pytest.raises(ValueError, match=why) as err:
        QuantileSketch.from_json(bad)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_sketches_by_group_equals_one_sketch_per_group() -> None:
    rng = np.random.default_rng(5)
    n_groups = 50
    g = rng.integers(0, n_groups - 3, 20_000)  # the last three groups get no value
    x = rng.normal(0, 1, len(g)) * 10.0 ** rng.integers(-3, 4, len(g))
    x[::17] = np.nan
    x[::31] = 0.0
    x[::97] = np.inf
    got = sketches_by_group(g, x, n_groups, 0.01)
    assert len(got) == n_groups
    for i in range(n_groups):
        want = QuantileSketch.from_values(x[g == i]).to_json()
        assert orjson.dumps(got[i]) == orjson.dumps(want), i
    assert got[-1] == {"alpha": 0.01, "zero": 0, "pos": [0, []], "neg": [0, []]}
