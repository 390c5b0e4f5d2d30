"""Kafka source connection faults against a real broker: a broker unreachable at start ends a
``--for`` run on time with one line per change of state and one clear error naming the broker
(exit 1, no traceback); a broker stopped mid-run gives one 'disconnected' line and one
'reconnected' line, the ``edgeflow_source_connected`` gauge follows, and the messages sent
after the restart arrive (hostile report #4 and #10)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import orjson

from tests.helpers import edgeflow, popen_edgeflow, records, source_connected_gauge, write_flow
from tests.kafka_helpers import KafkaBroker, free_port


def wait_for(cond: object, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def source_flow(path: Path, topic: str, bootstrap: str, out: Path) -> Path:
    return write_flow(
        path,
        f"""
from edgeflow import Flow
from edgeflow.connectors import files, kafka
flow = Flow("k-conn")
r = flow.source(kafka.source({topic!r}, bootstrap={bootstrap!r}, fields=["v"]), key="device",
                time="ts", name="readings")
r.to(files.sink({str(out)!r}))
""",
    )


def connected_gauge(port: int) -> str | None:
    return source_connected_gauge(port, "readings")


def produce(bootstrap: str, topic: str, first: int, n: int) -> None:
    from kafka import KafkaProducer

    now_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i in range(first, first + n):
            body = {"device": f"d{i % 3}", "ts": now_ms + i, "v": float(i)}
            producer.send(topic, orjson.dumps(body))
        producer.flush(60)
    finally:
        producer.close(10)


def test_a_broker_unreachable_at_start_ends_the_for_run_on_time_with_one_clear_error(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    flow = source_flow(tmp_path / "f.py", "nothing", f"127.0.0.1:{port}", tmp_path / "o.jsonl")
    t0 = time.monotonic()
    res = edgeflow("run", str(flow), "--for", "6s", check=False, timeout=120)
    took = time.monotonic() - t0
    err = res.stderr
    assert res.returncode == 1, err
    assert "Traceback" not in err and "KafkaTimeoutError" not in err, err
    assert took < 20, f"a --for 6s run took {took:.1f}s"
    # one line for the change of state, not one per retry; kafka-python's own lines are not shown
    assert err.count("cannot reach the Kafka broker") == 1, err
    assert "kafka." not in err.replace("kafka.source(", ""), err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert f"never reached the Kafka broker at 127.0.0.1:{port}" in errors[0], errors
    assert "ECONNREFUSED" in errors[0] and "check that the broker is running" in errors[0]
    assert "bootstrap=" in errors[0]


def test_a_broker_stopped_mid_run_says_so_once_reconnects_and_later_messages_arrive(
    tmp_path: Path, own_broker: KafkaBroker
) -> None:
    topic = f"kconn-{uuid.uuid4().hex[:8]}"
    produce(own_broker.bootstrap, topic, 0, 30)  # creates the topic
    out = tmp_path / "out.jsonl"
    flow = source_flow(tmp_path / "f.py", topic, own_broker.bootstrap, out)
    mport = free_port()
    proc = popen_edgeflow("run", str(flow), "--metrics-port", str(mport), "--no-live")
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: len(records(out)) >= 30, what="the first 30 readings")
        wait_for(lambda: connected_gauge(mport) == "1.0", what="gauge 1")
        own_broker.stop()
        wait_for(lambda: any("disconnected from" in ln for ln in err), what="disconnected line")
        wait_for(lambda: connected_gauge(mport) == "0.0", what="gauge 0")
        own_broker.start()
        wait_for(lambda: any("reconnected to" in ln for ln in err), what="reconnected line")
        assert connected_gauge(mport) == "1.0"
        produce(own_broker.bootstrap, topic, 30, 30)
        wait_for(lambda: len(records(out)) >= 60, what="the messages sent after the restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(10)
    text = "".join(err)
    assert code == 0, text
    where = f"the Kafka broker at {own_broker.bootstrap}"
    assert text.count(f"disconnected from {where}") == 1, text
    assert text.count(f"reconnected to {where}") == 1, text
    assert "Traceback" not in text, text
    assert sorted(r["v"] for r in records(out)) == [float(i) for i in range(60)]
