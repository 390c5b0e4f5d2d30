"""The control topic: nodes take new bundle versions from Kafka.

Records: key = the deployment name, value = a bundle file's bytes (``edgeflow fleet publish``).
The topic is created compacted, so its latest record per deployment is the release the fleet
should run. :class:`ControlListener` (a thread in each supervisor that was deployed with
``--control-topic``) follows the topic from its beginning; for the latest bundle of its
deployment whose version is neither the running one nor one that was rolled back on this node,
it runs ``edgeflow deploy BUNDLE --name N --trust ...`` (a process of its own: the update stops
this supervisor and starts the next one, which checks the new version's health and rolls back
by itself). Bundles must be signed by a trusted key: a node never takes unsigned code from a
topic. A refused bundle is said once in the deployment's log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeflow.fleet.release import read_release, write_private
from edgeflow.fleet.status_topic import client_options


def ensure_compacted(bootstrap: str, topic: str) -> None:
    from edgeflow.fleet.status_topic import _ensure_topic

    _ensure_topic(bootstrap, topic)


def publish_bundle(bootstrap: str, topic: str, name: str, data: bytes) -> None:
    """Send ``data`` (a bundle) to ``topic`` keyed ``name``; raises KafkaError on failure."""
    from kafka import KafkaProducer

    ensure_compacted(bootstrap, topic)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=max(1 << 20, len(data) + 4096),
        request_timeout_ms=30_000,
        **client_options(),
    )
    try:
        producer.send(topic, key=name.encode(), value=data).get(timeout=30)
    finally:
        producer.close(timeout=5)


class ControlListener:
    """Follows the control topic for one deployment (see the module docstring)."""

    def __init__(
        self, deploy_dir: Path, bootstrap: str, topic: str, log: Callable[[str], None]
    ) -> None:
        self.d, self.bootstrap, self.topic, self.log = deploy_dir, bootstrap, topic, log
        self._stop = threading.Event()
        self._tried: set[str] = set()
        self._last_error = ""
        self._thread = threading.Thread(target=self._loop, daemon=True, name="control-topic")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _say_error(self, msg: str) -> None:
        if msg != self._last_error:
            self.log(f"control topic {self.topic} on {self.bootstrap}: {msg}; retrying")
            self._last_error = msg

    def _loop(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer: Any = None
        key = self.d.name.encode()
        latest: bytes | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = KafkaConsumer(
                        bootstrap_servers=self.bootstrap,
                        enable_auto_commit=False,
                        group_id=None,
                        request_timeout_ms=30_000,
                        max_partition_fetch_bytes=64 << 20,
                        fetch_max_bytes=64 << 20,
                        **client_options(),
                    )
                    parts = consumer.partitions_for_topic(self.topic)
                    if not parts:
                        raise LookupError("no such topic yet")
                    tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                    consumer.assign(tps)
                    consumer.seek_to_beginning(*tps)
                for msgs in consumer.poll(timeout_ms=1000).values():
                    for m in msgs:
                        if m.key == key and m.value is not None:
                            latest = m.value
                self._last_error = ""
                if latest is not None and not self._stop.is_set():
                    self._consider(latest)
            except Exception as exc:  # any client failure: say it once, retry
                self._say_error(f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    if consumer is not None:
                        consumer.close()
                consumer = None
                self._stop.wait(3.0)
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()

    def _consider(self, data: bytes) -> None:
        """Deploy ``data`` unless it was tried, runs already, was rolled back, or an update is
        on probation (it is considered again after the verdict)."""
        from edgeflow.bundle import BundleError, open_bundle

        digest = hashlib.sha256(data).hexdigest()
        if digest in self._tried:
            return
        rec = read_release(self.d)
        if (rec.get("update") or {}).get("result") == "checking":
            return
        incoming = self.d / "incoming"
        incoming.mkdir(mode=0o700, exist_ok=True)
        path = incoming / f"{digest[:16]}.efb"
        write_private(path, data)
        trust = [Path(p) for p in rec.get("trust") or []]
        self._tried.add(digest)
        try:
            bundle = open_bundle(path, trust=trust, require_signature=True)
        except BundleError as exc:
            self.log(f"control topic {self.topic}: refused a bundle for {self.d.name}: {exc}")
            return
        current = (rec.get("current") or {}).get("version")
        if bundle.version == current or bundle.version in (rec.get("rolled_back") or []):
            return
        self.log(
            f"control topic {self.topic}: updating {self.d.name} from {current} to "
            f"{bundle.version} ({path})"
        )
        cmd = [sys.executable, "-m", "edgeflow", "deploy", str(path), "--name", self.d.name]
        cmd += ["--root", str(self.d.parent), "--no-wait"]
        for key in trust:
            cmd += ["--trust", str(key)]
        with (self.d / "edgeflow.log").open("ab") as log:
            subprocess.Popen(
                cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ),
            )  # fmt: skip
