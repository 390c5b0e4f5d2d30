from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import simulate, stdio

flow = Flow("feature-typo")
r = flow.source(simulate.sensors(devices=2), key="device", time="ts")
w = r.window(window.tumbling("1s"), agg.rms("accel"), agg.heart_rate("accel", fs=0), name="summary")
w.to(stdio.sink())
per_second = w.as_readings(name="per_second")
per_second.detect(detect.zscore(), "mean_accel", name="alerts").to(stdio.sink())
