"""The forwarder: drains an outbox to Kafka from separate processes.

Each forwarder process owns some of the outbox's lanes (a lane is a hash of the record
key), sends them oldest first with one idempotent producer (``acks="all"``), and deletes
rows only after the broker acknowledged them. Separate processes keep Kafka encoding off
the flow's interpreter (kafka-python spends ~20 µs of Python per record), and several of
them use more than one core.

Guarantees:

* While the broker is unreachable the producer keeps retrying the records in flight (a very
  long delivery timeout), so a live producer never sends a record twice; only a dead
  forwarder can resend (what it had in flight), and the ``edgeflow-id`` header lets
  consumers drop it.
* A monitor thread in the flow's process watches the forwarders: one that dies (``kill -9``,
  out of memory) is started again for its lanes, and the outbox gives it back what the dead
  one had in flight. Outbox errors (a full disk, a locked file) and Kafka errors never end a
  forwarder: it says so in one line and retries with backoff.
* Stopping never waits on a lock a dead process may hold: the parent signals through one
  word of shared memory (:class:`~edgeflow.connectors.process.Command`), waits with bounded
  joins and kills what is left. Forwarders ignore SIGTERM and SIGINT: on a signal to the
  whole process group they finish their batch and exit when the flow stops them, and they
  die with the flow's process.
* A record the broker refuses for good (over the topic's ``max.message.bytes``, invalid or
  corrupt) is counted as rejected, named in one log line (sink, topic, id, reason) and removed
  from the outbox; the rest of its batch is delivered. Every forwarder death is logged (a
  crash loop at most once per ``DEATH_LOG_EVERY_S``, counting the deaths it stands for).
* At the end of a run the forwarders drain the outbox for up to ``drain_timeout``; a run
  stopped by a signal (SIGTERM, Ctrl-C, ``edgeflow stop``) stops them within
  ``SIGNAL_STOP_S`` in all, and says how many records stay in the outbox. When the
  broker was never reachable during the run (every forwarder tried and failed) they do not
  wait beyond one last connection attempt (which gives up after ``BOOTSTRAP_TIMEOUT_MS``): the
  records stay in the outbox for the next run and the run summary says how many.
* The connection to Kafka is one state (connected / unreachable since T, last error): one log
  line when it changes, and the status key ``kafka.connection`` of the outbox
  (:func:`connection_state`). kafka-python's own log lines are not printed; the last one is
  the "last error" of that state.
* A connection the broker refuses for a security reason (wrong password, untrusted
  certificate, no client certificate: :mod:`kafka_security`) is the state "refused": said once
  in one line naming the cause (:meth:`Forwarder.failure`), retried only every
  ``REFUSED_RETRY_S`` (the broker's side may be fixed), and at the end of the run the
  forwarders do not wait for a drain: the records stay in the outbox and the run fails with
  that line. The security options' secrets are read inside the forwarder processes: they never
  pass through argv or a pipe, and are never logged.

Exactly-once (``kafka.sink(..., exactly_once=True)``; all Kafka sinks sharing an outbox must
agree, else the run stops with one line): each forwarder process is a transactional producer
whose ``transactional_id`` is deterministic (``edgeflow-outbox-<outbox id>-lanes-<lanes>``),
so a restarted forwarder fences its dead predecessor and the broker aborts what that one
left open. One Kafka transaction holds one batch of its lanes' outbox rows (up to
``TX_FETCH_LIMIT``) and, for each of its lanes, the outbox position (the batch's last seq)
committed as the offset of partition ``<lane>`` of the topic ``edgeflow.outbox-positions``
(8 partitions, never written to; made by the forwarder) for the consumer group
``edgeflow-outbox-<outbox id>`` (``send_offsets_to_transaction``): the records and the
position become visible together or not at all. After the commit the rows are deleted
locally (their ids kept, see :mod:`outbox`). On every (re)connection the forwarder first
fences (``init_transactions``), then reads its lanes' committed positions and deletes the
rows at or before them (committed by a forwarder that died before deleting them, or whose
commit answer was lost in an outage): nothing committed is sent twice. A failed batch
(broker outage, transaction timed out) is aborted and sent again in a new transaction.
Costs: records become visible to ``read_committed`` consumers only at commit (one batch
later), a few round trips per transaction, and a dead forwarder's open transaction that no
forwarder with the same id fences (the number of ``forwarders`` changed between runs) holds
``read_committed`` consumers back until the broker times it out (``transaction_timeout_ms``,
60 s). The committed position lives in Kafka's offsets topic, which expires a group's
offsets after ``offsets.retention.minutes`` (7 days) without commits: only a forwarder that
died between a commit and its local delete and stayed down that long can send those rows
again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import orjson

from edgeflow.connectors.connection_state import CONNECTIONS
from edgeflow.connectors.kafka_security import KafkaSecurity, SecretError, refusal
from edgeflow.connectors.outbox import LANES, Outbox, OutboxError, Stored
from edgeflow.connectors.process import (
    ABORT,
    DRAIN,
    RUN,
    Command,
    Parent,
    die_with_parent,
    ignore_termination,
    termination_blocked,
)

log = logging.getLogger("edgeflow.forwarder")

T = TypeVar("T")

#: status key of the outbox holding the connection state (see :func:`connection_state`)
CONNECTION_KEY = "kafka.connection"
#: a forwarder's first connection attempt gives up after this long, so it keeps checking for a stop
BOOTSTRAP_TIMEOUT_MS = 2_000
#: at the end of a run whose broker was never reached: how long its last connection attempts get
LAST_ATTEMPT_S = BOOTSTRAP_TIMEOUT_MS / 1000 + 2.0
#: after the drain, how long forwarders get to close their producer before they are killed
EXIT_GRACE_S = 5.0
#: a run stopped by a signal (SIGTERM, Ctrl-C): the whole forwarder stop (drain included) takes at
#: most this long, the last SIGNAL_EXIT_S of it for the processes to exit before they are killed;
#: what is not delivered by then stays in the outbox for the next run
SIGNAL_STOP_S = 6.0
SIGNAL_EXIT_S = 1.5
FETCH_LIMIT = 20_000
#: the most rows one Kafka transaction of an exactly-once forwarder holds
TX_FETCH_LIMIT = 20_000
#: the topic whose partition ``<lane>`` carries each lane's committed outbox position (as the
#: group offset of ``edgeflow-outbox-<outbox id>``; never written to)
POSITIONS_TOPIC = "edgeflow.outbox-positions"
#: a transaction that makes no progress for this long (kafka-python does not always recover one
#: that was open across a broker restart) is given up: its producer is closed, and the next
#: one fences it (the broker aborts it) and sends the batch again
TX_STALL_S = 15.0
#: a forwarder in a crash loop: at most one line per this many seconds about its deaths
DEATH_LOG_EVERY_S = 1.0

#: a connection refused for a security reason is tried again after this long
REFUSED_RETRY_S = 15.0
#: with security options, a first failed attempt is said to be "unreachable" only after this
#: long: the broker delays and drops connections after a refused one, so another forwarder's
#: first attempt may end in a timeout before the refusal is seen
REFUSAL_GRACE_S = 2.0 * BOOTSTRAP_TIMEOUT_MS / 1000 + 1.0

CONNECTING, CONNECTED, UNREACHABLE, REFUSED = 0, 1, 2, 3
_ERROR_CHARS = 300


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def lanes_of(slot: int, processes: int) -> list[int]:
    return [lane for lane in range(LANES) if lane % processes == slot]


def connection_state(status: dict[str, str]) -> str | None:
    """The Kafka connection state an outbox's status table records (``Outbox.status()``), if any:
    ``connected since <UTC>``, ``unreachable since <UTC>: <last error>``, or after a run that
    ended connected ``disconnected at <UTC>: the run ended``."""
    return status.get(CONNECTION_KEY)


class _Links:
    """Each forwarder's connection state in shared memory without locks (written by the forwarder,
    read by the monitor): state, since when (epoch s), the last error, and whether any forwarder
    reached the broker in this run."""

    def __init__(self, ctx: SpawnContext, n: int) -> None:
        self.state: Any = ctx.RawArray(ctypes.c_int, n)
        self.since: Any = ctx.RawArray(ctypes.c_double, n)
        self.errors: Any = [ctx.RawArray(ctypes.c_char, _ERROR_CHARS) for _ in range(n)]
        self.reached: Any = ctx.RawValue(ctypes.c_int, 0)

    def set(self, slot: int, state: int, error: str = "") -> bool:
        """Record ``slot``'s state; True when it changed."""
        if error:
            self.errors[slot].value = error.encode("utf-8", "replace")[: _ERROR_CHARS - 1]
        if state == CONNECTED:
            self.reached.value = 1
        if self.state[slot] == state:
            return False
        self.since[slot] = time.time()
        self.state[slot] = state
        return True

    def error(self, slot: int) -> str:
        return bytes(self.errors[slot].value).decode("utf-8", "replace")


class _KafkaLogTap(logging.Handler):
    """Keeps kafka-python's last warning or error (the "last error" of a connection state)
    instead of printing its lines (a closed port gives several per second)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last = ""
        self.at = 0.0
        self.connection = ""  # the last "Connection failed/lost: ..." (more telling than a timeout)
        self.connection_at = 0.0
        self.refused = ""  # the last error that is a security refusal (kafka_security.refusal)
        self.refused_at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            text = record.getMessage()
            self.last, self.at = text, time.monotonic()
            if "Connection failed" in text or "Connection lost" in text:
                self.connection, self.connection_at = text.split(">: ")[-1], self.at
            if refusal(text) is not None:
                self.refused, self.refused_at = text.split(">: ")[-1], self.at

    def cause(self) -> str:
        """The last connection error if it is recent (it says more than a timeout), else the last error."""
        if self.connection and self.at - self.connection_at < 30:
            return self.connection
        return self.last

    def refusal_since(self, t: float) -> str:
        """The last security refusal logged since ``t`` (time.monotonic()), or ""."""
        return self.refused if self.refused and self.refused_at >= t else ""

    def install(self) -> _KafkaLogTap:
        kafka_log = logging.getLogger("kafka")
        kafka_log.handlers[:] = [self]
        kafka_log.propagate = False
        kafka_log.setLevel(logging.WARNING)
        return self


KafkaLogTap = _KafkaLogTap


class _AbortedError(Exception):
    """The parent said abort (or is gone) while a forwarder waited."""


class _Drain:
    """The loop inside one forwarder process. It only returns when its lanes are drained at the
    end of a run, when the broker was never reachable at the end of a run, or when told to abort."""

    def __init__(
        self,
        path: Path,
        bootstrap: str,
        config: dict[str, Any],
        slot: int,
        lanes: list[int],
        links: _Links,
        parent: Parent,
        security: KafkaSecurity | None = None,
        exactly_once: bool = False,
    ) -> None:
        self.path = path
        self.bootstrap = bootstrap
        self.config = {"bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **config}
        self.exactly_once = exactly_once
        #: exactly-once: rows Kafka refused for good (seq -> error), left out of the next
        #: transaction and counted as rejected when it commits
        self.skip: dict[int, BaseException] = {}
        self.security = security or KafkaSecurity()
        self.slot = slot
        self.lanes = lanes
        self.links = links
        self.parent = parent
        self.name = f"forwarder lanes {','.join(map(str, lanes))}"
        self.kafka_log = _KafkaLogTap().install()
        self.box: Outbox | None = None
        self.producer: Any = None
        self.created: set[str] = set()
        self.partitions: dict[str, list[int]] = {}
        self.partition_of: dict[tuple[str, bytes], int] = {}
        self.failing: dict[str, str] = {}  # what -> the error last logged for it
        self.refused_seen = False  # the producer saw a refused record: it fails what follows

    # -- errors and connection state --------------------------------------------------------
    def status(self, name: str, value: str) -> None:
        """Best effort: a status entry is information, never a reason to stop."""
        if self.box is not None:
            with contextlib.suppress(Exception):
                self.box.set_status(name, value)

    def error(self, text: str) -> None:
        log.warning("%s: %s", self.name, text)
        self.status(f"error.{self.lanes[0]}", f"{utc(time.time())} {text}")

    def unreachable(self, exc: BaseException | None = None) -> None:
        cause = self.kafka_log.cause() or (f"{type(exc).__name__}: {exc}" if exc else "no answer")
        if self.links.set(self.slot, UNREACHABLE, cause):
            self.status(
                f"error.{self.lanes[0]}",
                f"{utc(time.time())} Kafka at {self.bootstrap} unreachable: {cause}",
            )

    def refused(self, cause: str) -> None:
        """The broker refused the connection for a security reason: the monitor says it once."""
        if self.links.set(self.slot, REFUSED, cause):
            self.status(
                f"error.{self.lanes[0]}",
                f"{utc(time.time())} Kafka at {self.bootstrap} refused the connection: {cause}",
            )

    def client_config(self) -> dict[str, Any]:
        """The producer's or admin's security options, secrets read now (never logged)."""
        return self.security.client_config()

    def connected(self) -> None:
        was, since = self.links.state[self.slot], self.links.since[self.slot]
        if self.links.set(self.slot, CONNECTED) and was == UNREACHABLE:
            now = time.time()
            self.status(
                f"error.{self.lanes[0]}",
                f"{utc(now)} Kafka at {self.bootstrap} was unreachable for {now - since:.0f}s "
                f"from {utc(since)}: {self.links.error(self.slot)}",
            )

    def retry(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, retried with backoff (up to 5 s) while it raises; one log line per new error
        and one when it works again. Raises :class:`_AbortedError` when told to abort meanwhile."""
        backoff = 0.1
        while True:
            if not self.parent.running():
                raise _AbortedError
            try:
                result = fn(*args)
            except (sqlite3.Error, OSError) as exc:
                text = f"{type(exc).__name__}: {exc}"
                if self.failing.get(what) != text:
                    self.failing[what] = text
                    log.warning(
                        "%s: outbox %s: cannot %s (%s); retrying every few seconds, nothing "
                        "is lost meanwhile",
                        self.name, self.path, what, text,
                    )  # fmt: skip
                self.parent.pause(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if self.failing.pop(what, None) is not None:
                log.warning("%s: the outbox works again (%s)", self.name, what)
            return result

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        backoff = 0.1
        while self.parent.running():
            try:
                self._drain()
                return
            except _AbortedError:
                return
            except Exception as exc:  # never die: say it once and start over
                text = f"{type(exc).__name__}: {exc}"
                if self.failing.get("run") != text:
                    self.failing["run"] = text
                    self.error(f"unexpected error, starting over: {text}")
                self._close_producer(0)
                self.parent.pause(backoff)
                backoff = min(backoff * 2, 5.0)
        self._close_producer(0)

    def _drain(self) -> None:
        if self.box is None:
            self.box = self.retry("open it", Outbox, self.path)
        box = self.box
        # whatever a dead forwarder (or an earlier pass) had in flight is queued again
        self.retry("re-queue records in flight", box.release, self.lanes, 1)
        after = 0
        backoff = 0.1
        while self.parent.running():
            if self.producer is None:
                if self._connect():
                    backoff = 0.1
                    continue
                refused = self.links.state[self.slot] == REFUSED
                if self.parent.stopping() and (refused or not self.links.reached.value):
                    return  # never reachable in this run: the records stay for the next one
                # at a stop, wake up for one last attempt
                self.parent.pause(
                    REFUSED_RETRY_S if refused else backoff,
                    wake_on_stop=not self.parent.stopping(),
                )
                backoff = min(backoff * 2, 5.0)
                continue
            limit = TX_FETCH_LIMIT if self.exactly_once else FETCH_LIMIT
            rows, newest = self.retry("read records", box.fetch, self.lanes, after, limit)
            if not rows:
                after = max(after, newest)
                if self.parent.stopping():
                    break
                self.parent.pause(0.02)
                continue
            if self._send_tx(rows) if self.exactly_once else self._send(rows):
                # retried on its own: sending the rows again would duplicate them
                self.retry(
                    "delete delivered records", box.delivered, self.lanes, rows, self.exactly_once
                )
                after = rows[-1].seq
            else:
                self.retry("re-queue records in flight", box.release, self.lanes, rows[0].seq)
                self._close_producer(0)
        self._close_producer(5 if self.parent.running() else 0)

    def _connect(self) -> bool:
        from kafka import KafkaProducer

        started = time.monotonic()
        try:
            extra = {"transactional_id": self.transactional_id()} if self.exactly_once else {}
            self.producer = KafkaProducer(
                bootstrap_servers=self.bootstrap, **self.config, **extra, **self.client_config()
            )
            if self.exactly_once:
                self._start_transactions()
        except SecretError as exc:
            self.refused(str(exc))
            return False
        except Exception as exc:
            self._close_producer(0)
            # a broker drops the connections that follow a refused one: a refusal seen in the
            # last minute is still the cause of an attempt that only timed out
            cause = self.kafka_log.refusal_since(started - 4 * REFUSED_RETRY_S)
            if cause:
                self.refused(cause)
            else:
                self.unreachable(exc)
            return False
        self.connected()
        return True

    # -- exactly-once -----------------------------------------------------------------------
    def _outbox_id(self) -> str:
        assert self.box is not None
        return self.box.identity

    def transactional_id(self) -> str:
        """Deterministic per outbox and lane set: a restarted forwarder fences its predecessor."""
        return f"edgeflow-outbox-{self._outbox_id()}-lanes-{'-'.join(map(str, self.lanes))}"

    def group(self) -> str:
        """The consumer group whose offsets on :data:`POSITIONS_TOPIC` are the lanes' positions."""
        return f"edgeflow-outbox-{self._outbox_id()}"

    def _start_transactions(self) -> None:
        """Fence a predecessor with the same transactional id (the broker aborts its open
        transaction, or finishes its commit), then delete the rows Kafka already committed."""
        from kafka import KafkaConsumer, TopicPartition

        assert self.box is not None
        self.producer.init_transactions()
        self._ensure_topic(POSITIONS_TOPIC)
        parts = self.producer.partitions_for(POSITIONS_TOPIC) or set()
        if len(parts) < LANES:
            raise OutboxError(
                f"the topic {POSITIONS_TOPIC} has {len(parts)} partitions; exactly-once needs "
                f"{LANES} (one per outbox lane): delete it or add partitions"
            )
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group(),
            enable_auto_commit=False,
            isolation_level="read_committed",
            request_timeout_ms=30_000,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            **self.client_config(),
        )
        try:
            positions = {
                lane: consumer.committed(TopicPartition(POSITIONS_TOPIC, lane), timeout_ms=30_000)
                for lane in self.lanes
            }
        finally:
            consumer.close()
        dropped = 0
        for lane, seq in positions.items():
            if seq:
                dropped += self.retry(
                    "delete committed records", self.box.delete_committed, lane, seq
                )
        if dropped:
            log.warning(
                "%s: %d records a Kafka transaction had committed before the last forwarder "
                "deleted them are removed from the outbox (not sent again)",
                self.name, dropped,
            )  # fmt: skip

    def _send_tx(self, rows: list[Stored]) -> bool:
        """One Kafka transaction: ``rows`` (but those refused for good before) and the lanes'
        position (the last seq). True once committed; False (aborted, producer closed) on any
        failure: the rows are sent again, the position read back first."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        producer = self.producer
        try:
            producer.begin_transaction()
            sent = self._send([r for r in rows if r.seq not in self.skip], transactional=True)
            if sent:
                hi = rows[-1].seq
                offsets = {
                    TopicPartition(POSITIONS_TOPIC, lane): OffsetAndMetadata(hi, "", -1)
                    for lane in self.lanes
                }
                self._bounded(producer.send_offsets_to_transaction, offsets, self.group())
                self._bounded(producer.commit_transaction)
        except Exception as exc:  # fenced, timed out by the broker, lost in an outage
            text = f"{type(exc).__name__}: {exc}"
            if self.failing.get("transaction") != text:  # once, not once per retry
                self.failing["transaction"] = text
                self.error(f"a Kafka transaction failed ({text}); it is aborted and sent again")
            sent = False
        if not sent:
            # no abort_transaction (it may wait forever): the next producer's
            # init_transactions fences this one and the broker aborts what it left open
            self._close_producer(0)
            return False
        self.failing.pop("transaction", None)
        for r in rows:
            refusal = self.skip.pop(r.seq, None)
            if refusal is not None:
                self._reject(r, refusal)
        return True

    def _bounded(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` (a kafka-python transaction call, which waits without a time limit)
        in a helper thread; raises TimeoutError after ``TX_STALL_S`` s or when told to stop."""
        failure: list[BaseException] = []

        def call() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=call, name="edgeflow-kafka-transaction", daemon=True)
        worker.start()
        deadline = time.monotonic() + TX_STALL_S
        while worker.is_alive():
            worker.join(0.1)
            if worker.is_alive() and (time.monotonic() > deadline or not self.parent.running()):
                raise TimeoutError(f"no answer from Kafka within {TX_STALL_S:.0f}s")
        if failure:
            raise failure[0]

    def _close_producer(self, timeout: float) -> None:
        producer, self.producer = self.producer, None
        self.partitions.clear()
        self.partition_of.clear()
        if producer is not None:
            try:
                producer.close(timeout)
            except Exception:
                # close() raises when records are still in flight and then leaves its sender
                # thread running: stop it, so that a producer given up on sends nothing more
                with contextlib.suppress(Exception):
                    producer._sender.force_close()

    def _ensure_topic(self, topic: str) -> None:
        if topic in self.created:
            return
        box = self.box
        assert box is not None
        spec = self.retry("read the status", box.status).get(f"topic.{topic}")
        if spec:
            from kafka.admin import KafkaAdminClient, NewTopic
            from kafka.errors import TopicAlreadyExistsError

            parts, repl = (int(x) for x in spec.split(","))
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=10_000,
                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                **self.client_config(),
            )
            try:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(topic, parts, repl)])
            finally:
                admin.close()
        self.created.add(topic)

    def _partition(self, topic: str, key: bytes | None) -> int | None:
        """The default partitioner's choice, computed once per key (murmur2 is slow in Python)."""
        if key is None:
            return None
        p = self.partition_of.get((topic, key))
        if p is None:
            from kafka.partitioner.default import murmur2

            parts = self.partitions.get(topic)
            if parts is None:
                parts = self.partitions[topic] = sorted(self.producer.partitions_for(topic))
            # exactly kafka-python's (and the Java client's) DefaultPartitioner for keyed records
            p = self.partition_of[(topic, key)] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p

    def _send(self, rows: list[Stored], transactional: bool = False) -> bool:
        """Send ``rows`` and wait for every answer. ``transactional``: inside a transaction, a
        record refused for good is remembered in ``skip`` and the batch fails (it is aborted
        and sent again without it)."""
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        producer = self.producer
        box = self.box
        assert box is not None
        futures = []
        for r in rows:
            headers = [(k, v.encode()) for k, v in orjson.loads(r.headers)]
            try:
                self._ensure_topic(r.topic)
                part = self._partition(r.topic, r.key)
                future = producer.send(
                    r.topic, key=r.key, value=r.value, headers=headers, partition=part
                )
                futures.append((r, future))
            except MessageSizeTooLargeError as exc:
                # over the producer's own limit: can never be delivered; count it and move on
                # rather than block the queue
                if transactional:
                    self.skip[r.seq] = exc
                else:
                    self._reject(r, exc)
            except KafkaError as exc:
                self.unreachable(exc)
                return False
        progress, last_progress = 0, time.monotonic()
        while True:
            done = sum(1 for _, f in futures if f.is_done)
            if done == len(futures):
                break
            now = time.monotonic()
            if done > progress:
                progress, last_progress = done, now
                self.connected()
            elif now - last_progress > 3 and self.kafka_log.at > last_progress:
                self.unreachable()  # no acknowledgement for a while, and connection errors
            if transactional and now - last_progress > TX_STALL_S:
                raise TimeoutError(
                    f"no record of the transaction acknowledged in {TX_STALL_S:.0f}s"
                )
            # still waiting means the broker may be down: the producer keeps retrying
            with contextlib.suppress(KafkaError):
                producer.flush(timeout=0.5)
            if not self.parent.running():
                return False
        failed = [(r, f) for r, f in futures if f.failed()]
        self.refused_seen = bool(failed)
        if any(not _refused(f.exception) for _, f in failed):
            cause = next(f.exception for _, f in failed if not _refused(f.exception))
            self.error(f"{type(cause).__name__}: {cause}")
            return False
        self.connected()
        if not failed:
            return True
        if transactional:
            for r, f in failed:
                self.skip[r.seq] = f.exception
            return False
        # the broker refused these for good (too large for the topic, invalid). kafka-python's
        # idempotent producer fails every record sent after a refused one with the same error,
        # so each is sent again alone by a new producer; refused again, it is rejected
        sent = all(self._send_alone(r) for r, _ in failed)
        if self.refused_seen:  # it would fail the next batch: start the next one anew
            self._close_producer(1)
        return sent

    def _send_alone(self, r: Stored) -> bool:
        """Send one record and wait for its answer: True when it was delivered or refused for
        good (then counted as rejected, with one log line); False on any other failure. Uses a
        new producer when the last one saw a refusal (it fails whatever it sends next)."""
        if self.refused_seen or self.producer is None:
            self._close_producer(1)
            if not self._connect():
                return False
        self.refused_seen = True
        headers = [(k, v.encode()) for k, v in orjson.loads(r.headers)]
        future = self.producer.send(
            r.topic,
            key=r.key,
            value=r.value,
            headers=headers,
            partition=self._partition(r.topic, r.key),
        )
        while not future.is_done:
            with contextlib.suppress(Exception):
                self.producer.flush(timeout=0.5)
            if not self.parent.running():
                return False
        if future.failed():
            if not _refused(future.exception):
                self.error(f"{type(future.exception).__name__}: {future.exception}")
                return False
            self._reject(r, future.exception)
        else:
            self.refused_seen = False
        return True

    def _reject(self, r: Stored, exc: BaseException) -> None:
        """Count ``r`` as rejected (it leaves the outbox with the batch it came in), in one line."""
        rid = next((v for k, v in orjson.loads(r.headers) if k == "edgeflow-id"), f"seq {r.seq}")
        log.warning(
            "edgeflow: kafka sink %r -> topic %s: Kafka refused record %s for good (%s: %s); "
            "it is counted as rejected and removed from the outbox",
            r.sink, r.topic, rid, type(exc).__name__, exc,
        )  # fmt: skip
        assert self.box is not None
        self.retry("count a rejected record", self.box.record_count, r.sink)


def _refused(exc: BaseException | None) -> bool:
    """Whether the broker refused a record for good (sending it again cannot succeed)."""
    from kafka import errors

    return isinstance(
        exc,
        (
            errors.MessageSizeTooLargeError,
            errors.RecordListTooLargeError,
            errors.InvalidRecordError,
            errors.CorruptRecordError,
            errors.InvalidTopicError,
        ),
    )


def _process_main(
    path: str,
    bootstrap: str,
    config: dict[str, Any],
    slot: int,
    lanes: list[int],
    links: _Links,
    command: Command,
    parent: int,
    security: KafkaSecurity | None = None,
    exactly_once: bool = False,
) -> None:
    die_with_parent()
    ignore_termination()  # the parent decides when to stop (a signal to the group reaches it too)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    _Drain(
        Path(path), bootstrap, config, slot, lanes, links, Parent(command, parent), security,
        exactly_once,
    ).run()  # fmt: skip


@dataclass
class _Slot:
    """One forwarder process and its lanes, as the monitor sees it."""

    index: int
    lanes: list[int]
    proc: SpawnProcess | None = None
    started: float = 0.0
    restart_at: float = 0.0
    deaths: int = 0
    quick_deaths: int = 0
    done: bool = False  # exited by itself at the end of the run
    logged: float = field(default=-1e9)
    unlogged: int = 0  # deaths not logged yet (a crash loop)


class Forwarder:
    """The forwarder processes of one (outbox, cluster) pair, shared by the sinks of a run."""

    _running: ClassVar[dict[tuple[Path, str, KafkaSecurity], Forwarder]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def ensure(
        cls,
        outbox: Outbox,
        bootstrap: str,
        config: dict[str, Any],
        topics: dict[str, tuple[int, int]],
        processes: int = 2,
        security: KafkaSecurity | None = None,
        who: str = "kafka sink",
        exactly_once: bool = False,
    ) -> Forwarder:
        """The running forwarder of (outbox, cluster, security options), or a new one;
        ``who`` (e.g. ``kafka sink 'alerts'``) names the sink in its error lines.
        ``exactly_once``: transactional (see the module docstring); raises
        :class:`OutboxError` when a sink sharing the outbox asked otherwise."""
        for topic, (parts, repl) in topics.items():
            outbox.set_status(f"topic.{topic}", f"{parts},{repl}")
        if exactly_once:  # edgeflow's own topic: made whatever create_topic says
            repl = max((r for _, r in topics.values()), default=1)
            outbox.set_status(f"topic.{POSITIONS_TOPIC}", f"{LANES},{repl}")
        security = security or KafkaSecurity()
        with cls._lock:
            key = (outbox.path, bootstrap, security)
            fw = cls._running.get(key)
            if fw is not None and fw.alive() and fw.exactly_once != exactly_once:
                raise OutboxError(
                    f"exactly_once={exactly_once} but {fw.who}, which shares the outbox "
                    f"{outbox.path} and its forwarders, has exactly_once={fw.exactly_once}: "
                    "give every kafka sink of the flow the same exactly_once"
                )
            if fw is None or not fw.alive():
                fw = cls._running[key] = Forwarder(
                    outbox.path, bootstrap, config, processes, security, who, exactly_once
                )
            fw.users += 1
            return fw

    def __init__(
        self,
        path: Path,
        bootstrap: str,
        config: dict[str, Any],
        processes: int = 2,
        security: KafkaSecurity | None = None,
        who: str = "kafka sink",
        exactly_once: bool = False,
    ) -> None:
        self.ctx = mp.get_context("spawn")  # no fork: the engine runs threads
        self.exactly_once = exactly_once
        self.path = path
        self.bootstrap = bootstrap
        self.config = config
        self.security = security or KafkaSecurity()
        self.who = who
        #: the one line saying why the broker refused the connection, once it did
        self.refused_line: str | None = None
        self.users = 0
        n = max(1, min(processes, LANES))
        self.command = Command(self.ctx)
        self.links = _Links(self.ctx, n)
        self.slots = [_Slot(i, lanes_of(i, n)) for i in range(n)]
        self.link = CONNECTING  # the state last logged
        self.created_at = time.monotonic()
        self.stopped = False
        self.signalled = False  # the run is being stopped by a signal: bounded stop
        # the monitor starts the processes: PR_SET_PDEATHSIG ties a child to the thread that
        # started it, and the monitor outlives every child
        self.monitor = threading.Thread(
            target=self._monitor, name=f"edgeflow-forwarder-monitor {path.name}", daemon=True
        )
        self.monitor.start()

    def alive(self) -> bool:
        return not self.stopped

    def pids(self) -> list[int | None]:
        """The process id of each forwarder (None while it is being restarted)."""
        return [s.proc.pid if s.proc is not None else None for s in self.slots]

    def release(self, drain_timeout: float) -> None:
        """One user is done; the last one lets the processes drain (up to ``drain_timeout`` s) and stops them."""
        with Forwarder._lock:
            self.users -= 1
            if self.users > 0:
                return
            Forwarder._running.pop((self.path, self.bootstrap, self.security), None)
        self.stop(drain_timeout)

    def stop(self, drain_timeout: float) -> None:
        """Drain for up to ``drain_timeout`` s (when the run was asked to end by ``--for`` or a
        signal and the broker was never reachable: one last attempt only), then end the
        processes. Bounded: it never waits on anything a dead process holds."""
        if self.stopped:
            return
        self.command.set(DRAIN)
        start = time.monotonic()
        deadline = start + drain_timeout
        while not all(s.done for s in self.slots):
            if CONNECTIONS.stop_requested():  # stopped by a signal: the whole stop is bounded
                self.signalled = True
                deadline = min(deadline, start + SIGNAL_STOP_S - SIGNAL_EXIT_S)
            if time.monotonic() >= deadline:
                break
            if (
                (CONNECTIONS.run_over() and self._never_reached()) or self._all_refused()
            ) and time.monotonic() - start > LAST_ATTEMPT_S:
                # the run was asked to end (--for, a signal): every forwarder tried and failed,
                # and made one last attempt; at the natural end of the input the backlog
                # gets the whole drain_timeout instead (the uplink may come back)
                break
            time.sleep(0.05)
        self.command.set(ABORT)
        self.monitor.join(EXIT_GRACE_S + 10)  # the monitor ends (kills) every process first
        self.stopped = True
        self._say_what_stays()

    def _all_refused(self) -> bool:
        """Every forwarder's connection was refused for a security reason: waiting for a
        drain is pointless (retrying does not fix a password or a certificate)."""
        return all(self.links.state[i] == REFUSED for i in range(len(self.slots)))

    def failure(self) -> str | None:
        """Why this run could not deliver, when the broker refused the connection for a
        security reason (one line naming the sink, the broker and the cause), else None."""
        return self.refused_line

    def _never_reached(self) -> bool:
        """No forwarder reached the broker in this run, and each one tried at least once."""
        n = len(self.slots)
        return not self.links.reached.value and all(
            self.links.state[i] == UNREACHABLE for i in range(n)
        )

    # -- the monitor thread -----------------------------------------------------------------
    def _monitor(self) -> None:
        while True:
            command = self.command.value
            try:
                for s in self.slots:
                    self._watch(s, command)
                self._watch_link()
            except Exception as exc:  # the monitor must outlive the children: never end here
                log.warning("edgeflow: kafka forwarder monitor: %s: %s", type(exc).__name__, exc)
            if command == ABORT:
                break
            time.sleep(0.1)
        self._end_processes()

    def _watch(self, s: _Slot, command: int) -> None:
        now = time.monotonic()
        if s.proc is None:
            wanted = command == RUN or (command == DRAIN and not s.done)
            if wanted and now >= s.restart_at:
                try:
                    self._start(s)
                except Exception as exc:
                    s.restart_at = now + 5
                    log.warning(
                        "edgeflow: cannot start a kafka forwarder: %s: %s", type(exc).__name__, exc
                    )
            return
        code = s.proc.exitcode
        if code is None:
            return
        s.proc = None
        if code == 0 and self.command.value != RUN:  # read again: it may have changed meanwhile
            s.done = True  # drained its lanes (or gave up on a broker never reached)
            return
        if command == ABORT:
            return
        s.deaths += 1
        s.quick_deaths = s.quick_deaths + 1 if now - s.started < 5 else 0
        s.restart_at = now + (min(10.0, 0.5 * 2 ** (s.quick_deaths - 1)) if s.quick_deaths else 0)
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        # every death is logged; a crash loop at most one line per DEATH_LOG_EVERY_S, which
        # counts the deaths it stands for
        s.unlogged += 1
        if now - s.logged >= DEATH_LOG_EVERY_S:
            s.logged = now
            more = f", {s.unlogged - 1} more since the last line" if s.unlogged > 1 else ""
            s.unlogged = 0
            log.warning(
                "edgeflow: kafka forwarder for lanes %s died (%s, %d time(s) in this run%s); starting "
                "it again: it re-sends what it had in flight (consumers drop those by edgeflow-id)",
                ",".join(map(str, s.lanes)), how, s.deaths, more,
            )  # fmt: skip

    def _start(self, s: _Slot) -> None:
        proc = self.ctx.Process(
            target=_process_main,
            args=(
                str(self.path), self.bootstrap, self.config, s.index, s.lanes, self.links,
                self.command, os.getpid(), self.security, self.exactly_once,
            ),
            name=f"edgeflow-forwarder-{s.index}",
            daemon=True,
        )  # fmt: skip
        # the resource tracker unblocks signals in the thread that starts it: start it first
        resource_tracker.ensure_running()
        with termination_blocked():  # until the child ignores SIGTERM itself
            proc.start()
        s.proc = proc
        s.started = time.monotonic()
        self._status(
            f"forwarder.{s.index}",
            f"pid {proc.pid} lanes {','.join(map(str, s.lanes))} started {utc(time.time())}"
            + (f" (restart {s.deaths})" if s.deaths else ""),
        )

    def _watch_link(self) -> None:
        """One log line (and the ``kafka.connection`` status) per change of the connection state."""
        n = len(self.slots)
        refused = [i for i in range(n) if self.links.state[i] == REFUSED]
        down = [i for i in range(n) if self.links.state[i] == UNREACHABLE]
        up = [i for i in range(n) if self.links.state[i] == CONNECTED]
        state = REFUSED if refused else UNREACHABLE if down else CONNECTED if up else CONNECTING
        if state == self.link:
            return
        if (
            state == UNREACHABLE
            and self.link == CONNECTING
            and not self.security.plaintext
            and time.monotonic() - self.created_at < REFUSAL_GRACE_S
        ):
            return  # a refused first attempt may look like a timeout at first: wait and see
        before, self.link = self.link, state
        if state == REFUSED:
            first = min(refused, key=lambda i: self.links.since[i])
            since, error = self.links.since[first], self.links.error(first)
            line = self.security.explain(self.who, self.bootstrap, error)
            if line != self.refused_line:  # said once, not once per retry
                self.refused_line = line
                log.error(
                    "edgeflow: %s; records wait in the outbox %s (nothing is lost) and are sent "
                    "once the connection is accepted",
                    line, self.path,
                )  # fmt: skip
            self._status(CONNECTION_KEY, f"refused since {utc(since)}: {line}")
        elif state == UNREACHABLE:
            first = min(down, key=lambda i: self.links.since[i])
            since, error = self.links.since[first], self.links.error(first)
            log.warning(
                "edgeflow: Kafka at %s is unreachable (%s); records wait in the outbox %s and are sent "
                "when it is back",
                self.bootstrap, error, self.path,
            )  # fmt: skip
            self._status(CONNECTION_KEY, f"unreachable since {utc(since)}: {error}")
        elif state == CONNECTED:
            since = max(self.links.since[i] for i in up)
            if before == UNREACHABLE:
                log.warning(
                    "edgeflow: Kafka at %s is reachable again; sending the backlog", self.bootstrap
                )
            elif before == REFUSED:  # e.g. a fixed password file: the run no longer fails
                self.refused_line = None
                log.warning(
                    "edgeflow: %s: Kafka at %s accepts the connection now; sending the backlog",
                    self.who, self.bootstrap,
                )  # fmt: skip
            self._status(CONNECTION_KEY, f"connected since {utc(since)}")

    def _end_processes(self) -> None:
        """Bounded: wait up to EXIT_GRACE_S in all for the processes to exit, then kill them."""
        end = time.monotonic() + (SIGNAL_EXIT_S if self.signalled else EXIT_GRACE_S)
        for s in self.slots:
            if s.proc is not None:
                s.proc.join(max(0.0, end - time.monotonic()))
        for s in self.slots:
            if s.proc is not None and s.proc.exitcode is None:
                s.proc.kill()
                s.proc.join(5)
        if self.link == CONNECTED:
            self._status(CONNECTION_KEY, f"disconnected at {utc(time.time())}: the run ended")

    def _status(self, name: str, value: str) -> None:
        with contextlib.suppress(Exception):
            Outbox.at(self.path).set_status(name, value)

    def _say_what_stays(self) -> None:
        with contextlib.suppress(Exception):
            n, _ = Outbox.at(self.path).depth()
            if not n:
                return
            why = (
                "refused the connection (see above)"
                if self.link == REFUSED
                else "was not reachable during this run"
                if not self.links.reached.value
                else f"did not take the backlog within the {SIGNAL_STOP_S:.0f}s a stop by a "
                "signal allows"
                if self.signalled
                else "did not take the backlog within the drain timeout"
            )
            log.warning(
                "edgeflow: Kafka at %s %s: %d records stay in the outbox %s and are sent by the next run",
                self.bootstrap, why, n, self.path,
            )  # fmt: skip
