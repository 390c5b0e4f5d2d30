from edgeflow import Flow, downsample
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts")
r.downsample(downsample.m4("accel", every="10s", points=6), name="m4").to(stdio.sink())
r.downsample(downsample.lttb("accel", every="10s", points=2), name="lttb").to(stdio.sink())
r.downsample(downsample.swinging_door("temp", deviation=float("nan")), name="door").to(stdio.sink())
