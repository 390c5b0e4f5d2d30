from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import simulate, stdio

flow = Flow("late-features")
r = flow.source(simulate.sensors(devices=2), key="device", time="ts")
w = r.window(window.tumbling("1s"), agg.mean("accel"), name="summary")
w.to(stdio.sink())
late = w.late.as_readings(name="late_readings")
late.detect(detect.zscore(), "accel", name="alerts").to(stdio.sink())
