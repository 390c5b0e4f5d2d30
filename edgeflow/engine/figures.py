"""The figures an operator watches, computed from a run's counters (and its outbox).

One definition serves ``edgeflow status`` (through ``stats.json``), the live console view
and the Prometheus endpoint, so they always agree:

* ``readings_per_s`` / ``records_per_s``: readings read and records written per second
  over the last :data:`RATE_SPAN_S` seconds (:class:`RateWindow`), so a flow whose windows
  close every 2 s shows its mean rate, not 0 every other second;
* ``bytes_in`` / ``bytes_out`` and ``reduction``: raw bytes read by the sources (for
  simulators, the JSON their readings would be sent as) against bytes written by the
  sinks (lines, or Kafka keys + values), and their ratio;
* ``watermark_lag_s``: wall clock minus the newest window watermark: how far behind real
  time the windows close (large when replaying old data);
* ``late``, ``dead_letters``, ``anomalies``: counts since the run started;
* ``outbox_depth``, ``outbox_dropped``, ``outbox_rejected``: records waiting for Kafka,
  dropped (disk budget or a full disk), and refused by Kafka for good (too large).
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any


def outbox_figures(path: Path | None) -> dict[str, int]:
    """(depth, dropped, rejected) of an outbox file, read-only; zeros when there is none."""
    if path is None or not path.exists():
        return {"outbox_depth": 0, "outbox_dropped": 0, "outbox_rejected": 0}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        try:
            depth = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            dropped, rejected = db.execute(
                "SELECT COALESCE(SUM(CASE WHEN name LIKE 'dropped.%' THEN value END), 0),"
                " COALESCE(SUM(CASE WHEN name LIKE 'rejected.%' THEN value END), 0) FROM stats"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error:  # busy or being created: unknown
        return {"outbox_depth": -1, "outbox_dropped": -1, "outbox_rejected": -1}
    return {
        "outbox_depth": depth,
        "outbox_dropped": int(dropped),
        "outbox_rejected": int(rejected),
    }


def kafka_connection(path: Path | None) -> str | None:
    """The Kafka connection state the forwarders record in an outbox (``connected since T``,
    ``unreachable since T: <last error>``, ...), read-only; None when there is none yet."""
    if path is None or not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        try:
            row = db.execute("SELECT value FROM status WHERE name = 'kafka.connection'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:  # busy, being created, or an older outbox without a status table
        return None
    return str(row[0]) if row else None


#: rates are averaged over this many seconds of counters
RATE_SPAN_S = 10.0


class RateWindow:
    """Counter snapshots of the last ``span_s`` seconds, for rates over that span.

    ``push(t, c)`` records the counters ``c`` taken at ``t`` (seconds) and returns the
    oldest snapshot kept (at least ``span_s`` old once the run is that old) and the seconds
    since it: the ``prev`` and ``interval_s`` of :func:`figures`. Sampled every second, a
    sink that writes every 2 s shows its mean rate instead of alternating with 0.
    """

    def __init__(self, span_s: float = RATE_SPAN_S) -> None:
        self.span_s = span_s
        self.samples: deque[tuple[float, dict[str, int]]] = deque()

    def push(self, t: float, c: dict[str, int]) -> tuple[dict[str, int], float]:
        self.samples.append((t, c))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.span_s:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        return c0, t - t0


def written(c: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in c.items() if k.startswith(prefix))


def figures(
    c: dict[str, int],
    prev: dict[str, int] | None = None,
    interval_s: float = 1.0,
    *,
    outbox: Path | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The operator's figures from counters ``c`` (and ``prev``, ``interval_s`` earlier)."""
    now = time.time() if now is None else now
    prev = prev or {}
    records = written(c, "records_to.")
    dt = max(interval_s, 1e-9)
    bytes_out = written(c, "bytes_to.")
    marks = [v for k, v in c.items() if k.startswith("watermark.")]
    out: dict[str, Any] = {
        "readings_in": c.get("readings_in", 0),
        "records_out": records,
        "readings_per_s": (c.get("readings_in", 0) - prev.get("readings_in", 0)) / dt,
        "records_per_s": (records - written(prev, "records_to.")) / dt,
        "bytes_in": c.get("bytes_in", 0),
        "bytes_out": bytes_out,
        "reduction": c.get("bytes_in", 0) / bytes_out if bytes_out else 0.0,
        "watermark_lag_s": now - max(marks) / 1e9 if marks else None,
        "late": c.get("late", 0),
        "dead_letters": c.get("dead_letters", 0),
        "anomalies": c.get("anomalies", 0),
    }
    out.update(outbox_figures(outbox))
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def summary_line(f: dict[str, Any]) -> str:
    """The figures on one line (``edgeflow status``)."""
    lag = f.get("watermark_lag_s")
    return (
        f"{f.get('readings_per_s', 0):.0f} readings/s in, {f.get('records_per_s', 0):.0f} records/s out, "
        f"{human_bytes(f.get('bytes_in', 0))} in, {human_bytes(f.get('bytes_out', 0))} out "
        f"(reduction {f.get('reduction', 0):.1f}x), watermark lag "
        f"{'-' if lag is None else f'{lag:.1f}s'}, late {f.get('late', 0)}, "
        f"dead letters {f.get('dead_letters', 0)}, outbox {f.get('outbox_depth', 0)} waiting "
        f"/ {f.get('outbox_dropped', 0)} dropped / {f.get('outbox_rejected', 0)} rejected by Kafka, "
        f"anomalies {f.get('anomalies', 0)}"
    )
