"""Whether each source that reads from a broker is connected to it: one registry per process.

A connector registers its source step (:meth:`Connections.open`) and reports every connect
and every failed or lost connection (:meth:`Connections.report`). The registry keeps, per
source step: connected or not, since when, whether it ever connected, and the last error.
A source with several connections (e.g. MQTT ``receivers=2``) registers each as a
``member`` of its step: the step counts as connected when every member is, and the lines
and gauges stay one per step.
It prints ONE line to stderr per change of state (connected -> retrying -> connected), never
one per retry. The run's stats file (``edgeflow status``), the live view, the metrics
(``edgeflow_source_connected``) and the end-of-run check (a source that never reached its
broker fails the run) all read it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass, field
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
    #: member (connection) -> connected now (None: not reported yet); the step is connected
    #: when all of them are, and not connected as soon as one reports a failure
    members: dict[str, bool | None] = field(default_factory=dict)

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
        where = (
            "the bootstrap= of the source (or EDGEFLOW_KAFKA_BOOTSTRAP, --kafka-bootstrap)"
            if self.broker.startswith("Kafka")
            else "the host=/port= (and TLS, username) of the source"
        )
        return (
            f"source {self.source!r} never reached the {self.broker} at {self.endpoint} in "
            f"{time.time() - self.opened:.1f}s{err}; check that the broker is running and "
            f"listening there, and {where}"
        )


class Connections:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: dict[str, Connection] = {}
        # how long a connector may keep trying: the run's end (``--for``) and whether it was
        # asked to stop (SIGTERM, Ctrl-C, ``edgeflow stop``)
        self._stop = threading.Event()
        self._deadline: float | None = None  # time.monotonic() of the --for end
        self.run_id = 0  # which run of this process (what a connector learnt is per run)

    def run_started(self, run_for_ns: int | None) -> None:
        """A run starts (forget every connection); it ends after ``run_for_ns`` (None: at the end
        of its input or when stopped)."""
        self.reset()
        self.run_id += 1
        self._stop.clear()
        self._deadline = None if run_for_ns is None else time.monotonic() + run_for_ns / 1e9

    def request_stop(self) -> None:
        """The run was asked to stop (a signal): connectors stop waiting for brokers."""
        self._stop.set()

    def stop_requested(self) -> bool:
        """True once the run was asked to stop by a signal (not at its ``--for`` end)."""
        return self._stop.is_set()

    def run_over(self) -> bool:
        """True once the run was asked to stop or reached its ``--for`` end."""
        return self._stop.is_set() or (
            self._deadline is not None and time.monotonic() >= self._deadline
        )

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, returning early (True) when the run is over."""
        end = time.monotonic() + seconds
        if self._deadline is not None:
            end = min(end, self._deadline)
        self._stop.wait(max(0.0, end - time.monotonic()))
        return self.run_over()

    def open(
        self, source: str, broker: str, endpoint: str, member: str = "", keep: bool = False
    ) -> None:
        """Register ``source`` (its connection ``member``) as connecting (not connected yet).
        Opening another member of a registered source adds it to that source (``keep``: as
        connecting, without changing the source's state: it connected already)."""
        now = time.time()
        with self._lock:
            c = self._c.get(source)
            if c is None or member in c.members:
                c = self._c[source] = Connection(source, broker, endpoint, False, now, now)
            elif c.connected and not keep:  # the others connected before this one: start over
                c.connected = c.ever_connected = c.reported = False
            c.members[member] = None

    def rename(self, old: str, new: str) -> None:
        """The connection registered as ``old`` is from now on the source ``new`` (a source
        that connects before its step is known); nothing when ``new`` has one already."""
        with self._lock:
            c = self._c.pop(old, None)
            if c is not None and new not in self._c:
                c.source = new
                self._c[new] = c

    def report(
        self, source: str, connected: bool, error: str | None = None, member: str = ""
    ) -> None:
        """A connect (``connected``) or a failed/lost connection with its ``error`` of the
        connection ``member`` of ``source``; prints one line when the source's state changes."""
        with self._lock:
            c = self._c.get(source)
            if c is None:
                return
            c.members[member] = connected
            if connected and None in c.members.values():
                return  # another member has not reported yet: no change of the source's state
            connected = all(c.members.values())
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
