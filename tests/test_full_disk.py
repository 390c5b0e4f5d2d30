"""A full disk (a small tmpfs; the tests mount it, so they need root): the flow keeps running,
drops only the lowest priorities with exact counts, stays inside its budget and the disk,
and recovers by itself when space frees."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from edgeflow.connectors.outbox import LANES, Outbox, OutRecord, read_stats
from tests.helpers import lines, popen_edgeflow, small_disk, write_flow

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

ALL = list(range(LANES))
HEADERS = orjson.dumps([["edgeflow-id", "flow/step/dev-0001/1767225600000000000"]])


def files_on_disk(path: Path) -> int:
    """The outbox's files: database, WAL, WAL index and reserve."""
    names = [path, *(path.with_name(path.name + end) for end in ("-wal", "-shm", "-reserve"))]
    return sum(p.stat().st_size for p in names if p.exists())


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int = 0) -> None:
    """Write to a file until the disk has at most ``leave`` bytes free."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with contextlib.suppress(OSError):
            while free_bytes(path.parent) > leave:
                os.write(fd, b"x" * min(65536, max(4096, free_bytes(path.parent) - leave)))
    finally:
        os.close(fd)


def dropped(box: Path, sink: str) -> int:
    """Drops counted so far (0 while the outbox is being created)."""
    try:
        return read_stats(box).get(f"dropped.{sink}", 0)
    except sqlite3.Error:
        return 0


def batch_of(i: int, n: int = 100) -> list[OutRecord]:
    return [
        OutRecord(
            "t", f"dev-{j % 50}".encode(), f'{{"i":{i},"j":{j}}}'.encode().ljust(150), HEADERS
        )
        for j in range(n)
    ]


def test_appends_past_the_free_space_drop_only_the_lowest_priority_and_count_exactly(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "2m") as disk:
        box = Outbox(disk / "o.sqlite", budget_bytes=50_000_000)  # the disk is the limit
        for i in range(300):  # 4.5 MB of raw records, 0.15 MB of alerts
            box.append("raw", 0, batch_of(i))
            if i % 10 == 0:
                box.append("alerts", 3, batch_of(i, 5))
            assert free_bytes(disk) > 0, "the outbox leaves room for the flow's other state"
        stats = box.stats()
        assert "dropped.alerts" not in stats and stats["queued.alerts"] == 30 * 5
        assert stats["dropped.raw"] > 0
        assert stats["queued.raw"] + stats["dropped.raw"] == 300 * 100, "every record counted"
        assert box.depth()[0] == stats["queued.raw"] + stats["queued.alerts"]


def test_a_disk_someone_else_filled_is_survived_and_writes_resume_when_space_frees(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "2m") as disk:
        box = Outbox.at(disk / "o.sqlite", budget_bytes=50_000_000)  # as the flow opens it
        forwarder = Outbox(disk / "o.sqlite")  # as a forwarder process opens it
        box.append("raw", 0, batch_of(0))
        filler = disk / "filler"
        # nothing raises: what cannot be stored is counted, the rest waits in memory (each
        # step fills the disk again: a failed write frees the WAL's space for a moment)
        fill(filler)
        assert free_bytes(disk) == 0
        Outbox(disk / "o.sqlite").release(ALL, 1)  # a forwarder's first act
        filler.unlink()
        sent, _ = forwarder.fetch(ALL, 0, 40)  # in flight when the disk fills up again
        fill(filler)
        box.append("raw", 0, batch_of(1))
        fill(filler)
        assert forwarder.fetch(ALL, sent[-1].seq, 100) == ([], sent[-1].seq), (
            "no rows, and no skipping"
        )
        fill(filler)
        forwarder.delivered(ALL, sent)
        fill(filler)
        forwarder.set_status("error.0", "broker said no")
        fill(filler)
        box.append("alerts", 3, batch_of(3, 20))  # the reserve makes room: raw goes instead
        stats = box.stats()
        assert stats["queued.alerts"] == 20 and "dropped.alerts" not in stats
        assert stats["dropped.raw"] > 0
        filler.unlink()
        box.append("raw", 0, batch_of(2))
        rows, _ = forwarder.fetch(ALL, sent[-1].seq, 1000)  # also applies the waiting deletes
        stats = read_stats(disk / "o.sqlite")
        assert stats["delivered.raw"] == 40
        assert stats["queued.raw"] + stats["dropped.raw"] + 40 == 300, "every record counted"
        assert stats["depth"] == stats["queued.raw"] + 20 == len(rows)
        assert [r.sink for r in rows[-100:]] == ["raw"] * 100, "stored again once space freed"
        assert forwarder.status()["error.0"] == "broker said no"
        assert Outbox(disk / "o.sqlite").status()["error.0"] == "broker said no"


FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate

flow = Flow("full-disk")
r = flow.source(simulate.sensors(devices=20, rate_hz=10, seed=5, speed=10, duration="150s",
                                 start="2026-01-01T00:00:00Z"))
w = r.window(window.tumbling("10s"), agg.count(), agg.max("accel"), name="summary")
r.to(kafka.sink("raw", priority="raw", budget_bytes={budget}), name="raw_out")
w.to(kafka.sink("alerts", priority="alert", budget_bytes={budget}), name="alerts_out")
r.to(files.sink({raw!r}))
w.to(files.sink({alerts!r}))
"""


def test_a_flow_on_a_full_disk_keeps_running_drops_raw_first_and_recovers(
    tmp_path: Path,
) -> None:
    budget = 1_500_000
    raw, alerts = tmp_path / "raw.jsonl", tmp_path / "alerts.jsonl"
    flow = write_flow(
        tmp_path / "f.py", FLOW.format(budget=budget, raw=str(raw), alerts=str(alerts))
    )
    with small_disk(tmp_path / "disk", "3m") as disk:
        fill(disk / "filler", leave=1_200_000)  # less room than the budget
        state = disk / "st"
        box = state / "outbox.sqlite"
        proc = popen_edgeflow("run", str(flow), "--state-dir", str(state))
        try:
            deadline = time.monotonic() + 90
            while not (box.exists() and dropped(box, "raw_out") > 0):
                assert time.monotonic() < deadline and proc.poll() is None, "drops start"
                time.sleep(0.1)
            crowded = files_on_disk(box)
            (disk / "filler").unlink()  # space frees up
            peak, least_free = 0, free_bytes(disk)
            while proc.poll() is None:
                assert time.monotonic() < deadline + 60, "the flow ends"
                peak = max(peak, files_on_disk(box))
                least_free = min(least_free, free_bytes(disk))
                time.sleep(0.1)
            _out, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        print(
            f"outbox while crowded {crowded} B, peak {peak} B of {budget}, least free {least_free} B"
        )
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "panicked" not in err
        stats = read_stats(box)
        produced_raw, produced_alerts = len(lines(raw)), len(lines(alerts))
        assert (produced_raw, produced_alerts) == (20 * 10 * 150, 20 * 15)
        assert stats.get("dropped.alerts_out", 0) == 0, "alerts are kept"
        assert stats["queued.alerts_out"] == produced_alerts
        assert stats["queued.raw_out"] + stats["dropped.raw_out"] == produced_raw, "exact counts"
        assert stats["depth"] == stats["queued.raw_out"] + produced_alerts
        assert f"{stats['dropped.raw_out']} dropped" in err
        assert peak <= budget, f"the outbox took {peak} bytes of a {budget} byte budget"
        assert least_free > 0
        assert files_on_disk(box) > crowded * 1.3, "it grew again once space was free"
