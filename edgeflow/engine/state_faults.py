"""Faults of a flow's state directory, found before the engine starts or read from the
engine's failure: each becomes one line naming the file and what to do.

Layout checked: ``STATE/plan.json`` (the flow that wrote the state) and
``STATE/recovery/part-N.sqlite3`` (the engine's snapshot partitions; each names its index and
the partition count).
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from pathlib import Path

#: below this much free space on the state directory's disk a run does not start: the
#: engine's first snapshot would fail half-way
MIN_FREE_BYTES = 256 * 1024

NEW_STATE_HINT = (
    "restore it from a backup, or run with --new-state to start over (the old state is "
    "moved aside, not deleted)"
)


class StateError(RuntimeError):
    """The state directory cannot be used as it is; the message is one line saying why and
    what to do."""


def free_bytes(path: Path) -> int | None:
    """Free space for an unprivileged writer on ``path``'s disk (None if it cannot be read)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_line(state_dir: Path) -> str:
    return (
        f"the state directory's disk is full ({state_dir}): free space, then run again; the "
        "run resumes from the last snapshot"
    )


def check_free_space(state_dir: Path) -> str | None:
    free = free_bytes(state_dir)
    if free is not None and free < MIN_FREE_BYTES:
        return disk_full_line(state_dir)
    return None


def is_disk_full(exc: BaseException | None, text: str = "") -> bool:
    """Whether an error (or the engine's report of it) says a disk is full."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            return True
        text += " " + str(exc)
        exc = exc.__cause__ or exc.__context__
    return bool(re.search(r"DiskFull|database or disk is full|No space left on device", text))


def check_recovery_store(state_dir: Path) -> str | None:
    """Why the engine could not resume from ``STATE/recovery`` (a partition missing, not a
    database, damaged, or from another layout), or None when it looks usable or does not
    exist yet. Each partition is opened read-only and checked with ``PRAGMA quick_check``."""
    db = state_dir / "recovery"
    if not db.exists():
        return None
    if not db.is_dir():
        return f"the snapshot store {db} is not a directory: {NEW_STATE_HINT}"
    parts = sorted(db.glob("part-*.sqlite3"))
    if not parts:
        return (
            f"the snapshot store {db} has no partition files (part-*.sqlite3 deleted?): "
            f"{NEW_STATE_HINT}"
        )
    counts: set[int] = set()
    seen: set[int] = set()
    for part in parts:
        try:
            index, count = _read_part(part)
        except sqlite3.Error as exc:
            reason = str(exc) or type(exc).__name__
            return f"the snapshot file {part} is damaged ({reason}): {NEW_STATE_HINT}"
        if f"part-{index}.sqlite3" != part.name:
            return (
                f"the snapshot file {part} holds partition {index}, not the one its name "
                f"says: {NEW_STATE_HINT}"
            )
        counts.add(count)
        seen.add(index)
    if len(counts) != 1:
        return f"the snapshot files in {db} disagree on how many partitions there are: {NEW_STATE_HINT}"
    missing = sorted(set(range(counts.pop())) - seen)
    if missing:
        names = ", ".join(f"part-{i}.sqlite3" for i in missing)
        return f"the snapshot store {db} is missing {names}: {NEW_STATE_HINT}"
    return None


def _read_part(path: Path) -> tuple[int, int]:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        ok = con.execute("PRAGMA quick_check").fetchone()
        if ok is None or ok[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {ok[0] if ok else 'no answer'}")
        rows = con.execute("SELECT part_index, part_count FROM parts").fetchall()
    finally:
        con.close()
    if len(rows) != 1:
        raise sqlite3.DatabaseError(f"{len(rows)} rows in its parts table, not 1")
    return int(rows[0][0]), int(rows[0][1])


_SQLITE_REASON = re.compile(r'SqliteFailure\(Error \{ code: (\w+)[^}]*\}, Some\("([^"]*)"\)')


def recovery_failure_line(state_dir: Path, text: str) -> str | None:
    """The engine's snapshot store failed (the engine reports SQLite errors as
    ``SqliteFailure(Error { code: ..., ... }, Some("reason"))``): one line, or None when
    ``text`` is not such a failure."""
    m = _SQLITE_REASON.search(text)
    if m is None:
        if "NoPartitionsError" in text or "No recovery partitions found" in text:
            return check_recovery_store(state_dir) or (
                f"the snapshot store {state_dir / 'recovery'} has no partitions: {NEW_STATE_HINT}"
            )
        return None
    code, reason = m.groups()
    free = free_bytes(state_dir)
    # SQLite says "disk I/O error" when a full disk stops it creating its -shm/-wal files
    low = free is not None and free < 4 * MIN_FREE_BYTES
    if code == "DiskFull" or (low and code in ("SystemIoFailure", "CannotOpen")):
        return disk_full_line(state_dir)
    return f"the snapshot store {state_dir / 'recovery'} failed ({reason}): {NEW_STATE_HINT}"
