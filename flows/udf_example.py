"""Your own code in a flow: unit conversion, a derived field, a filter, a route and
enrichment from a device table.

20 simulated vibration/temperature sensors (``accel`` in g, ``temp`` in °C):

* ``map``: acceleration from g to m/s²;
* ``derive``: the temperature in °F and the vibration power (accel², (m/s²)²);
* ``filter``: drop sensor glitches (|accel| over 100 m/s²);
* ``route``: warm readings (23 °C or more) and normal ones to two files;
* a 10-second mean of the derived power per sensor, and any reading a function failed on
  (dead letters, with the step and the error) to files too;
* ``enrich``: each reading joined with its device's row of ``udf_devices.csv`` (site, line,
  temperature limits; edit the file while the flow runs and it is reloaded), then
  ``detect.limits`` alarms when a device leaves its own limits; devices missing from the
  table (dev-18, dev-19) go to ``unmatched.jsonl``.

Files go to ``$EDGEFLOW_OUT_DIR`` (default ``out/udf_example``).

    EDGEFLOW_SIM_SPEED=max EDGEFLOW_SIM_DURATION=1m edgeflow run flows/udf_example.py
"""

import os
from pathlib import Path

from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate
from edgeflow.ops import detect

OUT = os.environ.get("EDGEFLOW_OUT_DIR", "out/udf_example")
DEVICES = Path(__file__).with_name("udf_devices.csv")  # device,site,line,temp_low,temp_high
G = 9.80665  # m/s² per g

flow = Flow("udf-example")
readings = flow.source(
    simulate.sensors(devices=20, rate_hz=50, seed=1, **simulate.from_env()),
    key="device",
    time="ts",
)
si = readings.map(accel=lambda c: c["accel"] * G, name="to_si")
derived = si.derive(
    temp_f=lambda c: c["temp"] * 1.8 + 32,
    power=lambda c: c["accel"] ** 2,
    name="derived",
)
clean = derived.filter(lambda c: abs(c["accel"]) <= 100.0, name="no_glitches")
by_temp = clean.route(
    warm=lambda c: c["temp"] >= 23.0,
    normal=lambda c: c["temp"] < 23.0,
    name="by_temp",
)
by_temp.warm.to(files.sink(f"{OUT}/warm.jsonl"), name="warm_file")
by_temp.normal.to(files.sink(f"{OUT}/normal.jsonl"), name="normal_file")
clean.window(window.tumbling("10s"), agg.mean("power"), agg.max("temp_f"), name="power_10s").to(
    files.sink(f"{OUT}/power_10s.jsonl"), name="power_file"
)
dead_letters = flow.sink(files.sink(f"{OUT}/dead_letters.jsonl"), name="dead_letters_file")
for stream in (si, derived, clean, by_temp):
    stream.dead_letters.to(dead_letters)

# enrichment: the numeric columns of the table (line, temp_low, temp_high) become fields
sited = si.enrich(DEVICES, key="device", missing="route", name="devices")
sited.unmatched.to(files.sink(f"{OUT}/unmatched.jsonl"), name="unmatched_file")
sited.detect(detect.limits(low="temp_low", high="temp_high"), "temp", name="temp_alarms").to(
    files.sink(f"{OUT}/temp_alarms.jsonl"), name="alarms_file"
)
