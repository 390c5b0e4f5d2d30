"""Keep the engine's snapshot store small: checkpoint and truncate the write-ahead log of
each ``STATE/recovery/part-N.sqlite3`` once it passes :data:`WAL_LIMIT_BYTES`.

The engine's SQLite checkpoints only at 1000 pages, so its WAL grows to about 4 MB between
checkpoints, more than a small disk holds. The checkpoints run in a separate process: the
engine links its own SQLite library, and a second SQLite library in the same process would
break the engine's POSIX file locks (closing a descriptor drops every lock of the process on
that file) and could damage the store. Across processes SQLite's locking is safe; the engine
waits (busy timeout) while a checkpoint holds the lock.

Run as ``python -m edgeflow.engine.wal_keeper STATE_DIR``: it works every 0.2 s until
its standard input closes (the run ends, or its process dies).
"""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import subprocess
import sys
from pathlib import Path

WAL_LIMIT_BYTES = 128 * 1024
INTERVAL_S = 0.2


def checkpoint(state_dir: Path) -> None:
    """Checkpoint and truncate each partition's WAL over the limit; errors are skipped (the
    next round tries again; the engine reports its own)."""
    for part in (state_dir / "recovery").glob("part-*.sqlite3"):
        wal = part.with_name(part.name + "-wal")
        try:
            if wal.stat().st_size <= WAL_LIMIT_BYTES:
                continue
            con = sqlite3.connect(part, timeout=1.0)
            try:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                con.close()
        except (OSError, sqlite3.Error):
            continue


def start(state_dir: Path) -> subprocess.Popen[bytes] | None:
    """Start the keeper for ``state_dir`` (None if it cannot start: the run goes on without)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "edgeflow.engine.wal_keeper", str(state_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or SIGTERM to the group leaves it to us
        )
    except OSError:
        return None


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """End the keeper: close its input, wait briefly, kill it if it does not go."""
    if proc is None:
        return
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str]) -> int:
    state_dir = Path(argv[1])
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], INTERVAL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return 0
        checkpoint(state_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
