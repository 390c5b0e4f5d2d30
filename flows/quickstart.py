"""Quickstart: 50 simulated vibration sensors, reduced on the spot.

* 1-second summaries per sensor, printed as JSON lines;
* a temperature trend (swinging door, at most 0.3 °C off) and anomaly alerts on the
  vibration (detect.auto());
* everything published to Kafka when a broker is configured (``--kafka-bootstrap host:9092``
  or ``EDGEFLOW_KAFKA_BOOTSTRAP``), otherwise kept in the local durable outbox
  (``<state dir>/outbox.sqlite``) until one is.

    edgeflow deploy flows/quickstart.py --for 20s
"""

from edgeflow import Flow, agg, detect, downsample, window
from edgeflow.connectors import kafka, simulate, stdio

flow = Flow("quickstart")
readings = flow.source(
    simulate.sensors(devices=50, rate_hz=100, seed=1, jitter="200ms"),
    key="device",
    time="ts",
    lateness="500ms",
)
summaries = readings.window(
    window.tumbling("1s"),
    agg.count(),
    agg.mean("accel"),
    agg.rms("accel"),
    agg.p95("accel"),
    agg.max("temp"),
    idle="5s",
    name="summaries",
)
summaries.to(stdio.sink(), name="console")
summaries.to(kafka.sink("edgeflow.quickstart.summaries"), name="summaries_to_kafka")
summaries.late.to(kafka.sink("edgeflow.quickstart.late"), name="late_to_kafka")

trend = readings.downsample(downsample.swinging_door("temp", deviation=0.3), name="temp_trend")
trend.to(kafka.sink("edgeflow.quickstart.temp-trend"), name="trend_to_kafka")

alerts = readings.detect(detect.auto(), "accel", name="accel_alerts")
alerts.to(kafka.sink("edgeflow.quickstart.alerts", priority="alert"), name="alerts_to_kafka")

readings.dead_letters.to(
    kafka.sink("edgeflow.quickstart.dead-letters"), name="dead_letters_to_kafka"
)
