"""MQTT connection state against a real Mosquitto: a broker that is down at start fails the run
with one clear line; a broker killed mid-run gives one 'disconnected' line, one 'reconnected'
line after it is back, the data sent after the restart arrives, and the
``edgeflow_source_connected`` gauge follows the connection."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import orjson

from tests.helpers import edgeflow, popen_edgeflow, records, source_connected_gauge, write_flow
from tests.kafka_helpers import free_port
from tests.mqtt_helpers import Mosquitto, publish_all


def wait_for(cond: object, timeout: float = 90, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def mqtt_flow(path: Path, port: int, out: Path) -> Path:
    return write_flow(
        path,
        f"""
from edgeflow import Flow
from edgeflow.connectors import files, mqtt
flow = Flow("mq-conn")
r = flow.source(mqtt.source("dev/+/t", port={port}, fields=["temp"]), key="topic[1]", time="ts", name="devices")
r.to(files.sink({str(out)!r}))
""",
    )


def connected_gauge(port: int) -> str | None:
    return source_connected_gauge(port, "devices")


def test_broker_down_at_start_fails_the_run_with_one_clear_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    flow = mqtt_flow(tmp_path / "f.py", port, tmp_path / "out.jsonl")
    res = edgeflow("run", str(flow), "--for", "4s", "--live", check=False)
    err = res.stderr
    assert res.returncode == 1, err
    never = [ln for ln in err.splitlines() if "never reached the MQTT broker" in ln]
    assert len(never) == 1, err
    assert never[0].startswith("error: source 'devices' never reached the MQTT broker at ")
    assert f"127.0.0.1:{port}" in never[0] and "Connection refused" in never[0], never[0]
    assert "check that the broker is running" in never[0]
    # one line for the change of state, not one per retry (paho retries every 1-2 s here)
    assert err.count("cannot reach the MQTT broker") == 1, err
    assert "retrying MQTT broker" in err, "the live view shows the connection state"
    assert "Traceback" not in err


def test_broker_killed_mid_run_says_so_once_reconnects_and_data_after_restart_arrives(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path).up()
    out = tmp_path / "out.jsonl"
    flow = mqtt_flow(tmp_path / "f.py", broker.port, out)
    mport = free_port()
    proc = popen_edgeflow(
        "run", str(flow), "--snapshot-every", "300ms", "--metrics-port", str(mport), "--no-live"
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    now_ms = int(time.time() * 1000)

    def send(first: int, n: int) -> None:
        publish_all(
            broker.port,
            [
                (f"dev/d{i % 3}/t", orjson.dumps({"ts": now_ms + i, "temp": float(i)}))
                for i in range(first, first + n)
            ],
        )

    try:
        wait_for(lambda: any("connected to the MQTT broker" in ln for ln in err), what="connect")
        wait_for(lambda: connected_gauge(mport) == "1.0", what="gauge 1")
        send(0, 50)
        wait_for(lambda: len(records(out)) >= 50, what="the first 50 readings")
        broker.down()
        wait_for(lambda: any("disconnected from" in ln for ln in err), what="disconnected line")
        wait_for(lambda: connected_gauge(mport) == "0.0", what="gauge 0")
        broker.up()
        wait_for(lambda: any("reconnected to" in ln for ln in err), what="reconnected line")
        assert connected_gauge(mport) == "1.0"
        send(50, 50)
        wait_for(lambda: len(records(out)) >= 100, what="the readings sent after the restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        reader.join(10)
        broker.down()
    text = "".join(err)
    assert code == 0, text
    assert text.count("disconnected from the MQTT broker") == 1, text
    assert text.count("reconnected to the MQTT broker") == 1, text
    assert f"disconnected from the MQTT broker at 127.0.0.1:{broker.port} (connection lost)" in text
    assert "Traceback" not in text
    temps = sorted(r["temp"] for r in records(out))
    assert temps == [float(i) for i in range(100)], "every reading once, before and after"


def test_status_of_a_deployment_whose_broker_is_down_says_retrying_and_why(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    flow = mqtt_flow(tmp_path / "f.py", port, tmp_path / "out.jsonl")
    root = tmp_path / "deployments"
    edgeflow("deploy", str(flow), "--name", "mq", "--detach", "--root", str(root))
    try:
        wait_for(
            lambda: "retrying" in edgeflow("status", "mq", "--root", str(root)).stdout,
            what="status to show the connection state",
        )
        status = edgeflow("status", "mq", "--root", str(root)).stdout
        assert "mq: running" in status, status
        assert f"source devices: retrying MQTT broker 127.0.0.1:{port} since " in status, status
        assert "(last error: [Errno 111] Connection refused)" in status, status
    finally:
        edgeflow("stop", "mq", "--root", str(root))
    logs = edgeflow("logs", "mq", "--root", str(root)).stdout
    assert logs.count("cannot reach the MQTT broker") == 1, "one line per change, not per retry"
