"""Per-key memory and rate: 100,000 distinct keys through 1 s windows and a Kafka sink.

Every key sends 10 readings a second (``accel``), in time order, tick by tick; a flow cuts
them into batches, shards them by key and runs tumbling 1 s windows (count/mean/min/max/
std/p95) into ``kafka.sink`` (outbox + forwarders -> a real broker). The same flow runs
with 1,000 keys and the same number of readings per key and window, so both runs write
the same number of window records per reading: only the number of keys differs.

    python bench/keys.py              # 100,000 keys (10 M readings) vs 1,000 keys; then 1 M keys
    python bench/keys.py --quick      # about a minute: 100,000 keys (2 M readings) vs 1,000

Each run is a fresh process (its own peak RSS, the flow process; the forwarder processes
are reported apart). The readings come from a small generator in this file rather than
``simulate.sensors``, whose per-device random blocks (256 ticks per device) would measure
the simulator, not the flow. Starts its own broker with scripts/kafka.sh on free ports
unless KAFKA_BOOTSTRAP is set, and stops it at the end.

The last line is JSON: bench, per_s (100,000 keys), baseline_per_s (1,000 keys), ratio,
peak_rss_mb (100,000 keys), baseline_peak_rss_mb, forwarder_peak_rss_mb, and for the full
run million_keys_per_s, million_keys_peak_rss_mb and million_keys_swapped (pages swapped
by the run, from the machine's swap counters).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _broker import Broker  # noqa: E402
from _common import emit, peak_rss_mb, run_child  # noqa: E402

# bench/kafka.py would shadow kafka-python: keep this folder off the path from here on
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

READINGS_PER_KEY_S = 10  # readings per key per 1 s window


def key_source(keys: int, seconds: int) -> Any:
    """A source of ``keys`` keys x ``seconds`` x 10 Hz readings, as fast as possible."""
    from edgeflow.batch import Batch
    from edgeflow.connectors.base import SourceContext, SourcePartition, SourceSpec

    period = 1_000_000_000 // READINGS_PER_KEY_S
    start = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
    names = tuple(f"sensor-{i:07d}" for i in range(keys))  # zero-padded: sorted = index order

    class Part(SourcePartition):
        def __init__(self, batch_max: int) -> None:
            self.tick = 0
            self.first = 0  # first key of the next batch within the tick
            self.batch_max = batch_max

        def next_batch(self) -> list[Any]:
            if self.tick >= seconds * READINGS_PER_KEY_S:
                raise StopIteration
            if keys >= self.batch_max:  # part of one tick
                lo, hi = self.first, min(keys, self.first + self.batch_max)
                ticks = 1
                self.first = 0 if hi == keys else hi
            else:  # whole ticks
                lo, hi = 0, keys
                ticks = min(self.batch_max // keys, seconds * READINGS_PER_KEY_S - self.tick)
            n = hi - lo
            t_tick = start + (self.tick + np.arange(ticks, dtype=np.int64)) * period
            idx = np.arange(lo, hi, dtype=np.float64)
            phase = (self.tick + np.arange(ticks))[:, None] * 0.3 + idx[None, :] * 0.01
            values = np.sin(phase).reshape(1, -1)
            b = Batch(
                ("accel",),
                names[lo:hi],
                np.tile(np.arange(n, dtype=np.int32), ticks),
                np.repeat(t_tick, n),
                values,
            )
            if self.first == 0:
                self.tick += ticks
            return [b]

        def snapshot(self) -> Any:
            return {"tick": self.tick, "first": self.first}

    class Spec(SourceSpec):
        kind = "bench-keys"

        def columns(self) -> list[str]:
            return ["key", "ts", "accel"]

        def describe(self) -> dict[str, Any]:
            return {"kind": self.kind, "keys": keys, "seconds": seconds}

        def partitions(self) -> list[str]:
            return ["0"]

        def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
            return Part(ctx.batch_max)

    return Spec()


def run_flow(keys: int, seconds: int, bootstrap: str) -> dict[str, Any]:
    from edgeflow import Flow, agg, window
    from edgeflow.connectors import kafka
    from edgeflow.engine import RunOptions, run

    flow = Flow("bench-keys")
    r = flow.source(key_source(keys, seconds), key="key", time="ts")
    r.window(
        window.tumbling("1s"),
        agg.count(), agg.mean("accel"), agg.min("accel"), agg.max("accel"), agg.std("accel"), agg.p95("accel"),
    ).to(kafka.sink(f"bench-keys-{keys}", bootstrap=bootstrap))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as d:
        swap0 = swapped_pages()
        t0 = time.perf_counter()
        summary = run(flow.plan(), RunOptions(workers=1, state_dir=Path(d)))
        dt = time.perf_counter() - t0
        swap = swapped_pages() - swap0
    n = summary.counters["readings_in"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {
        "keys": keys,
        "readings": n,
        "seconds": dt,
        "per_s": n / dt,
        "windows": summary.counters.get("windows_out", 0),
        "peak_rss_mb": peak_rss_mb(),
        "forwarder_peak_rss_mb": children,
        "swapped_pages": swap,
    }


def swapped_pages() -> int:
    """Pages swapped out on this machine so far (0 where /proc/vmstat is missing)."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("pswpout "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def show(r: dict[str, Any]) -> None:
    print(
        f"{r['keys']:>9,} keys: {r['readings']:>11,} readings in {r['seconds']:6.2f}s = "
        f"{r['per_s']:>10,.0f} readings/s, {r['windows']:,} windows, peak RSS "
        f"{r['peak_rss_mb']:.0f} MB (forwarders {r['forwarder_peak_rss_mb']:.0f} MB), "
        f"{r['swapped_pages']} pages swapped",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a run of under a minute")
    ap.add_argument("--keys", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.keys:
        emit(run_flow(args.keys, args.seconds, args.bootstrap))
        return
    seconds = 2 if args.quick else 10  # of event time at 100,000 keys
    with Broker() as bootstrap:
        many = run_child(
            __file__, "--keys", "100000", "--seconds", str(seconds), "--bootstrap", bootstrap
        )
        show(many)
        # the same readings per key and window, 100x fewer keys: 100x longer
        few = run_child(
            __file__, "--keys", "1000", "--seconds", str(seconds * 100), "--bootstrap", bootstrap
        )
        show(few)
        million = None
        if not args.quick:
            million = run_child(
                __file__, "--keys", "1000000", "--seconds", "2", "--bootstrap", bootstrap
            )
            show(million)
    ratio = many["per_s"] / few["per_s"]
    print(f"ratio    : {ratio:.2f}x  (100,000 keys / 1,000 keys, readings/s)")
    out: dict[str, Any] = {
        "bench": "keys",
        "per_s": round(many["per_s"]),
        "baseline_per_s": round(few["per_s"]),
        "ratio": round(ratio, 2),
        "peak_rss_mb": round(many["peak_rss_mb"]),
        "baseline_peak_rss_mb": round(few["peak_rss_mb"]),
        "forwarder_peak_rss_mb": round(max(many["forwarder_peak_rss_mb"], few["forwarder_peak_rss_mb"])),
        "readings": many["readings"],
        "windows": many["windows"],
    }  # fmt: skip
    if million is not None:
        out["million_keys_per_s"] = round(million["per_s"])
        out["million_keys_peak_rss_mb"] = round(million["peak_rss_mb"])
        out["million_keys_swapped"] = million["swapped_pages"]
    emit(out)


if __name__ == "__main__":
    main()
