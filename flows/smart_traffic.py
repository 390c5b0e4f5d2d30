"""Smart traffic: vehicle counts per intersection per minute, and congestion alerts.

Loop detectors report every second (vehicles, their mean speed, loop occupancy). Per
intersection and minute: the vehicle count, mean speed and mean occupancy go to Kafka.
Congestion shows as a loop occupied most of the time with vehicles crawling; it is
detected on the minute summaries against each intersection's last hour, so the daily
rush-hour swing is not mistaken for a jam.

    edgeflow deploy flows/smart_traffic.py
    EDGEFLOW_SIM_SPEED=max EDGEFLOW_SIM_DURATION=6h edgeflow run flows/smart_traffic.py

Simulator profile: :func:`edgeflow.connectors.sim_traffic.traffic` (12 intersections,
time-of-day demand, injected congestion of 10-20 minutes every 1-2 hours).
"""

from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import kafka, simulate

flow = Flow("smart-traffic")
loops = flow.source(
    simulate.traffic(intersections=12, seed=5, **simulate.from_env()),
    key="intersection",
    time="ts",
    lateness="5s",
)
per_minute = loops.window(
    window.tumbling("1m"),
    agg.sum("vehicles"),
    agg.mean("speed_kmh"),
    agg.mean("occupancy"),
    name="per_minute",
)
per_minute.to(kafka.sink("edgeflow.traffic.per-minute"), name="counts_to_kafka")

minutes = per_minute.as_readings(name="minute_readings")
congestion = minutes.detect(
    detect.zscore(window=60, level=5.0, warmup=20),
    "mean_occupancy",
    decision=detect.threshold(cooldown=30),  # one alert per jam (30 minutes)
    name="congestion",
)
congestion.to(kafka.sink("edgeflow.traffic.congestion", priority="alert"), name="alerts_to_kafka")
