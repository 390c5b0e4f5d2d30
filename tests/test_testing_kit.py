"""edgeflow.testing.run: a flow on readings in memory, every stream collected, without
bytewax knowledge; the README's example test (copied verbatim below) runs here in CI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from edgeflow import Flow, agg, testing, window
from edgeflow.connectors import files, simulate
from edgeflow.errors import FlowValidationError

SEC = 1_000_000_000


# -- the README's example test ("Writing a connector" / "Testing a flow"), verbatim ---------
def power_flow() -> Flow:
    flow = Flow("power")
    r = flow.source(files.source("meters.csv"), key="meter", time="ts")
    p = r.derive(power=lambda c: c["volts"] * c["amps"]).filter(lambda c: c["power"] > 0)
    p.window(window.tumbling("1s"), agg.mean("power"), name="avg").to(files.sink("avg.jsonl"))
    r.dead_letters.to(files.sink("bad.jsonl"))
    return flow


def test_power_is_averaged_per_second_and_bad_rows_are_dead_letters() -> None:
    readings = [
        {"meter": "m1", "ts": "2026-01-01T00:00:00.2Z", "volts": 230, "amps": 2},
        {"meter": "m1", "ts": "2026-01-01T00:00:00.7Z", "volts": 230, "amps": 4},
        {"meter": "m1", "ts": "2026-01-01T00:00:01.1Z", "volts": 230, "amps": 0},
        {"meter": "m1", "ts": "yesterday", "volts": 230, "amps": 1},
    ]
    out = testing.run(power_flow, readings)
    assert [w["mean_power"] for w in out["avg.windows"]] == [690.0]
    assert [d["error"] for d in out["source.dead_letters"]] == [
        "cannot read 'yesterday' as an ISO-8601 timestamp with offset"
    ]


# -- the kit itself -----------------------------------------------------------------------
def routed_flow() -> Flow:
    flow = Flow("routed")
    r = flow.source(files.source("in.csv"), key="device", time="ts")
    routes = r.route(hot=lambda c: c["temp"] > 30)
    routes.hot.to(files.sink("hot.jsonl"), name="alerts")
    routes.unrouted.window(window.tumbling("1s"), agg.count(), name="w").to(
        files.sink("w.jsonl"), name="summaries"
    )
    return flow


def readings(n: int) -> list[dict[str, Any]]:
    return [{"device": f"d{i % 3}", "ts": i * SEC // 10, "temp": float(i % 50)} for i in range(n)]


def test_every_stream_and_every_sink_is_collected_and_batching_does_not_matter() -> None:
    rs = readings(300)
    out = testing.run(routed_flow(), rs, time_unit="ns")
    hot = [r for r in rs if r["temp"] > 30]
    assert sorted((r["key"], r["t"], r["temp"]) for r in out["alerts"]) == sorted(
        (r["device"], r["ts"], r["temp"]) for r in hot
    )
    assert out["alerts"] == out["route.hot"]
    assert len(out["route.unrouted"]) == 300 - len(hot)
    assert (
        sum(w["count"] for w in out["w.windows"])
        == 300 - len(hot)
        == sum(w["count"] for w in out["summaries"])
    )
    assert out["source.dead_letters"] == out["route.dead_letters"] == out["w.late"] == []
    assert len(out["source.readings"]) == 300
    # the same results whatever the batch size and with two workers
    for kwargs in ({"batch_size": 1}, {"batch_size": 7}, {"workers": 2}):
        again = testing.run(routed_flow, rs, time_unit="ns", **kwargs)
        for name, recs in out.items():
            assert sorted(map(repr, again[name])) == sorted(map(repr, recs)), (name, kwargs)


def test_user_flow_is_not_changed_and_its_files_are_never_touched(tmp_path: Any) -> None:
    flow = routed_flow()
    before = [(s.name, s.kind, list(s.inputs), dict(s.params)) for s in flow.steps]
    testing.run(flow, readings(20), time_unit="ns")
    assert [(s.name, s.kind, list(s.inputs), dict(s.params)) for s in flow.steps] == before
    assert not any(p.exists() for p in (tmp_path / "hot.jsonl", tmp_path / "w.jsonl"))


def test_aware_datetimes_are_times_and_naive_ones_are_dead_letters() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rs: list[dict[str, Any]] = [
        {"device": "d", "ts": t0 + timedelta(seconds=i), "temp": 1.0} for i in range(3)
    ]
    rs.append({"device": "d", "ts": datetime(2026, 1, 1, 0, 0, 5), "temp": 1.0})  # naive
    out = testing.run(routed_flow, rs)
    assert [r["t"] for r in out["source.readings"]] == [
        int(t0.timestamp()) * SEC + i * SEC for i in range(3)
    ]
    assert len(out["source.dead_letters"]) == 1


def test_several_sources_take_readings_by_step_name_and_others_keep_their_connector() -> None:
    flow = Flow("two")
    a = flow.source(files.source("a.csv"), key="device", time="ts", name="plant")
    b = flow.source(simulate.sensors(devices=2, rate_hz=10, seed=1, duration="2s"),
                    key="device", time="ts", name="sim")  # fmt: skip
    a.to(files.sink("a.jsonl"), name="a_out")
    b.window(window.tumbling("1s"), agg.count(), name="w").to(files.sink("b.jsonl"))
    out = testing.run(flow, {"plant": readings(5)}, time_unit="ns")
    assert len(out["a_out"]) == 5
    assert sum(w["count"] for w in out["w.windows"]) == 40
    with pytest.raises(ValueError, match="the flow has 2 sources"):
        testing.run(flow, readings(5))
    with pytest.raises(ValueError, match="readings for nope"):
        testing.run(flow, {"nope": []})


def test_an_invalid_flow_is_refused_as_the_cli_would() -> None:
    flow = Flow("bad")
    r = flow.source(files.source("in.csv"), key="device", time="ts")
    r.window(window.tumbling("1s"), agg.mean("tmep")).to(files.sink("x.jsonl"))
    with pytest.raises(FlowValidationError, match="tmep"):
        testing.run(flow, readings(3))


def test_the_readme_example_test_runs_as_written() -> None:
    """The code block in README.md ("Testing a flow") is run as a user would copy it."""
    from tests.helpers import ROOT

    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    block = next(b for b in blocks if "def test_power_is_averaged" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    namespace["test_power_is_averaged_per_second_and_bad_rows_are_dead_letters"]()
