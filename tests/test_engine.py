"""The engine end to end: workers, crash and resume, late and dead-letter routing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from edgeflow.connectors.outbox import read_stats
from tests.helpers import edgeflow, lines, popen_edgeflow, records, write_flow

FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate

flow = Flow("engine-test")
r = flow.source(
    simulate.sensors(devices=40, rate_hz=50, seed=7, speed={speed}, duration="60s", jitter="300ms",
                     start="2026-01-01T00:00:00Z"),
    key="device", time="ts", lateness="100ms",
)
w = r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), agg.p95("accel"), agg.std("temp"), name="summary")
w.to(files.sink({out!r}))
w.late.to(files.sink({late!r}))
r.window(window.hopping("4s", "2s"), agg.count(), agg.median("accel"), name="trend").to(files.sink({trend!r}))
"""


def make_flow(tmp: Path, name: str, speed: str = "None") -> tuple[Path, dict[str, Path]]:
    outs = {k: tmp / f"{name}-{k}.jsonl" for k in ("out", "late", "trend")}
    flow = write_flow(
        tmp / f"{name}.py", FLOW.format(speed=speed, **{k: str(v) for k, v in outs.items()})
    )
    return flow, outs


def test_one_and_two_workers_give_the_same_records(tmp_path: Path) -> None:
    results = {}
    for workers in ("1", "2"):
        flow, outs = make_flow(tmp_path, f"w{workers}")
        edgeflow("run", str(flow), "--workers", workers)
        results[workers] = {k: sorted(lines(p)) for k, p in outs.items()}
    one, two = results["1"], results["2"]
    assert len(one["out"]) == 40 * 61  # 60 s of 1-s windows per device, plus the jittered first one
    assert one["late"], "300ms jitter with 100ms lateness must produce late readings"
    assert one == two
    summary = records(tmp_path / "w1-out.jsonl")
    assert sum(r["count"] for r in summary) + len(one["late"]) == 40 * 50 * 60


def test_kill_9_and_resume_gives_the_uninterrupted_output(tmp_path: Path) -> None:
    ref_flow, ref = make_flow(tmp_path, "ref")
    edgeflow("run", str(ref_flow))
    flow, outs = make_flow(tmp_path, "crash", speed="15")
    state = tmp_path / "state"
    args = ("run", str(flow), "--state-dir", str(state), "--snapshot-every", "200ms")
    proc = popen_edgeflow(*args)
    deadline = time.monotonic() + 180  # generous: CI may run on a loaded machine
    while len(lines(outs["out"])) < 400 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(lines(outs["out"]))
    assert 400 <= partial < len(lines(ref["out"])), "the kill must land mid-stream"
    edgeflow(*args)
    for k in ("out", "late", "trend"):
        got, want = sorted(lines(outs[k])), sorted(lines(ref[k]))
        assert len(got) == len(want), k
        assert got == want, k


def test_ctrl_c_stops_like_sigterm_and_the_next_run_resumes_exactly(tmp_path: Path) -> None:
    ref_flow, ref = make_flow(tmp_path, "ref")
    edgeflow("run", str(ref_flow))
    flow, outs = make_flow(tmp_path, "int", speed="15")
    args = ("run", str(flow), "--state-dir", str(tmp_path / "state"))
    proc = popen_edgeflow(*args)
    deadline = time.monotonic() + 180
    while len(lines(outs["out"])) < 400 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "panicked" not in err and "Traceback" not in err, err
    assert len(lines(outs["out"])) < len(lines(ref["out"])), "stopped mid-stream"
    edgeflow(*args)
    for k in ("out", "late", "trend"):
        assert sorted(lines(outs[k])) == sorted(lines(ref[k])), k


def test_files_source_routes_bad_lines_to_dead_letters(tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text(
        "sensor,time,temp\n"
        "a,2026-01-01T00:00:00.100Z,20.5\n"
        "a,2026-01-01T00:00:00.600Z,21.5\n"
        "b,2026-01-01T00:00:00.200+01:00,19\n"
        "a,2026-01-01T00:00:01.100Z,not-a-number\n"
        "b,2026-01-01 00:00:01,18\n"
        "a,2026-01-01T00:00:01.700Z\n"
        "a,2026-01-01T00:00:02.100Z,22\n"
    )
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files
flow = Flow("csv")
r = flow.source(files.source({str(data)!r}), key="sensor", time="time")
r.window(window.tumbling("1s"), agg.count(), agg.mean("temp")).to(files.sink({str(out)!r}))
r.dead_letters.to(files.sink({str(dead)!r}, time_format="iso"))
""",
    )
    res = edgeflow("run", str(flow))
    got = {(r["key"], r["window_start"]): (r["count"], r["mean_temp"]) for r in records(out)}
    s = 1_000_000_000
    t0 = 1767225600 * s
    assert got == {
        ("a", t0): (2, 21.0),
        ("b", t0 - 3600 * s): (1, 19.0),
        ("a", t0 + 2 * s): (1, 22.0),
    }
    dl = records(dead)
    assert len(dl) == 3
    reasons = {d["source"].rsplit(":", 1)[1]: d["error"] for d in dl}
    assert "not a number" in reasons["5"]
    assert "no UTC offset" in reasons["6"]
    assert "expected 3 columns" in reasons["7"]
    assert all(d["raw"] and d["received_at"].endswith("Z") for d in dl)
    assert "3 dead letters" in res.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_deploy_quickstart_prints_window_records_and_keeps_them_in_the_outbox(
    workers: str, tmp_path: Path
) -> None:
    no_kafka = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP", "EDGEFLOW_KAFKA_BOOTSTRAP")
    }
    state = tmp_path / "st"
    res = edgeflow(
        "deploy",
        "flows/quickstart.py",
        "--for",
        "3s",
        "--workers",
        workers,
        "--state-dir",
        str(state),
        timeout=60,
        env=no_kafka,
    )
    recs = [orjson.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert len(recs) >= 50, res.stdout  # at least one second of 50 devices
    assert set(recs[0]) == {
        "key",
        "window_start",
        "window_end",
        "count",
        "mean_accel",
        "rms_accel",
        "p95_accel",
        "max_temp",
    }
    assert recs[0]["window_start"].endswith("Z")
    assert "window summaries" in res.stderr  # the plan is printed first
    assert "no Kafka configured: records stay in the outbox" in res.stderr
    waiting = read_stats(state / "outbox.sqlite")
    assert waiting["appended.summaries_to_kafka"] == len(recs)
    assert waiting["appended.trend_to_kafka"] > 0 and waiting["appended.alerts_to_kafka"] > 0
    assert waiting["depth"] == sum(v for k, v in waiting.items() if k.startswith("appended."))
