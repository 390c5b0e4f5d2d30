"""agg.mergeable(field) in every window kind: the summaries a later tier combines exactly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow import Flow, testing
from edgeflow.batch import Batch, RecordBatch
from edgeflow.connectors import files
from edgeflow.ops import agg
from edgeflow.ops import window as win
from edgeflow.ops.sketch import QuantileSketch
from edgeflow.ops.window_kernel import WindowKernel

S = 1_000_000_000
KINDS = {
    "tumbling": win.tumbling("1s"),
    "hopping": win.hopping("2s", "500ms"),
    "session": win.session("700ms"),
    "count": win.count(3),
}
PLAIN = [
    agg.count("x"), agg.sum("x"), agg.min("x"), agg.max("x"), agg.first("x"), agg.last("x"),
    agg.rms("x"),
]  # fmt: skip
COLUMNS = ("count", "sum", "sumsq", "min", "max", "first", "first_t", "last", "last_t", "sketch")


def _run(
    spec: win.WindowSpec, aggs: list[agg.Agg], rows: list[tuple[str, int, float]], cuts: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    k = WindowKernel("w", spec.resolve(), aggs, ["x"], lateness_ns=S, idle_ns=None)
    state = k.init()
    out: list[RecordBatch] = []
    late: list[RecordBatch] = []
    bounds = [0, *cuts, len(rows)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = rows[a:b]
        if not part:
            continue
        batch = Batch.from_columns(
            [r[0] for r in part], [r[1] for r in part], {"x": [r[2] for r in part]}
        )
        res = k.step_batch(state, batch, now_ns=0)
        out += [res.windows] if res.windows else []
        late += [res.late] if res.late else []
    fin = k.flush(state).windows
    out += [fin] if fin else []
    return [r for rb in out for r in rb.rows()], [r for rb in late for r in rb.rows()]


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["key"], r["window_start"], r.get("window_seq", 0))


@st.composite
def streams(draw: Any) -> tuple[list[tuple[str, int, float]], list[int]]:
    n = draw(st.integers(0, 80))
    rows = []
    base = 0
    value = st.one_of(
        st.floats(-1e3, 1e3, allow_nan=False), st.just(float("nan")), st.integers(-3, 3).map(float)
    )
    for _ in range(n):
        base += draw(st.integers(0, S // 3))
        t = base + draw(st.integers(-2 * S, S // 2)) if draw(st.booleans()) else base
        rows.append((draw(st.sampled_from(["a", "b", "c"])), max(t, 0), draw(value)))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=5))))
    return rows, cuts


@pytest.mark.parametrize("kind", list(KINDS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams())
def test_mergeable_columns_equal_the_plain_aggregations_in_every_window_kind(
    kind: str, data: Any
) -> None:
    rows, cuts = data
    spec = KINDS[kind]
    plain, late_p = _run(spec, PLAIN, rows, cuts)
    merged, late_m = _run(spec, [agg.mergeable("x")], rows, cuts)
    assert [_key(r) for r in merged] == [_key(r) for r in plain]
    assert late_m == late_p
    for m, p in zip(merged, plain, strict=True):
        assert set(m) >= {f"{c}_x" for c in COLUMNS}
        n = m["count_x"]
        assert n == p["count_x"]
        for c in ("sum", "min", "max", "first", "last"):
            assert m[f"{c}_x"] == p[f"{c}_x"], c
        sketch = QuantileSketch.from_json(m["sketch_x"])
        assert sketch.count == n
        if n == 0:
            assert m["sumsq_x"] is None and m["first_t_x"] is None and m["last_t_x"] is None
            continue
        assert math.isclose(m["sumsq_x"], p["rms_x"] ** 2 * n, rel_tol=1e-9, abs_tol=1e-9)
        # first_t/last_t are the event times of a reading of that key holding that value
        members = [
            (t, x)
            for k, t, x in rows
            if k == m["key"] and m["window_start"] <= t <= m["window_end"]
        ]
        assert (m["first_t_x"], m["first_x"]) in members
        assert (m["last_t_x"], m["last_x"]) in members
        assert m["first_t_x"] <= m["last_t_x"]
    if kind != "hopping":  # each reading in one window: the window sketches merge to all
        kept = [x for _, _, x in rows if not math.isnan(x)]
        kept_late = [r["x"] for r in late_m if r["x"] is not None]
        for x in kept_late:
            kept.remove(x)
        union = QuantileSketch.from_values(np.array(kept, float))
        total = QuantileSketch.empty()
        for m in merged:
            total = total.merge(QuantileSketch.from_json(m["sketch_x"]))
        assert orjson.dumps(total.to_json()) == orjson.dumps(union.to_json())


def test_tumbling_mergeable_columns_against_the_raw_values() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    t = np.sort(rng.integers(0, 20 * S, n))
    keys = [f"d{i}" for i in rng.integers(0, 4, n)]
    x = rng.lognormal(0, 1, n) * rng.choice([-1.0, 1.0], n)
    x[rng.random(n) < 0.1] = np.nan
    rows = [(k, int(tt), float(v)) for k, tt, v in zip(keys, t, x, strict=True)]
    got, late = _run(win.tumbling("1s"), [agg.mergeable("x", relative_accuracy=0.02)], rows, [])
    assert not late
    for r in got:
        sel = [
            (tt, v)
            for k, tt, v in rows
            if k == r["key"] and r["window_start"] <= tt < r["window_end"] and not math.isnan(v)
        ]
        vals = np.array([v for _, v in sel])
        assert r["count_x"] == len(sel)
        assert math.isclose(r["sum_x"], vals.sum(), rel_tol=1e-12)
        assert math.isclose(r["sumsq_x"], (vals * vals).sum(), rel_tol=1e-12)
        assert (r["min_x"], r["max_x"]) == (vals.min(), vals.max())
        assert (r["first_t_x"], r["first_x"]) == sel[0]
        assert (r["last_t_x"], r["last_x"]) == sel[-1]
        want = QuantileSketch.from_values(vals, 0.02).to_json()
        assert orjson.dumps(r["sketch_x"]) == orjson.dumps(want)


def test_a_window_without_values_has_count_0_nulls_and_an_empty_sketch() -> None:
    rows = [("a", 0, math.nan), ("a", S // 2, math.nan), ("b", 0, 2.0)]
    got, _ = _run(win.tumbling("1s"), [agg.mergeable("x"), agg.count()], rows, [])
    a = next(r for r in got if r["key"] == "a")
    assert a["count"] == 2 and a["count_x"] == 0
    for c in COLUMNS[1:-1]:
        assert a[f"{c}_x"] is None, c
    assert a["sketch_x"] == {"alpha": 0.01, "zero": 0, "pos": [0, []], "neg": [0, []]}
    b = next(r for r in got if r["key"] == "b")
    assert (b["count_x"], b["first_t_x"], b["last_t_x"]) == (1, 0, 0)
    orjson.dumps(got)  # every row serialises to JSON as is


def test_the_spec_names_its_columns_and_checks_its_accuracy() -> None:
    m = agg.mergeable("accel", relative_accuracy=0.05)
    assert m.output_names == tuple(f"{c}_accel" for c in COLUMNS)
    assert m.output_name == "sketch_accel"
    assert m.problems() == []
    d = m.to_dict()
    assert d["relative_accuracy"] == 0.05 and d["outputs"] == list(m.output_names)
    assert m.number_columns == m.output_names[:-1]  # all but the sketch
    assert agg.mean("accel").output_names == agg.mean("accel").number_columns == ("mean_accel",)
    for bad in (0.0, 0.9, "0.01", float("nan")):
        (msg,) = agg.mergeable("accel", relative_accuracy=bad).problems()  # type: ignore[arg-type]
        assert "relative_accuracy" in msg and "\n" not in msg
    assert agg.mergeable(None).problems()  # type: ignore[arg-type]


def test_a_flow_window_with_mergeable_runs_end_to_end() -> None:
    flow = Flow("mergeable-flow")
    r = flow.source(files.source("in.csv"), key="device", time="ts")
    r.window(win.tumbling("1s"), agg.mergeable("temp"), name="w").to(
        files.sink("w.jsonl"), name="out"
    )
    readings = [{"device": f"d{i % 2}", "ts": i * S // 4, "temp": 20.0 + i % 5} for i in range(40)]
    out = testing.run(flow, readings, time_unit="ns")
    rows = out["out"]
    assert sum(r["count_temp"] for r in rows) == 40
    assert all(QuantileSketch.from_json(r["sketch_temp"]).count == r["count_temp"] for r in rows)
