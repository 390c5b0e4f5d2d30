"""The fog tier of a plant: rollups of every node's summaries, and alerts seen on many machines.

Reads what ``flows/plant_node.py`` publishes from every node (topics matching
``edgeflow.summary.*`` and ``edgeflow.alerts.*``; topics created later are read after a
restart) and publishes:

* ``edgeflow.plant.line-rollups``: per line (the part of the device key before ``/``) and
  10 seconds, the ``accel`` and ``temp`` statistics of all its machines: counts, sums,
  min/max exact, means weighted by count, std from the summed squares, p50/p95/p99 from the
  merged quantile sketches (within the sketch's 1 % relative accuracy);
* ``edgeflow.plant.rollups``: the same for the whole plant per minute - a rollup of the line
  rollups, exact as if computed from the raw readings;
* ``edgeflow.plant.correlated-alerts``: every 10 seconds in which alerts came from at least
  three different machines, with their names (a plant-wide cause rather than one machine).

Records a node delivers twice (at-least-once after a crash) are recognised by their
``edgeflow-id`` and counted once. Run it as one process or as a cluster:

    edgeflow deploy flows/plant_rollup.py --kafka-bootstrap broker:9092
    edgeflow run flows/plant_rollup.py --processes 2 --state-dir /var/lib/edgeflow/fog
"""

import os

from edgeflow import Flow
from edgeflow.connectors import kafka

# How long a rollup waits for a line's late summaries. Live nodes deliver within a second; a
# fog flow catching up on a backlog (a node's outage, a replay from the earliest offsets)
# reads each device's records in order but devices far apart: give it the backlog's span.
LATENESS = os.environ.get("EDGEFLOW_ROLLUP_LATENESS", "30s")

flow = Flow("plant-rollup")

summaries = flow.records(
    kafka.source(pattern=r"edgeflow\.summary\..*", records=True), name="node_summaries"
)
per_line = summaries.rollup(
    "10s", fields=["accel", "temp"], group_by="key", group_sep="/", lateness=LATENESS, idle="30s",
    name="line_rollups",
)  # fmt: skip
per_line.to(kafka.sink("edgeflow.plant.line-rollups"), name="line_rollups_to_kafka")

plant = per_line.rollup(
    "1m",
    fields=["accel", "temp"],
    group="plant",
    lateness=LATENESS,
    idle="90s",
    name="plant_rollups",
)
plant.to(kafka.sink("edgeflow.plant.rollups"), name="plant_rollups_to_kafka")

alerts = flow.records(
    kafka.source(pattern=r"edgeflow\.alerts\..*", records=True), name="node_alerts"
)
correlated = alerts.rollup(
    "10s", time="t", group="plant", min_keys=3, lateness=LATENESS, idle="30s",
    name="correlated_alerts",
)  # fmt: skip
correlated.to(
    kafka.sink("edgeflow.plant.correlated-alerts", priority="alert"), name="correlations_to_kafka"
)
