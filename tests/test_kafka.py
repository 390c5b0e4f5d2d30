"""Kafka against a real broker: kcat reads the output, outages, crashes, a full outbox, the source."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from edgeflow.connectors.outbox import read_stats
from tests.helpers import edgeflow, lines, popen_edgeflow, records, write_flow
from tests.kafka_helpers import KafkaBroker, consume_all, headers

FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate

flow = Flow({name!r})
r = flow.source(simulate.sensors(devices={devices}, rate_hz=20, seed=11, speed={speed}, duration={duration!r},
                                 start="2026-01-01T00:00:00Z"))
w = r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), agg.max("temp"), name="summary")
w.to(kafka.sink({topic!r}, bootstrap={bootstrap!r}, drain_timeout="120s"), name="to_kafka")
w.to(files.sink({out!r}), name="to_file")
"""


def kafka_flow(
    tmp: Path,
    name: str,
    *,
    topic: str,
    bootstrap: str | None = None,
    devices: int = 5,
    speed: str = "None",
    duration: str = "20s",
) -> tuple[Path, Path]:
    out = tmp / f"{name}.jsonl"
    body = FLOW.format(
        name=name,
        devices=devices,
        speed=speed,
        duration=duration,
        topic=topic,
        bootstrap=bootstrap,
        out=str(out),
    )
    return write_flow(tmp / f"{name}.py", body), out


def test_kcat_reads_the_records_and_headers(tmp_path: Path, kafka_bootstrap: str) -> None:
    flow, out = kafka_flow(tmp_path, "kcat-test", topic="kcat-summary")
    res = edgeflow(
        "run", str(flow), "--kafka-bootstrap", kafka_bootstrap, "--state-dir", str(tmp_path / "st")
    )
    assert "100 delivered, 0 dropped" in res.stderr, res.stderr
    kc = subprocess.run(
        ["kcat", "-C", "-b", kafka_bootstrap, "-t", "kcat-summary", "-o", "beginning", "-e", "-q", "-f", "%k\t%h\t%s\n"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [ln.split("\t") for ln in kc.stdout.splitlines()]
    assert len(rows) == 100  # 5 devices x 20 one-second windows
    want = {orjson.dumps(r).decode() for r in records(out)}
    assert {value for _, _, value in rows} == want
    for key, hdrs, value in rows:
        h = dict(kv.split("=", 1) for kv in hdrs.split(","))
        rec = orjson.loads(value)
        assert key == rec["key"]
        assert h["edgeflow-id"] == f"kcat-test/summary/{rec['key']}/{rec['window_start']}"
        assert h["edgeflow-flow"] == "kcat-test"
        assert h["edgeflow-schema"] == "window/v1"
        assert h["edgeflow-version"] == "0"


def test_broker_outage_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, own_broker: KafkaBroker
) -> None:
    flow, out = kafka_flow(
        tmp_path,
        "outage",
        topic="outage-summary",
        bootstrap=own_broker.bootstrap,
        devices=10,
        speed="2",
        duration="70s",
    )
    proc = popen_edgeflow("run", str(flow), "--state-dir", str(tmp_path / "st"))
    deadline = time.monotonic() + 180  # generous: CI may run on a loaded machine
    while len(consume_all(own_broker.bootstrap, "outage-summary", timeout=5)) < 20:
        assert time.monotonic() < deadline and proc.poll() is None
    own_broker.stop()
    down_at = time.monotonic()
    before = len(lines(out))
    time.sleep(22)
    assert proc.poll() is None, "the flow must keep running while the broker is down"
    assert len(lines(out)) > before + 50, "the flow kept producing during the outage"
    own_broker.start()
    assert time.monotonic() - down_at >= 20
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    want = records(out)
    msgs = consume_all(own_broker.bootstrap, "outage-summary", expect=len(want))
    got = [orjson.loads(m.value) for m in msgs]
    ids = [headers(m)["edgeflow-id"] for m in msgs]
    assert len(ids) == len(set(ids)), (
        "no duplicates: the producer is idempotent and nothing crashed"
    )
    assert sorted(orjson.dumps(r) for r in got) == sorted(orjson.dumps(r) for r in want)
    per_key: dict[str, list[int]] = {}
    for r in got:
        per_key.setdefault(r["key"], []).append(r["window_start"])
    assert all(v == sorted(v) for v in per_key.values()), "in order per key"
    assert read_stats(tmp_path / "st" / "outbox.sqlite")["depth"] == 0, "the outbox drained to zero"
    assert f"{len(want)} delivered" in stderr


def test_kill_9_during_delivery_then_resume_gives_exactly_the_records_after_dedup(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    ref_flow, ref_out = kafka_flow(tmp_path, "ref", topic="ref-summary", devices=8, duration="60s")
    edgeflow(
        "run",
        str(ref_flow),
        "--kafka-bootstrap",
        kafka_bootstrap,
        "--state-dir",
        str(tmp_path / "ref-st"),
    )
    flow, _out = kafka_flow(
        tmp_path, "crashy", topic="crash-summary", devices=8, speed="5", duration="60s"
    )
    args = (
        "run",
        str(flow),
        "--kafka-bootstrap",
        kafka_bootstrap,
        "--state-dir",
        str(tmp_path / "st"),
        "--snapshot-every",
        "300ms",
    )
    proc = popen_edgeflow(*args)
    deadline = time.monotonic() + 180  # generous: CI may run on a loaded machine
    while len(consume_all(kafka_bootstrap, "crash-summary", timeout=5)) < 100:
        assert time.monotonic() < deadline and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    delivered_before = len(consume_all(kafka_bootstrap, "crash-summary"))
    assert delivered_before < 8 * 60, "killed mid-stream"
    edgeflow(*args, timeout=180)
    want = {orjson.dumps(r) for r in records(ref_out)}
    msgs = consume_all(kafka_bootstrap, "crash-summary", expect=len(want))
    by_id: dict[str, bytes] = {}
    for m in msgs:
        rid = headers(m)["edgeflow-id"]
        assert by_id.setdefault(rid, m.value) == m.value, (
            "a duplicate id always carries the same record"
        )
    assert {orjson.dumps(orjson.loads(v)) for v in by_id.values()} == want
    assert len(by_id) == len(want) == 8 * 60


PRIORITY_FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate

flow = Flow("full-outbox")
r = flow.source(simulate.sensors(devices=20, rate_hz=10, seed=4, speed=None, duration="60s"))
detail = r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), agg.p95("accel"), name="detail")
alerts = r.window(window.tumbling("10s"), agg.count(), agg.max("accel"), name="alerts")
sink_args = dict(bootstrap={bootstrap!r}, budget_bytes=150_000, drain_timeout={drain!r})
detail.to(kafka.sink("detail", priority="raw", **sink_args), name="detail_out")
alerts.to(kafka.sink("alerts", priority="alert", **sink_args), name="alerts_out")
detail.to(files.sink({all_detail!r}))
alerts.to(files.sink({all_alerts!r}))
"""


def test_full_outbox_drops_low_priority_first_and_counts_every_drop(
    tmp_path: Path, own_broker: KafkaBroker
) -> None:
    own_broker.stop()  # the uplink is down for the whole run
    paths = {
        "all_detail": str(tmp_path / "detail.jsonl"),
        "all_alerts": str(tmp_path / "alerts.jsonl"),
    }
    flow = write_flow(
        tmp_path / "f.py", PRIORITY_FLOW.format(bootstrap=own_broker.bootstrap, drain="2s", **paths)
    )
    state = tmp_path / "st"
    edgeflow("run", str(flow), "--state-dir", str(state), timeout=120)
    stats = read_stats(state / "outbox.sqlite")
    produced_detail, produced_alerts = (
        len(lines(Path(paths["all_detail"]))),
        len(lines(Path(paths["all_alerts"]))),
    )
    assert (produced_detail, produced_alerts) == (20 * 60, 20 * 6)
    assert stats.get("dropped.alerts_out", 0) == 0, "alerts are kept"
    assert stats["dropped.detail_out"] > 0, "the budget forced drops"
    assert stats["depth"] == produced_detail - stats["dropped.detail_out"] + produced_alerts
    # the uplink returns: the same command resumes (nothing new to read) and drains the backlog
    own_broker.start()
    flow.write_text(PRIORITY_FLOW.format(bootstrap=own_broker.bootstrap, drain="120s", **paths))
    edgeflow("run", str(flow), "--state-dir", str(state), timeout=180)
    detail = consume_all(own_broker.bootstrap, "detail")
    alerts = consume_all(own_broker.bootstrap, "alerts")
    assert len(alerts) == produced_alerts
    assert produced_detail - len(detail) == stats["dropped.detail_out"], (
        "drop counter = records missing downstream"
    )
    kept = [orjson.loads(m.value)["window_start"] for m in detail]
    produced = [r["window_start"] for r in records(Path(paths["all_detail"]))]
    assert min(kept) > min(produced) and max(kept) == max(produced), (
        "the oldest were dropped, the newest kept"
    )
    assert read_stats(state / "outbox.sqlite")["depth"] == 0


def _produce(bootstrap: str, topic: str, messages: list[Any]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for key, value in messages:
        producer.send(
            topic,
            key=key.encode(),
            value=value if isinstance(value, bytes) else orjson.dumps(value),
        )
    producer.flush()
    producer.close()


def test_kafka_source_reads_partitions_and_resumes_from_its_offsets(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic("readings-in", 2, 1)])
    admin.close()
    t0 = 1_767_225_600_000  # ms
    good = [
        (f"m{d}", {"machine": f"m{d}", "ts": t0 + i * 100, "rpm": 1000.0 + i})
        for d in range(3)
        for i in range(100)
    ]
    bad: list[Any] = [("m0", b"{broken"), ("m1", {"machine": "m1", "rpm": 1}), ("m2", [1, 2])]
    _produce(kafka_bootstrap, "readings-in", good + bad)
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    flow = write_flow(
        tmp_path / "src.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka
flow = Flow("from-kafka")
r = flow.source(kafka.source("readings-in", stop_at_end=True), key="machine", time="ts")
r.window(window.tumbling("5s"), agg.count(), agg.max("rpm")).to(files.sink({str(out)!r}))
r.dead_letters.to(files.sink({str(dead)!r}))
""",
    )
    state = str(tmp_path / "st")
    edgeflow("run", str(flow), "--kafka-bootstrap", kafka_bootstrap, "--state-dir", state)
    counts = Counter()
    for r in records(out):
        counts[r["key"]] += r["count"]
    assert counts == {"m0": 100, "m1": 100, "m2": 100}
    reasons = sorted(r["error"] for r in records(dead))
    assert len(reasons) == 3
    assert any("not valid JSON" in x for x in reasons) and any(
        "missing time field" in x for x in reasons
    )
    # more readings arrive; a second run reads only those (offsets come from the snapshot)
    _produce(
        kafka_bootstrap,
        "readings-in",
        [("m0", {"machine": "m0", "ts": t0 + 60_000 + i, "rpm": 5.0}) for i in range(7)],
    )
    edgeflow("run", str(flow), "--kafka-bootstrap", kafka_bootstrap, "--state-dir", state)
    new = [r for r in records(out) if r["window_start"] >= (t0 + 60_000) * 1_000_000]
    assert [(r["key"], r["count"]) for r in new] == [("m0", 7)]
    assert sum(r["count"] for r in records(out)) == 307, "nothing read twice"


def test_quickstart_publishes_to_kafka_when_a_broker_is_configured(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    state = tmp_path / "st"
    res = edgeflow(
        "deploy",
        "flows/quickstart.py",
        "--for",
        "3s",
        "--kafka-bootstrap",
        kafka_bootstrap,
        "--state-dir",
        str(state),
        timeout=90,
    )
    printed = [orjson.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    msgs = consume_all(kafka_bootstrap, "edgeflow.quickstart.summaries", expect=len(printed))
    assert len(printed) >= 50
    published = [orjson.loads(m.value) for m in msgs]
    assert sorted((r["key"], r["count"], r["mean_accel"]) for r in published) == sorted(
        (r["key"], r["count"], r["mean_accel"]) for r in printed
    )
    assert all(
        headers(m)["edgeflow-id"] == f"quickstart/summaries/{r['key']}/{r['window_start']}"
        for m, r in zip(msgs, published, strict=True)
    )
    assert read_stats(state / "outbox.sqlite")["depth"] == 0


def test_consume_all_of_a_topic_not_created_yet_is_empty_not_an_error(kafka_bootstrap: str) -> None:
    """Tests poll a flow's topic before the flow created it (on a loaded machine it can take
    a while): that is an empty list, not 'No partitions are currently assigned'."""
    started = time.monotonic()
    assert consume_all(kafka_bootstrap, f"not-created-{time.monotonic_ns()}", timeout=2) == []
    assert time.monotonic() - started < 60
