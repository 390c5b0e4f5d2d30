"""Outbox faults a user meets: a budget that must bound the files on disk (WAL included), a
damaged or missing outbox, a crash before the first snapshot, records Kafka rejects, and
records left waiting by earlier runs."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from edgeflow.batch import RecordBatch
from edgeflow.connectors import kafka
from edgeflow.connectors.base import SinkContext
from edgeflow.connectors.outbox import LANES, Outbox, OutboxError, OutRecord, read_stats
from edgeflow.engine.figures import outbox_figures, summary_line
from tests.helpers import ROOT, edgeflow, popen_edgeflow, write_flow

ALL = list(range(LANES))
HEADERS = orjson.dumps([["edgeflow-id", "flow/step/dev-0001/1767225600000000000"]])


def files_on_disk(path: Path) -> int:
    return sum(
        p.stat().st_size
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    )


def batch_of(i: int, n: int = 100) -> list[OutRecord]:
    return [
        OutRecord(
            "t", f"dev-{j % 50}".encode(), f'{{"i":{i},"j":{j}}}'.encode().ljust(150), HEADERS
        )
        for j in range(n)
    ]


# -- item 3: budget_bytes bounds the files on disk, the WAL included ------------------------------
@pytest.mark.parametrize("budget", [1_500_000, 4_000_000])
def test_the_budget_bounds_the_outbox_files_on_disk_including_the_wal(
    tmp_path: Path, budget: int
) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, budget)
    reader = sqlite3.connect(path)  # a forwarder's connection reads the outbox meanwhile
    peak = 0
    for i in range(300):
        box.append("raw", 0, batch_of(i))
        if i % 10 == 0:
            box.append("alerts", 3, batch_of(i, 5))
        reader.execute("SELECT COUNT(*) FROM outbox").fetchone()
        peak = max(peak, files_on_disk(path))
    stats = box.stats()
    assert stats["dropped.raw"] > 0, "the budget forced drops"
    assert "dropped.alerts" not in stats, "only the lowest priority was dropped"
    assert peak <= budget, f"database + WAL reached {peak} bytes under a {budget} byte budget"
    assert peak > budget * 0.6, "the budget is used, not wasted"
    assert stats["queued.raw"] + stats["dropped.raw"] == 300 * 100


# -- item 13: records Kafka rejects are counted as rejected, not delivered ------------------------
def test_records_kafka_rejects_are_counted_as_rejected_in_the_summary_and_status(
    tmp_path: Path,
) -> None:
    state = tmp_path / "st"
    path = state / "outbox.sqlite"
    box = Outbox.at(path, 10_000_000)
    box.append("to_kafka", 2, batch_of(0, 18))
    forwarder = Outbox(path)  # as a forwarder process does
    rows, _ = forwarder.fetch(ALL, 0, 100)
    forwarder.record_count(rows[5].sink)  # too large for Kafka: discarded
    forwarder.delivered(ALL, rows)
    stats = read_stats(path)
    assert (stats["delivered.to_kafka"], stats["rejected.to_kafka"]) == (17, 1)
    report = kafka.sink("t").report(SinkContext("f", "to_kafka", state_dir=state))
    assert "17 delivered" in report[0] and "1 rejected" in report[0], report
    figs = outbox_figures(path)
    assert figs["outbox_rejected"] == 1
    assert "1 rejected" in summary_line(figs)


def test_a_failed_send_does_not_count_its_rejected_record_twice(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.append("s", 2, batch_of(0, 4))
    rows, _ = box.fetch(ALL, 0, 100)
    box.record_count("s")
    box.release(ALL, rows[0].seq)  # the rest of the batch failed: all four are sent again
    rows, _ = box.fetch(ALL, 0, 100)
    box.record_count("s")
    box.delivered(ALL, rows)
    assert (box.stats()["delivered.s"], box.stats()["rejected.s"]) == (3, 1)


# -- item 8: a missing or damaged outbox ------------------------------------------------------
def rb(start: int, n: int) -> RecordBatch:
    return RecordBatch(
        "window",
        "w",
        {
            "key": [f"k{i % 3}" for i in range(n)],
            "window_start": np.arange(start, start + n),
            "count": np.ones(n, dtype=np.int64),
        },
        n,
        id_columns=("key", "window_start"),
    )


def queued_partition(state: Path) -> tuple[SinkContext, object]:
    """A sink with 10 records checkpointed into the database and 20 more only in its WAL;
    returns the context and the sink's snapshot."""
    ctx = SinkContext("f", "to_kafka", state_dir=state)
    part = kafka.sink("t").open("0", None, ctx)
    part.write([rb(0, 10)])
    Outbox.at(state / "outbox.sqlite").checkpoint()
    part.write([rb(10, 20)])
    return ctx, part.snapshot()


def copy_state(src: Path, dst: Path, *, wal: bool) -> Path:
    dst.mkdir()
    shutil.copy(src / "outbox.sqlite", dst / "outbox.sqlite")
    if wal:
        shutil.copy(src / "outbox.sqlite-wal", dst / "outbox.sqlite-wal")
    return dst


def test_a_deleted_outbox_stops_the_sink_naming_the_file_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(kafka.ACCEPT_LOSS_ENV, raising=False)
    _ctx, snap = queued_partition(tmp_path / "st")
    other = tmp_path / "fresh"  # the outbox is gone: a new, empty one is created
    with pytest.raises(OutboxError) as err:
        kafka.sink("t").open_partition("0", snap, SinkContext("f", "to_kafka", state_dir=other))
    text = str(err.value)
    assert str(other / "outbox.sqlite") in text
    assert "30 records" in text and kafka.ACCEPT_LOSS_ENV in text


def test_a_lost_wal_stops_the_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kafka.ACCEPT_LOSS_ENV, raising=False)
    _ctx, snap = queued_partition(tmp_path / "st")
    copy = copy_state(tmp_path / "st", tmp_path / "copy", wal=False)
    with pytest.raises(OutboxError, match=r"ends at record 10 .* -wal file .* up to 20 records"):
        kafka.sink("t").open_partition("0", snap, SinkContext("f", "to_kafka", state_dir=copy))


def test_a_garbled_wal_stops_the_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kafka.ACCEPT_LOSS_ENV, raising=False)
    _ctx, snap = queued_partition(tmp_path / "st")
    copy = copy_state(tmp_path / "st", tmp_path / "copy", wal=True)
    wal = copy / "outbox.sqlite-wal"
    data = bytearray(wal.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = os.urandom(64)
    wal.write_bytes(bytes(data))
    with pytest.raises(OutboxError, match="-wal file"):
        kafka.sink("t").open_partition("0", snap, SinkContext("f", "to_kafka", state_dir=copy))


def test_a_garbled_header_names_the_outbox_and_the_sqlite_reason(tmp_path: Path) -> None:
    _ctx, snap = queued_partition(tmp_path / "st")
    copy = copy_state(tmp_path / "st", tmp_path / "copy", wal=False)
    with open(copy / "outbox.sqlite", "r+b") as f:
        f.write(b"garbage" * 20)
    with pytest.raises(OutboxError) as err:
        kafka.sink("t").open_partition("0", snap, SinkContext("f", "to_kafka", state_dir=copy))
    text = str(err.value)
    assert str(copy / "outbox.sqlite") in text and "not a database" in text


def test_an_accepted_loss_is_counted_once_and_the_sink_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ctx, snap = queued_partition(tmp_path / "st")
    copy = copy_state(tmp_path / "st", tmp_path / "copy", wal=False)
    ctx = SinkContext("f", "to_kafka", state_dir=copy)
    monkeypatch.setenv(kafka.ACCEPT_LOSS_ENV, "1")
    part = kafka.sink("t").open_partition("0", snap, ctx)
    part.write([rb(30, 5)])
    assert read_stats(copy / "outbox.sqlite")["lost.to_kafka"] == 20
    assert any("20 lost" in line for line in kafka.sink("t").report(ctx))
    monkeypatch.delenv(kafka.ACCEPT_LOSS_ENV)
    kafka.sink("t").open_partition("0", snap, ctx)  # the same snapshot again: accepted already
    assert read_stats(copy / "outbox.sqlite")["lost.to_kafka"] == 20


def test_an_outbox_replaced_while_nothing_waited_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(kafka.ACCEPT_LOSS_ENV, raising=False)
    ctx = SinkContext("f", "to_kafka", state_dir=tmp_path / "st")
    part = kafka.sink("t").open("0", None, ctx)
    snap = part.snapshot()  # nothing written yet
    kafka.sink("t").open_partition(
        "0", snap, SinkContext("f", "to_kafka", state_dir=tmp_path / "new")
    )


FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import kafka, simulate

flow = Flow({name!r})
r = flow.source(simulate.sensors(devices=5, rate_hz=20, seed=11, speed={speed}, duration={duration!r},
                                 start="2026-01-01T00:00:00Z"))
w = r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), name="summary")
w.to(kafka.sink("t", bootstrap={bootstrap!r}, drain_timeout="1s"), name="to_kafka")
"""


def a_flow(tmp: Path, name: str, speed: str = "None", duration: str = "20s") -> Path:
    body = FLOW.format(name=name, speed=speed, duration=duration, bootstrap=None)
    return write_flow(tmp / f"{name}.py", body)


def test_run_with_a_deleted_outbox_fails_with_one_clear_line_until_the_loss_is_accepted(
    tmp_path: Path,
) -> None:
    flow, state = a_flow(tmp_path, "lost-outbox"), tmp_path / "st"
    env = {k: v for k, v in os.environ.items() if k != kafka.ACCEPT_LOSS_ENV}
    first = edgeflow("run", str(flow), "--state-dir", str(state), env=env)
    assert "100 queued" in first.stderr
    for p in state.glob("outbox.sqlite*"):
        p.unlink()
    res = edgeflow("run", str(flow), "--state-dir", str(state), check=False, env=env)
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: kafka sink 'to_kafka'"), res.stderr
    assert str(state / "outbox.sqlite") in errors[0] and "up to 100 records" in errors[0]
    accepted = edgeflow(
        "run", str(flow), "--state-dir", str(state), env={**env, kafka.ACCEPT_LOSS_ENV: "1"}
    )
    assert "100 lost" in accepted.stderr
    again = edgeflow("run", str(flow), "--state-dir", str(state), env=env)  # accepted for good
    assert "the outbox" not in again.stderr.split("flow 'lost-outbox' ran")[0], again.stderr


# -- item 9: a crash before the first snapshot ------------------------------------------------
def depth(box: Path) -> int:
    """Records waiting (0 while the outbox is being created)."""
    try:
        return read_stats(box)["depth"] if box.exists() else 0
    except sqlite3.Error:
        return 0


def test_a_crash_before_the_first_snapshot_does_not_queue_records_twice(tmp_path: Path) -> None:
    flow, state = a_flow(tmp_path, "early-crash", speed="10", duration="60s"), tmp_path / "st"
    args = ("run", str(flow), "--state-dir", str(state), "--snapshot-every", "600s")
    proc = popen_edgeflow(*args)
    box = state / "outbox.sqlite"
    deadline = time.monotonic() + 90
    while depth(box) < 20:
        assert time.monotonic() < deadline and proc.poll() is None, "the flow queues records"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = edgeflow(*args[:4], timeout=180)  # the same run again, to the end
    db = sqlite3.connect(box)
    ids = [orjson.loads(h)[0][1] for (h,) in db.execute("SELECT headers FROM outbox")]
    db.close()
    assert len(ids) == len(set(ids)) == 5 * 60, "every window once"
    assert "interrupted earlier attempt" in res.stderr


# -- item 14: records left waiting by earlier runs --------------------------------------------
def test_records_waiting_from_earlier_runs_are_announced_and_not_counted_as_this_runs(
    tmp_path: Path,
) -> None:
    name = f"waiting-{os.getpid()}-{time.monotonic_ns()}"
    flow = a_flow(tmp_path, name)
    box = ROOT / ".edgeflow" / "outbox" / f"{name}.sqlite"  # no --state-dir: the shared outbox
    try:
        edgeflow("run", str(flow))
        res = edgeflow("run", str(flow))
        assert f"100 records from earlier runs are waiting in the outbox {box}" in res.stderr
        assert "100 queued, 0 delivered" in res.stderr
        assert "100 records were waiting from earlier runs" in res.stderr
        assert read_stats(box)["depth"] == 200
    finally:
        for p in box.parent.glob(f"{name}.sqlite*"):
            p.unlink()


LIVE_FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import kafka, simulate

flow = Flow({name!r})
r = flow.source(simulate.sensors(devices=5, rate_hz=20, seed=11))  # live: the wall clock
w = r.window(window.tumbling("1s"), agg.count(), name="summary")
w.to(kafka.sink("t", bootstrap=None, drain_timeout="1s"), name="to_kafka")
"""


def outbox_ids(box: Path) -> list[str]:
    db = sqlite3.connect(box)
    try:
        return [orjson.loads(h)[0][1] for (h,) in db.execute("SELECT headers FROM outbox")]
    finally:
        db.close()


def test_a_crash_before_the_first_snapshot_of_a_live_source_loses_nothing(
    tmp_path: Path,
) -> None:
    flow = write_flow(tmp_path / "live.py", LIVE_FLOW.format(name="live-crash"))
    state = tmp_path / "st"
    args = ("run", str(flow), "--state-dir", str(state), "--snapshot-every", "600s")
    proc = popen_edgeflow(*args)
    box = state / "outbox.sqlite"
    deadline = time.monotonic() + 90
    while depth(box) < 10:
        assert time.monotonic() < deadline and proc.poll() is None, "the flow queues records"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = outbox_ids(box)
    res = edgeflow(*args[:4], "--for", "3s", timeout=180)  # a live source never replays them
    after = outbox_ids(box)
    assert not set(before) - set(after), "records of the interrupted attempt are lost"
    assert len(after) == len(set(after)) > len(before), "nothing twice, and this run's records"
    assert f"{len(before)} records an interrupted earlier attempt" in res.stderr, res.stderr


def test_a_crash_after_a_snapshot_keeps_what_was_queued_since_once(
    tmp_path: Path,
) -> None:
    """Records queued after the last snapshot stay in the outbox across a kill -9 (kept, not
    truncated), and the records the resumed source produces again are not queued twice."""
    flow = write_flow(tmp_path / "live.py", LIVE_FLOW.format(name="live-crash-later"))
    state = tmp_path / "st"
    args = ("run", str(flow), "--state-dir", str(state), "--snapshot-every", "5s")
    proc = popen_edgeflow(*args)
    box = state / "outbox.sqlite"
    deadline = time.monotonic() + 120
    while depth(box) < 40:  # 8 s of windows: a snapshot at 5 s, records queued after it
        assert time.monotonic() < deadline and proc.poll() is None, "the flow queues records"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = outbox_ids(box)
    edgeflow(*args[:4], "--for", "3s", timeout=180)
    after = outbox_ids(box)
    assert not set(before) - set(after), "records queued after the last snapshot are lost"
    assert len(after) == len(set(after)) > len(before), "nothing twice, and this run's records"


def test_a_second_run_of_a_flow_on_the_same_outbox_is_refused_with_the_way_out(
    tmp_path: Path,
) -> None:
    name = f"twice-{os.getpid()}-{time.monotonic_ns()}"
    flow = write_flow(tmp_path / "twice.py", LIVE_FLOW.format(name=name))
    box = ROOT / ".edgeflow" / "outbox" / f"{name}.sqlite"  # no --state-dir: the shared outbox
    first = popen_edgeflow("run", str(flow), "--for", "60s")
    try:
        deadline = time.monotonic() + 90
        while depth(box) < 1:
            assert time.monotonic() < deadline and first.poll() is None, "the first run queues"
            time.sleep(0.1)
        second = edgeflow("run", str(flow), "--for", "2s", check=False)
        assert second.returncode == 1, second.stderr
        errors = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1, second.stderr
        assert f"another run of {name} (pid {first.pid})" in errors[0], errors
        assert str(box) in errors[0] and "--state-dir" in errors[0], errors
        assert first.poll() is None, "the first run goes on"
    finally:
        first.kill()
        first.communicate()
        for p in box.parent.glob(f"{name}.sqlite*"):
            p.unlink()
    # once the first run is over, the flow runs again
    edgeflow("run", str(flow), "--for", "2s")
    for p in box.parent.glob(f"{name}.sqlite*"):
        p.unlink()
