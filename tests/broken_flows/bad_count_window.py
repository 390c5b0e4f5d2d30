from edgeflow import Flow, agg, window
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts")
r.window(window.count(0), agg.count(), name="every_n").to(stdio.sink())
