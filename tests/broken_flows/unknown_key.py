from edgeflow import Flow, agg, window
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device_id", time="ts", name="plant")
r.window(window.tumbling("1s"), agg.count()).to(stdio.sink())
