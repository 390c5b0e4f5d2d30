"""Prometheus metrics and health endpoints for a running flow (``--metrics-port``).

Served on 127.0.0.1 unless ``--metrics-host`` (``EDGEFLOW_METRICS_HOST``) widens it:
``/metrics`` (Prometheus text), ``/healthz`` (200 while the process runs: liveness) and
``/ready`` (200 once the sources that read from a broker are connected, else 503 with a
one-line reason: readiness).

Values are read from the run's counters when Prometheus scrapes, so counting costs the hot
path nothing. Labels are bounded: ``flow``, and ``sink`` for per-sink figures (never keys).

| metric | type | labels |
|---|---|---|
| ``edgeflow_readings_in_total`` | counter | flow |
| ``edgeflow_window_records_total`` | counter | flow |
| ``edgeflow_late_readings_total`` | counter | flow |
| ``edgeflow_dead_letters_total`` | counter | flow |
| ``edgeflow_anomalies_total`` | counter | flow |
| ``edgeflow_trend_points_in_total`` / ``..._out_total`` | counter | flow |
| ``edgeflow_records_written_total`` | counter | flow, sink |
| ``edgeflow_reduction_ratio`` | gauge | flow (readings in / records written) |
| ``edgeflow_bytes_in_total`` | counter | flow (raw bytes read by the sources) |
| ``edgeflow_bytes_written_total`` | counter | flow, sink |
| ``edgeflow_watermark_lag_seconds`` | gauge | flow, step (wall clock - newest watermark) |
| ``edgeflow_udf_errors_total`` | counter | flow, step (readings a user function failed on) |
| ``edgeflow_duplicates_skipped_total`` | counter | flow, step (re-delivered records a source skipped) |
| ``edgeflow_outbox_depth`` / ``edgeflow_outbox_dropped_total`` | gauge / counter | flow |
| ``edgeflow_source_connected`` | gauge | flow, source (1 connected to its broker, 0 not) |
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeflow.engine.counters import COUNTERS
from edgeflow.engine.figures import outbox_figures
from edgeflow.errors import MetricsPortError

SIMPLE = {
    "readings_in": ("edgeflow_readings_in", "Readings read from sources"),
    "windows_out": ("edgeflow_window_records", "Window summaries emitted"),
    "late": ("edgeflow_late_readings", "Readings that arrived after their window closed"),
    "dead_letters": ("edgeflow_dead_letters", "Inputs that could not be read"),
    "anomalies": ("edgeflow_anomalies", "Anomaly events emitted"),
    "trend_points_in": ("edgeflow_trend_points_in", "Readings entering downsampling steps"),
    "trend_points": ("edgeflow_trend_points_out", "Points kept by downsampling steps"),
    "bytes_in": ("edgeflow_bytes_in", "Raw bytes read by the sources"),
}


class _Collector:
    def __init__(self, flow: str, outbox: Path | None) -> None:
        self.flow = flow
        self.outbox = outbox

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = COUNTERS.snapshot()
        for key, (name, doc) in SIMPLE.items():
            fam = CounterMetricFamily(name, doc, labels=["flow"])
            fam.add_metric([self.flow], c.get(key, 0))
            yield fam
        written = CounterMetricFamily(
            "edgeflow_records_written", "Records handed to each sink", labels=["flow", "sink"]
        )
        total = 0
        for key, value in sorted(c.items()):
            if key.startswith("records_to."):
                written.add_metric([self.flow, key.split(".", 1)[1]], value)
                total += value
        yield written
        ratio = GaugeMetricFamily(
            "edgeflow_reduction_ratio",
            "Readings in per record written (all sinks)",
            labels=["flow"],
        )
        ratio.add_metric([self.flow], c.get("readings_in", 0) / total if total else 0.0)
        yield ratio
        nbytes = CounterMetricFamily(
            "edgeflow_bytes_written", "Bytes written by each sink", labels=["flow", "sink"]
        )
        lag = GaugeMetricFamily(
            "edgeflow_watermark_lag_seconds",
            "Wall clock minus the newest watermark of each window step",
            labels=["flow", "step"],
        )
        now = time.time()
        for key, value in sorted(c.items()):
            if key.startswith("bytes_to."):
                nbytes.add_metric([self.flow, key.split(".", 1)[1]], value)
            elif key.startswith("watermark."):
                lag.add_metric([self.flow, key.split(".", 1)[1]], now - value / 1e9)
        yield nbytes
        yield lag
        udf = CounterMetricFamily(
            "edgeflow_udf_errors",
            "Readings a user function (derive, filter, map, route, apply) failed on",
            labels=["flow", "step"],
        )
        for key, value in sorted(c.items()):
            if key.startswith("udf_errors."):
                udf.add_metric([self.flow, key.split(".", 1)[1]], value)
        yield udf
        dups = CounterMetricFamily(
            "edgeflow_duplicates_skipped",
            "Records a source skipped as re-delivered (same edgeflow-id)",
            labels=["flow", "step"],
        )
        for key, value in sorted(c.items()):
            if key.startswith("duplicates."):
                dups.add_metric([self.flow, key.split(".", 1)[1]], value)
        yield dups
        box = outbox_figures(self.outbox)
        depth = GaugeMetricFamily(
            "edgeflow_outbox_depth", "Records waiting in the outbox for Kafka", labels=["flow"]
        )
        depth.add_metric([self.flow], box["outbox_depth"])
        yield depth
        dropped = CounterMetricFamily(
            "edgeflow_outbox_dropped", "Records dropped from a full outbox", labels=["flow"]
        )
        dropped.add_metric([self.flow], box["outbox_dropped"])
        yield dropped
        yield _source_connected(self.flow)


def _source_connected(flow: str) -> object:
    """1/0 per source that reads from a broker (see connectors/connection_state.py)."""
    from prometheus_client.core import GaugeMetricFamily

    from edgeflow.connectors.connection_state import CONNECTIONS

    fam = GaugeMetricFamily(
        "edgeflow_source_connected",
        "1 while the source is connected to its broker, 0 while it retries",
        labels=["flow", "source"],
    )
    for name, state in sorted(CONNECTIONS.snapshot().items()):
        fam.add_metric([flow, name], 1 if state["connected"] else 0)
    return fam


#: where the metrics server listens unless ``--metrics-host`` / ``EDGEFLOW_METRICS_HOST`` says
#: otherwise: this machine only (a Kubernetes probe or a remote Prometheus needs ``0.0.0.0``)
DEFAULT_HOST = "127.0.0.1"
#: the source kinds that read from a broker: ``/ready`` waits for their connections
BROKER_KINDS = ("mqtt", "kafka")


def metrics_host() -> str:
    """The address to listen on: ``EDGEFLOW_METRICS_HOST`` (set by ``--metrics-host``), else
    :data:`DEFAULT_HOST`."""
    return os.environ.get("EDGEFLOW_METRICS_HOST", "").strip() or DEFAULT_HOST


def readiness(broker_sources: Sequence[str]) -> tuple[bool, str]:
    """Whether the flow is ready (``/ready``): every source in ``broker_sources`` has
    connected and is connected now; flows without such sources are ready while they run.
    The reason is one line."""
    from edgeflow.connectors.connection_state import CONNECTIONS, describe

    states = CONNECTIONS.snapshot()
    for name in broker_sources:
        state = states.get(name)
        if state is None:
            return False, f"source {name!r} has not started connecting yet"
        if not state["connected"]:
            return False, f"source {name!r} is not connected: {describe(state)}"
    return True, "ready"


class _ServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(registry: Any, broker_sources: Sequence[str]) -> type[BaseHTTPRequestHandler]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/ready":
                ok, why = readiness(broker_sources)
                self._send(200 if ok else 503, why.encode() + b"\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /ready\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news

    return Handler


def serve(
    flow: str,
    port: int,
    outbox: Path | None = None,
    broker_sources: Sequence[str] = (),
    host: str | None = None,
) -> ThreadingHTTPServer:
    """Serve the metrics of ``flow`` on ``http://HOST:PORT`` (a daemon thread): ``/metrics``
    (Prometheus), ``/healthz`` (200 while the process runs) and ``/ready`` (200 once every
    source in ``broker_sources`` is connected to its broker, else 503 with the reason).
    ``host`` defaults to :func:`metrics_host` (127.0.0.1: this machine only).

    Raises :class:`~edgeflow.errors.MetricsPortError` (one line naming HOST:PORT and what to
    do) when the address cannot be listened on: in use by another process, not allowed, or
    not an address of this machine."""
    from prometheus_client import CollectorRegistry

    host = host or metrics_host()
    registry = CollectorRegistry()
    registry.register(_Collector(flow, outbox))  # type: ignore[arg-type]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = _ServerV6 if family == socket.AF_INET6 else ThreadingHTTPServer
        server = server_class((host, port), _handler(registry, tuple(broker_sources)))
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            why = "the port is already in use by another process"
        raise MetricsPortError(
            f"--metrics-port {port}: cannot serve metrics on {where} ({why}); choose a free "
            "port with --metrics-port (or EDGEFLOW_METRICS_PORT), or stop what listens on it; "
            "--metrics-host (or EDGEFLOW_METRICS_HOST) must be an address of this machine"
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="edgeflow-metrics", daemon=True).start()
    return server
