"""The whole path a user runs: source -> windows + trend + detection -> outbox -> Kafka.

1,000 simulated devices at 100 Hz (``simulate.sensors``, as fast as possible) through
tumbling 1 s windows (count/mean/min/max/std/p95 of ``accel``), a swinging-door trend of
``temp`` and ``detect.auto()`` on ``accel``; all three streams go to one ``kafka.sink``
(durable outbox, forwarder processes, a real broker). The rate is end to end: readings
divided by the time from starting the flow to the last record acknowledged by Kafka.

Stage shares are of that end-to-end time: ``startup`` (from starting the run to the source's
first batch: building the dataflow, opening the outbox, starting the forwarders, the
detectors' imports), ``source`` (the simulator making batches),
``windows``, ``trend``, ``detect`` (the kernels), ``outbox_append`` (encoding records and
appending them to the outbox), ``forwarding`` (waiting, after the input ended, for the
forwarders to deliver what is left; they run in their own processes alongside the flow
before that) and ``engine`` (the rest: bytewax, sharding, hand-offs).

Baseline in the same run, one Python object per reading on bytewax operators: the same
readings flattened to tuples, ``fold_window`` for the windows, a swinging door and a rolling
z-score per reading in ``stateful_map``, and every record sent with kafka-python's producer
(bytewax's own KafkaSink needs confluent-kafka, which is not a dependency here), flushed
at the end. Also in the same run: bench/windows.py's edgeflow side (windows only, no sink),
for the ``windows_ratio`` figure. And ``detect_alone_per_s``: ``detect.auto()``'s kernel on
its own over the same readings (the source's batches handed straight to one kernel: no engine,
no other step, no sink) - the most the whole pipeline could reach if every other stage cost
nothing; ``detect_alone_ratio`` is that rate over the baseline's.

    python bench/pipeline.py            # 60 s of data (6 M readings); baseline 6 s
    python bench/pipeline.py --quick    # under a minute or two: 20 s; baseline 2 s
    python bench/pipeline.py --quick --detector zscore   # edgeflow with the baseline's detector

``--detector`` (default ``auto``) names the ``edgeflow.detect`` detector edgeflow's side and
the detect-alone run use (the baseline always runs its per-reading z-score).

Starts its own broker with scripts/kafka.sh on free ports unless KAFKA_BOOTSTRAP is set,
and stops it at the end. The last line is JSON: bench, per_s, baseline_per_s, ratio,
windows_per_s (bench/windows.py's rate), windows_ratio, detect_alone_per_s, detect_alone_ratio,
peak_rss_mb, kafka_records_per_s,
and ``<stage>_share`` for startup, source, windows, trend, detect, outbox_append, forwarding, engine.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _broker import Broker  # noqa: E402
from _common import (  # noqa: E402
    emit,
    peak_rss_mb,
    per_reading_source,
    run_child,
    simulated_sensors,
    source_batches,
    window_summary,
)

# bench/kafka.py would shadow kafka-python: keep this folder off the path from here on
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

DEVICES = 1000
RATE_HZ = 100
STAGES = ("startup", "source", "windows", "trend", "detect", "outbox_append", "forwarding")
SDT_DEVIATION = 0.2
ZSCORE_WINDOW = 256


def sensors(seconds: int) -> Any:
    return simulated_sensors(seconds, seed=7, devices=DEVICES, rate_hz=RATE_HZ)


def kafka_end_offsets(bootstrap: str, topic: str) -> int:
    """Messages in ``topic`` (sum of its partitions' end offsets; 0 before it exists)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            return 0
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        consumer.close()


class StageClock:
    """Wall time spent inside wrapped methods, per stage (one thread runs the flow)."""

    def __init__(self) -> None:
        self.spent = dict.fromkeys(STAGES, 0.0)
        self.t0: float | None = None  # when the run started; startup ends at the first batch

    def first_batch(self) -> None:
        if self.t0 is not None:
            self.spent["startup"] = time.perf_counter() - self.t0
            self.t0 = None

    def wrap(self, owner: Any, method: str, stage: str) -> None:
        inner: Callable[..., Any] = getattr(owner, method)
        spent = self.spent

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[stage] += time.perf_counter() - t0

        setattr(owner, method, timed)


def run_edgeflow(seconds: int, bootstrap: str, detector: str = "auto") -> dict[str, Any]:
    from edgeflow import Flow, agg, detect, downsample, window
    from edgeflow.connectors import kafka
    from edgeflow.connectors import kafka as kafka_mod
    from edgeflow.connectors.sim_base import TickPartition
    from edgeflow.engine import RunOptions, run
    from edgeflow.ops.detect.kernel import DetectKernel
    from edgeflow.ops.downsample import DownsampleKernel
    from edgeflow.ops.window import WindowKernel

    clock = StageClock()
    clock.wrap(TickPartition, "next_batch", "source")
    source_next = TickPartition.next_batch

    def next_batch(self: Any) -> Any:
        clock.first_batch()
        return source_next(self)

    TickPartition.next_batch = next_batch  # type: ignore[method-assign]
    for m in ("step_batch", "on_time", "flush"):
        clock.wrap(WindowKernel, m, "windows")
    for m in ("step_batch", "flush"):
        clock.wrap(DownsampleKernel, m, "trend")
        clock.wrap(DetectKernel, m, "detect")
    part_cls = kafka_mod._KafkaSinkPartition
    clock.wrap(part_cls, "write", "outbox_append")
    clock.wrap(part_cls, "close", "forwarding")

    topic = f"bench-pipeline-{int(time.time())}"
    flow = Flow("bench-pipeline")
    out = flow.sink(kafka.sink(topic, bootstrap=bootstrap, drain_timeout="300s"), name="to_kafka")
    r = flow.source(sensors(seconds), key="device", time="ts")
    r.window(
        window.tumbling("1s"),
        agg.count(), agg.mean("accel"), agg.min("accel"), agg.max("accel"), agg.std("accel"), agg.p95("accel"),
        name="windows",
    ).to(out)  # fmt: skip
    r.downsample(downsample.swinging_door("temp", deviation=SDT_DEVIATION), name="trend").to(out)
    r.detect(getattr(detect, detector)(), "accel", name="alerts").to(out)
    plan = flow.plan()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as d:
        t0 = clock.t0 = time.perf_counter()
        summary = run(plan, RunOptions(workers=1, state_dir=Path(d)))
        appended = sum(v for k, v in summary.counters.items() if k.startswith("records_to."))
        # the run drains the outbox before it returns; make sure Kafka has every record
        delivered = kafka_end_offsets(bootstrap, topic)
        deadline = time.monotonic() + 300
        while delivered < appended and time.monotonic() < deadline:
            time.sleep(0.1)
            delivered = kafka_end_offsets(bootstrap, topic)
        dt = time.perf_counter() - t0
    n = summary.counters["readings_in"]
    shares = {f"{s}_share": clock.spent[s] / dt for s in STAGES}
    shares["engine_share"] = max(0.0, 1.0 - sum(shares.values()))
    return {
        "readings": n,
        "seconds": dt,
        "per_s": n / dt,
        "records": appended,
        "delivered": delivered,
        "kafka_records_per_s": delivered / dt,
        "windows": summary.counters.get("windows_out", 0),
        "trend_points": summary.counters.get("trend_points", 0),
        "anomalies": summary.counters.get("anomalies", 0),
        "peak_rss_mb": peak_rss_mb(),
        **shares,
    }


def run_detect_alone(seconds: int, detector: str = "auto") -> dict[str, Any]:
    """The detector's kernel alone on the same readings, batches as the source cuts them."""
    from edgeflow import detect
    from edgeflow.connectors.base import SourceContext
    from edgeflow.ops.detect.kernel import DetectKernel

    spec = sensors(seconds)
    ctx = SourceContext("bench", "src", "device", "ts", ("accel",))
    batches = list(source_batches(spec, ctx))
    kernel = DetectKernel("alerts", "accel", getattr(detect, detector)(), detect.threshold())
    state = kernel.init()
    t0 = time.perf_counter()
    for b in batches:
        kernel.step_batch(state, b)
    kernel.flush(state)
    dt = time.perf_counter() - t0
    n = sum(len(b) for b in batches)
    return {"readings": n, "seconds": dt, "per_s": n / dt, "anomalies": state["anomalies"]}


def run_baseline(seconds: int, bootstrap: str) -> dict[str, Any]:
    """The same pipeline, one Python object per reading, on bytewax operators."""
    from datetime import datetime, timedelta, timezone

    import bytewax.operators as op
    import orjson
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main
    from kafka import KafkaProducer

    from edgeflow.connectors.base import SourceContext
    from edgeflow.connectors.kafka import KafkaSink

    spec = sensors(seconds)
    ctx = SourceContext("bench", "src", "device", "ts", ("accel", "temp"))
    counts = {"readings": 0, "records": 0}
    topic = f"bench-pipeline-baseline-{int(time.time())}"
    producer = KafkaProducer(bootstrap_servers=bootstrap, **KafkaSink("x").producer_config())

    class SinkPart(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            for key, rec in items:
                producer.send(topic, key=key.encode(), value=orjson.dumps(rec))
            counts["records"] += len(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> SinkPart:
            return SinkPart()

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    def ts(x: tuple[str, int, float, float]) -> datetime:
        return epoch + timedelta(microseconds=x[1] // 1000)

    def summarise(kv: tuple[Any, list[float]]) -> dict[str, Any]:
        return {"window": kv[0], **window_summary(kv[1])}

    def folder(acc: list[float], x: tuple[str, int, float, float]) -> list[float]:
        acc.append(x[2])
        return acc

    def door(state: Any, x: tuple[str, int, float, float]) -> tuple[Any, list[dict[str, Any]]]:
        """Swinging door on temp: emit the last point when the door closes."""
        t, v = x[1], x[3]
        if state is None:
            return [t, v, t, v, -math.inf, math.inf], [{"t": t, "temp": v}]
        t0, v0, lt, lv, up, low = state
        dt = (t - t0) / 1e9 or 1e-9
        up = max(up, (v - SDT_DEVIATION - v0) / dt)
        low = min(low, (v + SDT_DEVIATION - v0) / dt)
        if up > low:  # the door closed: the previous reading is a corner
            ddt = (t - lt) / 1e9 or 1e-9
            return [lt, lv, t, v, (v - SDT_DEVIATION - lv) / ddt, (v + SDT_DEVIATION - lv) / ddt], [
                {"t": lt, "temp": lv}
            ]
        return [t0, v0, t, v, up, low], []

    def zscore(state: Any, x: tuple[str, int, float, float]) -> tuple[Any, list[dict[str, Any]]]:
        """A rolling z-score of accel over the last 256 readings; an event above 3 sigma."""
        from collections import deque

        if state is None:
            state = [deque(), 0.0, 0.0]
        win, s, ss = state
        v = x[2]
        out = []
        if len(win) >= 16:
            n = len(win)
            mean = s / n
            std = math.sqrt(max(ss / n - mean * mean, 1e-12))
            z = abs(v - mean) / std
            if z > 3.0:
                out.append({"t": x[1], "accel": v, "z": z})
        win.append(v)
        s += v
        ss += v * v
        if len(win) > ZSCORE_WINDOW:
            old = win.popleft()
            s -= old
            ss -= old * old
        return [win, s, ss], out

    flow = Dataflow("baseline-pipeline")
    s = op.input("in", flow, per_reading_source(spec, ctx, counts))
    keyed = op.key_on("key", s, lambda x: x[0])
    frozen = datetime(2026, 1, 1, tzinfo=timezone.utc)  # watermark = largest event time seen
    clock = EventClock(ts, wait_for_system_duration=timedelta(0), now_getter=lambda: frozen)
    windower = TumblingWindower(length=timedelta(seconds=1), align_to=epoch)
    w = fold_window("win", keyed, clock, windower, list, folder, lambda a, b: a + b)
    summaries = op.map_value("agg", w.down, summarise)
    trend = op.flat_map_value("trend_out", op.stateful_map("trend", keyed, door), lambda x: x)
    alerts = op.flat_map_value("alerts_out", op.stateful_map("detect", keyed, zscore), lambda x: x)
    op.output("out", op.merge("all", summaries, trend, alerts), Sink())
    t0 = time.perf_counter()
    run_main(flow)
    producer.flush()
    dt = time.perf_counter() - t0
    producer.close()
    n = counts["readings"]
    return {
        "readings": n,
        "seconds": dt,
        "per_s": n / dt,
        "records": counts["records"],
        "kafka_records_per_s": counts["records"] / dt,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a shorter run")
    ap.add_argument(
        "--detector",
        default="auto",
        choices=["auto", "zscore", "ewma", "cusum", "mad", "seasonal"],
        help="the detector on edgeflow's side (default auto)",
    )
    ap.add_argument("--side", choices=["edgeflow", "baseline", "detect"], help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side == "detect":
        emit(run_detect_alone(args.seconds, args.detector))
        return
    if args.side == "edgeflow":
        emit(run_edgeflow(args.seconds, args.bootstrap, args.detector))
        return
    if args.side == "baseline":
        emit(run_baseline(args.seconds, args.bootstrap))
        return
    ef_seconds, base_seconds = (20, 2) if args.quick else (60, 6)
    with Broker() as bootstrap:
        ef = run_child(
            __file__, "--side", "edgeflow", "--seconds", str(ef_seconds), "--bootstrap", bootstrap,
            "--detector", args.detector,
        )  # fmt: skip
        print(
            f"edgeflow : {ef['readings']:>10,} readings in {ef['seconds']:6.2f}s = {ef['per_s']:>10,.0f} readings/s end to end; "
            f"{ef['delivered']:,} of {ef['records']:,} records in Kafka ({ef['kafka_records_per_s']:,.0f}/s: "
            f"{ef['windows']:,} windows, {ef['trend_points']:,} trend points, {ef['anomalies']:,} anomalies); peak RSS {ef['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        print(
            "  time shares: "
            + ", ".join(f"{s} {ef[f'{s}_share']:.0%}" for s in (*STAGES, "engine")),
            flush=True,
        )
        base = run_child(
            __file__, "--side", "baseline", "--seconds", str(base_seconds), "--bootstrap", bootstrap
        )
        print(
            f"baseline : {base['readings']:>10,} readings in {base['seconds']:6.2f}s = {base['per_s']:>10,.0f} readings/s "
            f"({base['records']:,} records to Kafka, {base['kafka_records_per_s']:,.0f}/s; bytewax per reading); peak RSS {base['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    win = run_child(str(HERE / "windows.py"), "--side", "edgeflow", "--seconds", str(ef_seconds))
    print(
        f"windows  : {win['per_s']:>10,.0f} readings/s (bench/windows.py's edgeflow side: windows only)",
        flush=True,
    )
    alone = run_child(
        __file__, "--side", "detect", "--seconds", str(ef_seconds), "--detector", args.detector
    )
    alone_ratio = alone["per_s"] / base["per_s"]
    print(
        f"detect   : {alone['per_s']:>10,.0f} readings/s ({args.detector}'s kernel alone on the same readings: "
        f"the pipeline's ceiling, {alone_ratio:.1f}x the baseline, {alone['per_s'] / win['per_s']:.2f}x windows)",
        flush=True,
    )
    ratio = ef["per_s"] / base["per_s"]
    windows_ratio = ef["per_s"] / win["per_s"]
    print(f"ratio    : {ratio:.1f}x the bytewax pipeline, {windows_ratio:.2f}x bench/windows.py")
    emit({
        "bench": "pipeline", "detector": args.detector, "per_s": round(ef["per_s"]), "baseline_per_s": round(base["per_s"]),
        "ratio": round(ratio, 1), "windows_per_s": round(win["per_s"]),
        "windows_ratio": round(windows_ratio, 2), "detect_alone_per_s": round(alone["per_s"]),
        "detect_alone_ratio": round(alone_ratio, 1), "peak_rss_mb": round(ef["peak_rss_mb"]),
        "kafka_records_per_s": round(ef["kafka_records_per_s"]), "records": ef["records"],
        "readings": ef["readings"], "baseline_readings": base["readings"],
        **{f"{s}_share": round(ef[f"{s}_share"], 3) for s in (*STAGES, "engine")},
    })  # fmt: skip


if __name__ == "__main__":
    main()
