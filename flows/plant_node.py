"""A plant line's edge node: 1-second mergeable summaries and alerts, published for the fog tier.

Each node runs this flow with its own name (``EDGEFLOW_NODE``, e.g. ``line1``): its devices
are ``<node>/m<n>`` and its flow ``plant-node-<node>``, so records from many nodes never share
an id. Per device and second it publishes ``agg.mergeable`` summaries of ``accel`` and
``temp`` (count, sum, sum of squares, min, max, first/last with times and a quantile sketch)
to ``edgeflow.summary.<node>``, which ``flows/plant_rollup.py`` combines exactly into
plant-level rollups; anomaly alerts go to ``edgeflow.alerts.<node>``.

    EDGEFLOW_NODE=line1 edgeflow deploy flows/plant_node.py --kafka-bootstrap broker:9092
    docker compose --profile fog up -d     # three nodes, a broker and the fog flow
"""

import os
import zlib

from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import kafka, simulate

NODE = os.environ.get("EDGEFLOW_NODE", "line1")
DEVICES = int(os.environ.get("EDGEFLOW_NODE_DEVICES", "20"))

flow = Flow(f"plant-node-{NODE}")
readings = flow.source(
    simulate.sensors(
        devices=DEVICES,
        rate_hz=100,
        seed=zlib.crc32(NODE.encode()),
        prefix=f"{NODE}/m",
        **simulate.from_env(),
    ),
    key="device",
    time="ts",
)
summaries = readings.window(
    window.tumbling("1s"),
    agg.count(),
    agg.mergeable("accel"),
    agg.mergeable("temp"),
    idle="5s",
    name="summaries",
)
summaries.to(kafka.sink(f"edgeflow.summary.{NODE}"), name="summaries_to_kafka")

alerts = readings.detect(detect.auto(), "accel", name="accel_alerts")
alerts.to(kafka.sink(f"edgeflow.alerts.{NODE}", priority="alert"), name="alerts_to_kafka")
