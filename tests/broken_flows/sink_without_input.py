from edgeflow import Flow, agg, window
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts")
r.window(window.tumbling("1s"), agg.count()).to(stdio.sink())
flow.sink(stdio.sink(), name="alerts_out")
