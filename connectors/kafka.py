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
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

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
    OutboxError,
    OutRecord,
    priority_of,
)
from edgeflow.connectors.parse import BatchBuilder
from edgeflow.connectors.payloads import Decoder, Limits, PayloadError, Schema
from edgeflow.errors import EdgeflowError
from edgeflow.timeutil import Duration, now_ns, parse_duration

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


#: set to 1 to go on when the outbox lost records its last snapshot says were waiting
ACCEPT_LOSS_ENV = "EDGEFLOW_ACCEPT_OUTBOX_LOSS"

#: (outbox path, sink step) -> the sink's counters when this run opened it, for the summary
_AT_START: dict[tuple[Path, str], dict[str, int]] = {}


def _resume_position(resume: Any) -> tuple[str | None, int, int]:
    """(outbox id, last seq, records waiting) of a snapshot; an older edgeflow's is a bare seq."""
    if isinstance(resume, dict):
        return str(resume.get("outbox") or "") or None, int(resume["seq"]), int(resume["waiting"])
    return None, int(resume), 0


def _fatal(message: str) -> NoReturn:
    """Stop the whole flow with one error line. Raised from here, the error would reach the
    engine as a bare "error resuming StatefulSink" panic without its reason; the flow has
    taken no snapshot since it started, so the next run resumes from the same one."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(1)


class _KafkaSinkPartition(SinkPartition):
    """Appends to the outbox. Its snapshot is ``{"outbox": id, "seq": last seq, "waiting": n}``:
    on resume, an outbox that is not the snapshot's, or ends before its seq, while records
    were waiting, stops the flow (:class:`OutboxError`) unless ``EDGEFLOW_ACCEPT_OUTBOX_LOSS=1``
    (then the loss is counted). Records appended after the snapshot (or, in a state
    directory without any snapshot yet, all of this sink's) are removed: the run replays them."""

    def __init__(self, spec: KafkaSink, resume: Any, ctx: SinkContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.outbox = Outbox.at(outbox_path(ctx), spec.budget)
        lost = 0
        if resume is not None:
            ident, seq, waiting = _resume_position(resume)
            lost, intact = self._check_outbox(ident, seq, waiting)
            self.outbox.truncate_after(ctx.step, seq)
            self.last = seq if intact else self.outbox.last_seq()
        elif ctx.state_dir is not None:
            # no snapshot yet: what this sink appended came from an attempt that never took
            # one, and this run replays it
            n = self.outbox.truncate_after(ctx.step, 0)
            if n:
                log.warning(
                    "kafka sink %r: removed %d records an interrupted earlier attempt (before its "
                    "first snapshot) left in the outbox %s; this run produces them again",
                    ctx.step,
                    n,
                    self.outbox.path,
                )
            self.last = self.outbox.last_seq()
        else:
            self.last = self.outbox.last_seq()
        bootstrap = resolve_bootstrap(spec.bootstrap)
        self._note_start(bootstrap, lost)
        self.forwarder: Forwarder | None = None
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

    def _check_outbox(self, ident: str | None, seq: int, waiting: int) -> tuple[int, bool]:
        """Stop (or, when accepted, count the loss) if the outbox lost records the snapshot
        says were waiting. Returns (how many were counted as lost now, whether the outbox is
        the snapshot's, whole)."""
        box, step = self.outbox, self.ctx.step
        accepted = f"accepted_loss.{step}"
        if ident is None:  # a snapshot from an older edgeflow: nothing to check against
            return 0, True
        if box.status().get(accepted) == f"{ident}:{seq}":
            return 0, False  # this loss was accepted and counted by an earlier run
        if ident != box.identity:
            what = "is not the outbox the last snapshot was taken with (it was deleted, emptied or replaced)"
            present = 0
        elif box.last_seq() < seq:
            what = (
                f"ends at record {box.last_seq()} while the last snapshot was taken at record "
                f"{seq} (its -wal file was deleted or damaged)"
            )
            present = box.count_present(step, seq)
        else:
            return 0, True
        lost = max(0, waiting - present)
        if lost == 0:
            log.warning(
                "kafka sink %r: the outbox %s %s; none of the records waiting at that snapshot "
                "are missing",
                step,
                box.path,
                what,
            )
            return 0, False
        if os.environ.get(ACCEPT_LOSS_ENV, "").strip().lower() in ("1", "true", "yes"):
            box.count_lost(step, lost)
            box.set_status(accepted, f"{ident}:{seq}")
            log.warning(
                "kafka sink %r: the outbox %s %s: up to %d records that were waiting for Kafka "
                "are lost; going on because %s is set (counted as lost in the summary)",
                step,
                box.path,
                what,
                lost,
                ACCEPT_LOSS_ENV,
            )
            return lost, False
        raise OutboxError(
            f"the outbox {box.path} {what}: up to {lost} records that were waiting for Kafka "
            "at the last snapshot are missing. Restore the outbox (with its -wal file) and run "
            f"again; or, to go on without them (counted as lost), run again with {ACCEPT_LOSS_ENV}=1"
        )

    def _note_start(self, bootstrap: str | None, lost: int) -> None:
        """Remember this sink's counters for the run's summary (``lost``: counted by this run
        already); say what earlier runs left."""
        box, step = self.outbox, self.ctx.step
        stats = box.stats()
        _AT_START[(box.path, step)] = {**stats, f"lost.{step}": stats.get(f"lost.{step}", 0) - lost}
        waiting = stats.get(f"queued.{step}", 0)
        if waiting > 0:
            log.warning(
                "kafka sink %r: %d records from earlier runs are waiting in the outbox %s; %s",
                step,
                waiting,
                box.path,
                "they are delivered first"
                if bootstrap and self.spec.forwarders > 0
                else "no Kafka is configured, so they stay there",
            )

    def snapshot(self) -> Any:
        # appends are committed with fsync before write() returns
        waiting = self.outbox.stats().get(f"queued.{self.ctx.step}", 0)
        return {"outbox": self.outbox.identity, "seq": self.last, "waiting": waiting}

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

    def open_partition(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        """Open a partition; raises :class:`OutboxError` when the outbox is damaged or lost
        records its snapshot says were waiting."""
        return _KafkaSinkPartition(self, resume, ctx)

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        """As :meth:`open_partition`, for the engine: an outbox error stops the flow."""
        try:
            return self.open_partition(partition, resume, ctx)
        except OutboxError as exc:
            _fatal(f"kafka sink {ctx.step!r}: {exc}")

    def report(self, ctx: SinkContext) -> list[str]:
        """This run's figures of the sink (queued, delivered, rejected by Kafka, dropped by the
        budget or a full disk, lost with a damaged outbox), and what waits in the outbox."""
        path = outbox_path(ctx)
        if not path.exists():
            return []
        box = Outbox.at(path)
        n, size = box.depth()
        st = box.stats()
        start = _AT_START.get((box.path, ctx.step), {})

        def this_run(name: str) -> int:
            key = f"{name}.{ctx.step}"
            return st.get(key, 0) - start.get(key, 0)

        where = (
            resolve_bootstrap(self.bootstrap) or "no Kafka configured: records stay in the outbox"
        )
        errors = [
            f"  last forwarder error: {v}"
            for k, v in sorted(box.status().items())
            if k.startswith("error.")
        ]
        earlier = start.get(f"queued.{ctx.step}", 0)
        lost = this_run("lost")
        return [
            f"kafka sink {ctx.step!r} -> {self.topic}: {this_run('appended')} queued, "
            f"{this_run('delivered')} delivered, {this_run('dropped')} dropped (outbox full), "
            f"{this_run('rejected')} rejected by Kafka (too large)"
            + (f", {lost} lost (damaged outbox, {ACCEPT_LOSS_ENV})" if lost else "")
            + (f"; {earlier} records were waiting from earlier runs" if earlier else ""),
            f"outbox {path} ({where}): {n} records ({size / 1e6:.1f} MB) waiting; "
            f"{box.disk_bytes() / 1e6:.1f} MB on disk of a {box.budget / 1e6:.1f} MB budget",
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
        self.fields = fields
        # the record parser all sources share; a missing or null field is "no value"
        schema = Schema(
            ctx.key, ctx.time, fields, {}, {f: math.nan for f in fields}, spec.time_unit
        )
        self.decoder = Decoder("json", schema, spec.limits())

    def next_batch(self) -> list[Item]:
        if self.end is not None and self.position >= self.end:
            raise StopIteration
        polled = self.consumer.poll(timeout_ms=0, max_records=self.ctx.batch_max)
        msgs = polled.get(self.tp, [])
        if not msgs:
            return []
        out = BatchBuilder(self.fields, self.ctx.step)
        received = now_ns()
        for m in msgs:
            value = m.value or b""
            self.bytes_read += len(value)
            try:  # a message is one payload: all its readings, or one dead letter
                out.add_all(self.decoder.decode(value, self.tp.topic, received))
            except PayloadError as exc:
                out.fail(f"{self.tp.topic}/{self.tp.partition}@{m.offset}", value, str(exc))
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
        limits: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.start = start
        self.stop_at_end = stop_at_end
        self.fields = fields
        self.time_unit = time_unit
        self.limits_args = {"max_past": None, **(limits or {})}

    def limits(self) -> Limits:
        return Limits.of(**self.limits_args)

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
        try:
            self.limits()
        except (ValueError, TypeError) as exc:
            out.append(str(exc))
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
    max_payload: int = 256 * 1024,
    max_depth: int = 8,
    max_readings: int = 10_000,
    max_future: Duration | None = "1h",
    max_past: Duration | None = None,
) -> KafkaSource:
    """Readings from a Kafka topic whose messages are JSON objects (or arrays of them).

    Each topic partition is a flow partition; offsets live in the flow's snapshots (no
    consumer group). ``stop_at_end=True`` reads to the offsets at start-up and stops (replay).
    Give ``fields`` (the numeric fields to read); they cannot be learnt from the topic.
    Messages are read by the record parser every source shares (see
    :mod:`edgeflow.connectors.payloads`): a message is one payload, so a message with a bad
    reading is one dead letter (source ``topic/partition@offset``). ``max_payload``,
    ``max_depth``, ``max_readings``, ``max_future`` and ``max_past`` are the limits, as for
    MQTT (``max_past`` is off by default so old topics replay).
    """
    return KafkaSource(
        topic,
        bootstrap=bootstrap,
        start=start,
        stop_at_end=stop_at_end,
        fields=fields,
        time_unit=time_unit,
        limits={
            "max_payload": max_payload,
            "max_depth": max_depth,
            "max_readings": max_readings,
            "max_future": max_future,
            "max_past": max_past,
        },
    )


__all__ = ["PRIORITIES", "KafkaSink", "KafkaSource", "sink", "source"]
