"""edgeflow: declarative stream processing for edge nodes.

from edgeflow import Flow, window, agg
from edgeflow.connectors import simulate, stdio

flow = Flow("press-3")
r = flow.source(simulate.sensors(devices=50, rate_hz=100, seed=1), key="device", time="ts", lateness="2s")
r.window(window.tumbling("1s"), agg.count(), agg.mean("accel")).to(stdio.sink())
"""

from edgeflow.flow import Flow, Plan
from edgeflow.ops import agg, detect, downsample, window

__version__ = "0.1.0"
__all__ = ["Flow", "Plan", "__version__", "agg", "detect", "downsample", "window"]
