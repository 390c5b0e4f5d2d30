"""Quickstart: 50 simulated vibration sensors, 1-second summaries printed as JSON lines.

edgeflow deploy flows/quickstart.py --for 20s
"""

from edgeflow import Flow, agg, window
from edgeflow.connectors import simulate, stdio

flow = Flow("quickstart")
readings = flow.source(
    simulate.sensors(devices=50, rate_hz=100, seed=1, jitter="200ms"),
    key="device",
    time="ts",
    lateness="500ms",
)
summaries = readings.window(
    window.tumbling("1s"),
    agg.count(),
    agg.mean("accel"),
    agg.rms("accel"),
    agg.p95("accel"),
    agg.max("temp"),
    idle="5s",
)
summaries.to(stdio.sink())
