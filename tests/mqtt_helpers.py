"""A real Mosquitto broker for tests (scripts/mosquitto.sh on a free port) and paho helpers."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import service_script
from tests.kafka_helpers import free_port


class Mosquitto:
    """A broker with a plain listener on ``port``; with ``tls_dir`` (see :func:`make_tls`)
    also a TLS listener on ``tls_port`` (clients give a username/password when ``passwd_file``
    is set) and an mTLS listener on ``mtls_port`` (requires a client certificate)."""

    def __init__(
        self, workdir: Path, tls_dir: Path | None = None, passwd_file: Path | None = None
    ) -> None:
        self.port = free_port()
        self.dir = workdir / f"mosquitto-{self.port}"
        self.env = {"MQTT_PORT": str(self.port), "MQTT_DIR": str(self.dir)}
        self.tls_port = self.mtls_port = 0
        if tls_dir is not None:
            self.tls_port, self.mtls_port = free_port(), free_port()
            self.env.update(
                MQTT_TLS_DIR=str(tls_dir),
                MQTT_TLS_PORT=str(self.tls_port),
                MQTT_MTLS_PORT=str(self.mtls_port),
            )
        if passwd_file is not None:
            self.env["MQTT_PASSWD_FILE"] = str(passwd_file)

    def _script(self, action: str) -> None:
        service_script("mosquitto.sh", action, self.env)

    def up(self) -> Mosquitto:
        self._script("up")
        return self

    def down(self) -> None:
        self._script("down")


def client(port: int, client_id: str = "", clean: bool = True):  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def prime_session(port: int, client_id: str, topics: list[str]) -> None:
    """Create the flow's persistent session and subscriptions, so the broker queues for it."""
    c = client(port, client_id, clean=False)
    c.subscribe([(t, 1) for t in topics])[1]
    import time

    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


def publish_all(port: int, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    c = client(port)
    infos = [c.publish(topic, payload, qos=qos) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()
    c.disconnect()
    c.loop_stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(dir: Path) -> Path:
    """Certificates made with openssl in ``dir``: ``ca.crt``/``ca.key`` (the test CA),
    ``server.crt``/``server.key`` for 127.0.0.1 and localhost and ``client.crt``/``client.key``
    signed by it, and ``other-ca.crt`` (a CA that signed neither)."""
    dir.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN=edgeflow test {ca}",
            cwd=dir,
        )  # fmt: skip
    ext = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, extensions in ext.items():
        (dir / f"{name}.ext").write_text(extensions)
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={'localhost' if name == 'server' else 'node-1'}",
            cwd=dir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
            cwd=dir,
        )  # fmt: skip
    for key in dir.glob("*.key"):  # mosquitto may read them as another user
        key.chmod(0o644)
    return dir


def make_passwd(path: Path, username: str, password: str) -> Path:
    """A mosquitto password file with one user."""
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(path), username, password],
        check=True,
        capture_output=True,
    )
    return path
