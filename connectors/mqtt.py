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
recognised (MQTT keeps their packet id and sets DUP) and not counted twice; a message's id
stays in the snapshot taken when its ack is sent, in case a crash loses the ack. The broker
must allow enough unacknowledged messages in flight: rate x 2 x ``--snapshot-every``
(mosquitto: ``max_inflight_messages 0``). With ``ack="on_receive"`` messages are acked at
once (at-most-once across a crash, no in-flight limit). QoS 0 is at-most-once.

Scale-out. ``receivers=N`` (default 1, at most :data:`MAX_RECEIVERS`) runs N receiver
processes, each its own broker connection and persistent session (client ids ``<id>``,
``<id>-r1``, ...), subscribed through one shared subscription ``$share/<id>/<filter>``: the
broker hands each message to exactly one receiver. Each receiver is a source partition with
the guarantee above (its own acks after snapshots, its own redelivery bookkeeping). Order:
one receiver keeps each topic's order; several interleave a topic's messages, so readings
of a key may arrive out of order by up to the receivers' lag (windows take them within
``lateness``). A persistent receiver drops the subscription of the other mode (plain or
shared) that its session may still hold from a run with another ``receivers``.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, cast

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
from edgeflow.ops.args import Arg, check
from edgeflow.timeutil import Duration

ACK_LAG_SNAPSHOTS = 2
#: how long a partition that found nothing waits before it looks again (instead of spinning
#: on the CPU its receivers need)
IDLE_WAIT_NS = 1_000_000
#: the most receiver processes (broker connections) one MQTT source may run
MAX_RECEIVERS = 16
ARGS = (
    Arg("receivers", "int", 1, MAX_RECEIVERS, hint="receiver processes, each its own connection"),
)
#: bytes read from the socket at a time (paho reads each packet in 3 or more reads)
READ_CHUNK = 256 * 1024


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
        receivers: int = 1,
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
        self.receivers = receivers

    def receiver_count(self) -> int:
        """How many receivers run (1 while ``receivers`` is not valid: validation says why)."""
        n = self.receivers
        ok = isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_RECEIVERS
        return n if ok else 1

    def base_client_id(self, flow: str, step: str) -> str:
        return self.client_id or f"edgeflow-{flow}-{step}"

    def filters(self, base_client_id: str) -> tuple[list[str], list[str]]:
        """The topic filters to subscribe, and those a persistent session of the other mode
        (plain vs shared) may still hold, to unsubscribe."""
        group = re.sub(r"[/+#]", "_", base_client_id)
        shared = [t if t.startswith("$share/") else f"$share/{group}/{t}" for t in self.topics]
        plain = list(self.topics)
        if self.receiver_count() > 1:
            return shared, [t for t in plain if t not in shared]
        return plain, [t for t in shared if t not in plain]

    def limits(self) -> Limits:
        return Limits.of(*self.limits_args)

    def numeric_fields(self, key: str, time: str) -> tuple[str, ...]:
        return self.fields

    def guarantee(self) -> str:
        """Exactly-once with QoS 1 and acks after the snapshot (the default); QoS 0 or
        ``ack="on_receive"`` is at-most-once across a crash (see the module docstring)."""
        if self.qos == 0 or self.ack == "on_receive":
            return "at-most-once"
        return "exactly-once"

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
        out += check("mqtt.source", ARGS, {"receivers": self.receivers})
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
            "receivers": self.receiver_count(),
        }

    def partitions(self) -> list[str]:
        """One partition per receiver (a persistent session cannot be shared)."""
        return [str(i) for i in range(self.receiver_count())]

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        return _MqttPartition(self, int(partition), resume, ctx)


Message = tuple[str, bytes, int, int, bool, int]  # topic, payload, mid, qos, dup, received ns
Link = tuple[str, bool, str | None]  # ("link", connected, error)
#: ("batch", items, packet ids to ack, dead-letter sequence after them, payload bytes)
Decoded = tuple[str, list[Item], list[int], int, int]


def _schema(spec: MqttSource, ctx: SourceContext) -> Schema:
    return Schema(
        ctx.key, ctx.time, spec.fields, spec.types, spec.defaults, spec.time_unit, spec.csv_columns
    )


class _Decoding:
    """Runs in the receiver process, so that N receivers decode on N cores: turns raw
    messages into a batch of readings and dead letters. Skips redeliveries of messages the
    restored state already holds (MQTT keeps their packet id and sets DUP) and numbers the
    messages for the dead letters' ids, continuing the restored sequence."""

    def __init__(
        self, spec: MqttSource, ctx: SourceContext, replayed: set[int], seq: int, dl_prefix: str
    ) -> None:
        self.fields = spec.fields
        self.step = ctx.step
        self.decoder = Decoder(spec.format, _schema(spec, ctx), spec.limits())
        self.manual_ack = spec.qos == 1 and spec.ack == "after_snapshot"
        self.replayed = replayed
        self.seq = seq
        self.dl_prefix = dl_prefix

    def decode(self, msgs: list[Message]) -> Decoded:
        out = BatchBuilder(self.fields, self.step)
        decode = self.decoder.decode
        add_all = out.add_all
        mids: list[int] = []
        nbytes = 0
        for topic, payload, mid, qos, dup, received in msgs:
            nbytes += len(payload)
            if qos == 1 and self.manual_ack:
                mids.append(mid)
                if self.replayed and mid in self.replayed:
                    self.replayed.discard(mid)
                    if dup:  # a redelivery of what the restored state holds
                        continue
                    # a new message under that id: the one restored was acked and is done
            self.seq += 1
            try:  # Decoder.decode turns every failure into a PayloadError
                add_all(decode(payload, topic, received))
            except PayloadError as exc:
                out.fail(f"{topic}#{self.dl_prefix}{self.seq}", payload, str(exc))
        return ("batch", out.items(), mids, self.seq, nbytes)


#: what a connection closed by the broker before it answered the connect is reported as
CLOSED_DURING_CONNECT = "the broker closed the connection before accepting it"


def _tls_detail(error: str) -> str:
    """``[SSL: CODE] text (_ssl.c:1006)`` -> ``text``."""
    text = re.sub(r"^\[[A-Z_ ]+: [A-Z0-9_]+\]\s*", "", error)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text).strip() or error


def failure_cause(error: str, spec: MqttSource) -> str:
    """One phrase naming why a connection to the broker failed and what to change, from
    paho's error (an ``ssl`` error, a refused connect's reason code, a closed connection).
    It names files and the username, never the password."""
    ca, cert, _ = spec.tls
    low = error.lower()
    if error.startswith("refused: "):
        reason = error.removeprefix("refused: ")
        if "not authori" in low or "user name or password" in low:
            if not spec.username:
                return (
                    f"the broker requires a username and password (it refused: {reason}); "
                    "give username= and password_env="
                )
            src = f" from ${spec.password_env}" if spec.password_env else " (none given)"
            return (
                f"the broker refused username {spec.username!r} with the password{src} "
                f"({reason}): check the username and password"
            )
        return f"the broker refused the connection: {reason}"
    detail = _tls_detail(error)
    if "certificate_verify_failed" in low:
        if "mismatch" in low:
            return (
                f"TLS: the broker's certificate is not for host {spec.host!r} ({detail}); "
                "connect by a name or address its certificate lists"
            )
        if "expired" in low:
            return f"TLS: the broker's certificate has expired ({detail})"
        if ca:
            return (
                f"TLS: untrusted CA: the broker's certificate is not signed by the CA in "
                f"tls_ca={ca!r} ({detail}); give the CA that signed it"
            )
        return (
            f"TLS: the broker's certificate is not signed by a CA this machine trusts "
            f"({detail}); give its CA with tls_ca="
        )
    if "certificate_required" in low or "certificate required" in low:
        if not cert:
            return (
                "TLS: the broker requires a client certificate and none was given "
                f"({detail}); give tls_cert= and tls_key="
            )
        return f"TLS: the broker did not accept the client certificate tls_cert={cert!r} ({detail})"
    if any(k in low for k in ("unknown_ca", "unknown ca", "bad_certificate", "bad certificate")):
        return (
            f"TLS: the broker does not trust the client certificate tls_cert={cert!r} "
            f"({detail}); it must be signed by a CA the broker trusts"
        )
    if "wrong_version_number" in low or "record_layer_failure" in low:
        return (
            f"TLS: the broker does not speak TLS on port {spec.port} ({detail}); a plain "
            "listener? drop tls_ca=/tls_cert= or use its TLS port"
        )
    if error == CLOSED_DURING_CONNECT or "reset by peer" in low:
        if not (ca or cert):
            return f"{error}: is it a TLS listener (give tls_ca=)?"
        return (
            f"{error}: is it a plain listener (no TLS on port {spec.port}), or one that "
            "requires a client certificate (tls_cert=, tls_key=)?"
        )
    return detail if "ssl" in low else error


def _buffered_client(mqtt: Any) -> Any:
    """paho's ``Client`` reading the socket :data:`READ_CHUNK` bytes at a time. paho reads
    each packet with one ``recv`` for the command byte, one per length byte and one for the
    rest, and goes back to ``select`` after each packet: for small messages that is most of
    a receiver's time. Same packets, same order, same callbacks."""

    class BufferedClient(mqtt.Client):  # type: ignore[misc]
        _rbuf = b""
        _rpos = 0
        _rsock: Any = None  # the socket the buffered bytes came from
        #: the last error reading the socket (paho only logs it): a TLS alert from the broker
        sock_error: str | None = None

        def _sock_recv(self, bufsize: int) -> bytes:
            if self._rsock is not self._sock:  # a new connection: nothing buffered is its
                self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
            if self._rpos >= len(self._rbuf):
                try:
                    data: bytes = super()._sock_recv(max(bufsize, READ_CHUNK))
                except BlockingIOError:
                    raise
                except OSError as exc:
                    self.sock_error = str(exc) or type(exc).__name__
                    raise
                if len(data) <= bufsize:
                    return data
                self._rbuf, self._rpos = data, 0
            out = self._rbuf[self._rpos : self._rpos + bufsize]
            self._rpos += len(out)
            return out

        def loop_read(self, max_packets: int = 1) -> Any:
            rc = super().loop_read(max_packets)
            while rc == 0 and self._rsock is self._sock and self._rpos < len(self._rbuf):
                rc = super().loop_read(max_packets)  # what is buffered: select cannot see it
            return rc

    return BufferedClient


class _Receiver:
    """Runs in its own process: the MQTT client and the decoding. Forwards decoded batches
    (``Decoded``) and each connect or failed/lost connection (``Link``) over ``conn``, and
    sends the acks the flow asks for (``("ack", [mid, ...])``); ``("stop",)`` ends it. A busy
    flow would otherwise starve paho's network thread of the GIL."""

    def __init__(
        self,
        spec: MqttSource,
        client_id: str,
        filters: tuple[list[str], list[str]],
        decoding: _Decoding,
        conn: Connection,
        parent: int,
    ) -> None:
        mqtt = _paho()
        from paho.mqtt.enums import CallbackAPIVersion

        self.spec = spec
        self.decoding = decoding
        self.subscribe, self.stale = filters
        self.conn = conn
        self.parent = parent
        self.inbox: collections.deque[Message] = collections.deque()
        self.links: collections.deque[Link] = collections.deque()  # sent by the main loop
        self.up = False  # connected now
        self.refused = False  # the broker refused the last connect (_on_connect said why)
        self.client = _buffered_client(mqtt)(
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
            self.refused = True
            self.links.append(("link", False, failure_cause(f"refused: {reason}", self.spec)))
            return
        client.sock_error = None  # an earlier connection's
        client.subscribe([(t, self.spec.qos) for t in self.subscribe])
        if self.spec.persistent and self.stale:  # new subscription first: never a gap
            client.unsubscribe(self.stale)
        self.up = True
        self.links.append(("link", True, None))

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception is the reason
        exc = sys.exc_info()[1]
        why = str(exc) or type(exc).__name__ if exc else "connection failed"
        self.links.append(("link", False, failure_cause(why, self.spec)))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not self.up:
            if self.refused:  # _on_connect reported why
                self.refused = False
                return
            # closed before the broker accepted: a TLS alert (a client certificate it
            # requires) or a TLS listener that a plain client reached
            why, client.sock_error = client.sock_error or CLOSED_DURING_CONNECT, None
            self.links.append(("link", False, failure_cause(why, self.spec)))
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
                msgs = [pop() for _ in range(min(len(self.inbox), 20_000))]
                self.conn.send(self.decoding.decode(msgs))
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def _receiver_main(
    spec: MqttSource,
    client_id: str,
    filters: tuple[list[str], list[str]],
    decoding: tuple[SourceContext, set[int], int, str],
    conn: Connection,
    parent: int,
) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Receiver(spec, client_id, filters, _Decoding(spec, *decoding), conn, parent).run()


class _MqttPartition(SourcePartition):
    """The flow's side of receiver ``index``: takes the batches its process decoded; acks
    after snapshots. Every receiver has its own partition, session, packet ids and position."""

    def __init__(self, spec: MqttSource, index: int, resume: Any, ctx: SourceContext) -> None:
        _paho()  # fail here, with the install hint, rather than in the child
        self.spec = spec
        self.ctx = ctx
        self.member = str(index)
        self.idle = False  # the last look found nothing
        Decoder(spec.format, _schema(spec, ctx), spec.limits())  # fail here, not in the child
        self.manual_ack = spec.qos == 1 and spec.ack == "after_snapshot"
        # packet ids received since the last snapshot, and those of the last ACK_LAG_SNAPSHOTS
        self.current: list[int] = []
        self.unacked: collections.deque[list[int]] = collections.deque()
        # already in the restored state (the receiver skips their redeliveries)
        replayed = set(resume.get("pending", ())) if resume else set()
        # dead letters' source is "topic#<origin>-<n>": the n-th message since the state began
        # (origin: ms when it began), one per message and the same when a crash replays it
        self.origin = int(resume.get("origin", 0)) if resume else 0
        self.origin = self.origin or time.time_ns() // 1_000_000
        self.seq = int(resume.get("seq", 0)) if resume else 0
        # receivers after the first mark their dead letters' ids (they count on their own)
        dl_prefix = f"{self.origin}-" if index == 0 else f"{self.origin}-r{index}-"
        self.who = "the MQTT receiver process" if index == 0 else f"MQTT receiver {index}"
        CONNECTIONS.open(ctx.step, "MQTT broker", f"{spec.host}:{spec.port}", self.member)
        mpctx = mp.get_context("spawn")  # no fork: the engine runs threads
        self.conn, child = mpctx.Pipe()
        base = spec.base_client_id(ctx.flow, ctx.step)
        client_id = base if index == 0 else f"{base}-r{index}"
        self.proc = mpctx.Process(
            target=_receiver_main,
            args=(
                spec,
                client_id,
                spec.filters(base),
                (ctx, replayed, self.seq, dl_prefix),
                child,
                os.getpid(),
            ),
            name=f"edgeflow-mqtt-{index}",
            daemon=True,
        )
        self.proc.start()
        child.close()

    def _receive(self) -> Decoded | None:
        """The next decoded batch from the receiver, after any connection reports."""
        while self.conn.poll(0):
            got: Any = self.conn.recv()  # Decoded | Link
            if got[0] == "batch":
                return cast(Decoded, got)
            CONNECTIONS.report(self.ctx.step, got[1], got[2], self.member)
        return None

    def next_batch(self) -> list[Item]:
        got = self._receive()
        self.idle = got is None
        if got is None:
            if not self.proc.is_alive():
                raise RuntimeError(
                    f"{self.who} exited (code {self.proc.exitcode}); see its messages above"
                )
            return []
        _, items, mids, self.seq, nbytes = got
        self.current += mids
        self.bytes_read += nbytes
        return items

    def next_awake(self) -> int | None:
        return time.time_ns() + IDLE_WAIT_NS if self.idle else None

    def snapshot(self) -> Any:
        position = {"origin": self.origin, "seq": self.seq}
        if not self.manual_ack:
            return position
        self.unacked.append(self.current)
        self.current = []
        acking: list[int] = []
        if len(self.unacked) > ACK_LAG_SNAPSHOTS:
            acking = self.unacked.popleft()
            self.conn.send(("ack", acking))
        # the acks just sent may not reach the broker before a crash right after this
        # snapshot is saved: keep their ids too, so that a redelivery is recognised
        pending = acking + [m for epoch in self.unacked for m in epoch]
        return {"pending": pending, **position}

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
