from edgeflow import Flow, agg, window
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts", lateness="soon", name="sensors")
r.window(window.tumbling("1s"), agg.count()).to(stdio.sink())
