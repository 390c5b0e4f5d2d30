"""Portable ECG monitor: heart rate from R-peaks and arrhythmia alerts, with no network.

Per patient and 10 s: the heart rate (R-peaks found with scipy.signal.find_peaks) and the
irregularity of the R-R intervals. Alerts: tachycardia (> 120 bpm), bradycardia (< 45 bpm)
and an irregular rhythm (R-R coefficient of variation > 0.15, typical of atrial
fibrillation). The monitor works offline: summaries and alerts are written to local files
(``ECG_OUT_DIR``, default ``out/ecg``) and queued in the outbox for Kafka, which they reach
when a broker is configured and reachable.

    edgeflow deploy flows/ecg_monitor.py
    EDGEFLOW_SIM_SPEED=max EDGEFLOW_SIM_DURATION=20m edgeflow run flows/ecg_monitor.py

Simulator profile: :func:`edgeflow.connectors.sim_ecg.ecg` (4 patients at 250 Hz, resting
58-80 bpm, injected tachycardia, bradycardia and atrial-fibrillation episodes of 40-90 s).
"""

import os

from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import files, kafka, simulate

FS = 250.0
OUT = os.environ.get("ECG_OUT_DIR", "out/ecg")

flow = Flow("ecg-monitor")
ecg = flow.source(
    simulate.ecg(patients=4, rate_hz=FS, seed=3, **simulate.from_env()), key="patient", time="ts"
)
rhythm = ecg.window(
    window.tumbling("10s"),
    agg.heart_rate("ecg", fs=FS),
    agg.rr_irregularity("ecg", fs=FS),
    agg.count(),
    name="rhythm",
)
rhythm.to(files.sink(f"{OUT}/rhythm.jsonl"), name="rhythm_to_file")
rhythm.to(kafka.sink("edgeflow.ecg.rhythm"), name="rhythm_to_kafka")

# clinical limits, not learnt ones: one alert per episode (cooldown: 6 windows = 1 minute)
per_window = rhythm.as_readings(name="rhythm_readings")
once_a_minute = detect.threshold(cooldown=6)
rate_alerts = per_window.detect(
    detect.limits(low=45, high=120), "heart_rate_ecg", decision=once_a_minute, name="rate_alerts"
)
irregular = per_window.detect(
    detect.limits(high=0.15), "rr_irregularity_ecg", decision=once_a_minute, name="rhythm_alerts"
)
alerts_file = flow.sink(files.sink(f"{OUT}/alerts.jsonl"), name="alerts_to_file")
alerts_kafka = flow.sink(
    kafka.sink("edgeflow.ecg.alerts", priority="alert"), name="alerts_to_kafka"
)
for alerts in (rate_alerts, irregular):
    alerts.to(alerts_file).to(alerts_kafka)
