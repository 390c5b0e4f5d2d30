from edgeflow import Flow, agg, window
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts")
r.window(window.tumbling("1 sec"), agg.count(), name="summary").to(stdio.sink())
