"""MQTT over TLS, mTLS and username/password on a real Mosquitto TLS listener whose
certificates the test makes with openssl; each failure is one line naming its cause, and the
password appears in no log line, argv or ``inspect --json``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import edgeflow, lines, popen_edgeflow, write_flow
from tests.kafka_helpers import free_port
from tests.mqtt_helpers import Mosquitto, make_passwd, make_tls

PASSWORD = "pw-7f3a9c1e-not-in-logs"
USER = "node-1"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Path]]:
    work = tmp_path_factory.mktemp("mqtt-tls")
    tls = make_tls(work / "tls")
    broker = Mosquitto(work, tls, make_passwd(work / "passwd", USER, PASSWORD)).up()
    try:
        yield broker, tls
    finally:
        broker.down()


def flow_file(tmp_path: Path, port: int, options: str) -> tuple[Path, Path]:
    out = tmp_path / "out.jsonl"
    flow = write_flow(
        tmp_path / "flow.py",
        "from edgeflow import Flow\n"
        "from edgeflow.connectors import files, mqtt\n"
        "flow = Flow('tls-node')\n"
        f"r = flow.source(mqtt.source('plant/+/t', fields=['v'], port={port},"
        f" client_id={tmp_path.name!r}, {options}), key='topic[1]', time='received',"
        " name='plant')\n"
        f"r.to(files.sink({str(out)!r}))\n",
    )
    return flow, out


def env() -> dict[str, str]:
    return {**os.environ, "MQTT_PASSWORD": PASSWORD, "MQTT_WRONG": "not-the-password"}


def publish(port: int, tls: Path, n: int, **auth: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=str(tls / "ca.crt"), certfile=auth.get("cert"), keyfile=auth.get("key"))
    if auth.get("username"):
        c.username_pw_set(auth["username"], auth["password"])
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(f"plant/m{i % 3}/t", json.dumps({"v": i}), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()
    c.disconnect()
    c.loop_stop()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def argv_of_all_processes() -> str:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("latin1"))
    return "\n".join(out)


def receive(tmp_path: Path, port: int, options: str, tls: Path, **auth: Any) -> str:
    """Run the flow in the background, wait until /ready, publish 30 readings over TLS, wait
    for all of them in the output; returns the run's stderr (after SIGTERM)."""
    flow, out = flow_file(tmp_path, port, options)
    mport = free_port()
    proc = popen_edgeflow("run", str(flow), "--metrics-port", str(mport), "--no-live", env=env())
    try:
        deadline = time.monotonic() + 90
        while not ready(mport):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        assert PASSWORD not in argv_of_all_processes()
        publish(port, tls, 30, **auth)
        while not out.exists() or len(lines(out)) < 30:
            assert time.monotonic() < deadline, "the readings did not arrive"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert len(lines(out)) == 30
    assert "Traceback" not in err
    return err


def test_tls_with_username_and_password_receives_and_never_shows_the_password(
    tmp_path: Path, tls_broker: tuple[Mosquitto, Path]
) -> None:
    broker, tls = tls_broker
    options = f"tls_ca={str(tls / 'ca.crt')!r}, username={USER!r}, password_env='MQTT_PASSWORD'"
    err = receive(tmp_path, broker.tls_port, options, tls, username=USER, password=PASSWORD)
    assert f"connected to the MQTT broker at 127.0.0.1:{broker.tls_port}" in err, err
    assert PASSWORD not in err
    flow, _ = flow_file(tmp_path, broker.tls_port, options)
    shown = edgeflow("inspect", str(flow), "--json", env=env()).stdout
    assert "plant/+/t" in shown and PASSWORD not in shown


def test_mtls_with_a_client_certificate_receives(
    tmp_path: Path, tls_broker: tuple[Mosquitto, Path]
) -> None:
    broker, tls = tls_broker
    cert, key = str(tls / "client.crt"), str(tls / "client.key")
    options = f"tls_ca={str(tls / 'ca.crt')!r}, tls_cert={cert!r}, tls_key={key!r}"
    err = receive(tmp_path, broker.mtls_port, options, tls, cert=cert, key=key)
    assert f"connected to the MQTT broker at 127.0.0.1:{broker.mtls_port}" in err, err


FAILURES = {
    # case: (listener, options, what the one error line must say)
    "wrong password": (
        "tls",
        "tls_ca={ca!r}, username='node-1', password_env='MQTT_WRONG'",
        "the broker refused username 'node-1' with the password from $MQTT_WRONG",
    ),
    "untrusted CA": (
        "tls",
        "tls_ca={other!r}, username='node-1', password_env='MQTT_PASSWORD'",
        "TLS: untrusted CA: the broker's certificate is not signed by the CA in tls_ca={other!r}",
    ),
    "no client certificate": (
        "mtls",
        "tls_ca={ca!r}",
        "TLS: the broker requires a client certificate and none was given",
    ),
    "plain client on a TLS listener": (
        "tls",
        "username='node-1', password_env='MQTT_PASSWORD'",
        "is it a TLS listener (give tls_ca=)?",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failed_connection_is_one_line_naming_its_cause(
    case: str, tmp_path: Path, tls_broker: tuple[Mosquitto, Path]
) -> None:
    broker, tls = tls_broker
    listener, options, expected = FAILURES[case]
    names = {"ca": str(tls / "ca.crt"), "other": str(tls / "other-ca.crt")}
    port = broker.tls_port if listener == "tls" else broker.mtls_port
    flow, out = flow_file(tmp_path, port, options.format(**names))
    res = edgeflow("run", str(flow), "--for", "4s", "--no-live", check=False, env=env())
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1, res.stderr
    assert expected.format(**names) in errors[0], errors[0]
    retrying = [line for line in res.stderr.splitlines() if "retrying" in line]
    assert len(retrying) == 1 and expected.format(**names) in retrying[0], res.stderr
    assert PASSWORD not in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() or not lines(out)
