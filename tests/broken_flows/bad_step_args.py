from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts", batch_max=True, name="src")
r.window(window.hopping("10s", "1ms"), agg.count(), lateness=1e30, name="w").to(stdio.sink())
r.detect(detect.zscore(), "accel", learn_anomalies="yes", name="a").to(stdio.sink())
