"""Detection and downsampling inside flows: workers, crash and resume, validation."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edgeflow.cli.main import main
from tests.helpers import edgeflow, kill_9_after, lines, records, write_flow

FLOW = """
from edgeflow import Flow, detect, downsample
from edgeflow.connectors import files, simulate

flow = Flow("reduce-test")
r = flow.source(simulate.sensors(devices=12, rate_hz=50, seed=5, speed={speed}, duration="60s",
                                 start="2026-01-01T00:00:00Z", spike_prob=0.002))
r.detect(detect.auto(), "accel", name="alerts").to(files.sink({alerts!r}))
r.downsample(downsample.swinging_door("temp", deviation=0.3), name="temp_trend").to(files.sink({trend!r}))
r.downsample(downsample.lttb("accel", every="5s", points=25), name="accel_trend").to(files.sink({lttb!r}))
"""


def make(tmp: Path, name: str, speed: str = "None") -> tuple[Path, dict[str, Path]]:
    outs = {k: tmp / f"{name}-{k}.jsonl" for k in ("alerts", "trend", "lttb")}
    return write_flow(
        tmp / f"{name}.py", FLOW.format(speed=speed, **{k: str(v) for k, v in outs.items()})
    ), outs


def test_one_and_two_workers_and_a_kill_9_give_the_same_alerts_and_trends(tmp_path: Path) -> None:
    ref_flow, ref = make(tmp_path, "ref")
    res = edgeflow("run", str(ref_flow), "--workers", "1")
    assert "reduction" in res.stderr and "anomalies" in res.stderr
    two_flow, two = make(tmp_path, "two")
    edgeflow("run", str(two_flow), "--workers", "2")
    for k in ref:
        assert sorted(lines(ref[k])) == sorted(lines(two[k])), k  # same batches: identical
    alerts = records(ref["alerts"])
    assert (
        alerts
        and {a["detector"] for a in alerts} == {"auto"}
        and all(0.999 <= a["score"] < 1.0 + 1e-12 for a in alerts)
    )
    assert len(lines(ref["trend"])) < 12 * 50 * 60 / 50, (
        "swinging door keeps far fewer than the 36,000 readings"
    )
    assert len(lines(ref["lttb"])) == 12 * 12 * 25
    crash_flow, crash = make(tmp_path, "crash", speed="15")
    args = (
        "run",
        str(crash_flow),
        "--state-dir",
        str(tmp_path / "st"),
        "--snapshot-every",
        "200ms",
    )
    kill_9_after(args, crash["lttb"], 600, timeout=180)
    edgeflow(*args)
    for k in ("trend", "lttb"):
        assert sorted(lines(ref[k])) == sorted(lines(crash[k])), k
    # a paced run cuts batches differently: the same alerts, scores equal up to rounding
    want = {(a["key"], a["t"]): a for a in records(ref["alerts"])}
    got = {(a["key"], a["t"]): a for a in records(crash["alerts"])}
    assert set(got) == set(want)
    for key, a in want.items():
        assert abs(got[key]["score"] - a["score"]) < 1e-9 and abs(
            got[key]["raw"] - a["raw"]
        ) < 1e-6 * (1 + abs(a["raw"]))


def test_detect_and_downsample_arguments_are_validated(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "bad.py",
        """
from edgeflow import Flow, detect, downsample
from edgeflow.connectors import simulate, stdio
flow = Flow("bad")
r = flow.source(simulate.sensors())
r.detect(detect.auto(), "acel", name="alerts").to(stdio.sink())
r.detect("zscore", "accel", name="alerts2").to(stdio.sink())
r.downsample(downsample.deadband("temp"), name="trend").to(stdio.sink())
r.detect(detect.zscore(), "accel", decision=detect.threshold(1.5), name="alerts3").to(stdio.sink())
""",
    )
    res = CliRunner().invoke(main, ["validate", str(flow)])
    assert res.exit_code == 2
    for fragment in (
        "step 'alerts'",
        "unknown field 'acel'",
        "step 'alerts2'",
        "is not a detector",
        "step 'trend'",
        "exactly one of band",
        "step 'alerts3'",
        "strictly between 0 and 1",
    ):
        assert fragment in res.output, fragment


FEATURES_FLOW = """
from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import files, simulate

flow = Flow("features-test")
r = flow.source(simulate.sensors(devices=6, rate_hz=50, seed=9, speed=None, duration="10m",
                                 start="2026-01-01T00:00:00Z", spike_prob=0.0005))
w = r.window(window.tumbling("2s"), agg.rms("accel"), agg.max("accel"), name="summary")
w.to(files.sink({windows!r}))
per_window = w.as_readings(name="per_window")
per_window.detect(detect.zscore(window=60, warmup=10), "max_accel", name="alerts").to(files.sink({alerts!r}))
per_window.to(files.sink({readings!r}), name="feature_readings")
"""


def test_window_summaries_as_readings_feed_detection_like_a_reference(tmp_path: Path) -> None:
    import numpy as np

    from edgeflow.ops import detect

    outs = {k: tmp_path / f"{k}.jsonl" for k in ("windows", "alerts", "readings")}
    flow = write_flow(
        tmp_path / "features.py", FEATURES_FLOW.format(**{k: str(v) for k, v in outs.items()})
    )
    edgeflow("run", str(flow))
    windows = records(outs["windows"])
    readings = records(outs["readings"])
    assert len(readings) == len(windows) == 6 * 300
    # one reading per window: its key, at the window's end, with the aggregates as fields
    as_read = {(r["key"], r["t"]): (r["rms_accel"], r["max_accel"]) for r in readings}
    assert as_read == {
        (w["key"], w["window_end"]): (w["rms_accel"], w["max_accel"]) for w in windows
    }
    # the alerts are what the detector gives on each key's window maxima, in time order
    want = set()
    for key in sorted({w["key"] for w in windows}):
        mine = sorted((w["window_end"], w["max_accel"]) for w in windows if w["key"] == key)
        drv = detect.Driver(detect.zscore(window=60, warmup=10))
        out = drv.run(drv.init(), np.array([v for _, v in mine]))
        want |= {(key, mine[i][0]) for i in np.flatnonzero(out.event).tolist()}
    got = {(a["key"], a["t"]) for a in records(outs["alerts"])}
    assert want and got == want
