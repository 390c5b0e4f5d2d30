"""The fleet status topic: each deployment reports its version, health and last update result.

Records are keyed ``<node-id>/<deployment>`` (one record per deployment, so two deployments on a
node do not overwrite each other) with a JSON value; the topic is created compacted, so the
latest record per key is the fleet's state and any Kafka consumer can read it.
:class:`StatusReporter` publishes on every change and every ``period_s``; :func:`read_latest`
reads the latest record per key (``edgeflow fleet status``).

Security: :func:`client_options`, for the reporter, the reader and the control topic alike:
the options of ``kafka.sink`` (TLS, mTLS, SASL) from ``EDGEFLOW_FLEET_<OPTION>`` variables.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT_TOPIC = "edgeflow.fleet.status"
DEFAULT_PERIOD_S = 30.0


def node_id(given: str | None = None) -> str:
    return given or socket.gethostname()


#: the environment variables of the fleet clients' Kafka security (status and control
#: topics), one per option of ``kafka.sink``: EDGEFLOW_FLEET_SECURITY_PROTOCOL,
#: EDGEFLOW_FLEET_SSL_CAFILE, ..., EDGEFLOW_FLEET_SASL_PASSWORD_ENV (a variable's *name*)
FLEET_ENV_PREFIX = "EDGEFLOW_FLEET_"


class FleetSecurityError(ValueError):
    """The fleet clients' security settings are wrong (one line: which and how to fix)."""


def fleet_security() -> Any:
    """The :class:`~edgeflow.connectors.kafka_security.KafkaSecurity` of the fleet clients,
    from ``EDGEFLOW_FLEET_<OPTION>`` variables (the options of ``kafka.sink``)."""
    import os

    from edgeflow.connectors.kafka_security import OPTIONS, KafkaSecurity

    given: dict[str, Any] = {}
    for name in OPTIONS:
        value = os.environ.get(FLEET_ENV_PREFIX + name.upper())
        if value is not None and value.strip():
            given[name] = value.strip()
    if "ssl_check_hostname" in given:
        given["ssl_check_hostname"] = given["ssl_check_hostname"].lower() not in (
            "0",
            "false",
            "no",
        )
    sec = KafkaSecurity.of(given)
    problems = sec.problems()
    if problems:
        raise FleetSecurityError(
            f"fleet Kafka security (the EDGEFLOW_FLEET_<OPTION> variables): {problems[0]}"
        )
    return sec


def client_options() -> dict[str, Any]:
    """kafka-python options every status- and control-topic client gets: the security
    options from ``EDGEFLOW_FLEET_*`` (empty for a plain connection). Holds secrets: never
    log it."""
    cfg: dict[str, Any] = fleet_security().client_config()
    return cfg


def _ensure_topic(bootstrap: str, topic: str) -> None:
    """Create ``topic`` compacted when it does not exist (an existing one is left as it is)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10_000, **client_options()
    )
    try:
        if topic in admin.list_topics():
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(
                [NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})]
            )
    finally:
        admin.close()


class StatusReporter:
    """Publishes the latest status of one deployment from a background thread; a broker that
    cannot be reached is retried every few seconds and said once per distinct error on ``log``
    (never raised: reporting must not stop a flow)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        key: str,
        log: Callable[[str], None],
        period_s: float = DEFAULT_PERIOD_S,
    ) -> None:
        self.bootstrap, self.topic, self.key, self.log = bootstrap, topic, key, log
        self.period_s = period_s
        self._latest: dict[str, Any] | None = None
        self._sent: dict[str, Any] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_error = ""
        self._thread = threading.Thread(target=self._loop, daemon=True, name="status-topic")
        self._thread.start()

    def publish(self, status: dict[str, Any]) -> None:
        """Report ``status`` (sent at once when it changed, else at the next period)."""
        self._latest = dict(status)
        if status != self._sent:
            self._wake.set()

    def close(self, timeout: float = 15.0) -> None:
        """Send the latest status (if it was not sent) and stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        producer: Any = None
        last_sent_at = 0.0
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            stopping = self._stop.is_set()
            latest = self._latest
            due = time.monotonic() - last_sent_at >= self.period_s
            if latest is not None and (latest != self._sent or due):
                try:
                    if producer is None:
                        producer = self._producer()
                    value = {**latest, "node": self.key.split("/")[0], "reported_at": time.time()}
                    producer.send(
                        self.topic, key=self.key.encode(), value=json.dumps(value).encode()
                    ).get(timeout=15)
                    self._sent, last_sent_at = latest, time.monotonic()
                    if self._last_error:
                        self.log(f"status topic {self.topic}: reporting again")
                        self._last_error = ""
                except Exception as exc:  # any client failure: say it, retry
                    msg = f"{type(exc).__name__}: {exc}"
                    if msg != self._last_error:
                        self.log(
                            f"status topic {self.topic} on {self.bootstrap}: cannot report "
                            f"({msg}); retrying"
                        )
                        self._last_error = msg
                    with contextlib.suppress(Exception):
                        if producer is not None:
                            producer.close(timeout=1)
                    producer = None
                    if not stopping:
                        self._stop.wait(3.0)
            if stopping:
                break
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)

    def _producer(self) -> Any:
        from kafka import KafkaProducer

        _ensure_topic(self.bootstrap, self.topic)
        return KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            request_timeout_ms=15_000,
            max_block_ms=15_000,
            **client_options(),
        )


class FleetReadError(Exception):
    """The status topic cannot be read; the message says why, in one line."""


def read_latest(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The latest record per key of ``topic``, read from the beginning to its current end (a
    null value deletes the key, as compaction does)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        security = client_options()
    except ValueError as exc:  # a wrong setting or an unreadable secret: one line
        raise FleetReadError(str(exc)) from None
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            request_timeout_ms=int(timeout * 1000) + 1000,
            **security,
        )
    except KafkaError as exc:
        raise FleetReadError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise FleetReadError(
                f"no topic {topic!r} on {bootstrap}: no node has reported yet (deploy with "
                "--status-topic/--status-bootstrap), or give the right --topic"
            )
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        latest: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise FleetReadError(
                    f"reading {topic!r} on {bootstrap} took longer than {timeout:.0f} s"
                )
            for msgs in consumer.poll(timeout_ms=500).values():
                for m in msgs:
                    key = m.key.decode("utf-8", "replace") if m.key else ""
                    if m.value is None:
                        latest.pop(key, None)
                        continue
                    with contextlib.suppress(ValueError):
                        value = json.loads(m.value)
                        if isinstance(value, dict):
                            latest[key] = value
        return latest
    except KafkaError as exc:
        raise FleetReadError(f"reading {topic!r} on {bootstrap} failed: {exc}") from None
    finally:
        consumer.close()
