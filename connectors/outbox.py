"""The outbox: a durable local queue (SQLite in WAL mode) between a flow and Kafka.

Sinks append records to the outbox inside the flow; a forwarder drains it to Kafka in the
background and deletes only what the broker acknowledged. The flow therefore never waits
on the network, and records survive a lost uplink and a crash of the node.

Disk budget: when appending would push the outbox past ``budget_bytes``, the oldest
records of the lowest-priority stream go first (``raw`` < ``trend`` < ``summary`` <
``alert``). Records the forwarder has in flight are never dropped. Every drop is
counted per sink in the ``stats`` table, so a consumer can reconcile what is missing.

Order: records are delivered in the order they were appended (``seq``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

PRIORITIES = {"raw": 0, "trend": 1, "summary": 2, "alert": 3}
DEFAULT_BUDGET = 1 << 30

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    topic TEXT NOT NULL,
    priority INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_priority ON outbox(priority, seq);
CREATE TABLE IF NOT EXISTS stats(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def priority_of(value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    raise ValueError(f"priority {value!r}: use one of {', '.join(PRIORITIES)} or an integer")


@dataclass(frozen=True)
class OutRecord:
    """One record to publish: where, with which key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: bytes  # orjson list of [name, value] pairs

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key or b"") + len(self.headers) + 64


@dataclass(frozen=True)
class Stored:
    seq: int
    sink: str
    topic: str
    key: bytes | None
    value: bytes
    headers: bytes


class Outbox:
    """One SQLite file; shared by every sink of a process that names the same path."""

    _open: ClassVar[dict[Path, Outbox]] = {}
    _open_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def at(cls, path: Path, budget_bytes: int = DEFAULT_BUDGET) -> Outbox:
        path = path.resolve()
        with cls._open_lock:
            box = cls._open.get(path)
            if box is None:
                box = cls._open[path] = Outbox(path, budget_bytes)
            else:
                box.budget = min(box.budget, budget_bytes)
            return box

    def __init__(self, path: Path, budget_bytes: int = DEFAULT_BUDGET) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.budget = budget_bytes
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.db = self.connect()
        self.db.executescript(_SCHEMA)
        self.total_bytes = int(
            self.db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        )
        self.inflight_hi = 0  # rows with seq <= this are being sent: never dropped

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a committed append survives power loss
        return db

    # -- appending (inside the flow) ---------------------------------------------------------
    def append(self, sink: str, priority: int, records: Sequence[OutRecord]) -> int:
        """Durably append; returns the last seq written (0 if nothing). Drops per the budget."""
        if not records:
            return self.last_seq()
        with self.lock:
            keep = self._make_room(sink, priority, list(records))
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT INTO outbox(sink, topic, priority, key, value, headers, size) VALUES (?,?,?,?,?,?,?)",
                    [(sink, r.topic, priority, r.key, r.value, r.headers, r.size) for r in keep],
                )
                self._bump(f"appended.{sink}", len(keep))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.total_bytes += sum(r.size for r in keep)
            self.changed.notify_all()
            return self.last_seq()

    def _bump(self, name: str, n: int) -> None:
        if n:
            self.db.execute(
                "INSERT INTO stats(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    def _make_room(self, sink: str, priority: int, new: list[OutRecord]) -> list[OutRecord]:
        """Drop the oldest lowest-priority records until ``new`` fits; returns what of ``new`` to keep."""
        need = sum(r.size for r in new)
        while self.total_bytes + need > self.budget and (new or self.total_bytes):
            row = self.db.execute(
                "SELECT priority FROM outbox WHERE seq > ? ORDER BY priority, seq LIMIT 1",
                (self.inflight_hi,),
            ).fetchone()
            if row is None or priority < row[0]:
                if not new:
                    break
                # the incoming records are the lowest priority: drop them, oldest first
                drop = 0
                while new and self.total_bytes + need > self.budget:
                    need -= new.pop(0).size
                    drop += 1
                self.db.execute("BEGIN IMMEDIATE")
                self._bump(f"dropped.{sink}", drop)
                self.db.execute("COMMIT")
                continue
            self._drop_stored(row[0], self.total_bytes + need - self.budget)
        return new

    def _drop_stored(self, priority: int, excess: int) -> None:
        rows = self.db.execute(
            "SELECT seq, sink, size FROM outbox WHERE priority = ? AND seq > ? ORDER BY seq LIMIT 10000",
            (priority, self.inflight_hi),
        ).fetchall()
        chosen = []
        freed = 0
        for seq, sink, size in rows:
            chosen.append((seq, sink, size))
            freed += size
            if freed >= excess:
                break
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s, _, _ in chosen])
        per_sink: dict[str, int] = {}
        for _, sink, _ in chosen:
            per_sink[sink] = per_sink.get(sink, 0) + 1
        for sink, n in per_sink.items():
            self._bump(f"dropped.{sink}", n)
        self.db.execute("COMMIT")
        self.total_bytes -= freed

    def truncate_after(self, sink: str, seq: int) -> int:
        """Resume support: delete ``sink``'s records appended after ``seq`` (they will be replayed)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            rows = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE sink = ? AND seq > ?",
                (sink, seq),
            ).fetchone()
            self.db.execute("DELETE FROM outbox WHERE sink = ? AND seq > ?", (sink, seq))
            self._bump(f"appended.{sink}", -int(rows[0]))
            self.db.execute("COMMIT")
            self.total_bytes -= int(rows[1])
            return int(rows[0])

    def last_seq(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    # -- draining (the forwarder) -------------------------------------------------------------
    def fetch(self, after: int, limit: int, conn: sqlite3.Connection) -> tuple[list[Stored], int]:
        """Up to ``limit`` rows after seq ``after``, oldest first, marked in flight; and the
        newest seq allocated at that moment (nothing at or below it is missing from the result)."""
        with self.lock:
            rows = conn.execute(
                "SELECT seq, sink, topic, key, value, headers FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            if rows:
                self.inflight_hi = max(self.inflight_hi, int(rows[-1][0]))
            newest = self.last_seq()
        return [Stored(*r) for r in rows], newest

    def delivered(self, rows: Sequence[Stored], conn: sqlite3.Connection) -> None:
        """The broker acknowledged ``rows``: delete them and count them per sink."""
        if not rows:
            return
        lo, hi = rows[0].seq, rows[-1].seq
        per_sink: dict[str, int] = {}
        for r in rows:
            per_sink[r.sink] = per_sink.get(r.sink, 0) + 1
        with self.lock:
            size = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM outbox WHERE seq BETWEEN ? AND ?", (lo, hi)
            ).fetchone()[0]
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (lo, hi))
            for sink, n in per_sink.items():
                conn.execute(
                    "INSERT INTO stats(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (f"delivered.{sink}", n),
                )
            conn.execute("COMMIT")
            self.total_bytes -= int(size)
            self.changed.notify_all()

    def release(self, lo: int) -> None:
        """Sending rows from ``lo`` on failed: they stay queued and may be dropped again."""
        with self.lock:
            self.inflight_hi = min(self.inflight_hi, lo - 1)

    def wait_for_records(self, after: int, timeout: float) -> None:
        with self.changed:
            if self.last_seq() <= after:
                self.changed.wait(timeout)

    # -- reporting ------------------------------------------------------------------------
    def depth(self) -> tuple[int, int]:
        """(records waiting, bytes waiting)."""
        with self.lock:
            n, size = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
        return int(n), int(size)

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {k: int(v) for k, v in self.db.execute("SELECT name, value FROM stats")}


def read_stats(path: Path) -> dict[str, int]:
    """Counters of an outbox file, for status commands and tests (opens read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {k: int(v) for k, v in db.execute("SELECT name, value FROM stats")}
        n = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        out["depth"] = int(n)
        return out
    finally:
        db.close()


def iter_rows(path: Path) -> Iterable[tuple[int, str, bytes]]:
    """(seq, topic, value) of every waiting record, oldest first."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield from db.execute("SELECT seq, topic, value FROM outbox ORDER BY seq")
    finally:
        db.close()
