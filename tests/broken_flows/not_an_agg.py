from edgeflow import Flow, window
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts")
r.window(window.tumbling("1s"), "mean", name="summary").to(stdio.sink())
