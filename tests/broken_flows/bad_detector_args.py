from edgeflow import Flow, detect
from edgeflow.connectors import simulate, stdio

flow = Flow("broken")
r = flow.source(simulate.sensors(), key="device", time="ts")
r.detect(detect.zscore(window=-5), "accel", name="z").to(stdio.sink())
r.detect(detect.ewma(alpha=2), "accel", name="e").to(stdio.sink())
r.detect(detect.mad(window=1), "accel", name="m").to(stdio.sink())
r.detect(detect.cusum(h=-1), "accel", name="c").to(stdio.sink())
r.detect(detect.seasonal(window=3), "accel", name="s").to(stdio.sink())
r.detect(detect.mad(), "accel", decision=detect.quantile(every=0), name="q").to(stdio.sink())
