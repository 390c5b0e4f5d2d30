"""Predictive maintenance: vibration at 1 kHz per machine, reduced to features and alerts.

Per machine and second: RMS, kurtosis, crest factor, peak-to-peak and the energy in three
frequency bands (FFT). Anomalies are detected on those features, not on the raw samples:
a bearing defect raises kurtosis, crest factor and the 300-500 Hz band long before the
RMS moves; an imbalance raises the RMS and the low band. An RMS trend (LTTB, 6 points a
minute) feeds dashboards. Features, alerts and the trend go to Kafka, or to the local
outbox while no broker is configured.

    edgeflow deploy flows/predictive_maintenance.py
    EDGEFLOW_SIM_SPEED=max EDGEFLOW_SIM_DURATION=10m edgeflow run flows/predictive_maintenance.py

Simulator profile: :func:`edgeflow.connectors.sim_machines.vibration` (8 machines, shaft
20-40 Hz, injected bearing and imbalance faults of 8-15 s every 1-2.5 minutes).
"""

from edgeflow import Flow, agg, detect, downsample, window
from edgeflow.connectors import kafka, simulate

FS = 1000.0  # samples per second per machine

flow = Flow("predictive-maintenance")
vibration = flow.source(
    simulate.vibration(machines=8, rate_hz=FS, seed=7, **simulate.from_env()),
    key="machine",
    time="ts",
)
features = vibration.window(
    window.tumbling("1s"),
    agg.count(),
    agg.rms("accel"),
    agg.kurtosis("accel"),
    agg.crest_factor("accel"),
    agg.ptp("accel"),
    agg.band_energy("accel", 0, 100, fs=FS),
    agg.band_energy("accel", 100, 300, fs=FS),
    agg.band_energy("accel", 300, 500, fs=FS),
    name="features",
)
features.to(kafka.sink("edgeflow.machines.features"), name="features_to_kafka")

# one alert per fault episode: a z-score of each feature against its last 5 minutes
per_second = features.as_readings(name="feature_readings")
alerts = flow.sink(kafka.sink("edgeflow.machines.alerts", priority="alert"), name="alerts_to_kafka")
once_per_episode = detect.threshold(cooldown=30)
for field in ("rms_accel", "kurtosis_accel", "band_300_500hz_accel"):
    per_second.detect(
        detect.zscore(window=300, level=6.0, warmup=60),
        field,
        decision=once_per_episode,
        name=f"{field}_alerts",
    ).to(alerts)

# the RMS trend for dashboards: the 6 most telling of each minute's 60 points (LTTB)
trend = per_second.downsample(downsample.lttb("rms_accel", every="1m", points=6), name="rms_trend")
trend.to(kafka.sink("edgeflow.machines.rms-trend"), name="trend_to_kafka")
