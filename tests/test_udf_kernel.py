"""User functions (derive / filter / map / route / apply) against a plain per-reading
reference: any cut of the readings into batches gives the reference's output, and a
function that raises isolates exactly the readings it fails on as dead letters."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.batch import Batch
from edgeflow.ops.udf import UNROUTED, UdfKernel, UdfSpec, sample_problems

FIELDS = ("volts", "amps", "temp")

values = st.floats(-300, 300, allow_nan=False, width=32)
reading = st.tuples(st.sampled_from(["a", "b", "c"]), values, values, values)
readings = st.lists(reading, min_size=0, max_size=60)
cuts = st.lists(st.integers(0, 60), max_size=6)


def batches(rows: list[tuple[str, float, float, float]], at: list[int]) -> list[Batch]:
    """``rows`` (times 0, 1, 2, ... s) cut into batches at the positions ``at``."""
    bounds = sorted({0, len(rows), *(c for c in at if c < len(rows))})
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        part = rows[a:b]
        out.append(
            Batch.from_columns(
                [r[0] for r in part],
                np.arange(a, b, dtype=np.int64) * 1_000_000_000,
                {f: [r[j + 1] for r in part] for j, f in enumerate(FIELDS)},
            )
        )
    return out


def flat(b: Batch) -> list[tuple[Any, ...]]:
    keys = b.key_array().tolist()
    return [
        (keys[i], int(b.t[i]), *(float(b.values[j, i]) for j in range(len(b.fields))))
        for i in range(len(b))
    ]


def run(spec: UdfSpec, parts: list[Batch]) -> tuple[dict[str, list[tuple[Any, ...]]], list[Any]]:
    kernel = UdfKernel("step", spec)
    out: dict[str, list[tuple[Any, ...]]] = {}
    dead: list[Any] = []
    for b in parts:
        res, dl = kernel.step_batch(b)
        for port, x in res:
            out.setdefault(port, []).extend(flat(x))
        if dl is not None:
            dead.extend(dl.rows())
    return out, dead


def ref_rows(rows: list[tuple[str, float, float, float]]) -> list[dict[str, Any]]:
    """The readings as plain dicts, as the per-reading reference sees them."""
    return [
        {"key": r[0], "t": i * 1_000_000_000, "volts": r[1], "amps": r[2], "temp": r[3]}
        for i, r in enumerate(rows)
    ]


@settings(max_examples=150, deadline=None)
@given(rows=readings, at=cuts)
def test_derive_and_map_equal_the_per_reading_reference_under_any_batch_cut(
    rows: list[tuple[str, float, float, float]], at: list[int]
) -> None:
    derive = UdfSpec(
        "derive", (("power", lambda c: c["volts"] * c["amps"]), ("hot", lambda c: c["temp"] > 80))
    )
    got, dead = run(derive, batches(rows, at))
    want = [
        (r["key"], r["t"], r["volts"], r["amps"], r["temp"], r["volts"] * r["amps"],
         1.0 if r["temp"] > 80 else 0.0)
        for r in ref_rows(rows)
    ]  # fmt: skip
    assert got.get("readings", []) == want and dead == []
    conv = UdfSpec("map", (("temp", lambda c: (c["temp"] - 32) / 1.8),))
    got, dead = run(conv, batches(rows, at))
    want = [
        (r["key"], r["t"], r["volts"], r["amps"], (r["temp"] - 32) / 1.8) for r in ref_rows(rows)
    ]
    assert got.get("readings", []) == want and dead == []


@settings(max_examples=150, deadline=None)
@given(rows=readings, at=cuts, limit=values)
def test_filter_and_route_equal_the_per_reading_reference_under_any_batch_cut(
    rows: list[tuple[str, float, float, float]], at: list[int], limit: float
) -> None:
    keep = UdfSpec("filter", (("fn", lambda c: c["temp"] < limit),))
    got, _ = run(keep, batches(rows, at))
    plain = [(r["key"], r["t"], r["volts"], r["amps"], r["temp"]) for r in ref_rows(rows)]
    assert got.get("readings", []) == [p for p in plain if p[4] < limit]
    route = UdfSpec(
        "route", (("hot", lambda c: c["temp"] > 80), ("cold", lambda c: c["temp"] < limit))
    )
    got, _ = run(route, batches(rows, at))
    assert got.get("hot", []) == [p for p in plain if p[4] > 80]
    assert got.get("cold", []) == [p for p in plain if p[4] < limit]
    assert got.get(UNROUTED, []) == [p for p in plain if not (p[4] > 80 or p[4] < limit)]


def raises_on_some(c: Any) -> Any:
    if (c["amps"] < -250).any():  # about 8 % of the generated readings
        raise ZeroDivisionError("amps below -250")
    return c["volts"] / 2


@settings(max_examples=150, deadline=None)
@given(rows=readings, at=cuts)
def test_a_raising_function_dead_letters_exactly_the_readings_it_fails_on(
    rows: list[tuple[str, float, float, float]], at: list[int]
) -> None:
    spec = UdfSpec("derive", (("half", raises_on_some),))
    got, dead = run(spec, batches(rows, at))
    ref = ref_rows(rows)
    assert got.get("readings", []) == [
        (r["key"], r["t"], r["volts"], r["amps"], r["temp"], r["volts"] / 2)
        for r in ref
        if not r["amps"] < -250
    ]
    assert [(d["key"], d["t"]) for d in dead] == [
        (r["key"], r["t"]) for r in ref if r["amps"] < -250
    ]
    for d in dead:
        assert d["step"] == "step" and d["exception"] == "ZeroDivisionError"
        assert d["error"] == "ZeroDivisionError: amps below -250" and '"amps"' in d["raw"]


def test_wrong_returns_at_run_time_become_dead_letters_naming_the_problem() -> None:
    (b,) = batches([("a", 1.0, 2.0, 3.0), ("b", 4.0, 5.0, 6.0)], [])
    got, dead = run(UdfSpec("filter", (("fn", lambda c: c["temp"] * 2),)), [b])
    assert got == {} and len(dead) == 2 and "boolean mask" in dead[0]["error"]
    got, dead = run(UdfSpec("derive", (("x", lambda c: np.array(["x"] * len(c["t"]))),)), [b])
    assert got == {} and len(dead) == 2 and "return numbers" in dead[0]["error"]


def test_apply_per_record_returns_dicts_lists_or_none_and_dead_letters_bad_returns() -> None:
    def fn(r: dict[str, Any]) -> Any:
        if r["temp"] > 5:
            return None  # dropped
        if r["volts"] == 1.0:
            return [r, {**r, "t": r["t"] + 1, "volts": -1.0}]  # two readings out
        return {"volts": r["volts"]}  # missing amps, temp: a dead letter

    (b,) = batches([("a", 1.0, 2.0, 3.0), ("b", 4.0, 5.0, 6.0), ("c", 7.0, 8.0, 1.0)], [])
    got, dead = run(UdfSpec("apply", (("fn", fn),)), [b])
    assert got["readings"] == [("a", 0, 1.0, 2.0, 3.0), ("a", 1, -1.0, 2.0, 3.0)]
    assert [(d["key"], d["exception"]) for d in dead] == [("c", "ReturnError")]
    assert "no field 'amps'" in dead[0]["error"]


def test_a_function_cannot_change_the_batch_other_steps_read() -> None:
    (b,) = batches([("a", 1.0, 2.0, 3.0)], [])

    def writes(c: Any) -> Any:
        c["temp"][:] = 0
        return c["temp"]

    _, dead = run(UdfSpec("derive", (("x", writes),)), [b])
    assert len(dead) == 1 and b.values[2, 0] == 3.0


def test_sample_call_finds_missing_fields_and_wrong_returns_but_not_value_errors() -> None:
    def strict(c: Any) -> Any:
        if (c["temp"] > 1).any():
            raise ValueError("depends on the values")
        return c["temp"]

    assert sample_problems(UdfSpec("derive", (("x", strict),)), FIELDS) == []
    (p,) = sample_problems(UdfSpec("derive", (("x", lambda c: c["tmep"] * 2),)), FIELDS)
    assert "'tmep'" in p and "volts, amps, temp" in p
    (p,) = sample_problems(UdfSpec("filter", (("fn", lambda c: c["temp"] * 2),)), FIELDS)
    assert "boolean mask" in p
    (p,) = sample_problems(UdfSpec("derive", (("x", lambda c: c["temp"][:2]),)), FIELDS)
    assert "shape (2,) for 3 readings" in p
    (p,) = sample_problems(UdfSpec("apply", (("fn", lambda r: {"volts": 1.0}),)), FIELDS)
    assert "no field 'amps'" in p
