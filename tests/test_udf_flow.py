"""Your own code in a flow, end to end: derive / map / filter / route feeding windows and
sinks equal a plain per-reading reference for any batch cut and 1 or 2 workers; a function
that raises on some readings dead-letters exactly those and the run exits 0; derived fields
validate downstream and a misspelled one exits 2 naming the step; kill -9 + resume equals
an uninterrupted run."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow import Flow, agg, window
from edgeflow.connectors import files
from edgeflow.engine.figures import figures, summary_line
from edgeflow.engine.runner import RunOptions, run
from tests.helpers import ROOT, edgeflow, kill_9_after, lines, records, write_flow
from tests.kafka_helpers import free_port
from tests.test_examples import sim_env
from tests.test_metrics import scrape

SEC = 1_000_000_000


def csv_readings(path: Path, rows: list[tuple[str, float, float, float]]) -> None:
    """Readings every 100 ms (in time order) with fields volts, amps, temp (°F)."""
    text = ["device,ts,volts,amps,temp"]
    text += [f"{k},{i * SEC // 10},{v!r},{a!r},{t!r}" for i, (k, v, a, t) in enumerate(rows)]
    path.write_text("\n".join(text) + "\n")


def udf_flow(src: Path, out: Path, batch_lines: int) -> Flow:
    flow = Flow("udf-prop", shards=4)
    r = flow.source(files.source(str(src), time_unit="ns", batch_lines=batch_lines),
                    key="device", time="ts")  # fmt: skip
    c = r.map(temp=lambda c: (c["temp"] - 32) / 1.8)  # °F -> °C
    p = c.derive(power=lambda c: c["volts"] * c["amps"]).filter(lambda c: c["volts"] > 0)
    routes = p.route(hot=lambda c: c["temp"] > 30, cold=lambda c: c["temp"] < 10)
    routes.hot.to(files.sink(str(out / "hot.jsonl")))
    routes.unrouted.to(files.sink(str(out / "mild.jsonl")))
    routes.cold.window(window.tumbling("1s"), agg.count(), agg.mean("power"), name="w").to(
        files.sink(str(out / "cold_windows.jsonl"))
    )
    return flow


def reference(rows: list[tuple[str, float, float, float]]) -> dict[str, Any]:
    """The same flow computed reading by reading in plain Python."""
    hot, mild = [], []
    cold: dict[tuple[str, int], list[float]] = defaultdict(list)
    for i, (k, v, a, tf) in enumerate(rows):
        t, temp = i * SEC // 10, (tf - 32) / 1.8
        if not v > 0:
            continue
        reading = {"key": k, "t": t, "volts": v, "amps": a, "temp": temp, "power": v * a}
        if temp > 30:
            hot.append(reading)
        if temp < 10:
            cold[(k, t // SEC * SEC)].append(v * a)
        if not (temp > 30 or temp < 10):
            mild.append(reading)
    return {"hot": hot, "mild": mild, "cold": cold}


def key_t(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(recs, key=lambda r: (r["key"], r["t"]))


values = st.floats(-50, 150, allow_nan=False)
rows_st = st.lists(
    st.tuples(st.sampled_from(["d1", "d2", "d3"]), values, values, values), min_size=1, max_size=80
)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=rows_st, batch_lines=st.integers(1, 40), workers=st.sampled_from([1, 2]))
def test_derive_map_filter_route_in_a_flow_equal_the_per_reading_reference(
    tmp_path_factory: Any,
    rows: list[tuple[str, float, float, float]],
    batch_lines: int,
    workers: int,
) -> None:
    tmp = tmp_path_factory.mktemp("udf")
    csv_readings(tmp / "in.csv", rows)
    run(udf_flow(tmp / "in.csv", tmp, batch_lines).plan(), RunOptions(workers=workers))
    want = reference(rows)
    assert key_t(records(tmp / "hot.jsonl")) == key_t(want["hot"])
    assert key_t(records(tmp / "mild.jsonl")) == key_t(want["mild"])
    got = {(w["key"], w["window_start"]): w for w in records(tmp / "cold_windows.jsonl")}
    assert set(got) == set(want["cold"])
    for kt, powers in want["cold"].items():
        assert got[kt]["count"] == len(powers)
        assert math.isclose(
            got[kt]["mean_power"], sum(powers) / len(powers), rel_tol=1e-9, abs_tol=1e-9
        )


def test_apply_may_change_keys_and_windows_downstream_still_group_by_the_new_key(
    tmp_path: Path,
) -> None:
    rows = [(f"d{i % 7}", 1.0, float(i), 50.0) for i in range(140)]
    csv_readings(tmp_path / "in.csv", rows)
    flow = Flow("udf-apply-keys", shards=8)
    r = flow.source(files.source(str(tmp_path / "in.csv"), time_unit="ns", batch_lines=9),
                    key="device", time="ts")  # fmt: skip

    def per_site(rec: dict[str, Any]) -> Any:
        site = "even" if int(rec["key"][1:]) % 2 == 0 else "odd"
        return None if rec["amps"] % 10 == 0 else {**rec, "key": site}

    r.apply(per_site, name="site").window(
        window.tumbling("2s"), agg.count(), agg.sum("amps"), lateness="1s"
    ).to(files.sink(str(tmp_path / "w.jsonl")))
    # readings of several devices merge into one key: in time order per device, not per
    # site, so the window allows a lateness of 1 s
    summary = run(flow.plan(), RunOptions(workers=2))
    assert summary.counters.get("late", 0) == 0
    want: dict[tuple[str, int], list[float]] = defaultdict(list)
    for i, (k, _, a, _) in enumerate(rows):
        if a % 10:
            want[
                ("even" if int(k[1:]) % 2 == 0 else "odd", i * SEC // 10 // (2 * SEC) * 2 * SEC)
            ].append(a)
    got = {
        (w["key"], w["window_start"]): (w["count"], w["sum_amps"])
        for w in records(tmp_path / "w.jsonl")
    }
    assert got == {kt: (len(v), sum(v)) for kt, v in want.items()}


FAILING = """
import numpy as np
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate

def power(c):
    bad = (c["t"] // 20_000_000) % 33 == 7  # one reading in 33 (3 %)
    if {fail} and bad.any():
        raise ZeroDivisionError("no power for this reading")
    return c["accel"] * c["temp"]

flow = Flow("udf-fail")
r = flow.source(simulate.sensors(devices=6, rate_hz=50, seed=3, speed=None, duration="20s",
                                 start="2026-01-01T00:00:00Z"))
p = r.derive(power=power, name="power")
p.to(files.sink({out!r}))
p.dead_letters.to(files.sink({dead!r}))
p.window(window.tumbling("1s"), agg.mean("power"), agg.count(), name="w").to(files.sink({win!r}))
"""


def test_a_function_raising_on_3_percent_dead_letters_exactly_those_and_exits_0(
    tmp_path: Path,
) -> None:
    outs = {}
    for fail in (False, True):
        o = {k: tmp_path / f"{fail}-{k}.jsonl" for k in ("out", "dead", "win")}
        flow = write_flow(
            tmp_path / f"{fail}.py", FAILING.format(fail=fail, **{k: str(v) for k, v in o.items()})
        )
        res = edgeflow("run", str(flow))  # raises unless exit 0
        assert "Traceback" not in res.stderr
        outs[fail] = o
    ok = {(r["key"], r["t"]): r for r in records(outs[False]["out"])}
    got = {(r["key"], r["t"]): r for r in records(outs[True]["out"])}
    bad = {kt for kt in ok if (kt[1] // 20_000_000) % 33 == 7}
    assert len(ok) == 6 * 50 * 20 and 0.02 < len(bad) / len(ok) < 0.04
    assert got == {kt: r for kt, r in ok.items() if kt not in bad}, "other readings unchanged"
    dead = records(outs[True]["dead"])
    assert {(d["key"], d["t"]) for d in dead} == bad and len(dead) == len(bad)
    assert all(
        d["step"] == "power" and d["exception"] == "ZeroDivisionError"
        and d["error"] == "ZeroDivisionError: no power for this reading"
        for d in dead
    )  # fmt: skip
    assert records(outs[False]["dead"]) == []
    win = records(outs[True]["win"])
    assert sum(w["count"] for w in win) == len(ok) - len(bad)


def test_a_function_failing_on_every_reading_shows_in_the_counters(tmp_path: Path) -> None:
    flow = Flow("udf-all-fail")
    src = tmp_path / "in.csv"
    csv_readings(src, [("d1", 1.0, 2.0, 3.0)] * 30)
    r = flow.source(files.source(str(src), time_unit="ns"), key="device", time="ts")
    r.derive(x=lambda c: 1 / 0, name="broken").to(files.sink(str(tmp_path / "out.jsonl")))
    port = free_port()
    summary = run(flow.plan(), RunOptions(metrics_port=port))
    assert summary.counters["udf_errors.broken"] == 30
    assert summary.counters["dead_letters"] == 30 and lines(tmp_path / "out.jsonl") == []
    scraped = scrape(port)  # the endpoint keeps serving the run's counts
    assert scraped['edgeflow_udf_errors_total{flow="udf-all-fail",step="broken"}'] == 30
    assert scraped['edgeflow_dead_letters_total{flow="udf-all-fail"}'] == 30
    assert "dead letters 30" in summary_line(figures(summary.counters))


DERIVED = """
from edgeflow import Flow, agg, detect, downsample, window
from edgeflow.connectors import files, simulate

flow = Flow("udf-derived")
r = flow.source(simulate.sensors(devices=2, rate_hz=10, seed=1, speed=None, duration="5s"))
p = r.derive(power=lambda c: c["accel"] * c["temp"], name="power")
p.window(window.tumbling("1s"), agg.mean({field!r}), name="w").to(files.sink("/tmp/never.jsonl"))
p.detect(detect.zscore(), "power", name="d").to(files.sink("/tmp/never2.jsonl"))
p.downsample(downsample.deadband("power", band=1.0), name="ds").to(files.sink("/tmp/never3.jsonl"))
"""


def test_a_derived_field_validates_downstream_and_a_misspelled_one_exits_2_naming_the_step(
    tmp_path: Path,
) -> None:
    good = write_flow(tmp_path / "good.py", DERIVED.format(field="power"))
    edgeflow("validate", str(good))
    shown = edgeflow("inspect", str(good)).stdout
    assert "derive power: power <- source.readings -> fields accel, temp, power" in shown
    bad = write_flow(tmp_path / "bad.py", DERIVED.format(field="powr"))
    res = edgeflow("validate", str(bad), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "step 'w' (window): agg.mean('powr'): unknown field 'powr'" in res.stderr
    assert "accel, temp, power" in res.stderr
    res = edgeflow("run", str(bad), check=False)
    assert res.returncode == 2 and "step 'w'" in res.stderr


BUILD_TIME = """
from edgeflow import Flow
from edgeflow.connectors import files, simulate

flow = Flow("udf-build")
r = flow.source(simulate.sensors(devices=2, rate_hz=10, seed=1, speed=None, duration="5s"))
r.derive(power=lambda c: c["acel"] * 2, name="typo").to(files.sink("/tmp/n1.jsonl"))
r.filter(lambda c: c["temp"] * 2, name="not_a_mask").to(files.sink("/tmp/n2.jsonl"))
r.derive(short=lambda c: c["temp"][:1], name="short").to(files.sink("/tmp/n3.jsonl"))
r.map(tmp=lambda c: c["temp"], name="no_such").to(files.sink("/tmp/n4.jsonl"))
r.derive(temp=lambda c: c["temp"], name="exists").to(files.sink("/tmp/n5.jsonl"))
r.route(hot=lambda c: c["temp"] > 1, cold=lambda c: c["temp"] < 0, name="half").hot.to(files.sink("/tmp/n6.jsonl"))
"""


def test_wrong_functions_are_one_clear_error_each_at_build_time(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "build.py", BUILD_TIME)
    res = edgeflow("validate", str(flow), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    for want in (
        "step 'typo' (derive): power= reads field 'acel' that the stream does not have",
        "step 'not_a_mask' (filter): the function returned float64 values; return a boolean mask",
        "step 'short' (derive): short= returned shape (1,) for 3 readings",
        "step 'no_such' (map): tmp= replaces a field the stream does not have",
        "step 'exists' (derive): 'temp' is already a field of the stream; use .map(temp=...)",
        "step 'half' (route): route 'cold' goes nowhere",
    ):
        assert want in res.stderr, (want, res.stderr)


KILL = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate

flow = Flow("udf-kill")
r = flow.source(simulate.sensors(devices=8, rate_hz=50, seed=9, speed={speed}, duration="40s",
                                 start="2026-01-01T00:00:00Z"))
c = r.map(temp=lambda c: (c["temp"] - 32) / 1.8).derive(power=lambda c: c["accel"] * c["temp"])
k = c.filter(lambda c: c["accel"] > -0.5)
routes = k.route(hi=lambda c: c["accel"] > 0.5)
routes.hi.to(files.sink({hi!r}))
routes.unrouted.window(window.tumbling("1s"), agg.count(), agg.mean("power")).to(files.sink({win!r}))
"""


def make_kill(tmp: Path, name: str, speed: str) -> tuple[Path, dict[str, Path]]:
    outs = {k: tmp / f"{name}-{k}.jsonl" for k in ("hi", "win")}
    body = KILL.format(speed=speed, **{k: str(v) for k, v in outs.items()})
    return write_flow(tmp / f"{name}.py", body), outs


def test_kill_9_and_resume_with_user_functions_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    ref_flow, ref = make_kill(tmp_path, "ref", "None")
    edgeflow("run", str(ref_flow), "--workers", "2")
    crash_flow, crash = make_kill(tmp_path, "crash", "10")
    args = (
        "run",
        str(crash_flow),
        "--state-dir",
        str(tmp_path / "st"),
        "--snapshot-every",
        "200ms",
    )
    kill_9_after(args, crash["win"], 40)
    assert 0 < len(lines(crash["win"])) < len(lines(ref["win"])), "killed mid-run"
    edgeflow(*args)
    assert len(lines(ref["win"])) > 8 * 30 and len(lines(ref["hi"])) > 1000
    for k in ref:
        assert sorted(lines(ref[k])) == sorted(lines(crash[k])), k


def test_the_example_flow_runs_on_simulated_sensors_and_routes_to_two_sinks(
    tmp_path: Path,
) -> None:
    env = sim_env("max", "30s", EDGEFLOW_OUT_DIR=str(tmp_path))
    res = edgeflow("run", str(ROOT / "flows" / "udf_example.py"), env=env)
    assert "Traceback" not in res.stderr
    warm, normal = records(tmp_path / "warm.jsonl"), records(tmp_path / "normal.jsonl")
    assert len(warm) + len(normal) > 20 * 50 * 30 * 0.99 and warm and normal
    assert all(r["temp"] >= 23 for r in warm) and all(r["temp"] < 23 for r in normal)
    for r in warm[:100] + normal[:100]:
        assert math.isclose(r["temp_f"], r["temp"] * 1.8 + 32, rel_tol=1e-12)
        assert math.isclose(r["power"], r["accel"] ** 2, rel_tol=1e-12)
        assert abs(r["accel"]) <= 100
    windows = records(tmp_path / "power_10s.jsonl")
    assert len(windows) == 20 * 3 and all(w["mean_power"] > 0 for w in windows)
    assert records(tmp_path / "dead_letters.jsonl") == []
