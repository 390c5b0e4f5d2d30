"""A real Kafka broker with TLS, mTLS and SASL_SSL (SCRAM) listeners for tests, made by
``KAFKA_SECURE=1 scripts/kafka.sh`` on free ports in its own directory, and a reading consumer
that speaks those protocols."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import service_script
from tests.kafka_helpers import consume_all, free_port


class SecureKafkaBroker:
    """One single-node KRaft broker with listeners SSL (server auth), MTLS (client certificates
    required) and SASL_SSL (SCRAM-SHA-256/512, user ``edge``); certificates in ``certs``."""

    user = "edge"

    def __init__(self, workdir: Path) -> None:
        self.ports = {
            name: free_port() for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_SSL_PORT",
                                           "KAFKA_MTLS_PORT", "KAFKA_SASL_PORT")
        }  # fmt: skip
        self.dir = workdir / f"kafka-secure-{self.ports['KAFKA_PORT']}"
        self.certs = self.dir / "certs"

    def _script(self, action: str) -> None:
        env = {k: str(v) for k, v in self.ports.items()}
        service_script("kafka.sh", action, {**env, "KAFKA_SECURE": "1", "KAFKA_DIR": str(self.dir)})

    def up(self) -> SecureKafkaBroker:
        try:
            self._script("up")
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return self

    def down(self) -> None:
        self._script("down")

    def endpoint(self, listener: str) -> str:
        """``ssl``, ``mtls`` or ``sasl``: that listener's host:port."""
        return f"127.0.0.1:{self.ports[f'KAFKA_{listener.upper()}_PORT']}"

    @property
    def password(self) -> str:
        return (self.certs / "scram-password").read_text()

    def cert(self, name: str) -> str:
        """The path of ``ca.pem``, ``other-ca.pem``, ``client.pem``, ``client.key``..."""
        return str(self.certs / name)

    def client(self, listener: str) -> dict[str, Any]:
        """kafka-python options of a client allowed on ``listener``."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.endpoint(listener),
            "ssl_cafile": self.cert("ca.pem"),
        }
        if listener == "ssl":
            cfg["security_protocol"] = "SSL"
        elif listener == "mtls":
            cfg.update(
                security_protocol="SSL",
                ssl_certfile=self.cert("client.pem"),
                ssl_keyfile=self.cert("client.key"),
            )
        else:
            cfg.update(
                security_protocol="SASL_SSL",
                sasl_mechanism="SCRAM-SHA-512",
                sasl_plain_username=self.user,
                sasl_plain_password=self.password,
            )
        return cfg


@pytest.fixture(scope="module", name="secure_kafka")
def secure_kafka_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafkaBroker]:
    """``secure_kafka``: a secured broker for one test module (import this function into the
    module), stopped (and its directory removed) afterwards."""
    broker = SecureKafkaBroker(tmp_path_factory.mktemp("secure-kafka")).up()
    try:
        yield broker
    finally:
        broker.down()


def consume_secure(
    config: dict[str, Any], topic: str, expect: int, timeout: float = 60
) -> list[Any]:
    """The messages of ``topic`` from the beginning over a secured connection (``config`` as
    :meth:`SecureKafkaBroker.client` gives it), waiting until ``expect`` arrived or ``timeout``."""
    options = dict(config)
    return consume_all(options.pop("bootstrap_servers"), topic, expect, timeout, **options)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc), e.g. a flow and its forwarder processes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cmdlines(pids: list[int]) -> list[str]:
    """The command line of each process still running, arguments joined by spaces."""
    out = []
    for p in pids:
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out
