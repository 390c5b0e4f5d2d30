"""Least exposure on disk: what a run keeps in its state directory is its owner's alone.

While a run with a state directory runs (:func:`private_state`), the process umask is
``0o077``: every file created by the run, by the engine (its snapshot store, in Rust) and by
the processes it starts (outbox forwarders, the WAL keeper) is ``0600`` and every directory
``0700``, whoever creates it, SQLite's ``-wal``/``-shm`` files included. State written by an
older edgeflow (``0644`` files, ``0755`` directories) is restricted the same way when a run
starts on it. The umask of the process is put back when the run ends (the last run, when
several run in one process). The umask is the process's: an application that calls
:func:`edgeflow.engine.run` in a thread creates its own files 0600 meanwhile.

Output files a user chose (``files.sink`` paths, dead letters routed to one) are not state:
outside the state directory they get the permissions the user's own umask gives, as before
(:func:`open_output`); inside it they are ``0600`` like the rest.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: the umask while a run keeps state: files 0600, directories 0700
PRIVATE_UMASK = 0o077

_lock = threading.Lock()
#: the state directories of the runs in this process now, and the umask before the first
_active: list[Path] = []
_user_umask: list[int] = []


def restrict_tree(root: Path) -> None:
    """Make ``root`` and every directory under it ``0700`` and every file ``0600`` (symbolic
    links are not followed: what they point at is not the run's)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(here, 0o700)
        for name in filenames:
            path = here / name
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(path.lstat().st_mode):
                    os.chmod(path, 0o600)
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]


@contextlib.contextmanager
def private_state(state_dir: Path) -> Iterator[None]:
    """For the duration of a run keeping its state in ``state_dir``: umask ``0o077`` and the
    existing state restricted (see the module docstring)."""
    with _lock:
        if not _active:
            _user_umask[:] = [os.umask(PRIVATE_UMASK)]
        _active.append(state_dir.absolute())
    try:
        if state_dir.exists():
            restrict_tree(state_dir)
        yield
    finally:
        with _lock:
            _active.remove(state_dir.absolute())
            if not _active:
                os.umask(_user_umask.pop())


def _user_mode(directory: bool) -> int | None:
    """The mode the user's umask gives a new file (directory), or None when no run has
    restricted the umask (the umask in force is the user's)."""
    with _lock:
        if not _active:
            return None
        return (0o777 if directory else 0o666) & ~_user_umask[0]


def _in_state(path: Path) -> bool:
    with _lock:
        full = path.absolute()
        return any(full.is_relative_to(d) for d in _active)


def open_output(path: Path) -> BinaryIO:
    """Open the output file ``path`` for appending, creating it and its missing parent
    directories with the permissions the user's umask gives (not the run's ``0o077``),
    unless it lies in a state directory."""
    keep_private = _in_state(path)
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_mode = _user_mode(directory=True)
    if dir_mode is not None and not keep_private:
        for d in missing:
            with contextlib.suppress(OSError):
                os.chmod(d, dir_mode)
    created = not path.exists()
    f = open(path, "ab")  # noqa: SIM115 - the caller closes it
    file_mode = _user_mode(directory=False)
    if created and file_mode is not None and not keep_private:
        with contextlib.suppress(OSError):
            os.fchmod(f.fileno(), file_mode)
    return f
