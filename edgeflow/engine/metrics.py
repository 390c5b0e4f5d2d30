"""Prometheus metrics for a running flow (``--metrics-port``).

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
| ``edgeflow_outbox_depth`` / ``edgeflow_outbox_dropped_total`` | gauge / counter | flow |
| ``edgeflow_source_connected`` | gauge | flow, source (1 connected to its broker, 0 not) |
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

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


def serve(flow: str, port: int, outbox: Path | None = None) -> None:
    """Expose the metrics of ``flow`` on http://0.0.0.0:<port>/metrics (a daemon thread).

    Raises :class:`~edgeflow.errors.MetricsPortError` (one line saying what to do) when the
    port cannot be listened on: in use by another process, or not allowed."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_Collector(flow, outbox))  # type: ignore[arg-type]
    try:
        start_http_server(port, registry=registry)
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            why = "the port is already in use by another process"
        raise MetricsPortError(
            f"--metrics-port {port}: cannot serve metrics on 0.0.0.0:{port} ({why}); "
            "choose a free port with --metrics-port (or EDGEFLOW_METRICS_PORT), or stop what "
            "listens on it"
        ) from None
