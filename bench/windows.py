"""Windowing throughput: edgeflow (columnar batches) vs per-reading bytewax ``fold_window``.

1,000 simulated devices at 100 Hz through tumbling 1 s windows computing
count/mean/min/max/std/p95 of ``accel``. Both sides read the same deterministic
simulator (same seed, same readings, generated on the fly by the same source) and run on
one worker; each side runs in its own process so its peak RSS is its own.

    python bench/windows.py            # 10 M readings through edgeflow, 1 M for the baseline
    python bench/windows.py --quick    # under a minute

The baseline is run on fewer readings (it is ~100x slower); rates are per second, so
they compare directly. Imports are outside the timed part on both sides. The last line is
JSON: bench, per_s, baseline_per_s, ratio, peak_rss_mb (edgeflow's process), readings,
baseline_readings, and the same rates per CPU second (steadier on a busy machine).

Regression guard (before a release; CI runs --quick only to check the JSON): the ratio to
the baseline measured in the same run, and edgeflow's peak RSS, against generous bounds;
exits 1 naming the figure that is out of bounds.

    python bench/windows.py --min-ratio 30 --max-rss-mb 100
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    discard_sink,
    emit,
    peak_rss_mb,
    per_reading_source,
    run_baseline_flow,
    run_child,
    simulated_sensors,
    window_summary,
)

DEVICES = 1000
RATE_HZ = 100


def sensors(seconds: int) -> Any:
    return simulated_sensors(seconds, seed=42, devices=DEVICES, rate_hz=RATE_HZ)


def run_edgeflow(seconds: int) -> dict[str, Any]:
    from edgeflow import Flow, agg, window
    from edgeflow.engine import RunOptions, run

    flow = Flow("bench-windows")
    r = flow.source(sensors(seconds), key="device", time="ts")
    r.window(
        window.tumbling("1s"),
        agg.count(), agg.mean("accel"), agg.min("accel"), agg.max("accel"), agg.std("accel"), agg.p95("accel"),
    ).to(discard_sink())  # fmt: skip
    plan = flow.plan()
    import edgeflow.engine.bytewax_adapter  # noqa: F401  (imports untimed, as the baseline's)

    t0, c0 = time.perf_counter(), time.process_time()
    summary = run(plan, RunOptions(workers=1))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = summary.counters["readings_in"]
    return {
        "side": "edgeflow",
        "readings": n,
        "seconds": dt,
        "per_s": n / dt,
        "per_cpu_s": n / cpu,  # readings per CPU second: steadier on a busy machine
        "windows": summary.counters.get("windows_out", 0),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_baseline(seconds: int) -> dict[str, Any]:
    """The same computation, one Python object per reading, with bytewax's fold_window."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    from edgeflow.connectors.base import SourceContext

    spec = sensors(seconds)
    ctx = SourceContext("bench", "src", "device", "ts", ("accel",))
    counts = {"readings": 0, "windows": 0}

    class SinkPart(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            counts["windows"] += len(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> SinkPart:
            return SinkPart()

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def ts(x: tuple[str, int, float]) -> datetime:
        return epoch + timedelta(microseconds=x[1] // 1000)

    def folder(acc: list[float], x: tuple[str, int, float]) -> list[float]:
        acc.append(x[2])
        return acc

    flow = Dataflow("baseline")
    s = op.input("in", flow, per_reading_source(spec, ctx, counts))
    keyed = op.key_on("key", s, lambda x: x[0])
    # Freeze bytewax's system clock so its watermark is the largest event time seen, as
    # in edgeflow (otherwise wall-clock time closes windows early and splits them).
    frozen = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = EventClock(ts, wait_for_system_duration=timedelta(0), now_getter=lambda: frozen)
    windower = TumblingWindower(length=timedelta(seconds=1), align_to=epoch)
    w = fold_window("win", keyed, clock, windower, list, folder, lambda a, b: a + b)
    out = op.map_value("agg", w.down, lambda kv: window_summary(kv[1]))
    op.output("out", out, Sink())
    return {**run_baseline_flow(flow, counts), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a run of under a minute")
    ap.add_argument("--min-ratio", type=float, help="exit 1 if the ratio is below this")
    ap.add_argument("--max-rss-mb", type=float, help="exit 1 if edgeflow's peak RSS is above this")
    ap.add_argument("--side", choices=["edgeflow", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        fn = run_edgeflow if args.side == "edgeflow" else run_baseline
        emit(fn(args.seconds))
        return
    ef_seconds, base_seconds = (50, 5) if args.quick else (100, 10)
    ef = run_child(__file__, "--side", "edgeflow", "--seconds", str(ef_seconds))
    print(
        f"edgeflow : {ef['readings']:>11,} readings in {ef['seconds']:6.2f}s = {ef['per_s']:>12,.0f} readings/s, {ef['windows']:,} windows, peak RSS {ef['peak_rss_mb']:.0f} MB"
    )
    base = run_child(__file__, "--side", "baseline", "--seconds", str(base_seconds))
    print(
        f"baseline : {base['readings']:>11,} readings in {base['seconds']:6.2f}s = {base['per_s']:>12,.0f} readings/s, {base['windows']:,} windows, peak RSS {base['peak_rss_mb']:.0f} MB  (bytewax fold_window, per reading)"
    )
    ratio = ef["per_s"] / base["per_s"]
    same = ef["windows"] * base_seconds == base["windows"] * ef_seconds
    print(f"ratio    : {ratio:.1f}x   (windows per second of data equal on both sides: {same})")
    emit({
        "bench": "windows", "per_s": round(ef["per_s"]), "baseline_per_s": round(base["per_s"]),
        "ratio": round(ratio, 1), "peak_rss_mb": round(ef["peak_rss_mb"]), "readings": ef["readings"],
        "baseline_readings": base["readings"], "baseline_peak_rss_mb": round(base["peak_rss_mb"]),
        "same_windows": same, "per_cpu_s": round(ef["per_cpu_s"]),
        "baseline_per_cpu_s": round(base["per_cpu_s"]),
        "cpu_ratio": round(ef["per_cpu_s"] / base["per_cpu_s"], 1),
    })  # fmt: skip
    failed = []
    if args.min_ratio is not None and ratio < args.min_ratio:
        failed.append(f"ratio {ratio:.1f}x is below --min-ratio {args.min_ratio:g}")
    if args.max_rss_mb is not None and ef["peak_rss_mb"] > args.max_rss_mb:
        failed.append(
            f"peak RSS {ef['peak_rss_mb']:.0f} MB is above --max-rss-mb {args.max_rss_mb:g}"
        )
    if failed:
        print("windows bench regressed: " + "; ".join(failed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
