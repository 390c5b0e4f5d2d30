"""The outbox: a durable local queue (SQLite in WAL mode) between a flow and Kafka.

Sinks append records to the outbox inside the flow; a forwarder drains it to Kafka in the
background and deletes only what the broker acknowledged. The flow therefore never waits
on the network, and records survive a lost uplink and a crash of the node.

Disk budget: when appending would push the outbox past ``budget_bytes``, the oldest
records of the lowest-priority stream go first (``raw`` < ``trend`` < ``summary`` <
``alert``). Records the forwarder has in flight are never dropped. Every drop is
counted per sink in the ``stats`` table, so a consumer can reconcile what is missing.

Order: each record belongs to a *lane* (a hash of its key); a forwarder process owns a set
of lanes and sends each lane in append order (``seq``), so a key's records stay in order.
Several forwarder processes may drain one outbox: the byte total and the in-flight marks
live in the database, so appends and drops see what every process did.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

PRIORITIES = {"raw": 0, "trend": 1, "summary": 2, "alert": 3}
DEFAULT_BUDGET = 1 << 30
LANES = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
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
CREATE TABLE IF NOT EXISTS status(name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO stats(name, value) SELECT 'bytes', COALESCE(SUM(size), 0) FROM outbox;
"""


def lane_of(key: bytes | None) -> int:
    return zlib.crc32(key) % LANES if key else 0


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

    @property
    def lane(self) -> int:
        return lane_of(self.key)


@dataclass(frozen=True)
class Stored:
    seq: int
    sink: str
    topic: str
    key: bytes | None
    value: bytes
    headers: bytes


class Outbox:
    """One SQLite file. In a process, sinks naming the same path share one object (:meth:`at`);
    forwarder processes open their own."""

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
        self.path = path.resolve()
        self.budget = budget_bytes
        self.lock = threading.RLock()
        self.db = sqlite3.connect(
            self.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed append survives power loss
        self._migrate()
        self.db.executescript(_SCHEMA)  # runs in its own transaction

    def _migrate(self) -> None:
        """Bring an outbox written by an older edgeflow up to this schema, keeping its records."""
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(outbox)")}
        if cols and "lane" not in cols:  # before lanes: everything goes to lane 0, in order
            self.db.execute("ALTER TABLE outbox ADD COLUMN lane INTEGER NOT NULL DEFAULT 0")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _stat(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM stats WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, name: str, n: int) -> None:
        if n:
            self.db.execute(
                "INSERT INTO stats(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    def _set(self, name: str, n: int) -> None:
        self.db.execute(
            "INSERT INTO stats(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, n),
        )

    @property
    def total_bytes(self) -> int:
        with self.lock:
            return self._stat("bytes")

    # -- appending (inside the flow) ---------------------------------------------------------
    def append(self, sink: str, priority: int, records: Sequence[OutRecord]) -> int:
        """Durably append (committed and fsync'ed on return); drops per the budget. Returns the last seq."""
        with self._tx():
            keep = self._make_room(sink, priority, list(records))
            self.db.executemany(
                "INSERT INTO outbox(lane, sink, topic, priority, key, value, headers, size) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (r.lane, sink, r.topic, priority, r.key, r.value, r.headers, r.size)
                    for r in keep
                ],
            )
            self._bump(f"appended.{sink}", len(keep))
            self._bump("bytes", sum(r.size for r in keep))
            return self.last_seq()

    _DROPPABLE = "seq > COALESCE((SELECT value FROM stats WHERE name = 'inflight.' || lane), 0)"

    def _make_room(self, sink: str, priority: int, new: list[OutRecord]) -> list[OutRecord]:
        """Drop the oldest lowest-priority records until ``new`` fits; returns what of ``new`` to keep."""
        need = sum(r.size for r in new)
        total = self._stat("bytes")
        while total + need > self.budget and new:
            row = self.db.execute(
                f"SELECT priority FROM outbox WHERE {self._DROPPABLE} ORDER BY priority, seq LIMIT 1"
            ).fetchone()
            if row is None or priority < row[0]:
                # the incoming records are the lowest priority: drop them, oldest first
                drop = 0
                while new and total + need > self.budget:
                    need -= new.pop(0).size
                    drop += 1
                self._bump(f"dropped.{sink}", drop)
                continue
            total -= self._drop_stored(row[0], total + need - self.budget)
        return new

    def _drop_stored(self, priority: int, excess: int) -> int:
        rows = self.db.execute(
            f"SELECT seq, sink, size FROM outbox WHERE priority = ? AND {self._DROPPABLE} ORDER BY seq LIMIT 10000",
            (priority,),
        ).fetchall()
        freed = 0
        per_sink: dict[str, int] = {}
        chosen = []
        for seq, sink, size in rows:
            chosen.append((seq,))
            per_sink[sink] = per_sink.get(sink, 0) + 1
            freed += size
            if freed >= excess:
                break
        self.db.executemany("DELETE FROM outbox WHERE seq = ?", chosen)
        for sink, n in per_sink.items():
            self._bump(f"dropped.{sink}", n)
        self._bump("bytes", -freed)
        return freed

    def truncate_after(self, sink: str, seq: int) -> int:
        """Resume support: delete ``sink``'s records appended after ``seq`` (they will be replayed)."""
        with self._tx():
            n, size = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE sink = ? AND seq > ?",
                (sink, seq),
            ).fetchone()
            self.db.execute("DELETE FROM outbox WHERE sink = ? AND seq > ?", (sink, seq))
            self._bump(f"appended.{sink}", -int(n))
            self._bump("bytes", -int(size))
            return int(n)

    def last_seq(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    # -- draining (a forwarder owns some lanes) ------------------------------------------------
    def fetch(self, lanes: Sequence[int], after: int, limit: int) -> tuple[list[Stored], int]:
        """Up to ``limit`` rows of ``lanes`` after seq ``after``, oldest first, marked in flight; and
        the newest seq allocated at that moment (nothing of these lanes up to it is left out)."""
        marks = ",".join(str(int(x)) for x in lanes)
        with self._tx():
            rows = self.db.execute(
                f"SELECT seq, sink, topic, key, value, headers FROM outbox WHERE lane IN ({marks}) AND seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            if rows:
                for lane in lanes:
                    self._set(f"inflight.{lane}", int(rows[-1][0]))
            newest = self.last_seq()
        return [Stored(*r) for r in rows], newest

    def delivered(self, lanes: Sequence[int], rows: Sequence[Stored]) -> None:
        """The broker acknowledged ``rows`` (fetched for ``lanes``): delete and count them."""
        if not rows:
            return
        marks = ",".join(str(int(x)) for x in lanes)
        lo, hi = rows[0].seq, rows[-1].seq
        per_sink: dict[str, int] = {}
        for r in rows:
            per_sink[r.sink] = per_sink.get(r.sink, 0) + 1
        where = f"lane IN ({marks}) AND seq BETWEEN ? AND ?"
        with self._tx():
            size = self.db.execute(
                f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE {where}", (lo, hi)
            ).fetchone()[0]
            self.db.execute(f"DELETE FROM outbox WHERE {where}", (lo, hi))
            for sink, n in per_sink.items():
                self._bump(f"delivered.{sink}", n)
            self._bump("bytes", -int(size))

    def release(self, lanes: Sequence[int], lo: int) -> None:
        """Sending from seq ``lo`` on failed: those rows stay queued and may be dropped again."""
        with self._tx():
            for lane in lanes:
                self._set(f"inflight.{lane}", max(0, lo - 1))

    def record_count(self, rejected_sink: str) -> None:
        with self._tx():
            self._bump(f"rejected.{rejected_sink}", 1)

    # -- reporting ------------------------------------------------------------------------
    def depth(self) -> tuple[int, int]:
        """(records waiting, bytes waiting)."""
        with self.lock:
            n = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return int(n), self._stat("bytes")

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {k: int(v) for k, v in self.db.execute("SELECT name, value FROM stats")}

    def set_status(self, name: str, value: str) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO status(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def status(self) -> dict[str, str]:
        with self.lock:
            return dict(self.db.execute("SELECT name, value FROM status").fetchall())


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
