"""Helpers for connector child processes (forwarders, receivers).

A parent talks to its children through :class:`Command`, one word of shared memory with no
lock: the parent writes it, children poll it. A child killed at any moment (``kill -9``)
can therefore never leave behind a lock that the parent would wait on when it stops them,
as a ``multiprocessing.Event`` (a condition variable) can.

Children ignore SIGTERM and SIGINT (:func:`ignore_termination`): a signal sent to the whole
process group (systemd's default, GNU ``timeout``) reaches the parent, which stops its
children in order; a child still dies with its parent (:func:`die_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnContext
from typing import Any

#: the values of a :class:`Command`
RUN, DRAIN, ABORT = 0, 1, 2

_TERMINATION = {signal.SIGTERM, signal.SIGINT}


def die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent dies (even by ``kill -9``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def ignore_termination() -> None:
    """In a child: ignore SIGTERM and SIGINT (the parent says when to stop), then unblock them."""
    for sig in _TERMINATION:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINATION)


@contextlib.contextmanager
def termination_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in the calling thread for the ``with`` block (the process's other
    threads still receive them).

    A child started inside the block inherits the blocked mask through ``spawn``, so a signal
    sent to the whole process group while it starts up stays pending until the child ignores
    it (:func:`ignore_termination`) instead of killing it.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATION)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Command:
    """What the parent wants of its children (:data:`RUN`, :data:`DRAIN`, :data:`ABORT`).

    One int of shared memory without a lock (a ``RawValue``): setting or reading it never
    blocks, whatever state a dead child left behind. Pass it to children as a ``Process``
    argument.
    """

    def __init__(self, ctx: SpawnContext) -> None:
        self._word: Any = ctx.RawValue(ctypes.c_int, RUN)

    @property
    def value(self) -> int:
        return int(self._word.value)

    def set(self, value: int) -> None:
        self._word.value = value


class Parent:
    """A child's view of its parent: is it still there, and what does it want."""

    def __init__(self, command: Command, pid: int) -> None:
        self.command = command
        self.pid = pid

    def alive(self) -> bool:
        return os.getppid() == self.pid

    def running(self) -> bool:
        """True until the parent says abort or is gone."""
        return self.command.value != ABORT and self.alive()

    def stopping(self) -> bool:
        return self.command.value != RUN

    def pause(self, seconds: float, *, wake_on_stop: bool = False) -> None:
        """Sleep up to ``seconds``, returning early when told to abort or when the parent is gone
        (and, with ``wake_on_stop``, when told to stop)."""
        end = time.monotonic() + seconds
        while self.running():
            left = end - time.monotonic()
            if left <= 0 or (wake_on_stop and self.stopping()):
                return
            time.sleep(min(left, 0.05))
