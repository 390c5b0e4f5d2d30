"""The connector contract checks of edgeflow.testing run on every built-in connector and on
the worked example (connectors/http_poll.py against a fake device): cut anywhere and crash
anywhere then resume equals an uninterrupted run (sources); every record id delivered after
crashes between a write and its snapshot (sinks). A connector that breaks the contract
fails the check with an error naming it."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgeflow.batch import RecordBatch
from edgeflow.connectors import files, http_poll, kafka, mqtt, stdio
from edgeflow.connectors.base import SinkContext, SinkPartition, SinkSpec, SourceContext, SourceSpec
from edgeflow.testing import MemorySource, check_sink, check_source
from tests.helpers import records
from tests.kafka_helpers import consume_all
from tests.mqtt_helpers import client, publish_all

SEC = 1_000_000_000
T0 = time.time_ns() // SEC * SEC - 3600 * SEC  # recent: sources refuse times a year old


def csv_lines(n: int, bad_every: int = 7) -> str:
    rows = ["device,ts,temp"]
    for i in range(n):
        temp = "hot" if i % bad_every == 3 else f"{i / 4}"
        rows.append(f"d{i % 3},{T0 + i * SEC // 10},{temp}")
    return "\n".join(rows) + "\n"


# -- sources --------------------------------------------------------------------------------
def test_file_source_passes_check_source_on_csv_and_jsonl_files_with_bad_lines(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.csv").write_text(csv_lines(120))
    (tmp_path / "b.jsonl").write_text(
        "".join(
            json.dumps({"device": f"d{i % 2}", "ts": T0 + i, "temp": i}) + "\n"
            if i % 9
            else "{not json\n"
            for i in range(90)
        )
    )
    result = check_source(
        lambda: files.source(str(tmp_path / "*"), time_unit="ns", batch_lines=7),
        key="device", time="ts", runs=20,
    )  # fmt: skip
    assert result.guarantee == "exactly-once"
    assert sorted(len(v) for v in result.reference.values()) == [90, 120]
    assert result.cuts > 0 and result.crashes > 0


def test_memory_source_of_the_test_kit_passes_check_source() -> None:
    readings = [{"device": f"d{i % 4}", "ts": T0 + i, "x": i} for i in range(50)]
    readings[10]["ts"] = "not a time"
    result = check_source(lambda: MemorySource(readings, batch_size=3), key="device", time="ts")
    assert len(result.reference["0"]) == 50


def test_kafka_source_passes_check_source(kafka_bootstrap: str) -> None:
    from kafka import KafkaProducer

    topic = f"contract-src-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(150):
        value = (
            b"{broken"
            if i % 11 == 5
            else orjson.dumps({"device": f"d{i % 3}", "ts": T0 + i, "temp": i})
        )
        producer.send(topic, value, partition=0)
    producer.flush(60)
    producer.close()
    result = check_source(
        lambda: kafka.source(topic, bootstrap=kafka_bootstrap, stop_at_end=True, fields=["temp"]),
        key="device", time="ts", fields=["temp"], runs=6, timeout=90, batch_max=10,
    )  # fmt: skip
    assert sum(len(v) for v in result.reference.values()) == 150


def subscribed(port: int, client_id: str, topics: list[str]) -> None:
    """Create the source's persistent session and wait for the broker's SUBACK, so that the
    broker queues what is published next for it."""
    c = client(port, client_id, clean=False)
    acked = threading.Event()
    c.on_subscribe = lambda *args: acked.set()
    c.subscribe([(t, 1) for t in topics])
    assert acked.wait(60), "no SUBACK from the broker in 60 s"
    c.disconnect()
    c.loop_stop()


def test_mqtt_source_passes_check_source(mqtt_port: int) -> None:
    n = 60

    def make() -> SourceSpec:
        topic = f"contract/{uuid.uuid4().hex[:8]}/t"
        return mqtt.source(
            topic, fields=["temp"], port=mqtt_port, client_id=f"c-{uuid.uuid4().hex[:8]}"
        )

    def feed(spec: SourceSpec, ctx: SourceContext) -> None:
        assert isinstance(spec, mqtt.MqttSource)
        subscribed(mqtt_port, spec.base_client_id(ctx.flow, ctx.step), spec.topics)
        msgs = [
            (
                spec.topics[0],
                b"{bad"
                if i % 13 == 4
                else orjson.dumps({"device": f"d{i % 2}", "ts": T0 + i, "temp": i}),
            )
            for i in range(n)
        ]
        publish_all(mqtt_port, msgs)

    def kill(part: Any) -> None:  # as kill -9: the receiver process dies without a word
        part.proc.kill()
        part.proc.join(10)

    result = check_source(
        make, key="device", time="ts", fields=["temp"], expected=n, feed=feed, crash=kill,
        runs=5, idle=1.0, timeout=60,
    )  # fmt: skip
    assert result.cuts > 0 and result.crashes > 0


class FakeDevice:
    """A device answering GET /readings?after=<seq> with its readings after seq (JSON)."""

    def __init__(self, readings: list[dict[str, Any]]) -> None:
        self.readings = readings
        device = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                after = int(query.get("after", ["0"])[0])
                body = orjson.dumps([r for r in device.readings if r["seq"] > after][:25])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/readings"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    readings = [{"seq": i, "device": f"pump-{i % 2}", "ts": T0 + i * SEC, "temp": 20 + i / 10}
                for i in range(1, 101)]  # fmt: skip
    readings[41]["temp"] = "warm"  # a bad reading: a dead letter, never a crash
    dev = FakeDevice(readings)
    yield dev
    dev.stop()


def test_http_poll_example_source_passes_check_source(device: FakeDevice) -> None:
    result = check_source(
        lambda: http_poll.source(device.url, fields=["temp"], every="20ms"),
        key="device", time="ts", expected=100, runs=8, idle=0.3,
    )  # fmt: skip
    ref = result.reference["0"]
    assert len(ref) == 100
    assert sum(1 for r in ref if r[0] == "dead_letter") == 1


# -- sinks ----------------------------------------------------------------------------------
def test_file_sink_passes_check_sink_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = check_sink(lambda: files.sink(str(out)), lambda spec: records(out), records=300)
    assert (result.guarantee, result.delivered, result.duplicates) == ("exactly-once", 300, 0)


def test_stdio_sink_passes_check_sink_at_least_once(capfd: pytest.CaptureFixture[str]) -> None:
    def read_back(spec: SinkSpec) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]

    capfd.readouterr()
    result = check_sink(stdio.sink, read_back, records=300)
    assert result.guarantee == "at-least-once"
    assert result.delivered >= 300


def test_kafka_sink_passes_check_sink(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"contract-sink-{uuid.uuid4().hex[:8]}"
    ctx = SinkContext("check", "sink", state_dir=tmp_path)

    def read_back(spec: SinkSpec) -> list[dict[str, Any]]:
        return [
            orjson.loads(m.value)
            for m in consume_all(kafka_bootstrap, topic, expect=200, timeout=90)
        ]

    def crash(part: Any) -> None:  # as kill -9: its forwarders stop without draining
        if part.forwarder is not None:
            part.forwarder.release(0)

    result = check_sink(
        lambda: kafka.sink(topic, bootstrap=kafka_bootstrap),
        read_back,
        records=200,
        ctx=ctx,
        crash=crash,
    )
    assert result.delivered >= 200


# -- the checks catch a broken connector ---------------------------------------------------
class _ReplayTwice(MemorySource):
    """A source whose snapshot is one batch behind: a resumed run reads a batch twice."""

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> Any:
        part = super().open(partition, resume, ctx)
        real = part.snapshot

        def snapshot() -> Any:
            return max(0, real() - self.batch_size)

        part.snapshot = snapshot  # type: ignore[method-assign]
        return part


def test_check_source_names_a_source_that_reads_twice_after_resuming() -> None:
    readings = [{"device": "d", "ts": T0 + i, "x": i} for i in range(20)]
    with pytest.raises(AssertionError, match=r"broken-source: check_source.*first difference"):
        check_source(lambda: _ReplayTwice(readings, batch_size=4), key="device", time="ts",
                     name="broken-source")  # fmt: skip


class _ForgetfulSink(SinkSpec):
    """Claims at-least-once but keeps records in memory until close(): a crash loses them."""

    def __init__(self, store: list[dict[str, Any]]) -> None:
        self.store = store

    def describe(self) -> dict[str, Any]:
        return {"kind": "forgetful"}

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        store = self.store

        class Part(SinkPartition):
            def __init__(self) -> None:
                self.buffer: list[dict[str, Any]] = []

            def write(self, batches: list[RecordBatch]) -> None:
                self.buffer += [r for b in batches for r in b.rows()]

            def snapshot(self) -> Any:
                return None

            def close(self) -> None:
                store.extend(self.buffer)

        return Part()


def test_check_sink_names_a_sink_that_loses_records_in_a_crash() -> None:
    store: list[dict[str, Any]] = []
    with pytest.raises(
        AssertionError,
        match=r"forgetful-sink: check_sink \(at-least-once under \d+ crashes\): \d+ of 200",
    ):
        check_sink(
            lambda: _ForgetfulSink(store), lambda spec: store, records=200, name="forgetful-sink"
        )


def test_mqtt_source_states_at_most_once_for_qos_0_or_acks_on_receive() -> None:
    from edgeflow.connectors import mqtt

    assert mqtt.source("a/b", fields=["temp"]).guarantee() == "exactly-once"
    assert mqtt.source("a/b", fields=["temp"], qos=0).guarantee() == "at-most-once"
    assert mqtt.source("a/b", fields=["temp"], ack="on_receive").guarantee() == "at-most-once"
