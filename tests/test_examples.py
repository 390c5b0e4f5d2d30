"""The example flows in flows/ run briefly on their simulators and produce what they promise."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeflow.connectors import simulate
from edgeflow.connectors.outbox import read_stats
from edgeflow.evaluate import delivery
from tests.helpers import ROOT, edgeflow, popen_edgeflow, records
from tests.kafka_helpers import KafkaBroker, consume_all, headers

FLOWS = ROOT / "flows"


def sim_env(speed: str, duration: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of an offline run: simulator pacing, no Kafka configured."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP", "EDGEFLOW_KAFKA_BOOTSTRAP")
    }
    env["EDGEFLOW_SIM_SPEED"] = speed
    if duration:
        env["EDGEFLOW_SIM_DURATION"] = duration
    env.update(extra)
    return env


def outbox_records(path: Path, topic: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT value FROM outbox WHERE topic = ? ORDER BY seq", (topic,))
        return [orjson.loads(v) for (v,) in rows]
    finally:
        db.close()


def injected(spec: Any, duration: str) -> list[tuple[str, int, int, str]]:
    return [(e.key, e.start_ns, e.end_ns, e.kind) for e in spec.injected(duration)]


def test_predictive_maintenance_publishes_features_trend_and_every_fault_to_kafka(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    env = sim_env("max", "6m")
    res = edgeflow(
        "run", str(FLOWS / "predictive_maintenance.py"), "--kafka-bootstrap", kafka_bootstrap,
        "--state-dir", str(tmp_path / "st"), env=env, timeout=300,
    )  # fmt: skip
    features = [
        orjson.loads(m.value)
        for m in consume_all(kafka_bootstrap, "edgeflow.machines.features", expect=8 * 360)
    ]
    assert len(features) == 8 * 360, "one feature record per machine and second"
    assert all(r["count"] == 1000 for r in features), "1 kHz: 1000 samples per window"
    for col in ("rms_accel", "kurtosis_accel", "crest_factor_accel", "ptp_accel",
                "band_0_100hz_accel", "band_100_300hz_accel", "band_300_500hz_accel"):  # fmt: skip
        assert all(isinstance(r[col], float) for r in features), col
    # the three bands split the signal's power: they sum to mean(x^2) = rms^2
    for r in features[:50]:
        bands = r["band_0_100hz_accel"] + r["band_100_300hz_accel"] + r["band_300_500hz_accel"]
        assert abs(bands - r["rms_accel"] ** 2) < 1e-9 * max(1.0, bands)

    alert_msgs = consume_all(kafka_bootstrap, "edgeflow.machines.alerts")
    alerts = [orjson.loads(m.value) for m in alert_msgs]
    assert all(headers(m)["edgeflow-schema"] == "anomaly/v1" for m in alert_msgs)
    spec = simulate.vibration(machines=8, rate_hz=1000.0, seed=7, speed=None)
    truth = injected(spec, "6m")
    assert len(truth) >= 16
    got = delivery(
        truth, [(a["key"], a["t"]) for a in alerts], grace_ns=2_000_000_000, min_ns=1_000_000_000
    )
    assert got.share == 1.0, f"every injected fault reaches the alert stream; missed {got.missed}"
    assert got.false_alerts <= 2, f"{got.false_alerts} alerts outside any fault"

    trend = [
        orjson.loads(m.value) for m in consume_all(kafka_bootstrap, "edgeflow.machines.rms-trend")
    ]
    per_machine: dict[str, int] = {}
    for p in trend:
        per_machine[p["key"]] = per_machine.get(p["key"], 0) + 1
    assert sorted(per_machine) == [f"m-{i}" for i in range(8)]
    assert all(6 * 6 <= n <= 6 * 7 for n in per_machine.values()), "6 trend points a minute"
    assert "delivered" in res.stderr


def test_smart_traffic_counts_per_minute_and_flags_every_jam(tmp_path: Path) -> None:
    edgeflow("run", str(FLOWS / "smart_traffic.py"), "--state-dir", str(tmp_path / "st"),
             env=sim_env("max", "8h"), timeout=300)  # fmt: skip
    box = tmp_path / "st" / "outbox.sqlite"
    counts = outbox_records(box, "edgeflow.traffic.per-minute")
    assert len(counts) == 12 * 8 * 60, "one record per intersection and minute"
    # the minute totals are the sums of the per-second readings of the simulator
    spec = simulate.traffic(intersections=12, seed=5, speed=None)
    ref = _per_minute_vehicles(spec, 8 * 3600)
    got = {(r["key"], r["window_start"]): r["sum_vehicles"] for r in counts}
    assert got == ref
    alerts = outbox_records(box, "edgeflow.traffic.congestion")
    truth = injected(spec, "8h")
    assert len(truth) >= 40
    res = delivery(
        truth, [(a["key"], a["t"]) for a in alerts], grace_ns=60_000_000_000, min_ns=60_000_000_000
    )
    assert res.share == 1.0, f"every jam is flagged; missed {res.missed}"
    assert res.false_alerts <= 2


def _per_minute_vehicles(spec: Any, seconds: int) -> dict[tuple[str, int], float]:
    from edgeflow.connectors.base import SourceContext

    out: dict[tuple[str, int], float] = {}
    for p in spec.partitions():
        part = spec.open(p, None, SourceContext("t", "s", "intersection", "ts", None, 1 << 20, 0))
        b = part.gen.generate(0, seconds)
        minute = b.t // 60_000_000_000 * 60_000_000_000
        v = b.column("vehicles")
        for code, key in enumerate(b.keys):
            sel = b.key_idx == code
            for m in np.unique(minute[sel]).tolist():
                out[(key, m)] = float(v[sel & (minute == m)].sum())
    return out


def test_ecg_monitor_works_offline_heart_rate_and_every_arrhythmia(tmp_path: Path) -> None:
    out = tmp_path / "ecg"
    edgeflow("run", str(FLOWS / "ecg_monitor.py"), "--state-dir", str(tmp_path / "st"),
             env=sim_env("max", "20m", ECG_OUT_DIR=str(out)), timeout=300)  # fmt: skip
    rhythm = records(out / "rhythm.jsonl")
    assert len(rhythm) == 4 * 120, "one record per patient and 10 s"
    spec = simulate.ecg(patients=4, rate_hz=250.0, seed=3, speed=None)
    truth = injected(spec, "20m")
    t0 = spec.start_ns()
    # outside the episodes, the heart rate is the simulated patient's: beats in the window
    checked = 0
    for r in rhythm:
        dev = int(r["key"].split("-")[1])
        a, b = r["window_start"], r["window_end"]
        if any(k == r["key"] and s < b + 2e9 and e > a - 2e9 for k, s, e, _ in truth):
            continue
        beats = spec.beats(dev, (b - t0) / 1e9)
        inside = beats[(beats >= (a - t0) / 1e9) & (beats < (b - t0) / 1e9)]
        want = 60.0 / float(np.diff(inside).mean())
        assert abs(r["heart_rate_ecg"] - want) < 0.5, (r, want)
        assert r["rr_irregularity_ecg"] < 0.1
        checked += 1
    assert checked > 200
    alerts = records(out / "alerts.jsonl")
    got = delivery(
        truth, [(a["key"], a["t"]) for a in alerts], grace_ns=10_000_000_000, min_ns=10_000_000_000
    )
    assert got.share == 1.0, f"every arrhythmia raises an alert; missed {got.missed}"
    assert got.false_alerts == 0
    # no network: the same alerts wait in the outbox for Kafka
    box = tmp_path / "st" / "outbox.sqlite"
    queued = outbox_records(box, "edgeflow.ecg.alerts")
    assert sorted(orjson.dumps(a) for a in queued) == sorted(orjson.dumps(a) for a in alerts)


def test_retail_sales_flow_into_the_outbox_while_the_uplink_is_down_and_drain_after(
    tmp_path: Path, own_broker: KafkaBroker
) -> None:
    own_broker.stop()  # the store's uplink is down when the flow starts
    env = sim_env("120", "40m")
    env["EDGEFLOW_KAFKA_BOOTSTRAP"] = own_broker.bootstrap
    env["EDGEFLOW_DRAIN_TIMEOUT"] = "300s"  # a loaded CI machine may take long to restart Kafka
    proc = popen_edgeflow(
        "run", str(FLOWS / "retail_pos.py"), "--state-dir", str(tmp_path / "st"), env=env
    )
    box = tmp_path / "st" / "outbox.sqlite"
    depths: list[int] = []
    deadline = time.monotonic() + 180  # wait on the outbox, not on a fixed time (busy CI)
    while not depths or depths[-1] <= 40:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the outbox did not grow past 40: {depths}"
        time.sleep(0.5)
        if box.exists():
            depths.append(read_stats(box)["depth"])
    assert depths and depths[-1] > 40, f"records keep flowing into the outbox: {depths}"
    assert depths == sorted(depths), "nothing left the outbox while the broker was down"
    own_broker.start()
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert read_stats(box)["depth"] == 0, "the outbox drained when the uplink returned"

    spec = simulate.pos(stores=20, seed=2, start="2026-03-02T11:00:00Z", speed=None)
    want = _sales_per_minute(spec, 40 * 60)
    msgs = consume_all(own_broker.bootstrap, "edgeflow.retail.sales-per-minute", expect=len(want))
    ids = [headers(m)["edgeflow-id"] for m in msgs]
    assert len(ids) == len(set(ids)), "no duplicates"
    got = {}
    for m in msgs:
        r = orjson.loads(m.value)
        got[(r["key"], r["window_start"])] = (r["count"], round(r["sum_amount"], 2))
    assert got == want, "every store's every minute, with the right count and takings"
    order: dict[str, list[int]] = {}
    for m in msgs:
        r = orjson.loads(m.value)
        order.setdefault(r["key"], []).append(r["window_start"])
    assert all(v == sorted(v) for v in order.values()), "in order per store"


def _sales_per_minute(spec: Any, seconds: int) -> dict[tuple[str, int], tuple[int, float]]:
    from edgeflow.connectors.base import SourceContext

    out: dict[tuple[str, int], tuple[int, float]] = {}
    for p in spec.partitions():
        part = spec.open(p, None, SourceContext("t", "s", "store", "ts", None, 1 << 20, 0))
        b = part.gen.generate(0, seconds)
        minute = b.t // 60_000_000_000 * 60_000_000_000
        amount = b.column("amount")
        for code, key in enumerate(b.keys):
            for m in np.unique(minute[b.key_idx == code]).tolist():
                sel = (b.key_idx == code) & (minute == m)
                out[(key, m)] = (int(sel.sum()), round(float(amount[sel].sum()), 2))
    return out


def test_plant_nodes_and_the_fog_rollup_account_for_every_reading(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """flows/plant_node.py on three lines, then flows/plant_rollup.py reading their topics:
    every line's rollups count each of its readings once, and the plant's rollups (a rollup of
    the line rollups) count every reading of the plant once, with min/max matching."""
    lines, devices, seconds = ("line1", "line2", "line3"), 5, 40
    nodes = []
    for line in lines:
        env = sim_env("max", f"{seconds}s", EDGEFLOW_NODE=line, EDGEFLOW_NODE_DEVICES=str(devices))
        nodes.append(
            popen_edgeflow(
                "run", str(FLOWS / "plant_node.py"), "--kafka-bootstrap", kafka_bootstrap, env=env
            )
        )
    for p in nodes:
        _out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    env = sim_env("max", EDGEFLOW_ROLLUP_LATENESS="1h")  # a replay: devices far apart
    edgeflow("run", str(FLOWS / "plant_rollup.py"), "--kafka-bootstrap", kafka_bootstrap,
             "--for", "30s", env=env, timeout=180)  # fmt: skip
    per_line = [orjson.loads(m.value) for m in
                consume_all(kafka_bootstrap, "edgeflow.plant.line-rollups", expect=3 * 4)]  # fmt: skip
    plant = [orjson.loads(m.value) for m in
             consume_all(kafka_bootstrap, "edgeflow.plant.rollups", expect=1)]  # fmt: skip
    summaries = {
        line: [orjson.loads(m.value) for m in consume_all(kafka_bootstrap, f"edgeflow.summary.{line}")]
        for line in lines
    }  # fmt: skip
    per_reading = devices * seconds * 100
    for line in lines:
        mine = [r for r in per_line if r["key"] == line]
        assert sum(r["count_accel"] for r in mine) == per_reading, line
        assert min(r["min_accel"] for r in mine) == min(s["min_accel"] for s in summaries[line])
        assert max(r["max_accel"] for r in mine) == max(s["max_accel"] for s in summaries[line])
        assert {k for r in mine for k in r["key_list"]} == {f"{line}/m{i}" for i in range(devices)}
    assert sum(r["count_accel"] for r in plant) == 3 * per_reading
    assert {r["key"] for r in plant} == {"plant"}
