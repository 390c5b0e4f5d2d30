"""Publish records to Kafka through the durable outbox; read readings from Kafka topics.

**Sink** (``kafka.sink("topic")``). Delivery guarantee: at-least-once into Kafka, with a
deterministic record id on every message (header ``edgeflow-id``: flow/step/key/window
start, or sequence) so consumers drop the rare duplicate after a crash. Records are
appended to the outbox (SQLite, fsync'ed) inside the flow; a background forwarder sends
them with an idempotent producer (``acks="all"``) and deletes only what the broker
acknowledged, so an unreachable broker never blocks the flow and loses nothing (up to
the outbox's disk budget, beyond which low-priority records are dropped and counted).
Without any bootstrap configured, records stay in the local outbox.

Messages: key = the device key (dead letters: their source), value = the record as JSON,
headers ``edgeflow-id``, ``edgeflow-flow``, ``edgeflow-version``, ``edgeflow-step``,
``edgeflow-schema`` (``window/v1``, ``late/v1``, ``reading/v1``, ``dead_letter/v1``).

**Source** (``kafka.source("topic")``). Delivery guarantee: exactly-once replay; each
topic partition is one flow partition whose snapshot is the next offset to read.

The broker address comes from ``bootstrap=``, else ``EDGEFLOW_KAFKA_BOOTSTRAP``, else
``KAFKA_BOOTSTRAP`` (``edgeflow run --kafka-bootstrap`` sets the first), so one flow file
runs at many sites.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from edgeflow.batch import RecordBatch
from edgeflow.connectors.base import (
    Item,
    SinkContext,
    SinkPartition,
    SinkSpec,
    SourceContext,
    SourcePartition,
    SourceSpec,
)
from edgeflow.connectors.forwarder import Forwarder
from edgeflow.connectors.outbox import (
    DEFAULT_BUDGET,
    PRIORITIES,
    Outbox,
    OutRecord,
    priority_of,
)
from edgeflow.connectors.parse import BatchBuilder, RecordParser
from edgeflow.errors import EdgeflowError
from edgeflow.timeutil import Duration, parse_duration

log = logging.getLogger("edgeflow.kafka")

KIND_PRIORITY = {
    "window": "summary",
    "late": "raw",
    "reading": "raw",
    "trend": "trend",
    "dead_letter": "summary",
    "anomaly": "alert",
}
ENV_VARS = ("EDGEFLOW_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP")


def resolve_bootstrap(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    for var in ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def best_compression() -> str:
    """lz4, else zstd, else gzip: whichever codec is installed."""
    from kafka import codec

    if codec.has_lz4():
        return "lz4"
    if codec.has_zstd():
        return "zstd"
    return "gzip"


def outbox_path(ctx: SinkContext) -> Path:
    if ctx.state_dir is not None:
        return ctx.state_dir / "outbox.sqlite"
    return Path(".edgeflow") / "outbox" / f"{ctx.flow}.sqlite"


# -- the sink -----------------------------------------------------------------------------------
def _event_times(batch: RecordBatch) -> list[int]:
    for col in ("window_start", "t", "received_at"):
        if col in batch.columns:
            v = batch.columns[col]
            return [int(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    return [0] * batch.n


def _record_key(batch: RecordBatch) -> list[bytes | None]:
    col = batch.columns.get("key") or batch.columns.get("source")
    if col is None:
        return [None] * batch.n
    return [str(k).encode() for k in col]


class _KafkaSinkPartition(SinkPartition):
    def __init__(self, spec: KafkaSink, resume: Any, ctx: SinkContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.outbox = Outbox.at(outbox_path(ctx), spec.budget)
        self.last = int(resume) if resume is not None else self.outbox.last_seq()
        if resume is not None:
            self.outbox.truncate_after(ctx.step, int(resume))
        self.forwarder: Forwarder | None = None
        bootstrap = resolve_bootstrap(spec.bootstrap)
        if bootstrap and spec.forwarders > 0:
            self.forwarder = Forwarder.ensure(
                self.outbox,
                bootstrap,
                spec.producer_config(),
                {spec.topic: (spec.topic_partitions, spec.replication)}
                if spec.create_topic
                else {},
                spec.forwarders,
            )

    def write(self, batches: list[RecordBatch]) -> None:
        by_priority: dict[int, list[tuple[int, OutRecord]]] = {}
        for b in batches:
            ids = b.record_ids(self.ctx.flow)
            keys = _record_key(b)
            meta = [
                ["edgeflow-flow", self.ctx.flow],
                ["edgeflow-version", self.ctx.version],
                ["edgeflow-step", b.step],
                ["edgeflow-schema", f"{b.kind}/v1"],
            ]
            prio = priority_of(
                self.spec.priority
                if self.spec.priority is not None
                else KIND_PRIORITY.get(b.kind, "summary")
            )
            out = by_priority.setdefault(prio, [])
            times = _event_times(b)
            for row, rid, key, t in zip(b.rows(), ids, keys, times, strict=True):
                headers = orjson.dumps([["edgeflow-id", rid], *meta])
                value = orjson.dumps(row)
                self.bytes_written += len(value) + len(key or b"")
                out.append((t, OutRecord(self.spec.topic, key, value, headers)))
        for prio, timed in sorted(by_priority.items(), reverse=True):
            # oldest first (stable, so each key keeps its order): the outbox drops from the front
            timed.sort(key=lambda tr: tr[0])
            self.last = self.outbox.append(self.ctx.step, prio, [r for _, r in timed])

    def snapshot(self) -> Any:
        return self.last  # appends are committed with fsync before write() returns

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.release(self.spec.drain_timeout_s)


class KafkaSink(SinkSpec):
    kind = "kafka"
    stateful = True

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | None = None,
        priority: str | int | None = None,
        create_topic: bool = True,
        partitions: int = 1,
        replication: int = 1,
        budget_bytes: int = DEFAULT_BUDGET,
        linger: Duration = "20ms",
        compression: str = "auto",
        drain_timeout: Duration = "30s",
        producer_options: dict[str, Any] | None = None,
        forwarders: int = 2,
    ) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.priority = priority
        self.create_topic = create_topic
        self.topic_partitions = partitions
        self.replication = replication
        self.budget = budget_bytes
        self.linger = linger
        self.compression = compression
        self.drain_timeout = drain_timeout
        self.producer_options = dict(producer_options or {})
        self.forwarders = forwarders

    @property
    def drain_timeout_s(self) -> float:
        return parse_duration(self.drain_timeout) / 1e9

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.topic, str) or not self.topic or len(self.topic) > 249:
            out.append(f"topic {self.topic!r}: give a Kafka topic name (1-249 characters)")
        if self.priority is not None:
            try:
                priority_of(self.priority)
            except ValueError as exc:
                out.append(str(exc))
        for name in ("linger", "drain_timeout"):
            try:
                parse_duration(getattr(self, name), what=name)
            except ValueError as exc:
                out.append(str(exc))
        if self.compression not in ("auto", "lz4", "zstd", "gzip", "snappy", "none"):
            out.append(
                f"compression={self.compression!r}: use auto, lz4, zstd, gzip, snappy or none"
            )
        if not isinstance(self.budget_bytes_ok, bool) or not self.budget_bytes_ok:
            out.append(f"budget_bytes={self.budget!r}: give a positive number of bytes")
        for k in ("acks", "enable_idempotence", "bootstrap_servers"):
            if k in self.producer_options:
                out.append(
                    f"producer_options[{k!r}] is fixed by edgeflow (acks=all, idempotent); remove it"
                )
        return out

    @property
    def budget_bytes_ok(self) -> bool:
        return isinstance(self.budget, int) and self.budget > 0

    def producer_config(self) -> dict[str, Any]:
        comp = best_compression() if self.compression == "auto" else self.compression
        return {
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": None if comp == "none" else comp,
            "linger_ms": parse_duration(self.linger) // 1_000_000,
            "batch_size": 1024 * 1024,
            "max_in_flight_requests_per_connection": 5,
            # keep retrying through uplink outages instead of failing records
            "delivery_timeout_ms": 7 * 24 * 3600 * 1000,
            "reconnect_backoff_max_ms": 2000,
            "max_block_ms": 10_000,
            **self.producer_options,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "topic": self.topic,
            "bootstrap": self.bootstrap or "(from EDGEFLOW_KAFKA_BOOTSTRAP/KAFKA_BOOTSTRAP)",
            "priority": self.priority,
        }

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        return _KafkaSinkPartition(self, resume, ctx)

    def report(self, ctx: SinkContext) -> list[str]:
        path = outbox_path(ctx)
        if not path.exists():
            return []
        box = Outbox.at(path)
        n, size = box.depth()
        st = box.stats()
        where = (
            resolve_bootstrap(self.bootstrap) or "no Kafka configured: records stay in the outbox"
        )
        errors = [
            f"  last forwarder error: {v}"
            for k, v in sorted(box.status().items())
            if k.startswith("error.")
        ]
        return [
            f"kafka sink {ctx.step!r} -> {self.topic}: {st.get(f'appended.{ctx.step}', 0)} queued, "
            f"{st.get(f'delivered.{ctx.step}', 0)} delivered, {st.get(f'dropped.{ctx.step}', 0)} dropped (outbox full)",
            f"outbox {path} ({where}): {n} records ({size / 1e6:.1f} MB) waiting",
            *errors,
        ]


def sink(
    topic: str,
    *,
    bootstrap: str | None = None,
    priority: str | int | None = None,
    create_topic: bool = True,
    partitions: int = 1,
    replication: int = 1,
    budget_bytes: int = DEFAULT_BUDGET,
    compression: str = "auto",
    drain_timeout: Duration = "30s",
    producer_options: dict[str, Any] | None = None,
    forwarders: int = 2,
) -> KafkaSink:
    """Publish records to ``topic`` through the durable outbox (see the module docstring).

    ``priority`` (raw < trend < summary < alert) decides what the outbox drops first when
    it reaches ``budget_bytes`` (default 1 GiB); by default window summaries and dead
    letters are ``summary`` and late/raw readings ``raw``. ``forwarders`` is the number of
    processes draining the outbox (each owns some keys, so per-key order holds).
    """
    return KafkaSink(
        topic, bootstrap=bootstrap, priority=priority, create_topic=create_topic, partitions=partitions,
        replication=replication, budget_bytes=budget_bytes, compression=compression,
        drain_timeout=drain_timeout, producer_options=producer_options, forwarders=forwarders,
    )  # fmt: skip


# -- the source ---------------------------------------------------------------------------------
class _KafkaPartition(SourcePartition):
    def __init__(self, spec: KafkaSource, partition: int, resume: Any, ctx: SourceContext) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.spec = spec
        self.ctx = ctx
        self.tp = TopicPartition(spec.topic, partition)
        self.consumer = KafkaConsumer(
            bootstrap_servers=spec.resolved(), enable_auto_commit=False, group_id=None,
            max_poll_records=ctx.batch_max, consumer_timeout_ms=0,
        )  # fmt: skip
        self.consumer.assign([self.tp])
        if resume is not None:
            self.consumer.seek(self.tp, int(resume))
        elif spec.start == "earliest":
            self.consumer.seek_to_beginning(self.tp)
        else:
            self.consumer.seek_to_end(self.tp)
        self.position = self.consumer.position(self.tp)
        self.end = self.consumer.end_offsets([self.tp])[self.tp] if spec.stop_at_end else None
        fields = ctx.fields if ctx.fields is not None else tuple(spec.fields or ())
        self.parser = RecordParser(ctx.key, ctx.time, fields, spec.time_unit)
        self.fields = fields

    def next_batch(self) -> list[Item]:
        if self.end is not None and self.position >= self.end:
            raise StopIteration
        polled = self.consumer.poll(timeout_ms=0, max_records=self.ctx.batch_max)
        msgs = polled.get(self.tp, [])
        if not msgs:
            return []
        out = BatchBuilder(self.fields, self.ctx.step)
        for m in msgs:
            where = f"{self.tp.topic}/{self.tp.partition}@{m.offset}"
            self.bytes_read += len(m.value or b"")
            try:
                obj = orjson.loads(m.value)
            except orjson.JSONDecodeError as exc:
                out.fail(where, m.value or b"", f"not valid JSON: {exc}")
                continue
            recs = obj if isinstance(obj, list) else [obj]
            if not all(isinstance(rec, dict) for rec in recs):
                kind = (
                    type(obj).__name__ if not isinstance(obj, list) else "an array with non-objects"
                )
                out.fail(
                    where, m.value, f"expected a JSON object (or an array of them), got {kind}"
                )
                continue
            for rec in recs:
                try:
                    out.add(self.parser.parse(rec))
                except ValueError as exc:
                    out.fail(where, m.value, str(exc))
        self.position = msgs[-1].offset + 1
        return out.items()

    def next_awake(self) -> int | None:
        return None

    def snapshot(self) -> Any:
        return self.position

    def close(self) -> None:
        self.consumer.close()


class KafkaSource(SourceSpec):
    kind = "kafka"

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | None,
        start: str,
        stop_at_end: bool,
        fields: list[str] | None,
        time_unit: str,
    ) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.start = start
        self.stop_at_end = stop_at_end
        self.fields = fields
        self.time_unit = time_unit

    def resolved(self) -> str:
        b = resolve_bootstrap(self.bootstrap)
        if not b:
            raise EdgeflowError(
                f"kafka.source({self.topic!r}) has no broker address: pass bootstrap='host:9092', "
                "set EDGEFLOW_KAFKA_BOOTSTRAP, or run with --kafka-bootstrap"
            )
        return b

    def columns(self) -> list[str] | None:
        return None

    def problems(self) -> list[str]:
        out = []
        if self.start not in ("earliest", "latest"):
            out.append(f"start={self.start!r}: use 'earliest' or 'latest'")
        if not resolve_bootstrap(self.bootstrap):
            out.append(
                f"kafka.source({self.topic!r}): no broker address; pass bootstrap= or set EDGEFLOW_KAFKA_BOOTSTRAP"
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "topic": self.topic,
            "start": self.start,
            "stop_at_end": self.stop_at_end,
        }

    def partitions(self) -> list[str]:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=self.resolved(), request_timeout_ms=15_000)
        try:
            deadline = time.monotonic() + 15
            parts = consumer.partitions_for_topic(self.topic)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                parts = consumer.partitions_for_topic(self.topic)
        finally:
            consumer.close()
        if not parts:
            raise EdgeflowError(
                f"Kafka topic {self.topic!r} does not exist at {self.resolved()}; create it or check the name"
            )
        return [str(p) for p in sorted(parts)]

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        return _KafkaPartition(self, int(partition), resume, ctx)


def source(
    topic: str,
    *,
    bootstrap: str | None = None,
    start: str = "earliest",
    stop_at_end: bool = False,
    fields: list[str] | None = None,
    time_unit: str = "auto",
) -> KafkaSource:
    """Readings from a Kafka topic whose messages are JSON objects (or arrays of them).

    Each topic partition is a flow partition; offsets live in the flow's snapshots (no
    consumer group). ``stop_at_end=True`` reads to the offsets at start-up and stops (replay).
    Give ``fields`` (the numeric fields to read); they cannot be learnt from the topic.
    """
    return KafkaSource(
        topic,
        bootstrap=bootstrap,
        start=start,
        stop_at_end=stop_at_end,
        fields=fields,
        time_unit=time_unit,
    )


__all__ = ["PRIORITIES", "KafkaSink", "KafkaSource", "sink", "source"]
