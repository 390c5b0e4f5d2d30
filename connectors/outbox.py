"""The outbox: a durable local queue (SQLite in WAL mode) between a flow and Kafka.

Sinks append records to the outbox inside the flow; a forwarder drains it to Kafka in the
background and deletes only what the broker acknowledged. The flow therefore never waits
on the network, and records survive a lost uplink and a crash of the node.

Disk budget: ``budget_bytes`` bounds the outbox's files on disk: the database, its
write-ahead log (WAL) and the WAL index together (for budgets of at least 256 kB; a smaller
budget bounds the records' bytes only). The WAL is kept to an eighth of the budget
(``journal_size_limit``, and ``wal_checkpoint(TRUNCATE)`` once it passes half of that),
appends are cut into transactions that fit it, and the database's pages hold the
rest (and a small reserve file, see below). When appending would go past the budget, or
past what the file system has free (keeping a little for the flow's other state), the
oldest records of the lowest-priority
stream go first (``raw`` < ``trend`` < ``summary`` < ``alert``). Records the forwarder has
in flight are never dropped. Every drop is counted per sink in the ``stats`` table, so a
consumer can reconcile what is missing.

A full disk is not fatal: the flow's appends drop by priority to fit in what is left; when
the disk refuses a write anyway (someone else filled it), a checkpoint frees the WAL and,
for records of a higher priority than some stored ones, the flow's reserve file
(``outbox.sqlite-reserve``, up to 256 kB, made again once there is room) is given up, so
that dropping the lower priorities to store them can still be written; a write the disk
refuses even then drops the incoming records and counts them; the counters, in-flight marks and status lines a full disk refused are
kept in memory and written with the next write that succeeds. Forwarder calls
(:meth:`Outbox.fetch`, :meth:`~Outbox.delivered`, :meth:`~Outbox.release`,
:meth:`~Outbox.set_status`) never raise on a full disk: they log once and retry later.
Writes go on by themselves once space frees.

Identity: each outbox has a random id (``status`` row ``id``) so a sink's snapshot can tell
its own outbox from a replaced one.

Order: each record belongs to a *lane* (a hash of its key); a forwarder process owns a set
of lanes and sends each lane in append order (``seq``), so a key's records stay in order.
Several forwarder processes may drain one outbox: the byte total and the in-flight marks
live in the database, so appends and drops see what every process did.

Exactly-once (a transactional forwarder, ``kafka.sink(..., exactly_once=True)``): rows a Kafka
transaction committed are deleted with ``keep_ids=True``, which keeps their ``edgeflow-id``
(with sink and seq) in the ``committed`` table, so a sink resuming from a snapshot taken
before they were appended recognises their replay (:meth:`Outbox.committed_ids_after`) and
does not queue them again; :meth:`Outbox.forget_committed` drops the ids no resume can
replay any more.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import orjson

from edgeflow.errors import EdgeflowError

PRIORITIES = {"raw": 0, "trend": 1, "summary": 2, "alert": 3}
DEFAULT_BUDGET = 1 << 30
LANES = 8
#: below this, ``budget_bytes`` bounds the records' bytes only (an empty outbox takes ~30 kB)
MIN_DISK_BUDGET = 256 * 1024
#: the WAL index (``-shm``) file
SHM_BYTES = 32 * 1024
#: space left free on the file system for the flow's other state (snapshots, logs)
KEEP_FREE_MAX = 4 << 20
#: the flow side keeps a reserve file of up to this size, given up when the disk is full so
#: that dropping low priorities to store high ones can still be written
RESERVE_MAX = 256 << 10
#: pages a record takes on disk, relative to its size estimate (cells, index, page slack)
GROWTH = 1.25

log = logging.getLogger("edgeflow.outbox")

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
CREATE TABLE IF NOT EXISTS committed(id TEXT PRIMARY KEY, sink TEXT NOT NULL, seq INTEGER NOT NULL);
"""

# one-time set-up of the counters (an outbox written by an older edgeflow gets them too)
_COUNTERS = """
INSERT OR IGNORE INTO stats(name, value) SELECT 'bytes', COALESCE(SUM(size), 0) FROM outbox;
INSERT OR IGNORE INTO stats(name, value)
    SELECT 'queued.' || sink, COUNT(*) FROM outbox
    WHERE NOT EXISTS (SELECT 1 FROM status WHERE name = 'queued_counted') GROUP BY sink;
INSERT OR IGNORE INTO status(name, value) VALUES ('queued_counted', '1');
"""


class OutboxError(EdgeflowError):
    """The outbox cannot be used as it is (damaged, not a database, or lost records)."""


def storage_full(exc: BaseException) -> bool:
    """True when SQLite could not write because the disk is full (or refused the write)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    text = str(exc)
    return "disk is full" in text or "disk I/O error" in text


def lane_of(key: bytes | None) -> int:
    return zlib.crc32(key) % LANES if key else 0


def priority_of(value: str | int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    raise ValueError(f"priority {value!r}: use one of {', '.join(PRIORITIES)} or an integer")


def _size(value: bytes, key: bytes | None, headers: bytes) -> int:
    return len(value) + len(key or b"") + len(headers) + 64


@dataclass(frozen=True)
class OutRecord:
    """One record to publish: where, with which key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: bytes  # orjson list of [name, value] pairs

    @property
    def size(self) -> int:
        return _size(self.value, self.key, self.headers)

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

    @property
    def size(self) -> int:
        return _size(self.value, self.key, self.headers)


@dataclass
class _Pending:
    """Writes a full disk refused, applied first in the next write transaction that succeeds."""

    bumps: dict[str, int] = field(default_factory=dict)
    sets: dict[str, int] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    def bump(self, name: str, n: int) -> None:
        self.bumps[name] = self.bumps.get(name, 0) + n

    def __bool__(self) -> bool:
        return bool(self.bumps or self.sets or self.status)


def _make_private(path: Path) -> None:
    """The outbox holds the flow's records: its file is 0600 whatever the umask (SQLite gives
    the ``-wal`` and ``-shm`` files the mode of the database file); an outbox an older
    edgeflow made 0644 is restricted. Errors (a full disk) are left to SQLite to report."""
    with contextlib.suppress(OSError):
        os.close(_private_fd(path))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            os.chmod(p, 0o600)


def _private_fd(path: Path) -> int:
    """``path`` opened for appending, created 0600 if missing."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Outbox:
    """One SQLite file. In a process, sinks naming the same path share one object (:meth:`at`);
    forwarder processes open their own (and take the budget the flow stored in the file)."""

    _open: ClassVar[dict[Path, Outbox]] = {}
    _open_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def at(cls, path: Path, budget_bytes: int | None = None) -> Outbox:
        path = path.resolve()
        with cls._open_lock:
            box = cls._open.get(path)
            if box is None:
                box = cls._open[path] = Outbox(path, budget_bytes)
                if budget_bytes is not None:
                    box.set_status("budget", str(box.budget))  # forwarders use it too
                box.keep_reserve()
            elif budget_bytes is not None and budget_bytes < box.budget:
                box.budget = budget_bytes
                box.set_status("budget", str(box.budget))
            return box

    def __init__(self, path: Path, budget_bytes: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path.resolve()
        _make_private(self.path)
        self.wal_path = self.path.with_name(self.path.name + "-wal")
        self.lock = threading.RLock()
        self._pending = _Pending()
        self._undeleted: list[tuple[tuple[int, ...], list[Stored], bool]] = []
        self._rejected: dict[str, int] = {}  # sent and refused by Kafka, not yet deleted
        self._full_since: float | None = None  # the disk refuses writes since then
        self._refused = 0  # incoming records a full disk refused (counted as dropped)
        self._squeeze = False  # the disk refused a write: make room inside the file only
        self.reserve_path = self.path.with_name(self.path.name + "-reserve")
        self._reserve = 0  # bytes of reserve this side keeps (the flow's side, see keep_reserve)
        try:
            self.db = sqlite3.connect(
                self.path, timeout=60, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed append survives power loss
            self.page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
            self._migrate()
            self.db.executescript(_SCHEMA)  # runs in its own transaction
            with contextlib.suppress(sqlite3.OperationalError):  # a full disk: done later
                self.db.executescript(_COUNTERS)
                self.db.execute(
                    "INSERT OR IGNORE INTO status(name, value) VALUES ('id', ?)",
                    (uuid.uuid4().hex,),
                )
            ident = self.db.execute("SELECT value FROM status WHERE name = 'id'").fetchone()
            stored = self.db.execute("SELECT value FROM status WHERE name = 'budget'").fetchone()
        except sqlite3.Error as exc:
            with contextlib.suppress(Exception):
                self.db.close()
            full = " (the disk is full: free some space)" if storage_full(exc) else ""
            raise OutboxError(
                f"cannot open the outbox {self.path}: {exc} (SQLite){full}. It holds the "
                "records waiting for Kafka: restore it (with its -wal file) from a backup; or "
                "move it aside and run again with EDGEFLOW_ACCEPT_OUTBOX_LOSS=1 to start with "
                "an empty outbox (the records it held are counted as lost)"
            ) from None
        #: a random id stored in the file: a replaced outbox has another one
        self.identity: str = ident[0] if ident else ""
        self.budget = (
            budget_bytes
            if budget_bytes is not None
            else int(stored[0])
            if stored
            else DEFAULT_BUDGET
        )

    def _migrate(self) -> None:
        """Bring an outbox written by an older edgeflow up to this schema, keeping its records."""
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(outbox)")}
        if cols and "lane" not in cols:  # before lanes: everything goes to lane 0, in order
            self.db.execute("ALTER TABLE outbox ADD COLUMN lane INTEGER NOT NULL DEFAULT 0")

    # -- the disk budget -----------------------------------------------------------------------
    @property
    def budget(self) -> int:
        return self._budget

    @budget.setter
    def budget(self, value: int) -> None:
        """Set the budget, and the WAL limits that follow from it (see the module docstring)."""
        self._budget = int(value)
        try:  # a small disk gets a small WAL too
            st = os.statvfs(self.path.parent)
            disk = st.f_blocks * st.f_frsize
        except OSError:
            disk = self._budget
        self.wal_cap = min(64 << 20, max(64 << 10, min(self._budget, disk) // 8))
        self.reserve_cap = min(RESERVE_MAX, self.wal_cap // 2)
        self.file_cap: int | None = (
            self._budget - self.wal_cap - SHM_BYTES - self.reserve_cap
            if self._budget >= MIN_DISK_BUDGET
            else None
        )
        self.chunk_bytes = max(8 << 10, self.wal_cap // 8)
        with self.lock:
            self.db.execute(f"PRAGMA journal_size_limit = {self.wal_cap // 4}")
            self.db.execute(
                f"PRAGMA wal_autocheckpoint = {max(4, self.wal_cap // 4 // self.page_size)}"
            )

    def disk_bytes(self) -> int:
        """Bytes of the outbox's files on disk: the database, its WAL, the WAL index and the
        reserve."""
        shm = self.path.with_name(self.path.name + "-shm")
        return sum(_file_size(p) for p in (self.path, self.wal_path, shm, self.reserve_path))

    def keep_reserve(self) -> None:
        """Keep a reserve file next to the outbox (the flow's side does): on a full disk it is
        deleted so that the transaction dropping low priorities for high ones can be written,
        and it is made again once the disk has room."""
        self._reserve = self.reserve_cap
        self._refill_reserve()

    def _refill_reserve(self) -> None:
        size = _file_size(self.reserve_path)
        if not self._reserve or size >= self._reserve:
            return
        try:
            st = os.statvfs(self.path.parent)
            keep = min(KEEP_FREE_MAX, st.f_blocks * st.f_frsize // 8)
            if st.f_bavail * st.f_frsize < self._reserve - size + keep + self.wal_cap:
                return  # not while space is short
            with open(_private_fd(self.reserve_path), "ab") as f:
                f.write(bytes(self._reserve - size))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()

    def _used_bytes(self) -> tuple[int, int]:
        """(bytes of the database's pages in use, bytes of the database file), in this transaction."""
        pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size, pages * self.page_size

    def _room(self, file_bytes: int) -> tuple[int, int] | None:
        """How many bytes the database's pages in use may take: (with margins, at most).
        With margins: the budget (less the WAL's share), and the file plus what the file
        system has free less room for the WAL, the reserve and the flow's other state. At
        most: the budget, and the file plus what is free. ``None``: no bound."""
        budget = [] if self.file_cap is None else [self.file_cap]
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return (min(budget), min(budget)) if budget else None
        free = st.f_bavail * st.f_frsize
        keep = min(KEEP_FREE_MAX, st.f_blocks * st.f_frsize // 8)
        wal_room = max(0, self.wal_cap - _file_size(self.wal_path))
        reserve_room = max(0, self._reserve - _file_size(self.reserve_path))
        # the file's own pages are the outbox's; only its growth must leave the margins free
        growth = 0 if self._squeeze else max(0, free - wal_room - reserve_room - keep)
        return min([*budget, file_bytes + growth]), min([*budget, file_bytes + free])

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes (frees its space)."""
        with self.lock:
            try:
                self.db.execute("PRAGMA busy_timeout = 1000")  # a reader may hold it: try later
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
            finally:
                self.db.execute("PRAGMA busy_timeout = 60000")

    def _checkpoint_if_big(self) -> None:
        if _file_size(self.wal_path) > self.wal_cap // 2:
            self.checkpoint()

    # -- transactions, and writes a full disk refuses ---------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        with self.lock:
            pending, self._pending = self._pending, _Pending()
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    self._write_pending(pending)
                    yield
                    self.db.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (a full disk does): never let a
                    # failed ROLLBACK hide the error that caused it
                    if self.db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self.db.execute("ROLLBACK")
                    raise
            except BaseException:
                self._restore_pending(pending)
                raise

    def _write_pending(self, p: _Pending) -> None:
        for name, n in p.bumps.items():
            self._bump(name, n)
        for name, v in p.sets.items():
            self._set(name, v)
        for name, text in p.status.items():
            self._put_status(name, text)

    def _restore_pending(self, p: _Pending) -> None:
        """Put back what a failed transaction did not write (newer values win)."""
        for name, n in p.bumps.items():
            self._pending.bump(name, n)
        self._pending.sets = {**p.sets, **self._pending.sets}
        self._pending.status = {**p.status, **self._pending.status}

    def _write(
        self,
        what: str,
        fn: Callable[[], None],
        attempts: int = 2,
        use_reserve: Callable[[], bool] | None = None,
    ) -> bool:
        """Run ``fn`` (which opens its own transaction); on a full disk checkpoint the WAL and
        try again (the last try after giving up the reserve, if ``use_reserve()`` says the
        write is worth it). False when the disk still refuses (logged once per episode)."""
        for _ in range(attempts):
            try:
                fn()
            except sqlite3.Error as exc:
                if not storage_full(exc):
                    raise
                if self._full_since is None:
                    self._full_since = time.monotonic()
                    log.warning(
                        "outbox %s: cannot %s: %s (disk full); going on and retrying: the "
                        "lowest priorities are dropped to fit, and counted. Free disk space "
                        "or lower budget_bytes",
                        self.path,
                        what,
                        exc,
                    )
                self.checkpoint()  # frees the WAL's space
                if self._squeeze and self._reserve and use_reserve is not None and use_reserve():
                    with contextlib.suppress(OSError):  # a second refusal: give up the reserve
                        self.reserve_path.unlink()
                self._squeeze = True
                continue
            self._squeeze = False
            if self._full_since is not None:
                lost = f"; {self._refused} incoming records could not be stored meanwhile (counted as dropped)"
                log.warning(
                    "outbox %s: writes succeed again after %.0f s%s",
                    self.path,
                    time.monotonic() - self._full_since,
                    lost if self._refused else "",
                )
                self._full_since = None
                self._refused = 0
            return True
        self._squeeze = False
        return False

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

    def _put_status(self, name: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO status(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    @property
    def total_bytes(self) -> int:
        """The records' bytes (size estimates) waiting; see :meth:`disk_bytes` for the files."""
        with self.lock:
            return self._stat("bytes")

    # -- appending (inside the flow) ---------------------------------------------------------
    def append(self, sink: str, priority: int, records: Sequence[OutRecord]) -> int:
        """Durably append (committed and fsync'ed on return); drops per the budget and the free
        disk space. Never raises on a full disk: what cannot be stored is counted as dropped.
        Returns the last seq."""
        with self.lock:
            chunk: list[OutRecord] = []
            size = 0
            for r in records:
                chunk.append(r)
                size += r.size
                if size >= self.chunk_bytes:  # one transaction stays well inside the WAL's share
                    self._append_chunk(sink, priority, chunk)
                    chunk, size = [], 0
            if chunk:
                self._append_chunk(sink, priority, chunk)
            return self.last_seq()

    def _append_chunk(self, sink: str, priority: int, records: list[OutRecord]) -> None:
        def write() -> None:
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
                self._bump(f"queued.{sink}", len(keep))
                self._bump("bytes", sum(r.size for r in keep))

        def trades_up() -> bool:  # the reserve is for storing records in place of lower ones
            lowest = self._lowest_droppable()
            return lowest is not None and priority > lowest

        if not self._write(f"append to {sink}", write, attempts=3, use_reserve=trades_up):
            self._pending.bump(f"dropped.{sink}", len(records))
            self._refused += len(records)
        self._checkpoint_if_big()
        self._refill_reserve()

    _DROPPABLE = "seq > COALESCE((SELECT value FROM stats WHERE name = 'inflight.' || lane), 0)"

    def _lowest_droppable(self) -> int | None:
        row = self.db.execute(
            f"SELECT priority FROM outbox WHERE {self._DROPPABLE} ORDER BY priority, seq LIMIT 1"
        ).fetchone()
        return None if row is None else int(row[0])

    def _make_room(self, sink: str, priority: int, new: list[OutRecord]) -> list[OutRecord]:
        """Drop the oldest lowest-priority records until ``new`` fits in the budget and on the
        disk; returns what of ``new`` to keep."""
        need = sum(r.size for r in new)
        total = self._stat("bytes")
        while total + need > self.budget and new:  # the records' bytes
            lowest = self._lowest_droppable()
            if lowest is None or priority < lowest:
                # the incoming records are the lowest priority: drop them, oldest first
                drop = 0
                while new and total + need > self.budget:
                    need -= new.pop(0).size
                    drop += 1
                self._bump(f"dropped.{sink}", drop)
                continue
            total -= self._drop_stored(lowest, total + need - self.budget)
        while new:  # the pages on disk
            used, file_bytes = self._used_bytes()
            room = self._room(file_bytes)
            if room is None:
                break
            soft, hard = room
            excess = used + int(need * GROWTH) + 4 * self.page_size - soft
            if excess <= 0:
                break
            lowest = self._lowest_droppable()
            if lowest is not None and priority >= lowest:
                if not self._drop_stored(lowest, max(1, int(excess / GROWTH))):
                    break
                continue
            if lowest is None:  # nothing stored can go: keep what physically fits
                excess = used + int(need * GROWTH) - hard
            drop = 0
            while new and excess > 0:  # the incoming records are the lowest: oldest go first
                size = new.pop(0).size
                need -= size
                excess -= int(size * GROWTH)
                drop += 1
            self._bump(f"dropped.{sink}", drop)
            break
        return new

    def _drop_stored(self, priority: int, excess: int) -> int:
        cur = self.db.execute(
            f"SELECT seq, sink, size FROM outbox WHERE priority = ? AND {self._DROPPABLE} ORDER BY seq LIMIT 10000",
            (priority,),
        )
        freed = 0
        per_sink: dict[str, int] = {}
        chosen = []
        while freed < excess:  # read only as many rows as it takes
            rows = cur.fetchmany(256)
            if not rows:
                break
            for seq, sink, size in rows:
                chosen.append((seq,))
                per_sink[sink] = per_sink.get(sink, 0) + 1
                freed += size
                if freed >= excess:
                    break
        cur.close()
        self.db.executemany("DELETE FROM outbox WHERE seq = ?", chosen)
        for sink, n in per_sink.items():
            self._bump(f"dropped.{sink}", n)
            self._bump(f"queued.{sink}", -n)
        self._bump("bytes", -freed)
        return freed

    def truncate_after(self, sink: str, seq: int) -> int:
        """Resume support: delete ``sink``'s records appended after ``seq`` (they will be replayed)."""
        n = 0

        def write() -> None:
            nonlocal n
            with self._tx():
                count, size = self.db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE sink = ? AND seq > ?",
                    (sink, seq),
                ).fetchone()
                self.db.execute("DELETE FROM outbox WHERE sink = ? AND seq > ?", (sink, seq))
                n = int(count)
                self._bump(f"appended.{sink}", -n)
                self._bump(f"queued.{sink}", -n)
                self._bump("bytes", -int(size))

        if not self._write(f"remove the records of {sink} after {seq}", write, attempts=3):
            log.warning(
                "outbox %s: the records of %s after %d stay (disk full); their replay may be "
                "delivered twice (same edgeflow-id)",
                self.path,
                sink,
                seq,
            )
        return n

    def ids_after(self, sink: str, seq: int) -> set[str]:
        """The ``edgeflow-id`` headers of ``sink``'s records after ``seq`` (as many as there are
        such records)."""
        with self.lock:
            out = set()
            for (headers,) in self.db.execute(
                "SELECT headers FROM outbox WHERE sink = ? AND seq > ?", (sink, seq)
            ):
                with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
                    out.add(str(dict(orjson.loads(headers))["edgeflow-id"]))
            return out

    def last_seq(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def count_present(self, sink: str, upto: int) -> int:
        """How many of ``sink``'s records up to seq ``upto`` are stored."""
        with self.lock:
            row = self.db.execute(
                "SELECT COUNT(*) FROM outbox WHERE sink = ? AND seq <= ?", (sink, upto)
            ).fetchone()
            return int(row[0])

    def count_lost(self, sink: str, n: int) -> None:
        """``n`` records of ``sink`` were lost with a damaged or replaced outbox (counted)."""
        with self.lock:
            self._pending.bump(f"lost.{sink}", n)
            self._write("count lost records", self._flush_pending, attempts=1)

    def _flush_pending(self) -> None:
        with self._tx():
            pass

    # -- draining (a forwarder owns some lanes) ------------------------------------------------
    def fetch(self, lanes: Sequence[int], after: int, limit: int) -> tuple[list[Stored], int]:
        """Up to ``limit`` rows of ``lanes`` after seq ``after``, oldest first, marked in flight; and
        the newest seq allocated at that moment (nothing of these lanes up to it is left out).
        On a full disk (the marks cannot be written): no rows, and ``after`` as the newest."""
        marks = ",".join(str(int(x)) for x in lanes)
        got: tuple[list[Stored], int] = ([], after)

        def write() -> None:
            nonlocal got
            with self._tx():
                rows = self.db.execute(
                    f"SELECT seq, sink, topic, key, value, headers FROM outbox WHERE lane IN ({marks}) AND seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                ).fetchall()
                if rows:
                    for lane in lanes:
                        self._set(f"inflight.{lane}", int(rows[-1][0]))
                got = [Stored(*r) for r in rows], self.last_seq()

        with self.lock:
            self._retry_deletes()
            if not self._write("mark records in flight", write):
                time.sleep(0.2)  # the caller polls: do not spin on a full disk
                return [], after
            return got

    def delivered(
        self, lanes: Sequence[int], rows: Sequence[Stored], keep_ids: bool = False
    ) -> None:
        """The broker acknowledged ``rows`` (fetched for ``lanes``): delete and count them
        (records Kafka refused, see :meth:`record_count`, are counted as rejected). On a full
        disk the deletes wait in memory and are retried with the next call. ``keep_ids``: a
        Kafka transaction committed them: their ids go to the ``committed`` table."""
        if not rows:
            return
        with self.lock:
            self._retry_deletes()
            rejected, self._rejected = self._rejected, {}
            pending: list[tuple[tuple[int, ...], list[Stored], bool]] = []
            chunk: list[Stored] = []
            size = 0
            for r in rows:  # in pieces, so one transaction stays well inside the WAL's share
                chunk.append(r)
                size += r.size
                if size >= self.chunk_bytes:
                    pending.append((tuple(lanes), chunk, keep_ids))
                    chunk, size = [], 0
            if chunk:
                pending.append((tuple(lanes), chunk, keep_ids))
            self._undeleted.extend(pending)
            for sink, n in rejected.items():
                self._pending.bump(f"rejected.{sink}", n)
                self._pending.bump(f"delivered.{sink}", -n)
            self._retry_deletes()

    def _retry_deletes(self) -> None:
        while self._undeleted:
            lanes, rows, keep_ids = self._undeleted[0]
            if not self._write(
                "delete delivered records",
                functools.partial(self._delete, lanes, rows[0].seq, rows[-1].seq, keep_ids),
            ):
                return
            self._undeleted.pop(0)
            self._checkpoint_if_big()

    def _delete(self, lanes: Sequence[int], lo: int, hi: int, keep_ids: bool = False) -> None:
        marks = ",".join(str(int(x)) for x in lanes)
        where = f"lane IN ({marks}) AND seq BETWEEN ? AND ?"
        with self._tx():
            if keep_ids:  # the id is the first header (kafka sink's _encode)
                self.db.execute(
                    "INSERT OR REPLACE INTO committed(id, sink, seq) SELECT "
                    "json_extract(headers, '$[0][1]'), sink, seq FROM outbox WHERE "
                    f"{where} AND json_extract(headers, '$[0][0]') = 'edgeflow-id'",
                    (lo, hi),
                )
            # count what is deleted (not what was sent): nothing is counted twice
            per_sink: dict[str, int] = {}
            size = 0
            for sink, n, nbytes in self.db.execute(
                f"SELECT sink, COUNT(*), SUM(size) FROM outbox WHERE {where} GROUP BY sink",
                (lo, hi),
            ):
                per_sink[sink] = int(n)
                size += int(nbytes)
            self.db.execute(f"DELETE FROM outbox WHERE {where}", (lo, hi))
            for sink, n in per_sink.items():
                self._bump(f"delivered.{sink}", n)
                self._bump(f"queued.{sink}", -n)
            self._bump("bytes", -int(size))

    def delete_committed(self, lane: int, upto: int) -> int:
        """A Kafka transaction committed ``lane``'s rows up to seq ``upto`` (a forwarder that
        died before deleting them): delete them as delivered, keeping their ids. Returns how
        many there were; on a full disk 0 (they are deleted by a later call)."""
        with self.lock:
            row = self.db.execute(
                "SELECT COUNT(*) FROM outbox WHERE lane = ? AND seq <= ?", (lane, upto)
            ).fetchone()
            n = int(row[0])
            if n and not self._write(
                "delete records Kafka committed",
                functools.partial(self._delete, [lane], 0, upto, True),
            ):
                return 0
            return n

    def committed_ids_after(self, sink: str, seq: int) -> set[str]:
        """The ids of ``sink``'s records appended after ``seq`` that a Kafka transaction
        committed (exactly-once sinks; see the module docstring)."""
        with self.lock:
            return {
                str(r[0])
                for r in self.db.execute(
                    "SELECT id FROM committed WHERE sink = ? AND seq > ?", (sink, seq)
                )
            }

    def forget_committed(self, sink: str, upto: int) -> None:
        """No resume replays ``sink``'s records appended up to seq ``upto`` any more: forget
        their committed ids (best effort: on a full disk they are forgotten later)."""

        def write() -> None:
            with self._tx():
                self.db.execute("DELETE FROM committed WHERE sink = ? AND seq <= ?", (sink, upto))

        with self.lock:
            self._write("forget committed ids", write, attempts=1)

    def release(self, lanes: Sequence[int], lo: int) -> None:
        """Sending from seq ``lo`` on failed: those rows stay queued and may be dropped again.
        On a full disk the marks are written with the next write that succeeds."""
        with self.lock:
            self._rejected.clear()  # they are sent (and refused) again
            for lane in lanes:
                self._pending.sets[f"inflight.{lane}"] = max(0, lo - 1)
            self._write("release records in flight", self._flush_pending)

    def record_count(self, rejected_sink: str) -> None:
        """Kafka refused one record of ``rejected_sink`` for good (e.g. too large): it is counted
        as rejected, not delivered, when the batch it came in is :meth:`delivered`."""
        with self.lock:
            self._rejected[rejected_sink] = self._rejected.get(rejected_sink, 0) + 1

    # -- reporting ------------------------------------------------------------------------
    def depth(self) -> tuple[int, int]:
        """(records waiting, bytes waiting)."""
        with self.lock:
            n = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return int(n), self._stat("bytes")

    def stats(self) -> dict[str, int]:
        """The counters, including those a full disk kept in memory so far."""
        with self.lock:
            out = {k: int(v) for k, v in self.db.execute("SELECT name, value FROM stats")}
            for name, n in self._pending.bumps.items():
                out[name] = out.get(name, 0) + n
            return out

    def set_status(self, name: str, value: str) -> None:
        """Set a status line; on a full disk it is written with the next write that succeeds."""
        with self.lock:
            self._pending.status[name] = value
            self._write(f"set {name}", self._flush_pending, attempts=1)

    def status(self) -> dict[str, str]:
        with self.lock:
            out = dict(self.db.execute("SELECT name, value FROM status").fetchall())
            out.update(self._pending.status)
            return out


#: outbox path -> the open lock file this process holds for its run (see :func:`hold_for_run`)
_RUN_LOCKS: dict[Path, int] = {}
_RUN_LOCKS_LOCK = threading.Lock()


def hold_for_run(path: Path) -> int | None:
    """Take the run lock of the outbox at ``path`` (an ``flock`` on ``<path>.lock`` beside it,
    held until this process exits; taking it again in the same process is a no-op). Returns
    None when this process holds it, else the pid of the process that does (0: unknown)."""
    import fcntl

    path = path.resolve()
    with _RUN_LOCKS_LOCK:
        if path in _RUN_LOCKS:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else 0
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):  # the pid is information only (a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _RUN_LOCKS[path] = fd
        return None


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
