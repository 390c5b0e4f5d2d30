"""The outbox on its own: durability, order, budget and priority drops, resume truncation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgeflow.connectors.outbox import LANES, Outbox, OutRecord, priority_of, read_stats


def recs(n: int, tag: str, size: int = 100) -> list[OutRecord]:
    # every record has the same size, so budgets can be written in records
    return [OutRecord("t", b"k", f"{tag}-{i}".encode().ljust(size, b"."), b"[]") for i in range(n)]


ALL = list(range(LANES))


def values(box: Outbox) -> list[str]:
    rows, _ = box.fetch(ALL, 0, 10_000)
    box.release(ALL, 1)  # only looking
    return [r.value.rstrip(b".").decode() for r in rows]


def test_records_come_out_in_append_order_and_survive_reopening(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.append("a", 2, recs(3, "x"))
    box.append("b", 0, recs(2, "y"))
    assert values(box) == ["x-0", "x-1", "x-2", "y-0", "y-1"]
    again = Outbox(tmp_path / "o.sqlite")
    assert values(again) == ["x-0", "x-1", "x-2", "y-0", "y-1"]
    assert again.total_bytes == box.total_bytes


def test_budget_drops_oldest_of_lowest_priority_and_counts_per_sink(tmp_path: Path) -> None:
    one = recs(1, "z")[0].size
    box = Outbox(tmp_path / "o.sqlite", budget_bytes=10 * one)
    box.append("raw", priority_of("raw"), recs(6, "raw"))
    box.append("alerts", priority_of("alert"), recs(3, "alert"))
    box.append("summary", priority_of("summary"), recs(4, "sum"))  # 13 > 10: three raw go
    assert values(box) == [
        "raw-3",
        "raw-4",
        "raw-5",
        "alert-0",
        "alert-1",
        "alert-2",
        "sum-0",
        "sum-1",
        "sum-2",
        "sum-3",
    ]
    box.append(
        "alerts", priority_of("alert"), recs(5, "late-alert")
    )  # the rest of raw, then oldest summaries
    got = values(box)
    assert not any(v.startswith("raw") for v in got)
    assert [v for v in got if "alert" in v] == ["alert-0", "alert-1", "alert-2"] + [
        f"late-alert-{i}" for i in range(5)
    ]
    stats = box.stats()
    assert stats["dropped.raw"] == 6
    assert stats["dropped.summary"] == 2
    assert "dropped.alerts" not in stats
    assert box.depth()[0] == 10
    assert read_stats(tmp_path / "o.sqlite")["depth"] == 10


def test_incoming_low_priority_records_are_dropped_when_only_higher_ones_are_stored(
    tmp_path: Path,
) -> None:
    one = recs(1, "z")[0].size
    box = Outbox(tmp_path / "o.sqlite", budget_bytes=4 * one)
    box.append("alerts", 3, recs(3, "alert"))
    box.append("raw", 0, recs(5, "raw"))  # only one fits: the four oldest incoming go
    assert values(box) == ["alert-0", "alert-1", "alert-2", "raw-4"]
    assert box.stats()["dropped.raw"] == 4


def test_records_in_flight_are_never_dropped(tmp_path: Path) -> None:
    one = recs(1, "z")[0].size
    box = Outbox(tmp_path / "o.sqlite", budget_bytes=4 * one)
    box.append("raw", 0, recs(4, "raw"))
    in_flight, _ = box.fetch(ALL, 0, 2)  # the forwarder is sending raw-0 and raw-1
    box.append("raw", 0, recs(2, "new"))
    rows = [
        v.rstrip(b".").decode() for (v,) in box.db.execute("SELECT value FROM outbox ORDER BY seq")
    ]
    assert rows[:2] == ["raw-0", "raw-1"]
    assert rows[2:] == ["new-0", "new-1"]
    box.delivered(ALL, in_flight)
    assert box.stats()["delivered.raw"] == 2
    assert box.depth()[0] == 2


def test_truncate_after_removes_only_that_sinks_later_records(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    s1 = box.append("a", 2, recs(2, "a"))
    box.append("b", 2, recs(1, "b"))
    box.append("a", 2, recs(2, "a-after"))
    assert box.truncate_after("a", s1) == 2
    assert values(box) == ["a-0", "a-1", "b-0"]


def test_appends_are_durable_in_wal_mode(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.append("a", 2, recs(3, "a"))
    other = sqlite3.connect(tmp_path / "o.sqlite")  # another process's view
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 3


def test_bad_priority_says_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="raw, trend, summary, alert"):
        priority_of("urgent")


def test_two_processes_share_the_byte_total_and_in_flight_marks(tmp_path: Path) -> None:
    one = recs(1, "z")[0].size
    flow_side = Outbox(tmp_path / "o.sqlite", budget_bytes=4 * one)
    forwarder_side = Outbox(tmp_path / "o.sqlite")  # another connection, as in a forwarder process
    flow_side.append("raw", 0, recs(4, "raw"))
    sent, _ = forwarder_side.fetch(ALL, 0, 2)
    forwarder_side.delivered(ALL, sent)
    assert flow_side.total_bytes == 2 * one, "the flow side sees the forwarder's deletes"
    in_flight, _ = forwarder_side.fetch(ALL, 0, 1)  # raw-2 is being sent
    flow_side.append("raw", 0, recs(3, "new"))  # needs room: raw-3 goes, raw-2 is in flight
    assert [r.value.rstrip(b".").decode() for r in in_flight] == ["raw-2"]
    assert values(flow_side) == ["raw-2", "new-0", "new-1", "new-2"]


def test_an_outbox_from_before_lanes_is_migrated_with_its_records(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "o.sqlite")
    old.executescript(
        "CREATE TABLE outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, topic TEXT NOT NULL,"
        " priority INTEGER NOT NULL, key BLOB, value BLOB NOT NULL, headers BLOB NOT NULL, size INTEGER NOT NULL);"
        "CREATE TABLE stats(name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO outbox(sink, topic, priority, key, value, headers, size) VALUES ('s', 't', 2, x'6b', x'6f6c64', x'5b5d', 70);"
    )
    old.commit()
    old.close()
    box = Outbox(tmp_path / "o.sqlite")
    assert box.total_bytes == 70
    box.append("s", 2, recs(1, "new"))
    assert values(box) == ["old", "new-0"]
