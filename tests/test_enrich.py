"""Enrichment from a device table (``r.enrich(...)``) and per-key limits
(``detect.limits(low="low_limit", high="high_limit")``): the join equals a plain dict
reference for any batch cut (kernel and flow, 1 or 2 workers); missing keys are routed or
defaulted; the table is reloaded while the flow runs and a broken new file keeps the last
good table with one error line; per-key limits alarm exactly outside each key's limits and
equal numeric limits key by key; validation names the step."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow import Flow
from edgeflow.batch import Batch
from edgeflow.connectors import files
from edgeflow.engine.runner import RunOptions, run
from edgeflow.errors import FlowValidationError
from edgeflow.ops import detect
from edgeflow.ops.detect.kernel import DetectKernel
from edgeflow.ops.detect.limits import FieldLimitsKernel, Limits
from edgeflow.ops.enrich import UNMATCHED, TableError, TableWatcher, join, load_table
from tests.helpers import edgeflow, lines, popen_edgeflow, records, write_flow

SEC = 1_000_000_000
KEYS = [f"d{i}" for i in range(6)]

finite = st.floats(-1e6, 1e6, allow_nan=False)
readings_st = st.lists(st.tuples(st.sampled_from(KEYS), finite), min_size=1, max_size=60)
table_st = st.dictionaries(
    st.sampled_from(KEYS), st.tuples(finite, finite), min_size=0, max_size=len(KEYS)
)


def write_csv_table(path: Path, table: dict[str, tuple[float, float]]) -> None:
    rows = ["device,site,low_limit,high_limit"]
    rows += [f"{k},site-{k},{lo!r},{hi!r}" for k, (lo, hi) in table.items()]
    path.write_text("\n".join(rows) + "\n")


def batches(readings: list[tuple[str, float]], cuts: list[int]) -> list[Batch]:
    """The readings (one every 100 ms) as batches cut at ``cuts``."""
    bounds = sorted({0, len(readings), *(c % (len(readings) + 1) for c in cuts)})
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = readings[a:b]
        out.append(
            Batch.from_columns(
                [k for k, _ in part],
                np.arange(a, b, dtype=np.int64) * SEC // 10,
                {"temp": [v for _, v in part]},
            )
        )
    return out


def rows_of(b: Batch) -> list[dict[str, Any]]:
    keys = b.key_array().tolist()
    return [
        {
            "key": keys[i],
            "t": int(b.t[i]),
            **dict(zip(b.fields, b.values[:, i].tolist(), strict=True)),
        }
        for i in range(len(b))
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    readings=readings_st,
    table=table_st,
    cuts=st.lists(st.integers(0, 60), max_size=6),
    missing=st.sampled_from(["route", "default"]),
)
def test_join_equals_a_plain_dict_reference_for_any_batch_cut(
    tmp_path_factory: Any,
    readings: list[tuple[str, float]],
    table: dict[str, tuple[float, float]],
    cuts: list[int],
    missing: str,
) -> None:
    path = tmp_path_factory.mktemp("table") / "devices.csv"
    write_csv_table(path, table)
    fields = ("low_limit", "high_limit")
    loaded = load_table(path, "device", fields)
    assert loaded.text == (("site",) if table else ()), "text columns are not made fields"
    defaults = np.array([-1.0, 1.0])
    got: dict[str, list[dict[str, Any]]] = {"readings": [], UNMATCHED: []}
    for b in batches(readings, cuts):
        for port, out in join(b, loaded, fields, missing, defaults):
            got[port].extend(rows_of(out))
    want: dict[str, list[dict[str, Any]]] = {"readings": [], UNMATCHED: []}
    for i, (k, v) in enumerate(readings):
        r = {"key": k, "t": i * SEC // 10, "temp": v}
        if k in table:
            want["readings"].append({**r, "low_limit": table[k][0], "high_limit": table[k][1]})
        elif missing == "default":
            want["readings"].append({**r, "low_limit": -1.0, "high_limit": 1.0})
        else:
            want[UNMATCHED].append(r)
    assert got == want


def test_json_tables_list_or_object_and_empty_cells_are_nan(tmp_path: Path) -> None:
    as_list = tmp_path / "a.json"
    as_list.write_text(json.dumps([{"device": "d1", "low": 1, "site": "x"}, {"device": "d2"}]))
    as_obj = tmp_path / "b.json"
    as_obj.write_text(json.dumps({"d1": {"low": 1, "site": "x"}, "d2": {"low": None}}))
    for p in (as_list, as_obj):
        t = load_table(p, "device", ["low"])
        assert t.index == {"d1": 0, "d2": 1} and t.text == ("site",)
        assert t.columns["low"][0] == 1.0 and math.isnan(t.columns["low"][1])
    with pytest.raises(TableError, match="column 'site' is not numeric"):
        load_table(as_list, "device", ["site"])
    dup = tmp_path / "dup.csv"
    dup.write_text("device,low\nd1,1\nd1,2\n")
    with pytest.raises(TableError, match="line 3: key 'd1' appears twice"):
        load_table(dup, "device")


def test_watcher_reloads_changes_and_a_broken_file_keeps_the_last_good_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "devices.csv"
    write_csv_table(path, {"d1": (1.0, 2.0)})
    w = TableWatcher(path, "device", ("low_limit",), 0, load_table(path, "device", ("low_limit",)))
    assert w.check_now().columns["low_limit"].tolist() == [1.0]
    # same size, same second: the hash of a young file catches the rewrite
    write_csv_table(path, {"d1": (3.0, 2.0)})
    assert w.check_now().columns["low_limit"].tolist() == [3.0]
    path.write_text("device,high_limit\nd1,5\n")  # the column the flow uses is gone
    for _ in range(3):
        assert w.check_now().columns["low_limit"].tolist() == [3.0]
    assert w.take_errors() == ["no column 'low_limit'; the numeric columns are: high_limit"]
    path.write_text('device,low_limit\nd1,"x\n')  # broken another way: one more error
    assert w.check_now().columns["low_limit"].tolist() == [3.0]
    assert len(w.take_errors()) == 1 and w.take_errors() == []
    path.unlink()
    w.check_now()
    assert w.take_errors()[0].startswith("cannot read it")
    write_csv_table(path, {"d1": (4.0, 5.0), "d2": (0.0, 1.0)})
    assert w.check_now().index == {"d1": 0, "d2": 1} and w.take_errors() == []
    # background checks: current() never blocks, the new table appears soon after
    write_csv_table(path, {"d1": (6.0, 7.0)})
    deadline = time.monotonic() + 60
    while w.current().columns["low_limit"].tolist() != [6.0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def csv_readings(path: Path, rows: list[tuple[str, float]]) -> None:
    text = ["device,ts,temp"] + [f"{k},{i * SEC // 10},{v!r}" for i, (k, v) in enumerate(rows)]
    path.write_text("\n".join(text) + "\n")


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    readings=readings_st,
    table=table_st,
    batch_lines=st.integers(1, 30),
    workers=st.sampled_from([1, 2]),
)
def test_enrich_and_per_key_limits_in_a_flow_equal_the_reference(
    tmp_path_factory: Any,
    readings: list[tuple[str, float]],
    table: dict[str, tuple[float, float]],
    batch_lines: int,
    workers: int,
) -> None:
    tmp = tmp_path_factory.mktemp("flow")
    table = {k: (min(lo, hi), max(lo, hi)) for k, (lo, hi) in table.items()}
    write_csv_table(tmp / "devices.csv", table)
    csv_readings(tmp / "in.csv", readings)
    flow = Flow("enrich-prop", shards=4)
    r = flow.source(files.source(str(tmp / "in.csv"), time_unit="ns", batch_lines=batch_lines),
                    key="device", time="ts")  # fmt: skip
    e = r.enrich(tmp / "devices.csv", key="device", name="sites")
    e.to(files.sink(str(tmp / "out.jsonl")))
    e.unmatched.to(files.sink(str(tmp / "unmatched.jsonl")))
    lim = detect.limits(low="low_limit", high="high_limit")
    e.detect(lim, "temp", decision=detect.threshold(0.999, cooldown=0), name="limits").to(
        files.sink(str(tmp / "alarms.jsonl"))
    )
    run(flow.plan(), RunOptions(workers=workers))
    out = sorted(
        (x["key"], x["t"], x["low_limit"], x["high_limit"]) for x in records(tmp / "out.jsonl")
    )
    want = sorted((k, i * SEC // 10, *table[k]) for i, (k, _) in enumerate(readings) if k in table)
    assert out == want
    un = sorted((x["key"], x["t"]) for x in records(tmp / "unmatched.jsonl"))
    assert un == sorted((k, i * SEC // 10) for i, (k, _) in enumerate(readings) if k not in table)
    alarms = sorted((a["key"], a["t"]) for a in records(tmp / "alarms.jsonl"))
    outside = sorted(
        (k, i * SEC // 10)
        for i, (k, v) in enumerate(readings)
        if k in table and not table[k][0] <= v <= table[k][1]
    )
    assert alarms == outside, "an alarm for exactly the readings outside their key's limits"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    readings=st.lists(
        st.tuples(st.sampled_from(KEYS[:3]), st.floats(-5, 5)), min_size=1, max_size=200
    ),
    cuts=st.lists(st.integers(0, 200), max_size=5),
    cooldown=st.integers(0, 5),
)
def test_field_limits_equal_numeric_limits_key_by_key(
    readings: list[tuple[str, float]], cuts: list[int], cooldown: int
) -> None:
    limits = {"d0": (-1.0, 1.0), "d1": (0.0, 2.5), "d2": (-3.0, 0.5)}
    decision = detect.threshold(0.999, cooldown=cooldown)
    field_kernel = FieldLimitsKernel("lim", "temp", Limits("lo", "hi"), decision)
    fst = field_kernel.init()
    numeric = {
        k: DetectKernel("lim", "temp", Limits(lo, hi), decision) for k, (lo, hi) in limits.items()
    }
    nst = {k: kern.init() for k, kern in numeric.items()}
    got, want = [], []
    for b in batches(readings, cuts):
        keys = b.key_array()
        lo = np.array([limits[k][0] for k in keys.tolist()])
        hi = np.array([limits[k][1] for k in keys.tolist()])
        wide = Batch(("temp", "lo", "hi"), b.keys, b.key_idx, b.t, np.vstack([b.values, lo, hi]))
        rb = field_kernel.step_batch(fst, wide)
        got += rb.rows() if rb is not None else []
        for k, kern in numeric.items():
            mine = np.flatnonzero(keys == k)
            if len(mine):
                rb = kern.step_batch(nst[k], b.select(mine))
                want += rb.rows() if rb is not None else []
    order = lambda r: (r["key"], r["t"])  # noqa: E731
    assert sorted(got, key=order) == sorted(want, key=order)


def test_numeric_limits_still_work_and_field_limits_refuse_the_reference_path() -> None:
    det = detect.limits(low=1.0, high=2.0)
    assert det.limit_fields() == () and det.problems() == []
    s = det.score(det.init(), np.array([0.5, 1.5, 3.0]))
    assert (s.score >= 0.999).tolist() == [True, False, True]
    with pytest.raises(ValueError, match=r"low=3\.0 must be below high=2\.0"):
        detect.limits(low=3.0, high=2.0)
    assert detect.limits(low="lo lim").problems() == [
        "detect.limits: low='lo lim' is neither a number nor a field name; "
        "give e.g. low=10.0 or low='low_limit'"
    ]
    with pytest.raises(ValueError, match="flow's detect step only"):
        detect.limits(low="low_limit").score({}, np.zeros(2))


def base_flow(tmp: Path, **enrich: Any) -> tuple[Flow, Any]:
    write_csv_table(tmp / "devices.csv", {"d1": (1.0, 2.0)})
    csv_readings(tmp / "in.csv", [("d1", 1.5)])
    flow = Flow("enrich-validate")
    r = flow.source(files.source(str(tmp / "in.csv"), time_unit="ns"), key="device", time="ts")
    args: dict[str, Any] = {"key": "device", "name": "sites", **enrich}
    table = args.pop("table", tmp / "devices.csv")
    return flow, r.enrich(table, **args)


def problems_of(flow: Flow) -> list[str]:
    with pytest.raises(FlowValidationError) as exc:
        flow.plan()
    return exc.value.problems


def test_validation_names_the_step(tmp_path: Path) -> None:
    flow, e = base_flow(tmp_path)
    e.detect(detect.limits(low="low_limt"), "temp", name="alarm").to(
        files.sink(str(tmp_path / "a"))
    )
    assert problems_of(flow) == [
        "step 'alarm' (detect): detect.limits low='low_limt' names no field of the stream (it "
        "has: temp, low_limit, high_limit); give a number, or add the field with .enrich(...) "
        "or .derive(...)"
    ]
    flow, e = base_flow(tmp_path, table=tmp_path / "nope.csv")
    e.to(files.sink(str(tmp_path / "o")))
    (p,) = problems_of(flow)
    assert p.startswith(f"step 'sites' (enrich): table {tmp_path / 'nope.csv'}: cannot read it")
    flow, e = base_flow(tmp_path, fields=["site"])
    e.to(files.sink(str(tmp_path / "o")))
    assert problems_of(flow) == [
        f"step 'sites' (enrich): table {tmp_path / 'devices.csv'}: column 'site' is not numeric "
        "(a value is text); fix the file or the step's key=/fields="
    ]
    flow, e = base_flow(tmp_path, missing="default", defaults={"low_limit": 0})
    e.to(files.sink(str(tmp_path / "o")))
    assert problems_of(flow) == [
        "step 'sites' (enrich): missing='default' needs a default for every added field; "
        "add defaults for: high_limit"
    ]
    flow, e = base_flow(tmp_path, missing="skip")
    e.to(files.sink(str(tmp_path / "o")))
    assert problems_of(flow) == ["step 'sites' (enrich): missing='skip': use 'route' or 'default'"]
    flow, e = base_flow(tmp_path)  # a table column already a field of the stream
    e.enrich(tmp_path / "devices.csv", key="device", name="again").to(
        files.sink(str(tmp_path / "o"))
    )
    assert problems_of(flow) == [
        "step 'again' (enrich): 'low_limit', 'high_limit' already a field of the stream; "
        "give fields=[...] without it or rename the table column"
    ]
    flow, _ = base_flow(tmp_path)  # readings going nowhere; unmatched may be ignored
    assert problems_of(flow) == [
        "step 'sites' (enrich): its readings go nowhere; add a .window(...) or .to(sink)"
    ]


def test_enriched_fields_feed_windows_and_defaults_fill_missing_keys(tmp_path: Path) -> None:
    from edgeflow import agg, window

    flow, e = base_flow(tmp_path, missing="default", defaults={"low_limit": 0, "high_limit": 9})
    csv_readings(tmp_path / "in.csv", [("d1", 1.5), ("d2", 7.0), ("d1", 2.5)])
    e.window(window.tumbling("1s"), agg.max("high_limit"), agg.count(), name="w").to(
        files.sink(str(tmp_path / "w.jsonl"))
    )
    plan = flow.plan()
    assert "enrich sites:" in plan.describe() and not any("sites" in u for u in plan.unrouted)
    run(plan, RunOptions())
    got = {w["key"]: (w["max_high_limit"], w["count"]) for w in records(tmp_path / "w.jsonl")}
    assert got == {"d1": (2.0, 2), "d2": (9.0, 1)}


def test_cli_validate_exits_2_naming_the_step(tmp_path: Path) -> None:
    write_csv_table(tmp_path / "devices.csv", {"d1": (1.0, 2.0)})
    csv_readings(tmp_path / "in.csv", [("d1", 1.5)])
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow
from edgeflow.connectors import files
from edgeflow.ops import detect
flow = Flow("v")
r = flow.source(files.source({str(tmp_path / "in.csv")!r}, time_unit="ns"), key="device", time="ts")
e = r.enrich({str(tmp_path / "devices.csv")!r}, key="device", name="sites")
e.detect(detect.limits(high="max_temp"), "temp", name="too_hot").to(files.sink("x.jsonl"))
""",
    )
    res = edgeflow("validate", str(flow), check=False)
    assert res.returncode == 2, res
    assert "step 'too_hot' (detect): detect.limits high='max_temp' names no field" in res.stderr
    assert "Traceback" not in res.stderr


def written(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a file a running flow is writing (not a half-written last one)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].split("\n") if x]


LIVE = """
from edgeflow import Flow
from edgeflow.connectors import files, simulate
flow = Flow("enrich-live")
r = flow.source(simulate.sensors(devices=2, rate_hz=20, seed=1, speed=1.0))
e = r.enrich({table!r}, key="device", check_every="100ms", name="sites")
e.to(files.sink({out!r}))
"""


def test_the_table_is_reloaded_while_running_and_a_broken_file_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    table, out = tmp_path / "devices.csv", tmp_path / "out.jsonl"
    table.write_text("device,site,limit\ndev-0,a,1\ndev-1,b,1\n")
    flow = write_flow(tmp_path / "f.py", LIVE.format(table=str(table), out=str(out)))
    proc = popen_edgeflow("run", str(flow))
    try:

        def wait_for(limit: float) -> int:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, proc.communicate()
                got = written(out)
                if got and got[-1]["limit"] == limit:
                    return len(got)
                assert time.monotonic() < deadline, f"no reading with limit {limit}"
                time.sleep(0.1)

        wait_for(1.0)
        table.write_text("device,site,limit\ndev-0,a,2\ndev-1,b,2\n")
        wait_for(2.0)
        table.write_text("device,site,limit\ndev-0,a,2\ndev-1,b\n")  # broken: a short row
        n = len(written(out))
        deadline = time.monotonic() + 90
        while len(written(out)) < n + 60:  # 1.5 s more of readings
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert {r["limit"] for r in written(out)[n:]} == {2.0}, "the last good table stays"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    errors = [x for x in err.splitlines() if "(enrich)" in x]
    assert errors == [
        f"step 'sites' (enrich): table {table}: line 3: 3 columns expected (device, site, "
        "limit); still using the last good table (2 keys) - fix the file"
    ], err
    assert "Traceback" not in err and "panicked" not in err
    assert lines(out)


def test_the_example_flow_alarms_on_each_devices_own_limits(tmp_path: Path) -> None:
    from tests.helpers import ROOT
    from tests.test_examples import sim_env

    env = sim_env("max", "20s", EDGEFLOW_OUT_DIR=str(tmp_path))
    res = edgeflow("run", str(ROOT / "flows" / "udf_example.py"), env=env)
    assert "Traceback" not in res.stderr
    limits = {
        r["device"]: (float(r["temp_low"]), float(r["temp_high"]))
        for r in csv.DictReader((ROOT / "flows" / "udf_devices.csv").open())
    }
    alarms = records(tmp_path / "temp_alarms.jsonl")
    assert alarms, "some devices run warmer than their table's limit"
    for a in alarms:
        low, high = limits[a["key"]]
        assert (a["expected_low"], a["expected_high"]) == (low, high)
        assert not low <= a["value"] <= high
    assert {r["key"] for r in records(tmp_path / "unmatched.jsonl")} == {"dev-18", "dev-19"}
