"""Window kernels against the plain-Python reference, on randomised inputs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow.batch import Batch
from edgeflow.ops import agg
from edgeflow.ops import window as win
from tests.reference_windows import reference

S = 1_000_000_000
ALL_AGGS = [
    agg.count(), agg.count("x"), agg.sum("x"), agg.mean("x"), agg.min("x"), agg.max("x"),
    agg.std("x"), agg.var("y"), agg.rms("x"), agg.first("x"), agg.last("y"), agg.median("y"),
    agg.p90("x"), agg.percentile("y", 12.5), agg.ptp("y"),
]  # fmt: skip

SPECS = {
    "tumbling": (win.tumbling("1s"), {"size": S, "slide": S, "offset": 0}),
    "tumbling_offset": (
        win.tumbling("2s", offset="500ms"),
        {"size": 2 * S, "slide": 2 * S, "offset": S // 2},
    ),
    "hopping": (win.hopping("2s", "500ms"), {"size": 2 * S, "slide": S // 2, "offset": 0}),
    "session": (win.session("700ms"), {"gap": 7 * S // 10}),
    "count": (win.count(3), {"n": 3}),
}


@st.composite
def streams(draw: Any) -> tuple[list[tuple[str, int, dict[str, float]]], list[int]]:
    n = draw(st.integers(0, 120))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", "dev-7", "ü"]), min_size=n, max_size=n))
    base = 0
    rows = []
    value = st.one_of(
        st.floats(-1e3, 1e3, allow_nan=False), st.just(float("nan")), st.integers(-5, 5).map(float)
    )
    for i in range(n):
        base += draw(st.integers(0, S // 3))
        jitter = draw(st.integers(-3 * S, S // 2))  # out of order, within and beyond lateness
        t = max(base + jitter, -S) if draw(st.booleans()) else base
        rows.append((keys[i], t, {"x": draw(value), "y": draw(value)}))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=8))))
    return rows, cuts


def run_kernel(
    spec: win.WindowSpec,
    rows: list[tuple[str, int, dict[str, float]]],
    cuts: list[int],
    lateness: int,
) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    k = win.WindowKernel(
        "w", spec.resolve(), ALL_AGGS, ["x", "y"], lateness_ns=lateness, idle_ns=None
    )
    state = k.init()
    out: list[dict[str, Any]] = []
    late: list[tuple[str, int]] = []
    bounds = [0, *cuts, len(rows)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = rows[a:b]
        if not part:
            continue
        batch = Batch.from_columns(
            [r[0] for r in part], [r[1] for r in part],
            {"x": [r[2]["x"] for r in part], "y": [r[2]["y"] for r in part]},
        )  # fmt: skip
        res = k.step_batch(state, batch, now_ns=0)
        if res.windows:
            out.extend(res.windows.rows())
        if res.late:
            late.extend((r["key"], r["t"]) for r in res.late.rows())
    fin = k.flush(state).windows
    if fin:
        out.extend(fin.rows())
    assert state.buffered() == 0, "flush must free every buffered reading"
    return out, late


def _norm(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["key"], r["window_start"], r.get("window_seq", 0), r["window_end"])

    got_s, want_s = sorted(got, key=key), sorted(want, key=key)
    assert [key(r) for r in got_s] == [key(r) for r in want_s]
    for g, w in zip(got_s, want_s, strict=True):
        assert set(g) == set(w), (g, w)
        for name, wv in w.items():
            gv, wv = _norm(g[name]), _norm(wv)
            if wv is None or gv is None:
                assert gv is None and wv is None, (name, g, w)
            elif isinstance(wv, float):
                assert math.isclose(gv, wv, rel_tol=1e-9, abs_tol=1e-7), (name, g, w)
            else:
                assert gv == wv, (name, g, w)


@pytest.mark.parametrize("name", list(SPECS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams(), lateness=st.sampled_from([0, S, 2 * S]))
def test_kernel_equals_reference(name: str, data: Any, lateness: int) -> None:
    spec, params = SPECS[name]
    rows, cuts = data
    got, got_late = run_kernel(spec, rows, cuts, lateness)
    want, want_late = reference(spec.kind, params, ALL_AGGS, rows, lateness)
    assert_same(got, want)
    assert sorted(got_late) == sorted(want_late)
    # every reading is accounted for: in some window or in the late stream
    if spec.kind in ("tumbling", "session", "count"):
        assert sum(r["count"] for r in got) + len(got_late) == len(rows)


def test_batch_cutting_does_not_change_results() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    rows = [
        (
            f"k{rng.integers(0, 40)}",
            int(i * S // 50 + rng.integers(-S, S)),
            {"x": float(rng.normal()), "y": float(rng.normal())},
        )
        for i in range(n)
    ]
    whole, late_whole = run_kernel(win.tumbling("1s"), rows, [], S)
    pieces, late_pieces = run_kernel(win.tumbling("1s"), rows, list(range(0, n, 37)), S)
    assert_same(pieces, whole)
    assert sorted(late_pieces) == sorted(late_whole)
    assert late_whole, "the input was built to contain late readings"


def test_idle_key_closes_its_windows_and_later_readings_are_late() -> None:
    k = win.WindowKernel(
        "w", win.tumbling("10s").resolve(), [agg.count()], ["x"], lateness_ns=0, idle_ns=5 * S
    )
    st_ = k.init()
    k.step_batch(
        st_,
        Batch.from_columns(["quiet", "busy"], [1 * S, 1 * S], {"x": [1.0, 2.0]}),
        now_ns=100 * S,
    )
    assert k.next_wakeup(st_) == 105 * S
    assert k.on_time(st_, 104 * S).windows is None
    k.step_batch(st_, Batch.from_columns(["busy"], [2 * S], {"x": [3.0]}), now_ns=104 * S)
    out = k.on_time(st_, 105 * S).windows
    assert out is not None and out.rows() == [
        {"key": "quiet", "window_start": 0, "window_end": 10 * S, "count": 1}
    ]
    res = k.step_batch(st_, Batch.from_columns(["quiet"], [3 * S], {"x": [4.0]}), now_ns=106 * S)
    assert res.late is not None and res.late.rows()[0]["key"] == "quiet"
    assert st_.buffered() == 2  # busy's two readings are still open


def test_idle_keys_expire_and_state_is_freed() -> None:
    k = win.WindowKernel(
        "w", win.tumbling("1s").resolve(), [agg.count()], ["x"], idle_ns=S, key_ttl_ns=10 * S
    )
    st_ = k.init()
    keys = [f"dev{i}" for i in range(1000)]
    k.step_batch(st_, Batch.from_columns(keys, [0] * 1000, {"x": [0.0] * 1000}), now_ns=0)
    flushed = k.on_time(st_, 2 * S).windows
    assert flushed is not None and flushed.n == 1000
    assert st_.buffered() == 0
    k.on_time(st_, 120 * S)
    assert st_.names == [] and st_.max_t.size == 0


def test_processing_time_windows_close_on_the_wall_clock() -> None:
    k = win.WindowKernel(
        "w", win.tumbling("1s", time="processing").resolve(), [agg.count(), agg.max("x")], ["x"]
    )
    st_ = k.init()
    # event times are ignored: readings are stamped on arrival
    k.step_batch(
        st_, Batch.from_columns(["a", "a"], [0, 999 * S], {"x": [1.0, 5.0]}), now_ns=10 * S + 5
    )
    assert k.next_wakeup(st_) == 11 * S
    assert k.on_time(st_, 11 * S - 1).windows is None
    out = k.on_time(st_, 11 * S).windows
    assert out is not None
    assert out.rows() == [
        {"key": "a", "window_start": 10 * S, "window_end": 11 * S, "count": 2, "max_x": 5.0}
    ]


def test_snapshot_round_trip_resumes_identically() -> None:
    rng = np.random.default_rng(9)
    rows = [
        (
            f"k{rng.integers(0, 5)}",
            int(i * S // 10 + rng.integers(-S, S)),
            {"x": float(i), "y": 1.0},
        )
        for i in range(400)
    ]
    whole, _ = run_kernel(win.hopping("2s", "1s"), rows, [], S)
    k = win.WindowKernel(
        "w", win.hopping("2s", "1s").resolve(), ALL_AGGS, ["x", "y"], lateness_ns=S, idle_ns=None
    )
    out: list[dict[str, Any]] = []
    state = k.init()
    for a in range(0, 400, 50):
        part = rows[a : a + 50]
        b = Batch.from_columns(
            [r[0] for r in part],
            [r[1] for r in part],
            {"x": [r[2]["x"] for r in part], "y": [1.0] * len(part)},
        )
        res = k.step_batch(state, b, 0)
        if res.windows:
            out.extend(res.windows.rows())
        state = k.restore(k.snapshot(state), now_ns=0)  # round-trip after every batch
    fin = k.flush(state).windows
    assert fin is not None
    out.extend(fin.rows())
    assert_same(out, whole)


@pytest.mark.parametrize(
    "spec, message",
    [
        (win.tumbling("0s"), "zero"),
        (win.tumbling("ten seconds"), "cannot read"),
        (win.hopping("1s", "2s"), "slide"),
        (win.count(0), ">= 1"),
        (win.session(-1), "negative"),
        (win.WindowSpec("weekly"), "unknown window kind"),
    ],
)
def test_bad_window_arguments_say_what_to_fix(spec: win.WindowSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec.resolve()
