from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts")
r.window(window.tumbling("1s"), agg.count()).to(
    files.sink("out.jsonl", time_format="unix"), name="archive"
)
