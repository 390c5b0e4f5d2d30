"""Read readings or records from Kafka topics: ``kafka.source(...)``.

**Topics.** Exactly one of ``topic`` (one topic), ``topics=[...]`` or ``pattern=`` (a regular
expression the whole topic name must match, e.g. ``"edgeflow\\.summary\\..*"``). The pattern
is matched against the broker's topic list when the flow lists its partitions, at start-up:
topics created later are read after a restart. Every partition of every topic is one flow
partition, named ``"<partition>"`` for a single ``topic`` (as always: older snapshots resume)
and ``"<topic>:<partition>"`` otherwise; the engine spreads them over the flow's workers (of
all processes of a cluster), each partition read by one worker.

**Delivery guarantee:** exactly-once replay. A partition's snapshot is the next offset to
read, plus (with ``dedup``) the ids it remembers. There is no consumer group.

**Duplicates.** Node flows publish each record with a deterministic ``edgeflow-id`` header,
and a crash or a broker outage can deliver one twice. With ``dedup=N`` (default 100,000; 0
turns it off) each partition remembers the last N distinct ids it read (in its snapshot, so
a resumed run still knows them: see :mod:`recent_ids`) and skips a message whose id it has
seen; messages without the header are never skipped. Skipped messages are counted in the
run's counter ``duplicates.<source step>`` (the run summary, ``edgeflow status`` and the
``edgeflow_duplicates_skipped_total`` metric show it). A re-delivered record goes to the
partition of its key, as the first copy did, so a per-partition memory sees it.

**Readings or records.** ``records=False``: messages are readings (JSON objects or arrays of
them) read by the record parser all sources share. ``records=True``: each message is one
record (a window summary, an anomaly...), yielded as :class:`~edgeflow.batch.RecordBatch`
items: see :mod:`kafka_records` for the columns, the kind (from ``edgeflow-schema``) and the
event time ``t``. In both modes a message that cannot be read is a dead letter (source
``topic/partition@offset``) with the reason.

**Connection.** The connection to the broker is in the connection state registry
(:mod:`connection_state`, as MQTT's): one line when it cannot reach the broker, is lost or is
back, ``status`` and the ``edgeflow_source_connected`` gauge; a broker unreachable at start
is retried until the run ends (``--for``, a signal), and a run that never reached it fails
with one line naming it. A topic that does not exist, or a pattern no topic matches, fails
the run with one line naming it and the broker. The security options are the sink's (see
:mod:`kafka_security`); a refused connection fails the run at once with one line.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from edgeflow.connectors.base import Item, SourceContext, SourcePartition, SourceSpec
from edgeflow.connectors.connection_state import CONNECTIONS
from edgeflow.connectors.forwarder import KafkaLogTap
from edgeflow.connectors.kafka_records import ID_HEADER, RecordsBuilder, header, where
from edgeflow.connectors.kafka_security import KafkaSecurity, SecretError
from edgeflow.connectors.parse import BatchBuilder
from edgeflow.connectors.payloads import Decoder, Limits, PayloadError, Schema
from edgeflow.connectors.recent_ids import RecentIds
from edgeflow.errors import EdgeflowError
from edgeflow.timeutil import Duration, now_ns

BROKER = "Kafka broker"
#: one attempt to reach the broker gives up after this long (then the next, with backoff)
BOOTSTRAP_TIMEOUT_MS = 2_000
#: how often a source partition looks at its connection, and how long a lost one may take to
#: come back before it is reported (a broker's idle-connection close is not an outage)
LINK_CHECK_S = 0.5
LINK_GRACE_S = 2.0
#: how long listing the partitions waits for a topic (or a match of the pattern) to appear
TOPIC_WAIT_S = 15.0
#: the default number of ids each partition remembers to skip duplicates
DEDUP = 100_000


def resolve_bootstrap(explicit: str | None) -> str | None:
    """The broker address: ``explicit``, else the environment (the sink's rule)."""
    # kafka.py re-exports this module, so its helpers are imported when used, not at import
    from edgeflow.connectors.kafka import resolve_bootstrap as shared

    return shared(explicit)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def kafka_log_tap() -> KafkaLogTap:
    """kafka-python's log lines are kept as the "last error", never printed (a closed port
    gives several a second)."""
    global _TAP
    if _TAP is None:
        _TAP = KafkaLogTap().install()
    return _TAP


_TAP: KafkaLogTap | None = None


def _count_duplicates(step: str, n: int) -> None:
    """Add ``n`` to the run's ``duplicates.<step>`` counter."""
    from edgeflow.engine.counters import COUNTERS  # the engine's (no bytewax); not at import

    COUNTERS.add(f"duplicates.{step}", n)


def _resume(resume: Any, dedup: int) -> tuple[int | None, RecentIds | None]:
    """(offset, remembered ids) of a partition's snapshot: a bare offset (older snapshots,
    or nothing remembered) or ``{"offset": n, "ids": blob}``."""
    if resume is None:
        return None, RecentIds(dedup) if dedup else None
    if isinstance(resume, dict):
        offset = int(resume["offset"])
        if not dedup:
            return offset, None
        try:
            return offset, RecentIds.load(resume["ids"], dedup)
        except (KeyError, ValueError) as exc:
            raise EdgeflowError(f"the Kafka source's snapshot is damaged: {exc}") from None
    return int(resume), RecentIds(dedup) if dedup else None


class _KafkaPartition(SourcePartition):
    """One topic partition: a consumer assigned to it, read from the snapshot's offset."""

    def __init__(self, spec: KafkaSource, name: str, resume: Any, ctx: SourceContext) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.spec = spec
        self.ctx = ctx
        topic, partition = spec.topic_partition(name)
        self.tp = TopicPartition(topic, partition)
        # the connection state is the step's (found by partitions() under the spec's label)
        CONNECTIONS.rename(spec.label, ctx.step)
        CONNECTIONS.open(ctx.step, BROKER, spec.resolved(), member=name, keep=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=spec.resolved(), enable_auto_commit=False, group_id=None,
            max_poll_records=ctx.batch_max, consumer_timeout_ms=0,
            # records of a transactional (exactly_once) sink only once committed, never aborted ones
            isolation_level="read_committed",
            **spec.security.client_config(),
        )  # fmt: skip
        self.link = _Link(self.consumer, self.tp, ctx.step, name)
        self.consumer.assign([self.tp])
        offset, self.seen = _resume(resume, spec.dedup)
        if offset is not None:
            self.consumer.seek(self.tp, offset)
        elif spec.start == "earliest":
            self.consumer.seek_to_beginning(self.tp)
        else:
            self.consumer.seek_to_end(self.tp)
        self.position = self.consumer.position(self.tp)
        self.end = self.consumer.end_offsets([self.tp])[self.tp] if spec.stop_at_end else None
        self.duplicates = 0
        fields = ctx.fields if ctx.fields is not None else tuple(spec.fields or ())
        self.fields = fields
        self.decoder: Decoder | None = None
        self.limits = spec.limits()
        if not spec.records:
            # the record parser all sources share; a missing or null field is "no value"
            # every declared field is checked, also those the flow does not use (not carried)
            declared = tuple(dict.fromkeys((*(ctx.declared or ()), *(spec.fields or ())))) or fields
            schema = Schema(
                ctx.key, ctx.time, fields, {}, {f: math.nan for f in (*fields, *declared)},
                spec.time_unit, checked=tuple(declared),
            )  # fmt: skip
            self.decoder = Decoder("json", schema, self.limits)

    def next_batch(self) -> list[Item]:
        if self.end is not None and self.position >= self.end:
            raise StopIteration
        polled = self.consumer.poll(timeout_ms=0, max_records=self.ctx.batch_max)
        msgs = polled.get(self.tp, [])
        self.link.check(bool(msgs))
        if not msgs:
            if self.end is not None:  # past the transaction markers that end a topic
                self.position = max(self.position, self.consumer.position(self.tp))
            return []
        self.position = msgs[-1].offset + 1
        for m in msgs:
            self.bytes_read += len(m.value or b"")
        fresh = self._without_duplicates(msgs)
        if self.decoder is None:
            records = RecordsBuilder(self.ctx.step, self.limits, self.spec.time, self.spec.time_unit)  # fmt: skip
            for m in fresh:
                records.add(m)
            return list(records.items())
        out = BatchBuilder(self.fields, self.ctx.step)
        received = now_ns()
        for m in fresh:
            value = m.value or b""
            try:  # a message is one payload: all its readings, or one dead letter
                out.add_all(self.decoder.decode(value, self.tp.topic, received))
            except PayloadError as exc:
                out.fail(where(m), value, str(exc))
        return out.items()

    def _without_duplicates(self, msgs: list[Any]) -> list[Any]:
        """``msgs`` without those whose ``edgeflow-id`` this partition has seen (counted)."""
        if self.seen is None:
            return msgs
        fresh = []
        for m in msgs:
            rid = header(m, ID_HEADER)
            if rid is not None and self.seen.seen(rid):
                continue
            fresh.append(m)
        if len(fresh) < len(msgs):
            self.duplicates += len(msgs) - len(fresh)
            _count_duplicates(self.ctx.step, len(msgs) - len(fresh))
        return fresh

    def next_awake(self) -> int | None:
        return None

    def snapshot(self) -> Any:
        """The next offset; with ids remembered ``{"offset": n, "ids": blob}``."""
        if self.seen is None or not len(self.seen):
            return self.position
        return {"offset": self.position, "ids": self.seen.dump()}

    def close(self) -> None:
        self.consumer.close()


class _Link:
    """The connection of one source partition to the broker that leads its partition, as the
    connection state registry sees it: lost when it has been down for LINK_GRACE_S."""

    def __init__(self, consumer: Any, tp: Any, step: str, member: str) -> None:
        self.consumer = consumer
        self.tp = tp
        self.step = step
        self.member = member
        self.tap = kafka_log_tap()
        self.checked = 0.0
        self.down_since: float | None = None
        self.reported: bool | None = None

    def up(self) -> bool:
        client = self.consumer._client
        node = client.cluster.leader_for_partition(self.tp)
        if node is None or node == -1:
            return False
        return bool(client.connected(node))

    def check(self, got_messages: bool) -> None:
        now = time.monotonic()
        if not got_messages and now - self.checked < LINK_CHECK_S:
            return
        self.checked = now
        try:
            up = got_messages or self.up()
        except Exception:  # kafka-python internals: never a reason to stop reading
            return
        if up:
            self.down_since = None
            if self.reported is not True:
                self.reported = True
                CONNECTIONS.report(self.step, True, member=self.member)
            return
        if self.down_since is None:
            self.down_since = now
        if self.reported is not False and now - self.down_since >= LINK_GRACE_S:
            self.reported = False
            why = self.tap.cause() or "the connection to the broker was lost"
            CONNECTIONS.report(self.step, False, why, member=self.member)


class KafkaSource(SourceSpec):
    """A Kafka source (see the module docstring); made by :func:`source`."""

    kind = "kafka"

    def __init__(
        self,
        topic: str | None,
        *,
        bootstrap: str | None,
        start: str,
        stop_at_end: bool,
        fields: list[str] | None,
        time_unit: str,
        limits: dict[str, Any] | None = None,
        security: KafkaSecurity | None = None,
        topics: list[str] | None = None,
        pattern: str | None = None,
        records: bool = False,
        dedup: int = DEDUP,
        time: str | None = None,
    ) -> None:
        self.topic = topic
        self.topics = topics
        self.pattern = pattern
        self.records = records
        self.dedup = dedup
        self.time = time
        self.bootstrap = bootstrap
        self.security = security or KafkaSecurity()
        self.start = start
        self.stop_at_end = stop_at_end
        self.fields = fields
        self.time_unit = time_unit
        self.limits_args = {"max_past": None, **(limits or {})}
        self._parts: tuple[int, list[str]] | None = None  # (run, its partitions): see partitions()

    @property
    def yields_records(self) -> bool:
        """True when the source yields records (``records=True``), not readings."""
        return self.records is True

    def limits(self) -> Limits:
        return Limits.of(**self.limits_args)

    def resolved(self) -> str:
        b = resolve_bootstrap(self.bootstrap)
        if not b:
            raise EdgeflowError(
                f"{self.label} has no broker address: pass bootstrap='host:9092', "
                "set EDGEFLOW_KAFKA_BOOTSTRAP, or run with --kafka-bootstrap"
            )
        return b

    def columns(self) -> list[str] | None:
        return None

    def problems(self) -> list[str]:
        out = self._topic_problems()
        if self.start not in ("earliest", "latest"):
            out.append(f"start={self.start!r}: use 'earliest' or 'latest'")
        if isinstance(self.dedup, bool) or not isinstance(self.dedup, int) or self.dedup < 0:
            out.append(
                f"{self.label}: dedup={self.dedup!r}: give how many record ids each partition "
                "remembers to skip duplicates, a whole number >= 0 (0 turns it off)"
            )
        if not isinstance(self.records, bool):
            out.append(f"{self.label}: records={self.records!r}: give True or False")
        if self.time is not None and (not isinstance(self.time, str) or not self.time):
            out.append(f"{self.label}: time={self.time!r}: give the name of a record column")
        try:
            self.limits()
        except (ValueError, TypeError) as exc:
            out.append(str(exc))
        if not resolve_bootstrap(self.bootstrap):
            out.append(
                f"{self.label}: no broker address; pass bootstrap= or set EDGEFLOW_KAFKA_BOOTSTRAP"
            )
        out.extend(self.security.problems())
        return out

    def _topic_problems(self) -> list[str]:
        given = [x for x in (self.topic, self.topics, self.pattern) if x is not None]
        if len(given) != 1:
            return [
                f"{self.label}: give exactly one of a topic, topics=[...] or pattern='regex' "
                f"({len(given)} given)"
            ]
        if self.topic is not None and (not isinstance(self.topic, str) or not self.topic):
            return [f"{self.label}: the topic must be a non-empty name"]
        if self.topics is not None:
            names = self.topics
            if (
                isinstance(names, str)
                or not isinstance(names, list | tuple)
                or not names
                or not all(isinstance(t, str) and t for t in names)
            ):
                return [f"{self.label}: topics= must be a non-empty list of topic names"]
            twice = sorted({t for t in names if list(names).count(t) > 1})
            if twice:
                return [f"{self.label}: topics= names {', '.join(map(repr, twice))} twice"]
        if self.pattern is not None:
            if not isinstance(self.pattern, str) or not self.pattern:
                return [f"{self.label}: pattern= must be a non-empty regular expression"]
            try:
                re.compile(self.pattern)
            except re.error as exc:
                return [f"{self.label}: pattern= is not a valid regular expression: {exc}"]
        return []

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.topic is not None:  # a single topic's description is as it always was
            out["topic"] = self.topic
        if self.topics is not None:
            out["topics"] = list(self.topics)
        if self.pattern is not None:
            out["pattern"] = self.pattern
        out["start"] = self.start
        out["stop_at_end"] = self.stop_at_end
        if self.records:
            out["records"] = True
        if self.time is not None:
            out["time"] = self.time
        if self.dedup != DEDUP:
            out["dedup"] = self.dedup
        if not self.security.plaintext:  # a plain source's description is as it always was
            out["security"] = self.security.describe()
        return out

    @property
    def label(self) -> str:
        """The source's name in messages and in the connection state until its step opens it."""
        if self.topics is not None and self.topic is None and self.pattern is None:
            return f"kafka.source(topics={self.topics!r})"
        if self.pattern is not None and self.topic is None and self.topics is None:
            return f"kafka.source(pattern={self.pattern!r})"
        return f"kafka.source({self.topic!r})"

    def topic_partition(self, name: str) -> tuple[str, int]:
        """(topic, partition number) of one of :meth:`partitions`' names."""
        if self.topic is not None:
            return self.topic, int(name)
        topic, _, number = name.rpartition(":")
        return topic, int(number)

    def partitions(self) -> list[str]:
        """The partitions of the topics, named as the module docstring says. While the broker
        cannot be reached this retries (one line per change of the connection state, see
        :mod:`connection_state`) until it answers or the run is over (``--for``, a signal):
        then there are none, and the run fails naming the broker."""
        if self._parts is not None and self._parts[0] == CONNECTIONS.run_id:
            return self._parts[1]
        bootstrap = self.resolved()
        tap = kafka_log_tap()
        CONNECTIONS.open(self.label, BROKER, bootstrap)
        backoff = 0.5
        while True:
            started = time.monotonic()
            try:
                parts = self._read_partitions(bootstrap)
                break
            except EdgeflowError:
                raise
            except SecretError as exc:
                raise EdgeflowError(f"kafka source {self.label}: {exc}") from None
            except Exception as exc:
                refused = tap.refusal_since(started)
                if refused:  # a password or certificate: retrying does not fix it
                    line = self.security.explain(f"{self.label}", bootstrap, refused)
                    CONNECTIONS.report(self.label, False, line)
                    raise EdgeflowError(line) from None
                CONNECTIONS.report(self.label, False, tap.cause() or _why(exc))
            if CONNECTIONS.wait(backoff):
                self._parts = (CONNECTIONS.run_id, [])
                return []
            backoff = min(backoff * 2, 5.0)
        CONNECTIONS.report(self.label, True)
        names = [
            str(p) if self.topic is not None else f"{t}:{p}"
            for t, topic_parts in sorted(parts.items())
            for p in sorted(topic_parts)
        ]
        self._parts = (CONNECTIONS.run_id, names)
        return names

    def _read_partitions(self, bootstrap: str) -> dict[str, set[int]]:
        """topic -> its partitions, for every topic the source reads (EdgeflowError naming the
        topic, or the pattern, and the broker when there is none after TOPIC_WAIT_S)."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            request_timeout_ms=15_000,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            **self.security.client_config(),
        )
        try:
            deadline = time.monotonic() + TOPIC_WAIT_S
            while True:
                found, missing = self._lookup(consumer)
                if not missing or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
        finally:
            consumer.close()
        if self.pattern is not None and not found:
            raise EdgeflowError(
                f"no Kafka topic at {bootstrap} matches {self.label}'s pattern {self.pattern!r} "
                "(the whole topic name must match); create the topics or check the pattern"
            )
        if missing:
            raise EdgeflowError(
                f"Kafka topic {missing[0]!r} does not exist at {bootstrap}; create it or check the name"
            )
        return found

    def _lookup(self, consumer: Any) -> tuple[dict[str, set[int]], list[str]]:
        """(topic -> partitions found, topics still missing; a pattern is missing while it
        matches nothing)."""
        if self.pattern is not None:
            regex = re.compile(self.pattern)
            names = sorted(t for t in consumer.topics() if regex.fullmatch(t))
        else:
            names = [self.topic] if self.topic is not None else list(self.topics or ())
        found: dict[str, set[int]] = {}
        missing = []
        for name in names:
            parts = consumer.partitions_for_topic(name)
            if parts:
                found[name] = set(parts)
            else:
                missing.append(name)
        if self.pattern is not None:  # a matched topic without partitions yet: read the others
            return found, [] if found else [self.pattern]
        return found, missing

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        return _KafkaPartition(self, partition, resume, ctx)


def source(
    topic: str | None = None,
    *,
    topics: list[str] | None = None,
    pattern: str | None = None,
    records: bool = False,
    dedup: int = DEDUP,
    time: str | None = None,
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
    security_protocol: str = "PLAINTEXT",
    ssl_cafile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_key_password_env: str | None = None,
    ssl_key_password_file: str | None = None,
    ssl_check_hostname: bool = True,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password_env: str | None = None,
    sasl_password_file: str | None = None,
    sasl_password: Any = None,
    ssl_password: Any = None,
) -> KafkaSource:
    """Readings (or, with ``records=True``, records) from Kafka topics.

    Give exactly one of ``topic``, ``topics=[...]`` or ``pattern="regex"`` (the whole topic
    name must match; matched at start-up, so topics created later are read after a restart).
    Each topic partition is a flow partition; offsets live in the flow's snapshots (no
    consumer group). ``stop_at_end=True`` reads to the offsets at start-up and stops (replay).

    ``dedup=N`` (default 100,000; 0 = off): each partition skips messages whose
    ``edgeflow-id`` header is among the last N it read (remembered in its snapshot); the
    count is the run's ``duplicates.<step>`` counter.

    ``records=False``: messages are JSON objects (or arrays of them) of readings. Give
    ``fields`` (the numeric fields to read); they cannot be learnt from the topic. Messages
    are read by the record parser every source shares (see
    :mod:`edgeflow.connectors.payloads`): a message is one payload, so a message with a bad
    reading is one dead letter (source ``topic/partition@offset``). ``max_payload``,
    ``max_depth``, ``max_readings``, ``max_future`` and ``max_past`` are the limits, as for
    MQTT (``max_past`` is off by default so old topics replay).

    ``records=True``: each message is one record as an edgeflow node flow publishes it (see
    :mod:`edgeflow.connectors.kafka_records`): columns as in the JSON object plus
    ``edgeflow_id``, ``edgeflow_flow``, ``topic`` and ``t`` (event time, ns: the ``time``
    column if given, per ``time_unit``, else the record kind's own). A message that is not a
    JSON object is a dead letter with the reason.

    The security options are the sink's (see :func:`edgeflow.connectors.kafka.sink`).
    """
    security = KafkaSecurity.of(
        {
            "security_protocol": security_protocol, "ssl_cafile": ssl_cafile,
            "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile,
            "ssl_key_password_env": ssl_key_password_env,
            "ssl_key_password_file": ssl_key_password_file,
            "ssl_check_hostname": ssl_check_hostname, "sasl_mechanism": sasl_mechanism,
            "sasl_username": sasl_username, "sasl_password_env": sasl_password_env,
            "sasl_password_file": sasl_password_file,
        },
        {"sasl_password": sasl_password, "ssl_password": ssl_password},
    )  # fmt: skip
    return KafkaSource(
        topic,
        topics=list(topics) if isinstance(topics, list | tuple) else topics,
        pattern=pattern,
        records=records,
        dedup=dedup,
        time=time,
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
        security=security,
    )


__all__ = ["KafkaSource", "source"]
