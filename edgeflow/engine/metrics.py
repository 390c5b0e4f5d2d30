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
"""

from __future__ import annotations

from collections.abc import Iterator

from edgeflow.engine.counters import COUNTERS

SIMPLE = {
    "readings_in": ("edgeflow_readings_in", "Readings read from sources"),
    "windows_out": ("edgeflow_window_records", "Window summaries emitted"),
    "late": ("edgeflow_late_readings", "Readings that arrived after their window closed"),
    "dead_letters": ("edgeflow_dead_letters", "Inputs that could not be read"),
    "anomalies": ("edgeflow_anomalies", "Anomaly events emitted"),
    "trend_points_in": ("edgeflow_trend_points_in", "Readings entering downsampling steps"),
    "trend_points": ("edgeflow_trend_points_out", "Points kept by downsampling steps"),
}


class _Collector:
    def __init__(self, flow: str) -> None:
        self.flow = flow

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


def serve(flow: str, port: int) -> None:
    """Expose the metrics of ``flow`` on http://0.0.0.0:<port>/metrics (a daemon thread)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_Collector(flow))  # type: ignore[arg-type]
    start_http_server(port, registry=registry)
