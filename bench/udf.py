"""User functions in a flow: vectorised derive + filter + a 1 s window, per-record apply,
the same window without user code, and bytewax's per-item ``op.map`` + ``op.filter``.

1,000 simulated devices at 100 Hz (fields ``accel``, ``temp``). Each side runs in its own
process on one worker and reads the same deterministic simulator:

* ``per_s``: ``derive(power=accel * temp)`` + ``filter(accel > -1)`` + tumbling 1 s window
  (count, mean of power), vectorised (one call per batch);
* ``without_udf_per_s``: the same window with no user function, on the same source fields
  (count, mean of accel, mean of temp: the simulator generates both fields, as for the
  user functions); ``without_udf_one_field_per_s``: count and mean of accel only (the
  source then generates one field: most of the difference to ``per_s`` is that field);
* ``per_record_per_s``: ``apply`` (one Python call per reading: power, drop accel <= -1)
  + the same window (the slow path);
* ``baseline_per_s``: bytewax ``op.map`` (power) + ``op.filter`` per item, one tuple per
  reading, then ``fold_window`` (count, sum) on the same data; ``ratio`` = per_s / baseline.

    python bench/udf.py            # 10 M readings vectorised, 1 M for apply and the baseline
    python bench/udf.py --quick    # 1 M / 200 k: under a minute

The last line is JSON: bench, per_s, without_udf_per_s, udf_vs_plain,
without_udf_one_field_per_s, per_record_per_s,
baseline_per_s, ratio, readings, and the same rates per CPU second (steadier on a busy
machine); ``same_windows``: apply and the baseline (same readings, same filter) made the
same number of windows.
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
    per_reading_source,
    run_baseline_flow,
    run_child,
    simulated_sensors,
)

DEVICES = 1000
RATE_HZ = 100


def sensors(seconds: int) -> Any:
    return simulated_sensors(seconds, seed=42, devices=DEVICES, rate_hz=RATE_HZ)


def run_edgeflow(side: str, seconds: int) -> dict[str, Any]:
    from edgeflow import Flow, agg, window
    from edgeflow.engine import RunOptions, run

    def per_record(r: dict[str, Any]) -> dict[str, Any] | None:
        if r["accel"] <= -1.0:
            return None
        r["power"] = r["accel"] * r["temp"]
        return r

    flow = Flow(f"bench-udf-{side}")
    r = flow.source(sensors(seconds), key="device", time="ts")
    tumbling = window.tumbling("1s")
    if side == "udf":
        p = r.derive(power=lambda c: c["accel"] * c["temp"]).filter(lambda c: c["accel"] > -1.0)
        p.window(tumbling, agg.count(), agg.mean("power")).to(discard_sink())
    elif side == "apply":
        p = r.apply(per_record, fields=("accel", "temp", "power"))
        p.window(tumbling, agg.count(), agg.mean("power")).to(discard_sink())
    elif side == "plain":
        r.window(tumbling, agg.count(), agg.mean("accel"), agg.mean("temp")).to(discard_sink())
    else:
        r.window(tumbling, agg.count(), agg.mean("accel")).to(discard_sink())
    plan = flow.plan()
    import edgeflow.engine.bytewax_adapter  # noqa: F401  (imports untimed, as the baseline's)

    t0, c0 = time.perf_counter(), time.process_time()
    summary = run(plan, RunOptions(workers=1))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = summary.counters["readings_in"]
    return {
        "side": side,
        "readings": n,
        "seconds": dt,
        "per_s": n / dt,
        "per_cpu_s": n / cpu,
        "windows": summary.counters.get("windows_out", 0),
    }


def run_baseline(seconds: int) -> dict[str, Any]:
    """bytewax per item: op.map adds power, op.filter drops accel <= -1, fold_window."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    from edgeflow.connectors.base import SourceContext

    spec = sensors(seconds)
    ctx = SourceContext("bench", "src", "device", "ts", ("accel", "temp"))
    counts = {"readings": 0, "windows": 0}

    class SinkPart(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            counts["windows"] += len(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> SinkPart:
            return SinkPart()

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def ts(x: tuple[str, int, float, float, float]) -> datetime:
        return epoch + timedelta(microseconds=x[1] // 1000)

    def folder(acc: list[float], x: tuple[str, int, float, float, float]) -> list[float]:
        acc[0] += 1
        acc[1] += x[4]
        return acc

    flow = Dataflow("baseline")
    s = op.input("in", flow, per_reading_source(spec, ctx, counts))
    powered = op.map("power", s, lambda x: (x[0], x[1], x[2], x[3], x[2] * x[3]))
    kept = op.filter("keep", powered, lambda x: x[2] > -1.0)
    keyed = op.key_on("key", kept, lambda x: x[0])
    frozen = datetime(2026, 1, 1, tzinfo=timezone.utc)  # watermark = newest event time
    clock = EventClock(ts, wait_for_system_duration=timedelta(0), now_getter=lambda: frozen)
    windower = TumblingWindower(length=timedelta(seconds=1), align_to=epoch)
    w = fold_window(
        "win", keyed, clock, windower, lambda: [0.0, 0.0], folder,
        lambda a, b: [a[0] + b[0], a[1] + b[1]],
    )  # fmt: skip
    out = op.map_value("agg", w.down, lambda kv: {"count": kv[1][0], "mean": kv[1][1] / kv[1][0]})
    op.output("out", out, Sink())
    return run_baseline_flow(flow, counts)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a run of under a minute")
    ap.add_argument(
        "--side", choices=["udf", "plain", "plain1", "apply", "baseline"], help=argparse.SUPPRESS
    )
    ap.add_argument("--seconds", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        emit(
            run_baseline(args.seconds)
            if args.side == "baseline"
            else run_edgeflow(args.side, args.seconds)
        )
        return
    fast_s, slow_s = (10, 2) if args.quick else (100, 10)
    res: dict[str, dict[str, Any]] = {}
    for side, seconds in (
        ("udf", fast_s),
        ("plain", fast_s),
        ("plain1", fast_s),
        ("apply", slow_s),
        ("baseline", slow_s),
    ):
        res[side] = r = run_child(__file__, "--side", side, "--seconds", str(seconds))
        print(
            f"{side:<9}: {r['readings']:>11,} readings in {r['seconds']:6.2f}s = "
            f"{r['per_s']:>12,.0f} readings/s, {r['windows']:,} windows"
        )
    udf, plain, apply, base = (res[k] for k in ("udf", "plain", "apply", "baseline"))
    emit({
        "bench": "udf", "per_s": round(udf["per_s"]), "without_udf_per_s": round(plain["per_s"]),
        "udf_vs_plain": round(udf["per_s"] / plain["per_s"], 2),
        "without_udf_one_field_per_s": round(res["plain1"]["per_s"]),
        "per_record_per_s": round(apply["per_s"]), "baseline_per_s": round(base["per_s"]),
        "ratio": round(udf["per_s"] / base["per_s"], 1), "readings": udf["readings"],
        "baseline_readings": base["readings"], "per_cpu_s": round(udf["per_cpu_s"]),
        "without_udf_per_cpu_s": round(plain["per_cpu_s"]),
        "per_record_per_cpu_s": round(apply["per_cpu_s"]),
        "baseline_per_cpu_s": round(base["per_cpu_s"]),
        "same_windows": apply["windows"] == base["windows"],
    })  # fmt: skip


if __name__ == "__main__":
    main()
