"""A new operator is one kernel class, one stream method and its tests.

``clip(field, low, high)`` (clamp one field into [low, high]) is defined ONLY here: an
:class:`~edgeflow.ops.kernel.Operator` subclass registered with ``register`` and a stream
method attached to ``ReadingStream``. Nothing else in edgeflow names it, yet it validates
(its arguments, a misspelled field exits 2 naming the step), shows in ``inspect``, feeds a
window downstream, runs through the real engine (1 and 2 workers, any batch cut) and its
optional output may go nowhere while its readings may not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeflow import Flow, agg, testing, window
from edgeflow.batch import Batch
from edgeflow.connectors import files, stdio
from edgeflow.errors import FlowValidationError
from edgeflow.flow.api import ReadingStream
from edgeflow.ops.args import Arg
from edgeflow.ops.kernel import OPERATORS, Emitted, Operator, register
from tests.helpers import edgeflow, kill_9_after, lines, records, write_flow

SEC = 1_000_000_000


# -- the new operator: one kernel class ... ---------------------------------------------
@register
class ClipKernel(Operator[None]):
    """Clamp ``field`` into [low, high]; the readings that were clamped (original values)
    also go to the optional ``clipped`` stream."""

    kind = "clip"
    outputs = ("readings", "clipped")
    optional_outputs = ("clipped",)

    def __init__(self, step: str, **arguments: Any) -> None:
        super().__init__(step, **arguments)
        self.field = arguments.get("field")
        self.low = arguments.get("low")
        self.high = arguments.get("high")
        self.reads = (self.field,) if isinstance(self.field, str) else ()

    def problems(self) -> list[str]:
        out = [] if isinstance(self.field, str) else [f"field={self.field!r} is not a field name"]
        for arg, v in ((Arg("low", "number"), self.low), (Arg("high", "number"), self.high)):
            why = arg.problem(v)
            if why is not None:
                out.append(f"clip: {why}")
        if not out and self.low > self.high:  # type: ignore[operator]
            out.append(f"clip: low={self.low!r} is above high={self.high!r}; swap them")
        return out

    def init(self) -> None:
        return None

    def process(self, state: None, batch: Batch, now_ns: int) -> Emitted:
        j = batch.fields.index(str(self.field))
        col = batch.values[j]
        out_of_range = (col < self.low) | (col > self.high)
        values = batch.values.copy()
        values[j] = np.clip(col, self.low, self.high)
        emitted: Emitted = [
            ("readings", Batch(batch.fields, batch.keys, batch.key_idx, batch.t, values))
        ]
        if out_of_range.any():
            emitted.append(("clipped", batch.select(out_of_range)))
        return emitted


@register
class NumberKernel(Operator[dict[str, int]]):
    """Stateful: adds ``n``, each reading's 1-based position among its key's readings (the
    counts per key are the state, snapshotted and restored by the engine)."""

    kind = "number_readings"

    def out_fields(self, fields: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if fields is None else (*fields, "n")

    def init(self) -> dict[str, int]:
        return {}

    def process(self, state: dict[str, int], batch: Batch, now_ns: int) -> Emitted:
        n = np.empty(len(batch), np.float64)
        for i, k in enumerate(batch.key_idx.tolist()):
            key = batch.keys[k]
            state[key] = state.get(key, 0) + 1
            n[i] = state[key]
        values = np.vstack([batch.values, n[None, :]])
        return [
            ("readings", Batch((*batch.fields, "n"), batch.keys, batch.key_idx, batch.t, values))
        ]


@register
class FailingKernel(Operator[None]):
    """Raises on every batch (a bug in an operator)."""

    kind = "always_fails"

    def init(self) -> None:
        return None

    def process(self, state: None, batch: Batch, now_ns: int) -> Emitted:
        raise ZeroDivisionError("division by zero")


# -- ... one stream method ---------------------------------------------------------------
def clip(
    self: ReadingStream, field: str, low: float, high: float, *, name: str | None = None
) -> ReadingStream:
    """Clamp ``field`` into [low, high]."""
    return self.operator("clip", name=name, field=field, low=low, high=high)


def number_readings(self: ReadingStream, *, name: str | None = None) -> ReadingStream:
    """Add ``n``, each reading's position among its key's readings."""
    return self.operator("number_readings", name=name)


ReadingStream.clip = clip  # type: ignore[attr-defined]
ReadingStream.number_readings = number_readings  # type: ignore[attr-defined]


# -- ... and its tests --------------------------------------------------------------------
def readings(n: int = 60) -> list[dict[str, Any]]:
    """Two devices, a reading every 100 ms, temp swinging from -40 to 140."""
    return [
        {
            "device": f"d{i % 2}",
            "ts": i * SEC // 10,
            "temp": float((i * 37) % 181 - 40),
            "hum": float(i),
        }
        for i in range(n)
    ]


def clip_flow(src: str = "replaced-by-testing-run.csv") -> Flow:
    flow = Flow("clip-flow", shards=4)
    r = flow.source(files.source(src, time_unit="ns"), key="device", time="ts",
                    fields=["temp", "hum"])  # fmt: skip
    c = r.clip("temp", 0.0, 100.0, name="clamp")  # type: ignore[attr-defined]
    c.to(stdio.sink(), name="raw")
    c.window(window.tumbling("1s"), agg.max("temp"), agg.min("temp"), agg.count(), name="w").to(
        stdio.sink(), name="windows"
    )
    return flow


def test_validate_and_inspect_derive_everything_from_the_kernel_class(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("device,ts,temp,hum\nd0,0,1,2\n")
    plan = clip_flow(str(tmp_path / "in.csv")).plan()
    (step,) = [s for s in plan.to_dict()["steps"] if s["kind"] == "clip"]
    assert step == {
        "name": "clamp", "kind": "clip", "input": "source.readings",
        "arguments": {"field": "temp", "low": 0.0, "high": 100.0}, "fields": ["temp", "hum"],
        "outputs": ["clamp.readings", "clamp.clipped"],
    }  # fmt: skip
    assert "clamp.clipped" in plan.unrouted  # optional: counted, not a problem
    assert "clip   clamp: field='temp', low=0.0, high=100.0" in plan.describe()
    json.dumps(plan.to_dict())  # (what inspect --json and plan.json write)


@pytest.mark.parametrize(("batch_size", "workers"), [(1000, 1), (7, 1), (5, 2)])
def test_the_new_operator_runs_in_a_flow_with_correct_output(batch_size: int, workers: int) -> None:
    given = readings()
    out = testing.run(clip_flow, given, batch_size=batch_size, workers=workers, time_unit="ns")
    want = {(r["device"], r["ts"]): min(max(r["temp"], 0.0), 100.0) for r in given}
    got = {(r["key"], r["t"]): r["temp"] for r in out["raw"]}
    assert got == want
    assert sorted(r["hum"] for r in out["raw"]) == [r["hum"] for r in given]  # untouched
    clipped = sorted((r["key"], r["t"], r["temp"]) for r in out["clamp.clipped"])
    assert clipped == sorted(
        (r["device"], r["ts"], r["temp"]) for r in given if not 0 <= r["temp"] <= 100
    )
    assert clipped  # (the data does go out of range)
    # the window downstream sees the clamped field
    for w in out["windows"]:
        assert 0.0 <= w["min_temp"] <= w["max_temp"] <= 100.0
    assert sum(w["count"] for w in out["windows"]) == len(given)


def test_its_readings_must_go_somewhere_and_bad_arguments_name_the_step() -> None:
    flow = Flow("clip-bad")
    r = flow.source(files.source("unused.csv"), key="device", time="ts", fields=["temp"])
    r.clip("temp", 10, 5, name="clamp")  # type: ignore[attr-defined]
    r.clip("temp", "low", 5, name="clamp2").to(stdio.sink())  # type: ignore[attr-defined]
    with pytest.raises(FlowValidationError) as err:
        flow.plan()
    text = str(err.value)
    assert "step 'clamp' (clip): clip: low=10 is above high=5; swap them" in text
    assert "step 'clamp' (clip): its readings go nowhere" in text
    assert "step 'clamp2' (clip): clip: low='low'" in text


def test_registering_refuses_a_builtin_or_taken_kind() -> None:
    class Window(Operator[None]):
        kind = "window"

    class Other(Operator[None]):
        kind = "clip"

    with pytest.raises(ValueError, match="built-in step kind"):
        register(Window)
    with pytest.raises(ValueError, match="already registered by ClipKernel"):
        register(Other)
    assert OPERATORS["clip"] is ClipKernel
    with pytest.raises(ValueError, match="no operator 'clamp' is registered"):
        Flow("f").source(files.source("x.csv"), key="k", time="t").operator("clamp")


FLOW = """\
import tests.test_new_operator  # the clip operator and its stream method
from edgeflow import Flow
from edgeflow.connectors import files

flow = Flow("clip-cli")
r = flow.source(files.source({src!r}, time_unit="ns"), key="device", time="ts")
r.clip({field!r}, 0.0, 100.0, name="clamp").to(files.sink({out!r}))
"""


def test_the_cli_validates_inspects_and_runs_it_and_a_misspelled_field_exits_2(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    given = readings(30)
    src.write_text(
        "device,ts,temp,hum\n"
        + "".join(f"{r['device']},{r['ts']},{r['temp']},{r['hum']}\n" for r in given)
    )
    good = write_flow(tmp_path / "good.py", FLOW.format(src=str(src), out=str(out), field="temp"))
    bad = write_flow(tmp_path / "bad.py", FLOW.format(src=str(src), out=str(out), field="tmep"))
    edgeflow("validate", str(good))
    shown = edgeflow("inspect", str(good)).stdout
    assert "clip   clamp: field='temp', low=0.0, high=100.0" in shown
    assert "unrouted (counted, not kept): source.dead_letters, clamp.clipped" in shown
    edgeflow("run", str(good))
    got = {(r["key"], r["t"]): r["temp"] for r in records(out)}
    assert got == {(r["device"], r["ts"]): min(max(r["temp"], 0.0), 100.0) for r in given}
    res = edgeflow("validate", str(bad), check=False)
    assert res.returncode == 2, res.stderr
    assert "step 'clamp' (clip): unknown field 'tmep'; the stream has: temp, hum" in res.stderr
    assert "Traceback" not in res.stderr


STATEFUL_FLOW = """\
import tests.test_new_operator  # the number_readings operator and its stream method
from edgeflow import Flow
from edgeflow.connectors import files, simulate

flow = Flow("numbered")
r = flow.source(simulate.sensors(devices=4, rate_hz=50, seed=3, speed={speed}, duration="20s",
                                 start="2026-01-01T00:00:00Z"))
r.number_readings(name="numbered").to(files.sink({out!r}))
"""


def test_a_stateful_new_operator_resumes_after_kill_9_exactly(tmp_path: Path) -> None:
    """The engine snapshots and restores the operator's state (its per-key counts) with no
    code of the operator's own: a kill -9 and resume equal an uninterrupted run."""
    ref_out, crash_out = tmp_path / "ref.jsonl", tmp_path / "crash.jsonl"
    ref = write_flow(tmp_path / "ref.py", STATEFUL_FLOW.format(speed="None", out=str(ref_out)))
    edgeflow("run", str(ref))
    want = records(ref_out)
    assert len(want) == 4 * 50 * 20
    by_key: dict[str, list[float]] = {}
    for r in want:
        by_key.setdefault(r["key"], []).append(r["n"])
    assert all(ns == [float(i + 1) for i in range(len(ns))] for ns in by_key.values())
    crash = write_flow(tmp_path / "crash.py", STATEFUL_FLOW.format(speed="8", out=str(crash_out)))
    args = ("run", str(crash), "--state-dir", str(tmp_path / "st"), "--snapshot-every", "200ms")
    assert kill_9_after(args, crash_out, 1000), "the run ended before it could be killed"
    edgeflow(*args)
    assert sorted(lines(crash_out)) == sorted(lines(ref_out))


def test_an_operator_that_raises_stops_the_run_with_one_line_naming_the_step(
    tmp_path: Path,
) -> None:
    flow = write_flow(
        tmp_path / "failing.py",
        f"""\
import tests.test_new_operator  # the always_fails operator
from edgeflow import Flow
from edgeflow.connectors import files, simulate

flow = Flow("failing")
r = flow.source(simulate.sensors(devices=2, duration="2s", start="2026-01-01T00:00:00Z"))
r.operator("always_fails", name="kaboom").to(files.sink({str(tmp_path / "out.jsonl")!r}))
""",
    )
    res = edgeflow("run", str(flow), check=False)
    assert res.returncode == 1, res.stderr
    assert "stopped in step 'kaboom': division by zero" in res.stderr
    assert "Traceback" not in res.stderr and "panicked" not in res.stderr
