"""Whether each source that reads from a broker is connected to it: one registry per process.

A connector registers its source step (:meth:`Connections.open`) and reports every connect
and every failed or lost connection (:meth:`Connections.report`). The registry keeps, per
source step: connected or not, since when, whether it ever connected, and the last error.
It prints ONE line to stderr per change of state (connected -> retrying -> connected), never
one per retry. The run's stats file (``edgeflow status``), the live view, the metrics
(``edgeflow_source_connected``) and the end-of-run check (a source that never reached its
broker fails the run) all read it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any


def utc_text(t: float) -> str:
    """``t`` (seconds since the epoch) as ``2026-01-01T12:00:00Z``."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Connection:
    source: str  # the source step
    broker: str  # what it connects to, e.g. "MQTT broker"
    endpoint: str  # host:port
    connected: bool
    since: float  # seconds since the epoch of the last change of state (or of open)
    opened: float
    ever_connected: bool = False
    reported: bool = False  # any connect or failure reported yet
    last_error: str | None = None

    def describe(self) -> str:
        """One phrase for ``status`` and the live view."""
        where = f"{self.broker} {self.endpoint}"
        if self.connected:
            return f"connected to {where} since {utc_text(self.since)}"
        err = f" (last error: {self.last_error})" if self.last_error else ""
        return f"retrying {where} since {utc_text(self.since)}{err}"

    def never_reached(self) -> str:
        """The end-of-run error of a source that never connected."""
        err = f" (last error: {self.last_error})" if self.last_error else ""
        return (
            f"source {self.source!r} never reached the {self.broker} at {self.endpoint} in "
            f"{time.time() - self.opened:.1f}s{err}; check that the broker is running and "
            f"listening there, and the host=/port= (and TLS, username) of the source"
        )


class Connections:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: dict[str, Connection] = {}

    def open(self, source: str, broker: str, endpoint: str) -> None:
        """Register ``source`` as connecting (not connected yet)."""
        now = time.time()
        with self._lock:
            self._c[source] = Connection(source, broker, endpoint, False, now, now)

    def report(self, source: str, connected: bool, error: str | None = None) -> None:
        """A connect (``connected``) or a failed/lost connection with its ``error``; prints one
        line when the state changes."""
        with self._lock:
            c = self._c.get(source)
            if c is None:
                return
            if not connected:
                c.last_error = error or c.last_error
            if connected == c.connected and c.reported:
                return  # one line per change of state, not per retry
            c.reported = True
            now = time.time()
            was = now - c.since
            c.connected, c.since = connected, now
            where = f"the {c.broker} at {c.endpoint}"
            if connected:
                again = c.ever_connected
                c.ever_connected = True
                line = (
                    f"source {source!r} reconnected to {where} after {was:.1f}s"
                    if again
                    else f"source {source!r} connected to {where}"
                )
            elif c.ever_connected:
                line = f"source {source!r} disconnected from {where} ({c.last_error}); retrying"
            else:
                line = f"source {source!r} cannot reach {where} ({c.last_error}); retrying"
        print(f"edgeflow: {line}", file=sys.stderr, flush=True)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: asdict(v) for k, v in self._c.items()}

    def never_connected(self) -> list[Connection]:
        with self._lock:
            return [c for c in self._c.values() if not c.ever_connected]

    def reset(self) -> None:
        with self._lock:
            self._c.clear()


def describe(state: dict[str, Any]) -> str:
    """:meth:`Connection.describe` of a snapshot entry (as read back from ``stats.json``)."""
    try:
        return Connection(**state).describe()
    except TypeError:  # written by another version
        return "connection state unknown"


CONNECTIONS = Connections()
