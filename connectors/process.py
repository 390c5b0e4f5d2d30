"""Helpers for connector child processes (forwarders, receivers)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys


def die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent dies (even by ``kill -9``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
