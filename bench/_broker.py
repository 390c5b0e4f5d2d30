"""A Kafka broker for a bench: KAFKA_BOOTSTRAP when set, else scripts/kafka.sh on free ports,
stopped and deleted when the ``with`` block ends (also on an error or Ctrl-C)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """``with Broker() as bootstrap: ...`` gives ``host:port`` of a running broker."""

    def __init__(self) -> None:
        self.env: dict[str, str] | None = None
        self.dir: str | None = None

    def __enter__(self) -> str:
        given = os.environ.get("KAFKA_BOOTSTRAP")
        if given:
            return given
        port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-kafka-")
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_DIR": self.dir,
        }
        res = subprocess.run(
            [str(ROOT / "scripts" / "kafka.sh"), "up"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            self._down()
            raise SystemExit(f"could not start a Kafka broker (scripts/kafka.sh up):\n{res.stderr}")
        return f"127.0.0.1:{port}"

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._down()

    def _down(self) -> None:
        if self.env is not None:
            subprocess.run(
                [str(ROOT / "scripts" / "kafka.sh"), "down"],
                env=self.env,
                capture_output=True,
                check=False,
            )
            self.env = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
