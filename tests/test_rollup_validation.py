"""Rollups and records sources that are built wrong: every problem is one line naming the
step and what to change, `edgeflow validate` exits 2 without a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate
from edgeflow.errors import FlowValidationError
from tests.helpers import edgeflow, write_flow


def _problems(flow: Flow) -> list[str]:
    with pytest.raises(FlowValidationError) as info:
        flow.plan()
    return info.value.problems


def _summaries(flow: Flow, *aggs: Any) -> Any:
    readings = flow.source(simulate.sensors(devices=2, speed=None, duration="2s"))
    return readings.window(window.tumbling("1s"), *aggs, name="w")


def test_a_valid_rollup_of_a_window_plans_and_describes_itself() -> None:
    flow = Flow("ok")
    s = _summaries(flow, agg.mergeable("accel"))
    s.rollup("1m", fields=["accel"], group="plant", name="r").to(files.sink("/tmp/x.jsonl"))
    plan = flow.plan()
    (r,) = plan.rollups
    assert r.input == ("w", "windows") and r.spec.every_ns == 60_000_000_000
    assert "rollup r: accel per 'plant' every 1m" in plan.describe()
    (step,) = [s for s in plan.to_dict()["steps"] if s["kind"] == "rollup"]
    assert step["input"] == "w.windows" and step["rollup"]["fields"] == ["accel"]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"every": "0s"}, "every=0"),
        ({"every": "soon"}, "every"),
        ({"fields": [1]}, "fields=[1]"),
        ({"quantiles": (150,)}, "quantiles="),
        ({"min_keys": 0}, "min_keys=0"),
        ({"group_sep": "/"}, "group_sep needs group_by"),
        ({"lateness": "-1s"}, "lateness"),
    ],
)
def test_bad_rollup_arguments_are_one_line_each(kwargs: dict[str, Any], says: str) -> None:
    flow = Flow("bad")
    s = _summaries(flow, agg.mergeable("accel"))
    args: dict[str, Any] = {"every": "1m", "fields": ["accel"], **kwargs}
    every = args.pop("every")
    s.rollup(every, name="r", **args).to(files.sink("/tmp/x.jsonl"))
    problems = _problems(flow)
    assert len(problems) == 1, problems
    assert problems[0].startswith("step 'r' (rollup)") and says in problems[0]


def test_rolling_up_a_window_without_mergeable_summaries_names_the_aggregation_to_add() -> None:
    flow = Flow("bad")
    s = _summaries(flow, agg.mean("accel"))
    s.rollup("1m", fields=["accel"], name="r").to(files.sink("/tmp/x.jsonl"))
    (problem,) = _problems(flow)
    assert "agg.mergeable('accel')" in problem and "'w'" in problem


def test_a_mergeable_summary_next_to_a_plain_one_of_the_same_column_is_refused() -> None:
    flow = Flow("bad")
    s = _summaries(flow, agg.mergeable("accel"), agg.min("accel"))
    s.to(files.sink("/tmp/x.jsonl"))
    (problem,) = _problems(flow)
    assert "'min_accel'" in problem


def test_records_and_readings_sources_are_not_confused() -> None:
    flow = Flow("bad")
    flow.source(
        kafka.source("t", records=True, bootstrap="localhost:9092"), key="key", time="t"
    ).to(files.sink("/tmp/x.jsonl"))
    (problem,) = _problems(flow)
    assert "flow.records(" in problem
    flow = Flow("bad2")
    flow.records(simulate.sensors(), name="recs").to(files.sink("/tmp/x.jsonl"))
    (problem,) = _problems(flow)
    assert (
        problem.startswith("step 'recs' (records source)") and "does not yield records" in problem
    )


def test_records_that_go_nowhere_and_rollups_of_readings_are_refused() -> None:
    flow = Flow("bad")
    flow.records(kafka.source("t", records=True, bootstrap="localhost:9092"), name="recs")
    (problem,) = _problems(flow)
    assert "its records go nowhere" in problem
    flow = Flow("bad2")
    readings = flow.source(simulate.sensors(devices=2, speed=None, duration="2s"))
    readings.window(window.tumbling("1s"), agg.count(), name="w").rollup("1m", name="r")
    problems = _problems(flow)
    assert any("its records go nowhere" in p for p in problems)


def test_edgeflow_validate_says_it_in_one_line_and_exits_2(tmp_path: Path) -> None:
    path = write_flow(
        tmp_path / "flow.py",
        "from edgeflow import Flow, agg, window\n"
        "from edgeflow.connectors import files, simulate\n"
        "flow = Flow('f')\n"
        "w = flow.source(simulate.sensors()).window(window.tumbling('1s'), agg.max('accel'))\n"
        "w.rollup('1m', fields=['accel'], quantiles='p95').to(files.sink('out.jsonl'))\n",
    )
    res = edgeflow("validate", str(path), check=False)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert "quantiles='p95'" in res.stderr + res.stdout
