"""The forwarder: drains an outbox to Kafka from separate processes.

Each forwarder process owns some of the outbox's lanes (a lane is a hash of the record
key), sends them oldest first with one idempotent producer (``acks="all"``), and deletes
rows only after the broker acknowledged them. Separate processes keep Kafka encoding off
the flow's interpreter (kafka-python spends ~20 µs of Python per record), and several of
them use more than one core.

While the broker is unreachable the producer keeps retrying the records in flight (a very
long delivery timeout), so the same records are never produced twice by a live producer;
only a crash can resend a record, and its ``edgeflow-id`` header lets consumers drop it.
A forwarder process exits when its parent dies (PR_SET_PDEATHSIG and a parent check).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, ClassVar

import orjson

from edgeflow.connectors.outbox import LANES, Outbox, Stored
from edgeflow.connectors.process import die_with_parent

log = logging.getLogger("edgeflow.forwarder")


class _Drain:
    """The loop inside one forwarder process."""

    def __init__(
        self,
        path: Path,
        bootstrap: str,
        config: dict[str, Any],
        lanes: list[int],
        stopping: Event,
        abort: Event,
        parent: int,
    ) -> None:
        self.box = Outbox(path)
        self.bootstrap = bootstrap
        self.config = config
        self.lanes = lanes
        self.stopping = stopping
        self.abort = abort
        self.parent = parent
        self.name = f"forwarder lanes {','.join(map(str, lanes))}"
        self.created: set[str] = set()
        self.partitions: dict[str, list[int]] = {}
        self.partition_of: dict[tuple[str, bytes], int] = {}

    def alive(self) -> bool:
        return not self.abort.is_set() and os.getppid() == self.parent

    def error(self, text: str) -> None:
        log.warning("%s: %s", self.name, text)
        with contextlib.suppress(Exception):
            self.box.set_status(
                f"error.{self.lanes[0]}",
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}",
            )

    def run(self) -> None:
        self.box.release(self.lanes, 1)  # whatever a dead forwarder had in flight is queued again
        after = 0
        producer = None
        backoff = 0.1
        while self.alive():
            if producer is None:
                try:
                    from kafka import KafkaProducer

                    producer = KafkaProducer(bootstrap_servers=self.bootstrap, **self.config)
                    backoff = 0.1
                except Exception as exc:
                    self.error(
                        f"cannot connect to Kafka at {self.bootstrap}: {type(exc).__name__}: {exc}"
                    )
                    if self.stopping.is_set():
                        return  # records stay in the outbox for the next run
                    self.abort.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            rows, newest = self.box.fetch(self.lanes, after, 20_000)
            if not rows:
                after = max(after, newest)
                if self.stopping.is_set():
                    break
                self.abort.wait(0.02)
                continue
            if self._send(producer, rows):
                self.box.delivered(self.lanes, rows)
                after = rows[-1].seq
            else:
                self.box.release(self.lanes, rows[0].seq)
                producer.close(0)
                producer = None
                self.partitions.clear()
                self.partition_of.clear()
        if producer is not None:
            producer.close(5)

    def _ensure_topic(self, topic: str) -> None:
        if topic in self.created:
            return
        spec = self.box.status().get(f"topic.{topic}")
        if spec:
            from kafka.admin import KafkaAdminClient, NewTopic
            from kafka.errors import TopicAlreadyExistsError

            parts, repl = (int(x) for x in spec.split(","))
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
            try:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(topic, parts, repl)])
            finally:
                admin.close()
        self.created.add(topic)

    def _partition(self, producer: Any, topic: str, key: bytes | None) -> int | None:
        """The default partitioner's choice, computed once per key (murmur2 is slow in Python)."""
        if key is None:
            return None
        p = self.partition_of.get((topic, key))
        if p is None:
            from kafka.partitioner.default import murmur2

            parts = self.partitions.get(topic)
            if parts is None:
                parts = self.partitions[topic] = sorted(producer.partitions_for(topic))
            # exactly kafka-python's (and the Java client's) DefaultPartitioner for keyed records
            p = self.partition_of[(topic, key)] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p

    def _send(self, producer: Any, rows: list[Stored]) -> bool:
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        futures = []
        for r in rows:
            headers = [(k, v.encode()) for k, v in orjson.loads(r.headers)]
            try:
                self._ensure_topic(r.topic)
                part = self._partition(producer, r.topic, r.key)
                futures.append(
                    producer.send(
                        r.topic, key=r.key, value=r.value, headers=headers, partition=part
                    )
                )
            except MessageSizeTooLargeError as exc:
                # can never be delivered: count it and move on rather than block the queue
                self.error(
                    f"record {r.seq} of {r.sink} is too large for Kafka and is discarded: {exc}"
                )
                self.box.record_count(r.sink)
            except KafkaError as exc:
                self.error(f"{type(exc).__name__}: {exc}")
                return False
        while not all(f.is_done for f in futures):
            # still waiting means the broker may be down: the producer keeps retrying
            with contextlib.suppress(KafkaError):
                producer.flush(timeout=0.5)
            if not self.alive():
                return False
        failed = [f for f in futures if f.failed()]
        if failed:
            self.error(f"{type(failed[0].exception).__name__}: {failed[0].exception}")
            return False
        return True


def _process_main(
    path: str,
    bootstrap: str,
    config: dict[str, Any],
    lanes: list[int],
    stopping: Event,
    abort: Event,
    parent: int,
) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # our own warnings say what matters
    _Drain(Path(path), bootstrap, config, lanes, stopping, abort, parent).run()


class Forwarder:
    """The forwarder processes of one (outbox, cluster) pair, shared by the sinks of a run."""

    _running: ClassVar[dict[tuple[Path, str], Forwarder]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def ensure(
        cls,
        outbox: Outbox,
        bootstrap: str,
        config: dict[str, Any],
        topics: dict[str, tuple[int, int]],
        processes: int = 2,
    ) -> Forwarder:
        for topic, (parts, repl) in topics.items():
            outbox.set_status(f"topic.{topic}", f"{parts},{repl}")
        with cls._lock:
            key = (outbox.path, bootstrap)
            fw = cls._running.get(key)
            if fw is None or not fw.alive():
                fw = cls._running[key] = Forwarder(outbox.path, bootstrap, config, processes)
            fw.users += 1
            return fw

    def __init__(
        self, path: Path, bootstrap: str, config: dict[str, Any], processes: int = 2
    ) -> None:
        ctx = mp.get_context("spawn")  # no fork: the engine runs threads
        self.path = path
        self.bootstrap = bootstrap
        self.users = 0
        self.stopping = ctx.Event()
        self.abort = ctx.Event()
        n = max(1, min(processes, LANES))
        self.procs = [
            ctx.Process(
                target=_process_main,
                args=(
                    str(path),
                    bootstrap,
                    config,
                    [lane for lane in range(LANES) if lane % n == i],
                    self.stopping,
                    self.abort,
                    os.getpid(),
                ),
                name=f"edgeflow-forwarder-{i}",
                daemon=True,
            )
            for i in range(n)
        ]
        for p in self.procs:
            p.start()

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def release(self, drain_timeout: float) -> None:
        """One user is done; the last one lets the processes drain (up to ``drain_timeout`` s) and stops them."""
        with Forwarder._lock:
            self.users -= 1
            if self.users > 0:
                return
            Forwarder._running.pop((self.path, self.bootstrap), None)
        self.stop(drain_timeout)

    def stop(self, drain_timeout: float) -> None:
        self.stopping.set()
        deadline = time.monotonic() + drain_timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        self.abort.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
