"""Detection throughput per detector, vs River's HalfSpaceTrees, and alert latency.

Throughput: 10,000,000 readings (``--quick``: 1,000,000) of 100 simulated devices, in
batches of 65,536 (as a flow cuts them), through edgeflow's detection kernel on one thread
- the code a flow's detect step runs per shard. Baseline in the same run: River's
``HalfSpaceTrees`` scoring and learning one reading at a time (on 50,000 readings; its rate
is per reading either way).

Latency: a real flow (simulated sensors in real time, 100 devices x 100 Hz = 10,000
readings/s with injected spikes -> detect.zscore -> a sink) runs for 15 s (``--quick``: 8 s);
for every anomaly event the sink records the time since its reading entered the flow (its
source partition handed it over) and, separately, since the reading's timestamp (which adds
the wait for bytewax to poll the source). The first 2 s (a start-up backlog) are left out.
Prints p50/p99/max.

One key: the same detectors on a single long series made like one of the 100 devices'
(10,000,000 readings of one key; ``--quick``: 1,000,000), in batches of 65,536 through the
same kernel - a one-sensor flow or ``edgeflow score`` on a long file, where the many-key fast
paths have one row to work with.

The last line is JSON: bench, per_s (zscore), baseline_per_s (River), ratio, p99_ms,
per-detector rates (``<name>_per_s``), and the one-key rates (``one_key_per_s``: zscore,
``one_key_auto_per_s``, ``one_key_<name>_per_s``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, ClassVar

import numpy as np

from edgeflow.batch import Batch, RecordBatch
from edgeflow.connectors.base import (
    SinkContext,
    SinkPartition,
    SinkSpec,
    SourceContext,
    SourcePartition,
)
from edgeflow.connectors.simulate import SimulatedSensors
from edgeflow.ops import detect
from edgeflow.ops.detect.kernel import DetectKernel

DEVICES = 100
BATCH = 65_536


def batches(n: int, seed: int = 1) -> list[Batch]:
    rng = np.random.default_rng(seed)
    per = n // DEVICES
    t = np.repeat(np.arange(per, dtype=np.int64) * 10_000_000, DEVICES)
    key_idx = np.tile(np.arange(DEVICES, dtype=np.int32), per)
    phase = np.arange(per)[:, None] / 50.0 + rng.uniform(0, 6, DEVICES)
    x = (np.sin(phase) + rng.normal(0, 0.2, (per, DEVICES))).reshape(-1)
    spikes = rng.random(len(x)) < 0.001
    x[spikes] += 6
    keys = tuple(f"dev-{i}" for i in range(DEVICES))
    out = []
    for a in range(0, len(x), BATCH):
        b = slice(a, a + BATCH)
        out.append(Batch(("accel",), keys, key_idx[b], t[b], x[b][None, :].copy()))
    return out


def one_key_batches(n: int, seed: int = 1) -> list[Batch]:
    """One device's series, made as each of :func:`batches`' 100 devices is (a sine with
    noise and spikes in 0.1 % of readings), 65,536 readings a batch."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.int64) * 10_000_000
    x = np.sin(np.arange(n) / 50.0 + rng.uniform(0, 6)) + rng.normal(0, 0.2, n)
    x[rng.random(n) < 0.001] += 6
    codes = np.zeros(BATCH, np.int32)
    return [
        Batch(("accel",), ("dev-0",), codes[: len(t[a : a + BATCH])], t[a : a + BATCH],
              x[a : a + BATCH][None, :].copy())
        for a in range(0, n, BATCH)
    ]  # fmt: skip


def kernel_rate(make: Any, data: list[Batch]) -> tuple[float, int]:
    k = DetectKernel("detect", "accel", make(), detect.threshold())
    state = k.init()
    t0 = time.perf_counter()
    for b in data:
        k.step_batch(state, b)
    dt = time.perf_counter() - t0
    return sum(len(b) for b in data) / dt, state["anomalies"]


def river_rate(n: int) -> float:
    from river import anomaly

    rng = np.random.default_rng(2)
    xs = (np.sin(np.arange(n) / 50.0) + rng.normal(0, 0.2, n)).tolist()
    model = anomaly.HalfSpaceTrees(seed=42)
    t0 = time.perf_counter()
    for v in xs:
        model.score_one({"accel": v})
        model.learn_one({"accel": v})
    return n / (time.perf_counter() - t0)


ENTERED: dict[int, int] = {}  # reading time -> when the flow got it (ns); one partition


class _StampedSensors(SimulatedSensors):
    """simulate.sensors, noting when each reading enters the flow: the moment its source
    partition hands it over (so the flow's own latency is measured, not the poll wait)."""

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        inner = super().open(partition, resume, ctx)

        class Stamped(SourcePartition):
            def next_batch(self) -> list[Any]:
                items = inner.next_batch()
                now = time.time_ns()
                for b in items:
                    if isinstance(b, Batch) and len(b):
                        ENTERED.update(dict.fromkeys(set(b.t.tolist()), now))
                return items

            def next_awake(self) -> int | None:
                return inner.next_awake()

            def snapshot(self) -> Any:
                return inner.snapshot()

        return Stamped()


class _LatencySink(SinkSpec):
    kind = "latency"
    seen: ClassVar[list[tuple[int, float, float]]] = []  # (reading time, ms since due, ms in flow)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        seen = self.seen

        class Part(SinkPartition):
            def write(self, batches: list[RecordBatch]) -> None:
                now = time.time_ns()
                for b in batches:
                    for t in np.asarray(b.columns["t"]).tolist():
                        seen.append((t, (now - t) / 1e6, (now - ENTERED[t]) / 1e6))

        return Part()


def latency(seconds: int) -> dict[str, float]:
    from edgeflow import Flow
    from edgeflow.engine import RunOptions, run

    flow = Flow("bench-latency", shards=4)
    r = flow.source(
        _StampedSensors(
            devices=DEVICES, rate_hz=100, seed=3, speed=1.0, spike_prob=0.002, partitions=1
        ),
        lateness="0s",
    )
    r.detect(detect.zscore(window=128), "accel", name="alerts").to(_LatencySink())
    started = time.time_ns()
    run(flow.plan(), RunOptions(workers=1, run_for_ns=seconds * 10**9))
    # a live simulator starts at the last whole second, so its first batch replays the ticks
    # already due: leave the first 2 s out, they are a backlog, not live traffic
    rows = [(due, flow_ms) for t, due, flow_ms in _LatencySink.seen if t >= started + 2 * 10**9]
    due = np.asarray([d for d, _ in rows])
    inflow = np.asarray([f for _, f in rows])
    return {
        "p50_ms": float(np.percentile(inflow, 50)),
        "p99_ms": float(np.percentile(inflow, 99)),
        "max_ms": float(inflow.max()),
        "p50_from_timestamp_ms": float(np.percentile(due, 50)),
        "p99_from_timestamp_ms": float(np.percentile(due, 99)),
        "events": len(rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="1,000,000 readings and an 8 s latency run"
    )
    args = ap.parse_args()
    try:
        import river  # noqa: F401 - the baseline, checked before minutes of benchmarking
    except ImportError:
        ap.exit(2, "bench/detect.py needs River for its baseline: pip install -e '.[bench]'\n")
    n = 1_000_000 if args.quick else 10_000_000
    data = batches(n)
    rates: dict[str, float] = {}
    suite = {
        "zscore": lambda: detect.zscore(),
        "ewma": lambda: detect.ewma(),
        "cusum": lambda: detect.cusum(),
        "mad": lambda: detect.mad(),
        "seasonal": lambda: detect.seasonal(),
        "auto": lambda: detect.auto(),
    }
    for name, make in suite.items():
        rate, found = kernel_rate(make, data)
        rates[name] = rate
        print(f"{name:>9}: {rate:>12,.0f} readings/s ({n:,} readings, {found:,} anomaly events)")
    one = one_key_batches(n)
    one_rates: dict[str, float] = {}
    for name, make in suite.items():
        rate, found = kernel_rate(make, one)
        one_rates[name] = rate
        print(f"{name:>9}: {rate:>12,.0f} readings/s on ONE key ({n:,} readings, {found:,} events)")
    base = river_rate(50_000)
    print(
        f"{'River HST':>9}: {base:>12,.0f} readings/s (HalfSpaceTrees, score_one + learn_one per reading)"
    )
    print(f"ratio zscore / River: {rates['zscore'] / base:,.0f}x")
    lat = latency(8 if args.quick else 15)
    print(
        "latency reading enters the flow -> anomaly event at the sink, 10,000 readings/s: "
        f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.3f} ms "
        f"({lat['events']} events); from the reading's timestamp (includes waiting for the "
        f"source to be polled): p50 {lat['p50_from_timestamp_ms']:.3f} ms, "
        f"p99 {lat['p99_from_timestamp_ms']:.3f} ms"
    )
    print(json.dumps({
        "bench": "detect", "per_s": round(rates["zscore"]), "baseline_per_s": round(base),
        "ratio": round(rates["zscore"] / base, 1), "p99_ms": round(lat["p99_ms"], 3),
        "p50_ms": round(lat["p50_ms"], 3),
        "p99_from_timestamp_ms": round(lat["p99_from_timestamp_ms"], 3),
        "readings": n, **{f"{k}_per_s": round(v) for k, v in rates.items()},
        "one_key_per_s": round(one_rates["zscore"]), "one_key_auto_per_s": round(one_rates["auto"]),
        **{f"one_key_{k}_per_s": round(v) for k, v in one_rates.items()},
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
