"""The fog tier: rollups from Kafka on 1, 2 and 4 processes, and the transactional sink's cost.

**Rollup.** A node flow (``DEVICES`` simulated sensors at 10 Hz, 1 s windows with
``agg.mergeable("accel")`` and ``agg.mergeable("temp")``) publishes its summaries to a
topic with 4 partitions on a real broker. Then a fog flow reads that topic as records
(``kafka.source(..., records=True, stop_at_end=True)``), rolls them up per device and minute
(``.rollup("1m", fields=["accel", "temp"], group_by="key")``) and writes the rollups to a
file; it runs as ``edgeflow run --processes P`` for P = 1, 2, 4. Each run's rate is the
summaries divided by its wall time less the wall time of the same command on an empty topic
(start-up and shut-down of P processes), so ``rollup_per_s`` is the steady rate; the raw
wall-clock rate is printed too. ``scaling_<P>`` is rate(P) / (P x rate(1)): on this 2-core
machine P > 2 cannot scale, and 2 processes share the cores with the broker.

**Delivery.** ``bench/_sink_rates.py``: the same records drained from an outbox to Kafka by
the at-least-once forwarder and by the transactional one (``exactly_once=True``), in the
same run on the same broker.

Starts its own broker with scripts/kafka.sh unless KAFKA_BOOTSTRAP is set. The last line is
JSON: bench, per_s (transactional records/s), baseline_per_s (at-least-once), ratio,
rollup_per_s (per process count), scaling_2, scaling_4, summaries.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/kafka.py must not shadow kafka-python: the helpers are imported from here by path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

from _broker import Broker  # noqa: E402
from _common import emit  # noqa: E402
from _sink_rates import sink_rates  # noqa: E402

NODE_FLOW = """
import os
from edgeflow import Flow, agg, window
from edgeflow.connectors import kafka, simulate

flow = Flow("fog-bench-node")
readings = flow.source(
    simulate.sensors(devices=int(os.environ["DEVICES"]), rate_hz=10, seed=3, speed=None,
                     duration=os.environ["SECONDS"] + "s", prefix="m"),
    key="device", time="ts",
)
summaries = readings.window(window.tumbling("1s"), agg.count(), agg.mergeable("accel"),
                            agg.mergeable("temp"), name="summaries")
summaries.to(kafka.sink(os.environ["TOPIC"], partitions=4), name="to_kafka")
"""

FOG_FLOW = """
import os
from edgeflow import Flow
from edgeflow.connectors import files, kafka

flow = Flow("fog-bench")
summaries = flow.records(
    kafka.source(os.environ["TOPIC"], records=True, stop_at_end=True), name="summaries"
)
per_minute = summaries.rollup("1m", fields=["accel", "temp"], group_by="key", lateness="1h",
                              name="rollups")
per_minute.to(files.sink(os.environ["OUT"]), name="out")
"""


def edgeflow(*args: str, env: dict[str, str]) -> float:
    """Run ``edgeflow ARGS``; its wall time in seconds (exits on a failure)."""
    started = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "edgeflow", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        check=False,
    )
    took = time.perf_counter() - started
    if res.returncode != 0:
        raise SystemExit(f"edgeflow {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return took


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a run of under a minute")
    args = ap.parse_args()
    devices, seconds = (300, 100) if args.quick else (500, 240)
    sink_records = 100_000 if args.quick else 400_000
    work = Path(tempfile.mkdtemp(prefix="bench-fog-"))
    node, fog = work / "node.py", work / "fog.py"
    node.write_text(NODE_FLOW)
    fog.write_text(FOG_FLOW)
    run_id = uuid.uuid4().hex[:8]
    with Broker() as bootstrap:
        topic, empty = f"fog-bench-{run_id}", f"fog-bench-empty-{run_id}"
        env = {"DEVICES": str(devices), "SECONDS": str(seconds), "TOPIC": topic}
        edgeflow("run", str(node), "--kafka-bootstrap", bootstrap, env=env)
        # an empty topic: the same flow's start-up and shut-down on P processes
        create_topic(bootstrap, empty, partitions=4)
        summaries = devices * seconds
        rates: dict[str, float] = {}
        raw: dict[str, float] = {}
        for procs in (1, 2, 4):
            base = ["run", str(fog), "--kafka-bootstrap", bootstrap, "--processes", str(procs)]
            out = work / f"rollups-{procs}.jsonl"
            idle = edgeflow(*base, env={"TOPIC": empty, "OUT": str(work / "empty.jsonl")})
            wall = edgeflow(*base, env={"TOPIC": topic, "OUT": str(out)})
            got = count_lines(out)
            want = devices * -(-seconds // 60)
            if got != want:
                raise SystemExit(f"--processes {procs}: {got} rollups, expected {want}")
            rates[str(procs)] = summaries / max(wall - idle, 1e-3)
            raw[str(procs)] = summaries / wall
            print(
                f"rollup, {procs} process(es): {summaries:,} summaries in {wall:.2f} s "
                f"(start-up and shut-down {idle:.2f} s): {rates[str(procs)]:,.0f}/s steady, "
                f"{raw[str(procs)]:,.0f}/s wall",
                flush=True,
            )
        sinks = sink_rates(bootstrap, sink_records)
    print(
        f"delivery of {sink_records:,} records: transactional {sinks['tx_per_s']:,.0f}/s, "
        f"at-least-once {sinks['alo_per_s']:,.0f}/s ({sinks['ratio']:.2f}x)",
        flush=True,
    )
    emit(
        {
            "bench": "fog",
            "per_s": round(sinks["tx_per_s"]),
            "baseline_per_s": round(sinks["alo_per_s"]),
            "ratio": round(sinks["tx_per_s"] / sinks["alo_per_s"], 3),
            "rollup_per_s": {k: round(v) for k, v in rates.items()},
            "rollup_wall_per_s": {k: round(v) for k, v in raw.items()},
            "scaling_2": round(rates["2"] / (2 * rates["1"]), 3),
            "scaling_4": round(rates["4"] / (4 * rates["1"]), 3),
            "summaries": summaries,
        }
    )


if __name__ == "__main__":
    main()
