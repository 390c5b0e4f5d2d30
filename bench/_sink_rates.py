"""Outbox -> Kafka rates of the at-least-once and the transactional (exactly-once) sink.

``sink_rates(bootstrap, records)`` appends the same ``records`` records (200 B, 1000 keys)
to two fresh outboxes and drains each to its own topic on the same broker with the sink's
default producer settings and forwarder count: once with the idempotent at-least-once
forwarder, once with ``exactly_once=True`` (each batch of up to
``forwarder.TX_FETCH_LIMIT`` records and its outbox position in one Kafka transaction). The
rates are records/s from the forwarder's start until the outbox is empty (transactions
committed). The issue's target: ``ratio = tx_per_s / alo_per_s >= 0.5``.

    .venv/bin/python -m bench._sink_rates --bootstrap 127.0.0.1:9092 --records 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from edgeflow.connectors.forwarder import Forwarder
from edgeflow.connectors.kafka import KafkaSink
from edgeflow.connectors.outbox import Outbox

try:  # imported by bench/fog.py (this folder on the path) or run as ``-m bench._sink_rates``
    from _common import outbox_records
except ImportError:
    from bench._common import outbox_records


def _drain_rate(bootstrap: str, records: int, exactly_once: bool) -> float:
    """records/s from outbox to Kafka (until the outbox is empty) for one sink mode."""
    topic = f"bench-sink-{'tx' if exactly_once else 'alo'}-{uuid.uuid4().hex[:8]}"
    spec = KafkaSink(topic, exactly_once=exactly_once)
    with tempfile.TemporaryDirectory() as d:
        box = Outbox(Path(d) / "outbox.sqlite", budget_bytes=1 << 40)
        rows = outbox_records(records, topic)
        for i in range(0, len(rows), 10_000):
            box.append("bench", 2, rows[i : i + 10_000])
        t0 = time.perf_counter()
        fw = Forwarder.ensure(
            box,
            bootstrap,
            spec.producer_config(),
            {topic: (1, 1)},
            processes=spec.forwarders,
            exactly_once=exactly_once,
        )
        try:
            deadline = time.monotonic() + 600
            while box.depth()[0] > 0:
                if time.monotonic() > deadline or not fw.alive():
                    raise RuntimeError(f"the outbox did not drain: {box.status()}")
                time.sleep(0.02)
            took = time.perf_counter() - t0
        finally:
            fw.release(30)
        return records / took


def sink_rates(bootstrap: str, records: int) -> dict[str, float]:
    """``{"tx_per_s", "alo_per_s", "ratio"}``: outbox -> Kafka records/s of the transactional
    and the at-least-once sink, same records and broker, in this run (see the module docstring)."""
    alo = _drain_rate(bootstrap, records, exactly_once=False)
    tx = _drain_rate(bootstrap, records, exactly_once=True)
    return {"tx_per_s": round(tx), "alo_per_s": round(alo), "ratio": round(tx / alo, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args()
    print(
        orjson.dumps({"bench": "sink_rates", **sink_rates(args.bootstrap, args.records)}).decode()
    )


if __name__ == "__main__":
    main()
