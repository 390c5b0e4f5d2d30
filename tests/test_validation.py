"""Broken flows are caught before anything runs; each message names the step and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeflow.cli.main import main

BROKEN = Path(__file__).parent / "broken_flows"

CASES = {
    "unknown_field.py": ["step 'summary'", "unknown field 'acel'", "accel"],
    "bad_duration.py": ["step 'summary'", "'1 sec'", "'10s'"],
    "bad_lateness.py": ["step 'sensors'", "lateness", "'soon'"],
    "duplicate_names.py": ["step 'summary'", "unique name"],
    "stream_without_sink.py": ["step 'summary'", "go nowhere", ".to("],
    "sink_without_input.py": ["step 'alerts_out'", "no stream is connected"],
    "bad_percentile.py": ["step 'summary'", "q=150", "in [0, 100]"],
    "unknown_key.py": ["step 'plant'", "unknown key field 'device_id'", "device"],
    "bad_count_window.py": ["step 'every_n'", "n=0", "[1, 1000000]"],
    "not_an_agg.py": ["step 'summary'", "is not an aggregation"],
    "bad_sink_option.py": ["step 'archive'", "time_format='unix'"],
    "raises_on_import.py": ["raises_on_import.py:4", "NameError"],
    "readings_from_late.py": ["step 'late_readings'", "only window summaries", ".as_readings()"],
    "bad_detector_args.py": [
        "step 'z' (detect): detect.zscore: window=-5 is out of range; give a whole number in [2, 100000]",
        "step 'e' (detect): detect.ewma: alpha=2 is out of range; give a finite number strictly between 0 and 1",
        "step 'm' (detect): detect.mad: window=1",
        "step 'c' (detect): detect.cusum: h=-1",
        "step 's' (detect): detect.seasonal: window=3",
        "step 'q' (detect): detect.quantile: every=0",
    ],
    "bad_downsample_args.py": [
        "step 'm4' (downsample): downsample.m4: points=6 is not a multiple of 4",
        "step 'lttb' (downsample): downsample.lttb: points=2 is out of range; give a whole number in [3, 100000]",
        "step 'door' (downsample): downsample.swinging_door: deviation=nan is not a finite number",
    ],
    "bad_step_args.py": [
        "step 'src' (source): batch_max=True is a boolean",
        "step 'w' (window): lateness=1e+30 is too long",
        "step 'w' (window): window.hopping: size='10s' with slide='1ms' puts each reading in 10000 windows",
        "step 'a' (detect): learn_anomalies='yes' is not a boolean",
    ],
    "feature_unknown.py": [
        "step 'alerts'",
        "unknown field 'mean_accel'",
        "rms_accel",
        "step 'summary'",
        "fs=250",
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_rejects_broken_flow_naming_the_step(name: str) -> None:
    result = CliRunner().invoke(main, ["validate", str(BROKEN / name)])
    assert result.exit_code == 2, result.output
    for fragment in CASES[name]:
        assert fragment in result.output, f"{fragment!r} missing from:\n{result.output}"


def test_every_broken_flow_has_a_case() -> None:
    assert sorted(p.name for p in BROKEN.glob("*.py")) == sorted(CASES)


def test_validate_exit_codes_from_the_real_command() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "edgeflow", "validate", str(BROKEN / "unknown_field.py")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "step 'summary'" in bad.stderr
    good = subprocess.run(
        [sys.executable, "-m", "edgeflow", "validate", "flows/quickstart.py"],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    assert "is valid" in good.stdout


def test_all_problems_are_reported_at_once() -> None:
    from edgeflow import Flow, agg, window
    from edgeflow.connectors import simulate, stdio
    from edgeflow.errors import FlowValidationError

    flow = Flow("many")
    r = flow.source(simulate.sensors(), lateness="x")
    r.window(window.tumbling("0s"), agg.mean("nope"), name="w").to(stdio.sink())
    with pytest.raises(FlowValidationError) as err:
        flow.plan()
    assert len(err.value.problems) == 3, err.value.problems


def test_building_a_flow_runs_nothing_and_the_plan_serialises() -> None:
    from edgeflow import Flow, agg, window
    from edgeflow.connectors import files, simulate

    flow = Flow("plan-only")
    r = flow.source(simulate.sensors(devices=3), lateness="2s")
    w = r.window(window.hopping("10s", "5s"), agg.count(), agg.p99("accel"))
    w.to(files.sink("/nonexistent/dir/never-written.jsonl"))
    w.late.to(files.sink("/nonexistent/dir/late.jsonl"))
    d = flow.plan().to_dict()
    assert [s["kind"] for s in d["steps"]] == ["source", "window", "sink", "sink"]
    assert d["steps"][1]["aggs"][1]["output"] == "p99_accel"
    assert d["steps"][0]["lateness"] == "2s"
    assert d["unrouted"] == ["source.dead_letters"]
    assert not Path("/nonexistent/dir").exists()
