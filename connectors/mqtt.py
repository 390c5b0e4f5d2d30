"""Read device readings from an MQTT broker (paho-mqtt 2.x).

    flow.source(mqtt.source("plant/+/telemetry", fields=["temp", "hum"]), key="topic[1]", time="ts")

Topic filters may use ``+`` and ``#``. The key comes from a topic level (``topic[1]``) or a
payload field; the time from a payload field (``time_unit`` s/ms/us/ns/auto, or ISO-8601
with an offset) or ``"received"`` (the receive time). Payload formats: see
:mod:`edgeflow.connectors.payloads`. Anything that does not decode becomes a dead-letter
record on the source's ``dead_letters`` stream (raw payload truncated, topic, reason,
receive time); nothing crashes the flow and nothing disappears without a count.

Delivery guarantee. QoS 1 with a persistent session (the default: fixed client id, clean
session off): a message is acknowledged to the broker only after two snapshots of the
flow's state that include it, so a crash never loses what the broker handed over - the
broker redelivers it. Redeliveries of messages already in the restored state are
recognised (MQTT keeps their packet id and sets DUP) and not counted twice. The broker
must allow enough unacknowledged messages in flight: rate x 2 x ``--snapshot-every``
(mosquitto: ``max_inflight_messages 0``). With ``ack="on_receive"`` messages are acked at
once (at-most-once across a crash, no in-flight limit). QoS 0 is at-most-once.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from edgeflow.connectors.base import Item, SourceContext, SourcePartition, SourceSpec
from edgeflow.connectors.connection_state import CONNECTIONS
from edgeflow.connectors.parse import BatchBuilder
from edgeflow.connectors.payloads import (
    FORMATS,
    Decoder,
    Limits,
    PayloadError,
    Schema,
    check_schema,
)
from edgeflow.connectors.process import die_with_parent
from edgeflow.errors import MissingExtraError
from edgeflow.timeutil import Duration

ACK_LAG_SNAPSHOTS = 2


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise MissingExtraError("the MQTT source", "mqtt", "paho-mqtt") from None
    return mqtt


class MqttSource(SourceSpec):
    kind = "mqtt"
    default_key = "topic[1]"
    default_time = "ts"

    def __init__(
        self,
        topics: str | Sequence[str],
        *,
        fields: Sequence[str],
        host: str = "127.0.0.1",
        port: int = 1883,
        qos: int = 1,
        format: str = "json",
        types: dict[str, str] | None = None,
        defaults: dict[str, float] | None = None,
        time_unit: str = "auto",
        csv_columns: Sequence[str] = (),
        client_id: str | None = None,
        persistent: bool = True,
        ack: str = "after_snapshot",
        username: str | None = None,
        password_env: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        keepalive: int = 30,
        max_payload: int = 256 * 1024,
        max_depth: int = 8,
        max_readings: int = 10_000,
        max_future: Duration | None = "1h",
        max_past: Duration | None = "365d",
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.fields = tuple(fields)
        self.host = host
        self.port = port
        self.qos = qos
        self.format = format
        self.types = dict(types or {})
        self.defaults = dict(defaults or {})
        self.time_unit = time_unit
        self.csv_columns = tuple(csv_columns)
        self.client_id = client_id
        self.persistent = persistent
        self.ack = ack
        self.username = username
        self.password_env = password_env
        self.tls = (tls_ca, tls_cert, tls_key)
        self.keepalive = keepalive
        self.limits_args = (max_payload, max_depth, max_readings, max_future, max_past)

    def limits(self) -> Limits:
        return Limits.of(*self.limits_args)

    def numeric_fields(self, key: str, time: str) -> tuple[str, ...]:
        return self.fields

    def problems(self) -> list[str]:
        out = []
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            out.append("give at least one topic filter, e.g. mqtt.source('plant/+/telemetry', ...)")
        for t in self.topics:
            if isinstance(t, str) and "#" in t[:-1]:
                out.append(f"topic filter {t!r}: '#' may only be the last level")
        if self.qos not in (0, 1):
            out.append(f"qos={self.qos!r}: use 0 or 1")
        if self.ack not in ("after_snapshot", "on_receive"):
            out.append(f"ack={self.ack!r}: use 'after_snapshot' or 'on_receive'")
        if self.format not in FORMATS:
            out.append(f"format={self.format!r}: use one of {', '.join(FORMATS)}")
        if self.password_env and not os.environ.get(self.password_env):
            out.append(f"password_env={self.password_env!r}: that environment variable is not set")
        for path in self.tls:
            if path and not os.path.isfile(path):
                out.append(f"TLS file {path!r} does not exist")
        try:
            self.limits()
        except ValueError as exc:
            out.append(str(exc))
        return out

    def check_context(self, key: str, time: str) -> list[str]:
        return check_schema(self.format, key, time, self.fields, self.types, self.csv_columns)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "topics": self.topics,
            "broker": f"{self.host}:{self.port}",
            "qos": self.qos,
            "format": self.format,
            "fields": list(self.fields),
        }

    def partitions(self) -> list[str]:
        return ["0"]  # one connection; a persistent session cannot be shared

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        return _MqttPartition(self, resume, ctx)


Message = tuple[str, bytes, int, int, bool, int]  # topic, payload, mid, qos, dup, received ns
Link = tuple[str, bool, str | None]  # ("link", connected, error)


class _Receiver:
    """Runs in its own process: only the MQTT client. Forwards raw messages in batches
    (``list[Message]``) and each connect or failed/lost connection (``Link``) over
    ``conn``, and sends the acks the flow asks for (``("ack", [mid, ...])``); ``("stop",)``
    ends it. A busy flow would otherwise starve paho's network thread of the GIL."""

    def __init__(self, spec: MqttSource, client_id: str, conn: Connection, parent: int) -> None:
        mqtt = _paho()
        from paho.mqtt.enums import CallbackAPIVersion

        self.spec = spec
        self.conn = conn
        self.parent = parent
        self.inbox: collections.deque[Message] = collections.deque()
        self.links: collections.deque[Link] = collections.deque()  # sent by the main loop
        self.up = False  # connected now
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not spec.persistent,
            protocol=mqtt.MQTTv311,
            manual_ack=spec.qos == 1 and spec.ack == "after_snapshot",
        )
        if spec.username:
            password = os.environ.get(spec.password_env) if spec.password_env else None
            self.client.username_pw_set(spec.username, password)
        ca, cert, key = spec.tls
        if ca or cert:
            self.client.tls_set(
                ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT
            )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.links.append(("link", False, f"the broker refused the connection: {reason}"))
            return
        client.subscribe([(t, self.spec.qos) for t in self.spec.topics])
        self.up = True
        self.links.append(("link", True, None))

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception is the reason
        exc = sys.exc_info()[1]
        self.links.append(("link", False, str(exc) if exc else "connection failed"))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not self.up:  # a refused connect: _on_connect reported why
            return
        self.up = False
        by_broker = getattr(flags, "is_disconnect_packet_from_server", False)
        why = f"the broker disconnected: {reason}" if by_broker else "connection lost"
        self.links.append(("link", False, why))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.inbox.append((msg.topic, msg.payload, msg.mid, msg.qos, msg.dup, time.time_ns()))

    def run(self) -> None:
        self.client.connect_async(self.spec.host, self.spec.port, self.spec.keepalive)
        self.client.loop_start()
        try:
            while os.getppid() == self.parent:
                while self.conn.poll(0):
                    cmd = self.conn.recv()
                    if cmd[0] == "stop":
                        return
                    for mid in cmd[1]:
                        self.client.ack(mid, 1)
                while self.links:
                    self.conn.send(self.links.popleft())
                if not self.inbox:
                    time.sleep(0.0005)
                    continue
                pop = self.inbox.popleft
                self.conn.send([pop() for _ in range(min(len(self.inbox), 20_000))])
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def _receiver_main(spec: MqttSource, client_id: str, conn: Connection, parent: int) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Receiver(spec, client_id, conn, parent).run()


class _MqttPartition(SourcePartition):
    """The flow's side: decodes what the receiver process hands over; acks after snapshots."""

    def __init__(self, spec: MqttSource, resume: Any, ctx: SourceContext) -> None:
        _paho()  # fail here, with the install hint, rather than in the child
        self.spec = spec
        self.ctx = ctx
        schema = Schema(
            ctx.key,
            ctx.time,
            spec.fields,
            spec.types,
            spec.defaults,
            spec.time_unit,
            spec.csv_columns,
        )
        self.decoder = Decoder(spec.format, schema, spec.limits())
        self.manual_ack = spec.qos == 1 and spec.ack == "after_snapshot"
        # packet ids received since the last snapshot, and those of the last ACK_LAG_SNAPSHOTS
        self.current: list[int] = []
        self.unacked: collections.deque[list[int]] = collections.deque()
        # already in the restored state
        self.replayed = set(resume.get("pending", ())) if resume else set()
        # dead letters' source is "topic#<origin>-<n>": the n-th message since the state began
        # (origin: ms when it began), one per message and the same when a crash replays it
        self.origin = int(resume.get("origin", 0)) if resume else 0
        self.origin = self.origin or time.time_ns() // 1_000_000
        self.seq = int(resume.get("seq", 0)) if resume else 0
        CONNECTIONS.open(ctx.step, "MQTT broker", f"{spec.host}:{spec.port}")
        mpctx = mp.get_context("spawn")  # no fork: the engine runs threads
        self.conn, child = mpctx.Pipe()
        client_id = spec.client_id or f"edgeflow-{ctx.flow}-{ctx.step}"
        self.proc = mpctx.Process(
            target=_receiver_main,
            args=(spec, client_id, child, os.getpid()),
            name="edgeflow-mqtt",
            daemon=True,
        )
        self.proc.start()
        child.close()

    def _receive(self) -> list[Message] | None:
        """The next batch of messages from the receiver, after any connection reports."""
        while self.conn.poll(0):
            got: list[Message] | Link = self.conn.recv()
            if isinstance(got, list):
                return got
            CONNECTIONS.report(self.ctx.step, got[1], got[2])
        return None

    def next_batch(self) -> list[Item]:
        msgs = self._receive()
        if msgs is None:
            if not self.proc.is_alive():
                raise RuntimeError(
                    f"the MQTT receiver process exited (code {self.proc.exitcode}); see its messages above"
                )
            return []
        out = BatchBuilder(self.spec.fields, self.ctx.step)
        decode = self.decoder.decode
        add_all = out.add_all
        for topic, payload, mid, qos, dup, received in msgs:
            self.bytes_read += len(payload)
            if qos == 1 and self.manual_ack:
                self.current.append(mid)
                if dup and mid in self.replayed:
                    self.replayed.discard(mid)  # a redelivery of what the restored state holds
                    continue
            self.seq += 1
            try:  # Decoder.decode turns every failure into a PayloadError
                add_all(decode(payload, topic, received))
            except PayloadError as exc:
                out.fail(f"{topic}#{self.origin}-{self.seq}", payload, str(exc))
        return out.items()

    def next_awake(self) -> int | None:
        return None

    def snapshot(self) -> Any:
        position = {"origin": self.origin, "seq": self.seq}
        if not self.manual_ack:
            return position
        self.unacked.append(self.current)
        self.current = []
        if len(self.unacked) > ACK_LAG_SNAPSHOTS:
            self.conn.send(("ack", self.unacked.popleft()))
        return {"pending": [m for epoch in self.unacked for m in epoch], **position}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def source(
    topics: str | Sequence[str],
    *,
    fields: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 1883,
    qos: int = 1,
    format: str = "json",
    **options: Any,
) -> MqttSource:
    """Readings from MQTT topic filters (``+``/``#``); see the module docstring for options."""
    return MqttSource(
        topics, fields=fields, host=host, port=port, qos=qos, format=format, **options
    )
