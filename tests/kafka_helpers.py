"""A real Kafka broker for tests (scripts/kafka.sh on free ports) and a reading consumer."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

from tests.helpers import service_script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KafkaBroker:
    """One single-node KRaft broker in its own directory, driven by scripts/kafka.sh."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.dir = workdir / f"kafka-{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, action: str) -> None:
        service_script(
            "kafka.sh",
            action,
            {
                "KAFKA_PORT": str(self.port),
                "KAFKA_CONTROLLER_PORT": str(self.controller_port),
                "KAFKA_DIR": str(self.dir),
            },
        )

    def up(self) -> KafkaBroker:
        self._script("up")
        return self

    def stop(self) -> None:
        self._script("stop")

    def start(self) -> None:
        self._script("start")

    def down(self) -> None:
        self._script("down")


def consume_all(
    bootstrap: str, topic: str, expect: int | None = None, timeout: float = 60, **client: Any
) -> list[Any]:
    """Every message of ``topic`` from the beginning, waiting until ``expect`` arrived, if given.

    A topic that does not exist (yet) has no messages: with ``expect`` unset (or 0) that is an
    empty list once ``timeout`` passed, never an error from seeking on no partitions, so a test
    can poll a topic that the flow under test has not created yet. With ``expect`` set, fewer
    messages than expected by the deadline is returned as is; the caller's assertion says what
    was missing. Broker calls that time out on a loaded machine are retried until the deadline.
    ``client``: more kafka-python options (a secured connection's).
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=30_000,
        **client,
    )
    try:
        parts: set[int] = set()
        while True:
            with contextlib.suppress(KafkaError):
                parts = consumer.partitions_for_topic(topic) or set()
            if parts or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        while time.monotonic() < deadline:
            try:
                ends = consumer.end_offsets(tps)
                done = all(consumer.position(tp) >= ends[tp] for tp in tps)
            except KafkaError:
                done = False
            if done and (expect is None or len(out) >= expect):
                break
            for msgs in consumer.poll(timeout_ms=500).values():
                out.extend(msgs)
        return out
    finally:
        consumer.close()


def headers(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in msg.headers}
