"""Delivery throughput: edgeflow's outbox -> Kafka forwarder vs a bare kafka-python producer.

1,000,000 records of 200 bytes (``--quick``: 200,000). edgeflow: the records are appended
to a fresh outbox (timed separately), then the forwarder drains it to the broker; the rate
is records per second from starting the forwarder (its processes included) to the outbox
being empty. Baseline: a bare
``KafkaProducer`` with the same settings (acks=all, idempotent, same compression, linger
and batch size) sends the same records with the same headers, then flushes.

Starts its own broker with scripts/kafka.sh unless KAFKA_BOOTSTRAP is set. The last line
is JSON: bench, per_s, baseline_per_s, ratio, append_per_s, records.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import outbox_records  # noqa: E402

# this file is named kafka.py: keep its folder off the path so `import kafka` finds kafka-python
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

from edgeflow.connectors.kafka import Forwarder, KafkaSink  # noqa: E402
from edgeflow.connectors.outbox import Outbox, OutRecord  # noqa: E402


def emit(figures: dict[str, object]) -> None:
    print(json.dumps(figures), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_edgeflow(
    bootstrap: str, records: list[OutRecord], config: dict[str, object], processes: int
) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        box = Outbox(Path(d) / "outbox.sqlite", budget_bytes=1 << 40)
        t0 = time.perf_counter()
        for i in range(0, len(records), 10_000):
            box.append("bench", 2, records[i : i + 10_000])
        append_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fw = Forwarder.ensure(box, bootstrap, config, {}, processes=processes)
        while box.depth()[0] > 0:
            time.sleep(0.02)
            if not fw.alive():
                raise SystemExit(f"forwarder stopped: {box.status()}")
        drain_s = time.perf_counter() - t0
        fw.release(30)
        return len(records) / drain_s, len(records) / append_s


def bench_bare(bootstrap: str, records: list[OutRecord], config: dict[str, object]) -> float:
    import orjson
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, **config)
    hdrs = [[(k, v.encode()) for k, v in orjson.loads(r.headers)] for r in records]
    t0 = time.perf_counter()
    for r, h in zip(records, hdrs, strict=True):
        producer.send(r.topic, key=r.key, value=r.value, headers=h)
    producer.flush()
    dt = time.perf_counter() - t0
    producer.close()
    return len(records) / dt


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="200,000 records instead of 1,000,000")
    args = ap.parse_args()
    n = 200_000 if args.quick else 1_000_000
    broker_env = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        port = free_port()
        broker_env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_DIR": tempfile.mkdtemp(prefix="bench-kafka-"),
        }
        subprocess.run(
            [str(ROOT / "scripts" / "kafka.sh"), "up"],
            env=broker_env,
            check=True,
            capture_output=True,
        )
        bootstrap = f"127.0.0.1:{port}"
    try:
        config = KafkaSink("x").producer_config()
        print(
            f"producer settings: acks={config['acks']} idempotent={config['enable_idempotence']} compression={config['compression_type']} linger_ms={config['linger_ms']} batch_size={config['batch_size']}"
        )
        base_per_s = bench_bare(bootstrap, outbox_records(n, "bench-bare"), config)
        print(
            f"bare kafka-python producer : {n:,} records of 200 B = {base_per_s:>10,.0f} records/s"
        )
        ef_per_s, append_per_s = bench_edgeflow(
            bootstrap, outbox_records(n, "bench-edgeflow"), config, KafkaSink("x").forwarders
        )
        print(
            f"edgeflow outbox -> Kafka   : {n:,} records of 200 B = {ef_per_s:>10,.0f} records/s  (append to outbox: {append_per_s:,.0f} records/s)"
        )
        ratio = ef_per_s / base_per_s
        print(f"ratio                      : {ratio:.2f}x")
        emit(
            {
                "bench": "kafka",
                "per_s": round(ef_per_s),
                "baseline_per_s": round(base_per_s),
                "ratio": round(ratio, 2),
                "append_per_s": round(append_per_s),
                "records": n,
            }
        )
    finally:
        if broker_env is not None:
            subprocess.run(
                [str(ROOT / "scripts" / "kafka.sh"), "down"],
                env=broker_env,
                check=False,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
