"""Bandwidth report: what each example flow sends upstream, against its raw readings.

For each flow in flows/ it runs the flow on its simulator for a fixed stretch of stream
time (as fast as possible, no broker: every published record waits in the outbox), then:

* bytes in: every raw reading the simulator produced, as the JSON a device would send
  (``{"machine": "m-3", "ts": 1767225600001000000, "accel": 0.5386139381218036}``);
* bytes published: every record in the outbox as the Kafka message the forwarder sends,
  key + value + headers, uncompressed (the headline ``ratio``); the forwarder also
  compresses batches with lz4, estimated here by compressing 1 MB chunks (``ratio_lz4``);
* anomalies delivered: the share of the simulator's injected anomalies with an alert for
  that key inside the anomaly (plus one window of grace); an anomaly the end of the
  stream cuts shorter than one window is not counted.

Prints a table, then one JSON line per flow; the last is the vibration flow's:
``per_s`` = raw bytes per second of stream, ``baseline_per_s`` = published bytes per
second, ``ratio`` = their ratio, ``anomalies_delivered`` = a fraction.

    python bench/reduction.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lz4.frame
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import emit, source_batches  # noqa: E402
from edgeflow.connectors import simulate  # noqa: E402
from edgeflow.connectors.base import SourceContext  # noqa: E402
from edgeflow.evaluate import delivery  # noqa: E402
from edgeflow.timeutil import parse_duration  # noqa: E402


@dataclass
class Case:
    name: str
    flow: str
    spec: Any  # the simulator exactly as the flow configures it
    duration: str
    quick: str
    alert_topics: tuple[str, ...]
    grace: str


CASES = [
    Case(
        "traffic", "smart_traffic.py", simulate.traffic(intersections=12, seed=5, speed=None),
        "8h", "4h", ("edgeflow.traffic.congestion",), "1m",
    ),
    Case(
        "ecg", "ecg_monitor.py", simulate.ecg(patients=4, rate_hz=250.0, seed=3, speed=None),
        "30m", "10m", ("edgeflow.ecg.alerts",), "10s",
    ),
    Case(
        "retail", "retail_pos.py",
        simulate.pos(stores=20, seed=2, start="2026-03-02T11:00:00Z", speed=None),
        "2h", "1h", (), "1m",
    ),
    Case(
        "vibration", "predictive_maintenance.py",
        simulate.vibration(machines=8, rate_hz=1000.0, seed=7, speed=None),
        "10m", "3m", ("edgeflow.machines.alerts",), "2s",
    ),
]  # fmt: skip


def raw_json_bytes(spec: Any, duration: str) -> tuple[int, int]:
    """(readings, bytes) of the simulator's stream as one JSON object per reading."""
    spec.duration = duration
    n = size = 0
    key = spec.default_key
    ctx = SourceContext("bench", "source", key, "ts", None, 65_536, 0)
    for b in source_batches(spec, ctx):
        keys = b.key_array().tolist()
        t = b.t.tolist()
        cols = [(f, b.values[j].tolist()) for j, f in enumerate(b.fields)]
        for i in range(len(b)):
            row: dict[str, Any] = {key: keys[i], "ts": t[i]}
            for f, col in cols:
                v = col[i]
                row[f] = None if v != v else v
            size += len(orjson.dumps(row))
        n += len(b)
    spec.duration = None
    return n, size


def published(box: Path) -> dict[str, tuple[int, int, int]]:
    """Per topic: (records, bytes as sent uncompressed, lz4-compressed estimate)."""
    db = sqlite3.connect(f"file:{box}?mode=ro", uri=True)
    out: dict[str, tuple[int, int, int]] = {}
    try:
        topics = [t for (t,) in db.execute("SELECT DISTINCT topic FROM outbox")]
        for topic in topics:
            n = raw = comp = 0
            chunk: list[bytes] = []
            chunk_size = 0
            rows = db.execute(
                "SELECT key, value, headers FROM outbox WHERE topic = ? ORDER BY seq", (topic,)
            )
            for key, value, headers in rows:
                hdrs = orjson.loads(headers)
                msg = (key or b"") + value + b"".join(k.encode() + v.encode() for k, v in hdrs)
                n += 1
                raw += len(msg)
                chunk.append(msg)
                chunk_size += len(msg)
                if chunk_size >= 1 << 20:
                    comp += len(lz4.frame.compress(b"".join(chunk)))
                    chunk, chunk_size = [], 0
            if chunk:
                comp += len(lz4.frame.compress(b"".join(chunk)))
            out[topic] = (n, raw, comp)
    finally:
        db.close()
    return out


def alerts_in(box: Path, topics: tuple[str, ...]) -> list[tuple[str, int]]:
    db = sqlite3.connect(f"file:{box}?mode=ro", uri=True)
    try:
        out = []
        for topic in topics:
            for (v,) in db.execute("SELECT value FROM outbox WHERE topic = ?", (topic,)):
                a = orjson.loads(v)
                out.append((a["key"], int(a["t"])))
        return out
    finally:
        db.close()


def run_case(case: Case, duration: str, work: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if "KAFKA_BOOTSTRAP" not in k}
    env.update(
        EDGEFLOW_SIM_SPEED="max", EDGEFLOW_SIM_DURATION=duration, ECG_OUT_DIR=str(work / "files")
    )
    state = work / f"{case.name}-state"
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "edgeflow", "run", str(ROOT / "flows" / case.flow),
         "--state-dir", str(state)],
        env=env, cwd=work, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{case.flow} failed:\n{res.stderr}")
    readings, bytes_in = raw_json_bytes(case.spec, duration)
    topics = published(state / "outbox.sqlite")
    bytes_out = sum(v[1] for v in topics.values())
    bytes_lz4 = sum(v[2] for v in topics.values())
    seconds = parse_duration(duration) / 1e9
    fig: dict[str, Any] = {
        "bench": f"reduction/{case.name}",
        "flow": case.flow,
        "stream_s": seconds,
        "readings": readings,
        "bytes_in": bytes_in,
        "bytes_published": bytes_out,
        "records_published": sum(v[0] for v in topics.values()),
        "per_s": round(bytes_in / seconds, 1),
        "baseline_per_s": round(bytes_out / seconds, 1),
        "ratio": round(bytes_in / bytes_out, 1),
        "ratio_lz4": round(bytes_in / bytes_lz4, 1),
        "run_s": round(wall, 2),
        "topics": {t: {"records": v[0], "bytes": v[1]} for t, v in topics.items()},
    }
    truth = case.spec.injected(duration)
    if case.alert_topics:
        got = delivery(
            [(e.key, e.start_ns, e.end_ns, e.kind) for e in truth],
            alerts_in(state / "outbox.sqlite", case.alert_topics),
            parse_duration(case.grace),
            min_ns=parse_duration(case.grace),
        )
        fig.update(
            injected=got.injected,
            anomalies_delivered=round(got.share, 4),
            false_alerts=got.false_alerts,
        )
    else:
        fig.update(injected=0, anomalies_delivered=None, false_alerts=None)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter streams (under a minute)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeflow-reduction-") as tmp:
        for case in CASES:
            results.append(run_case(case, case.quick if args.quick else case.duration, Path(tmp)))
    print(f"{'flow':<28} {'stream':>7} {'readings':>11} {'raw JSON':>11} {'published':>10} "
          f"{'ratio':>7} {'lz4':>7} {'anomalies delivered':>20} {'false':>6}")  # fmt: skip
    for r in results:
        share = "-" if r["anomalies_delivered"] is None else (
            f"{r['anomalies_delivered']:.0%} of {r['injected']}"
        )  # fmt: skip
        print(
            f"{r['flow']:<28} {r['stream_s'] / 60:>6.0f}m {r['readings']:>11,} "
            f"{r['bytes_in'] / 1e6:>9.1f}MB {r['bytes_published'] / 1e6:>8.2f}MB "
            f"{r['ratio']:>6.1f}x {r['ratio_lz4']:>6.1f}x {share:>20} "
            f"{'-' if r['false_alerts'] is None else r['false_alerts']:>6}"
        )
    for r in results:
        emit(r)


if __name__ == "__main__":
    main()
