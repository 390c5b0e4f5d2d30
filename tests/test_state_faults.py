"""Faults of the state directory and of a sink's disk (#12 hostile #2, #3, #7): a full disk
at start or while the flow runs, a damaged or missing snapshot file, a truncated plan.json,
a files.sink on a full disk. Each ends as ONE error line naming the file and what to do,
exit 1, with no engine panic and no Python traceback; the state stays resumable."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edgeflow.engine import runner
from tests.helpers import edgeflow, lines, popen_edgeflow, small_disk, write_flow

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate

flow = Flow("state-faults")
r = flow.source(simulate.sensors(devices={devices}, rate_hz=10, seed=3, speed={speed},
                                 duration="{duration}", start="2026-01-01T00:00:00Z"))
r.window(window.tumbling("1s"), agg.count(), agg.mean("temp"), name="summary").to(
    files.sink({out!r}))
"""


def make_flow(
    tmp: Path, out: Path, *, devices: int = 5, speed: str = "None", duration: str = "3s"
) -> Path:
    body = FLOW.format(devices=devices, speed=speed, duration=duration, out=str(out))
    return write_flow(tmp / "flow.py", body)


def assert_one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, exactly one error line (holding every needle), no panic, no traceback."""
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "panicked" not in out and "Traceback" not in out and "RUST_BACKTRACE" not in out, out
    errors = [x for x in out.splitlines() if x.lower().startswith("error:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def fill(path: Path) -> None:
    """Write to ``path`` until its disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 512)
    finally:
        os.close(fd)


def good_state(tmp: Path) -> tuple[Path, Path]:
    """A finished run's state directory (snapshots in state/recovery) and its flow."""
    flow = make_flow(tmp, tmp / "out.jsonl")
    state = tmp / "state"
    edgeflow("run", str(flow), "--state-dir", str(state))
    assert (state / "recovery" / "part-0.sqlite3").is_file()
    return flow, state


def test_a_garbled_snapshot_file_is_one_error_line_naming_it(tmp_path: Path) -> None:
    flow, state = good_state(tmp_path)
    part = state / "recovery" / "part-0.sqlite3"
    with part.open("r+b") as f:
        f.write(b"garbage!" * 16)  # over the SQLite header
    res = edgeflow("run", str(flow), "--state-dir", str(state), check=False)
    assert_one_error_line(res, str(part), "--new-state")
    edgeflow("run", str(flow), "--state-dir", str(state), "--new-state")  # the way out works


def test_a_deleted_snapshot_file_is_one_error_line_naming_it(tmp_path: Path) -> None:
    flow, state = good_state(tmp_path)
    (state / "recovery" / "part-0.sqlite3").unlink()
    res = edgeflow("run", str(flow), "--state-dir", str(state), check=False)
    assert_one_error_line(res, str(state / "recovery"), "part-", "--new-state")


def test_a_missing_partition_among_several_is_named(tmp_path: Path) -> None:
    flow, state = good_state(tmp_path)
    recovery = state / "recovery"
    # the engine's store split in two partitions, the second one lost
    shutil.rmtree(recovery)
    recovery.mkdir()
    from bytewax.recovery import init_db_dir

    init_db_dir(recovery, 2)  # type: ignore[no-untyped-call]
    (recovery / "part-1.sqlite3").unlink()
    res = edgeflow("run", str(flow), "--state-dir", str(state), check=False)
    assert_one_error_line(res, "part-1.sqlite3", "--new-state")


def test_a_truncated_plan_json_is_reported_as_damaged_not_as_a_changed_flow(
    tmp_path: Path,
) -> None:
    flow, state = good_state(tmp_path)
    plan = state / "plan.json"
    plan.write_bytes(plan.read_bytes()[:40])
    res = edgeflow("run", str(flow), "--state-dir", str(state), check=False)
    line = assert_one_error_line(res, str(plan), "damaged", "--new-state")
    assert "changed" not in line


def test_plan_json_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeflow.cli.loader import load_flow

    flow = make_flow(tmp_path, tmp_path / "out.jsonl")
    plan = load_flow(str(flow)).plan()
    state = tmp_path / "state"

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.os, "fsync", disk_full)
    state.mkdir()
    with pytest.raises(OSError, match="No space"):
        runner._check_plan_unchanged(plan, state)
    assert not (state / "plan.json").exists()
    assert list(state.iterdir()) == [], "no temporary file left behind"
    monkeypatch.undo()
    runner._check_plan_unchanged(plan, state)
    assert runner.state_mismatch(plan, state) is None


@needs_root
def test_a_state_dir_on_a_full_disk_is_one_error_line_and_leaves_no_plan(
    tmp_path: Path,
) -> None:
    flow = make_flow(tmp_path, tmp_path / "out.jsonl")
    with small_disk(tmp_path / "disk") as disk:
        fill(disk / "filler")
        state = disk / "st"
        res = edgeflow("run", str(flow), "--state-dir", str(state), check=False)
        assert_one_error_line(res, "disk is full", str(state))
        assert not (state / "plan.json").exists()
        (disk / "filler").unlink()
        edgeflow("run", str(flow), "--state-dir", str(state))  # space freed: it runs


@needs_root
def test_existing_state_on_a_full_disk_is_one_error_line(tmp_path: Path) -> None:
    flow, state = good_state(tmp_path)
    with small_disk(tmp_path / "disk") as disk:
        shutil.copytree(state, disk / "st")
        fill(disk / "filler")
        res = edgeflow("run", str(flow), "--state-dir", str(disk / "st"), check=False)
        assert_one_error_line(res, "disk is full", str(disk / "st"))


@needs_root
def test_a_disk_that_fills_while_the_flow_runs_is_one_line_and_the_run_resumes_exactly(
    tmp_path: Path,
) -> None:
    ref_out = tmp_path / "ref.jsonl"
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    edgeflow("run", str(make_flow(ref_dir, ref_out, devices=20, duration="40s")))
    out = tmp_path / "out.jsonl"
    flow = make_flow(tmp_path, out, devices=20, speed="4", duration="40s")  # ~10 s of input
    with small_disk(tmp_path / "disk") as disk:
        state = disk / "st"
        args = ("run", str(flow), "--state-dir", str(state), "--snapshot-every", "100ms")
        proc = popen_edgeflow(*args)
        try:
            deadline = time.monotonic() + 60
            while len(lines(out)) < 40:  # running, with snapshots
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
            fill(disk / "filler")
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert_one_error_line(res, "disk is full", str(state), "resumes")
        (disk / "filler").unlink()
        edgeflow(*args)  # space freed: it resumes from the last snapshot
    assert sorted(lines(out)) == sorted(lines(ref_out)), "the resumed run's output is exact"


@needs_root
def test_a_files_sink_on_a_full_disk_is_one_error_line_naming_the_file(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "out.jsonl"
        flow = make_flow(tmp_path, out, devices=200, duration="120s")
        fill(disk / "filler")
        res = edgeflow("run", str(flow), check=False)
        assert_one_error_line(res, str(out), "disk is full", "sink")


@needs_root
def test_a_deployment_on_a_full_disk_waits_for_space_then_runs(tmp_path: Path) -> None:
    """Under the supervisor (EDGEFLOW_STATS_FILE set) a full disk at start is waited for,
    not a crash loop that ends in `failed`."""
    out = tmp_path / "out.jsonl"
    flow = make_flow(tmp_path, out)
    env = {**os.environ, "EDGEFLOW_STATS_FILE": str(tmp_path / "stats.json")}
    with small_disk(tmp_path / "disk") as disk:
        fill(disk / "filler")
        proc = popen_edgeflow("run", str(flow), "--state-dir", str(disk / "st"), env=env)
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()  # blocks until the wait is announced
            assert first.startswith("waiting: the state directory's disk is full"), first
            assert proc.poll() is None, "it waits instead of exiting"
            (disk / "filler").unlink()
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, stderr
        assert "panicked" not in stderr and "Traceback" not in stderr
        assert len(lines(out)) == 5 * 3, "the run went ahead once space freed"


BROKEN_SINK_FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import simulate
from edgeflow.connectors.base import SinkPartition, SinkSpec


class Part(SinkPartition):
    def write(self, batches):
        raise ValueError("the device refused the record")

    def close(self):
        if {close_fails}:  # while the engine unwinds: would abort the process
            raise OSError("the device is gone")


class Broken(SinkSpec):
    kind = "broken"
    stateful = {stateful}

    def describe(self):
        return {{"kind": self.kind}}

    def open(self, partition, resume, ctx):
        return Part()


flow = Flow("broken-sink")
r = flow.source(simulate.sensors(devices=3, rate_hz=10, seed=3, duration="3s",
                                 start="2026-01-01T00:00:00Z"))
r.window(window.tumbling("1s"), agg.count(), name="summary").to(Broken(), name="to_device")
"""


@pytest.mark.parametrize(("stateful", "close_fails"), [(True, False), (False, True), (True, True)])
def test_any_step_failure_is_one_line_naming_the_step_with_the_detail_in_a_file(
    tmp_path: Path, stateful: bool, close_fails: bool
) -> None:
    body = BROKEN_SINK_FLOW.format(stateful=stateful, close_fails=close_fails)
    flow = write_flow(tmp_path / "flow.py", body)
    state = tmp_path / "state"
    res = edgeflow("run", str(flow), "--state-dir", str(state), check=False)
    line = assert_one_error_line(res, "'to_device'", "the device refused the record")
    detail = state / "engine-error.log"
    assert f"(details: {detail})" in line
    text = detail.read_text()
    assert "Traceback" in text and "ValueError: the device refused the record" in text


@needs_root
def test_an_io_error_of_the_snapshot_store_on_a_full_disk_says_the_disk_is_full(
    tmp_path: Path,
) -> None:
    from edgeflow.engine.state_faults import recovery_failure_line

    failure = (
        "(src/run.rs:167:13) called `Result::unwrap()` on an `Err` value: SqliteFailure(Error "
        '{ code: SystemIoFailure, extended_code: 4874 }, Some("disk I/O error"))'
    )
    with small_disk(tmp_path / "disk") as disk:
        fill(disk / "filler")
        assert "disk is full" in (recovery_failure_line(disk, failure) or "")
        (disk / "filler").unlink()
        said = recovery_failure_line(disk, failure) or ""
        assert "disk I/O error" in said and "--new-state" in said  # not a full disk: damage
