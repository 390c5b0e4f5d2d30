"""Exactly-once into Kafka (``kafka.sink(..., exactly_once=True)``) against a real broker.

A ``read_committed`` consumer must see every record once across kill -9 of the node and a
broker outage; a forwarder that died after a commit (before deleting its rows) or with a
transaction open must not make anything visible twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgeflow.connectors import kafka
from edgeflow.connectors.forwarder import POSITIONS_TOPIC, Forwarder
from edgeflow.connectors.outbox import LANES, Outbox, OutRecord, read_stats
from tests.helpers import edgeflow, popen_edgeflow, wait_for, write_flow
from tests.kafka_helpers import KafkaBroker, consume_all, headers

FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import kafka, simulate

flow = Flow("eos")
r = flow.source(simulate.sensors(devices=10, rate_hz=10, seed=7, speed={speed}, duration="300s",
                                 start="2026-01-01T00:00:00Z"))
w = r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), name="summary")
w.to(kafka.sink({topic!r}, bootstrap={bootstrap!r}, exactly_once=True, drain_timeout="120s"),
     name="to_kafka")
"""
RECORDS = 10 * 300  # 10 devices x 300 one-second windows


def committed(bootstrap: str, topic: str, expect: int | None = None) -> list[Any]:
    return consume_all(bootstrap, topic, expect=expect, isolation_level="read_committed")


def delivered(state: Path) -> int:
    """Records the node's forwarders delivered (committed) so far, from its outbox."""
    try:
        return read_stats(state / "outbox.sqlite").get("delivered.to_kafka", 0)
    except sqlite3.Error:
        return 0  # not made yet, or busy


def test_kill_9_ten_times_and_a_30s_broker_outage_a_read_committed_consumer_sees_each_record_once(
    tmp_path: Path, own_broker: KafkaBroker
) -> None:
    boot = own_broker.bootstrap
    ref = write_flow(tmp_path / "ref.py", FLOW.format(speed=None, topic="eos-ref", bootstrap=boot))
    edgeflow("run", str(ref), "--state-dir", str(tmp_path / "ref-st"), timeout=120)
    want = [headers(m)["edgeflow-id"] for m in committed(boot, "eos-ref", expect=RECORDS)]
    assert len(want) == len(set(want)) == RECORDS

    flow = write_flow(tmp_path / "f.py", FLOW.format(speed=4, topic="eos-node", bootstrap=boot))
    state = tmp_path / "st"
    args = ("run", str(flow), "--state-dir", str(state), "--snapshot-every", "300ms")
    for kill in range(10):
        proc = popen_edgeflow(*args)
        try:
            start = delivered(state)
            # kill during delivery: once this life's forwarders committed some records
            wait_for(lambda: delivered(state) >= start + 10 or proc.poll() is not None,  # noqa: B023
                     timeout=120, what=f"deliveries before kill {kill + 1}")  # fmt: skip
            if kill == 5:  # the broker is away for 30 s while the node runs
                own_broker.stop()
                time.sleep(30)
                assert proc.poll() is None, "the node keeps running while the broker is down"
                own_broker.start()
                back = delivered(state)
                wait_for(lambda: delivered(state) >= back + 10 or proc.poll() is not None,  # noqa: B023
                         timeout=120, what="deliveries after the outage")  # fmt: skip
            assert proc.poll() is None, f"the run ended before kill {kill + 1}"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert 0 < delivered(state) < RECORDS, "killed during delivery"
    edgeflow(*args, timeout=180)  # the last run goes to the end of the input and drains

    msgs = committed(boot, "eos-node", expect=RECORDS)
    ids = [headers(m)["edgeflow-id"] for m in msgs]
    seen = len(consume_all(boot, "eos-node", isolation_level="read_uncommitted"))
    assert len(ids) == RECORDS, f"{len(ids)} committed records ({seen} read_uncommitted)"
    assert len(set(ids)) == len(ids), "no record twice"
    assert sorted(ids) == sorted(want), "the same records as the run without kills"
    by_id = {headers(m)["edgeflow-id"]: orjson.loads(m.value) for m in msgs}
    ref_by_id = {
        headers(m)["edgeflow-id"]: orjson.loads(m.value) for m in committed(boot, "eos-ref")
    }
    assert by_id == ref_by_id, "and the same values"


def _records(n: int, topic: str) -> list[OutRecord]:
    return [
        OutRecord(
            topic,
            f"dev-{i % 5}".encode(),
            orjson.dumps({"i": i}),
            orjson.dumps([["edgeflow-id", f"t/{i}"], ["edgeflow-schema", "window/v1"]]),
        )
        for i in range(n)
    ]


def test_rows_a_dead_forwarder_committed_are_not_sent_again_and_its_open_transaction_is_fenced(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    from kafka import KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    topic = f"eos-{uuid.uuid4().hex[:8]}"
    box = Outbox(tmp_path / "outbox.sqlite")
    box.append("to_kafka", 2, _records(100, topic))
    config = kafka.KafkaSink(topic).producer_config()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        if POSITIONS_TOPIC not in admin.list_topics():
            admin.create_topics([NewTopic(POSITIONS_TOPIC, LANES, 1)])
    finally:
        admin.close()
    # a forwarder (one process: all lanes) committed rows 1..60 with their position, did not
    # delete them, then sent rows 61..70 in a transaction it never finished, and died
    lanes = "-".join(map(str, range(LANES)))
    dead = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=f"edgeflow-outbox-{box.identity}-lanes-{lanes}",
        **config,
    )
    rows, _ = box.fetch(list(range(LANES)), 0, 1000)
    dead.init_transactions()
    for lo, hi, commit in ((0, 60, True), (60, 70, False)):
        dead.begin_transaction()
        for r in rows[lo:hi]:
            hdrs = [(k, v.encode()) for k, v in orjson.loads(r.headers)]
            dead.send(topic, key=r.key, value=r.value, headers=hdrs, partition=0)
        dead.flush()
        if commit:
            dead.send_offsets_to_transaction(
                {TopicPartition(POSITIONS_TOPIC, x): OffsetAndMetadata(rows[hi - 1].seq, "", -1)
                 for x in range(LANES)},
                f"edgeflow-outbox-{box.identity}",
            )  # fmt: skip
            dead.commit_transaction()
    box.release(list(range(LANES)), 1)  # it died: nothing is in flight any more

    fw = Forwarder(box.path, kafka_bootstrap, config, 1, exactly_once=True)
    try:
        wait_for(lambda: box.depth()[0] == 0, timeout=90, what="the outbox drained")
    finally:
        fw.stop(10)
        dead.close(0)  # the fenced one: nothing it does now counts
    msgs = committed(kafka_bootstrap, topic, expect=100)
    ids = [headers(m)["edgeflow-id"] for m in msgs]
    assert sorted(ids) == sorted(f"t/{i}" for i in range(100)), "each record once"
    # the dead one's open transaction really wrote rows 61..70 (aborted: not committed)
    assert len(consume_all(kafka_bootstrap, topic, expect=110)) == 110
    assert box.stats()["delivered.to_kafka"] == 100
    assert box.committed_ids_after("to_kafka", 0) == {f"t/{i}" for i in range(100)}


def test_exactly_once_is_validated_and_described() -> None:
    on = kafka.sink("t", exactly_once=True)
    assert on.problems() == []
    assert on.guarantee() == "exactly-once"
    assert on.describe()["delivery"] == "exactly-once into Kafka for read_committed consumers"
    assert "delivery" not in kafka.sink("t").describe()
    bad = kafka.sink("t", exactly_once="yes")  # type: ignore[arg-type]
    assert bad.problems() == ["exactly_once='yes': give True or False"]
    txid = kafka.sink("t", exactly_once=True, producer_options={"transactional_id": "x"})
    assert any("transactional_id" in p for p in txid.problems())


def test_sinks_sharing_an_outbox_must_agree_on_exactly_once(tmp_path: Path) -> None:
    from edgeflow.connectors.outbox import OutboxError

    box = Outbox(tmp_path / "outbox.sqlite")
    config = kafka.KafkaSink("t").producer_config()
    boot = "127.0.0.1:1"
    fw = Forwarder.ensure(box, boot, config, {}, 1, who="kafka sink 'a'", exactly_once=True)
    try:
        with pytest.raises(OutboxError, match="give every kafka sink of the flow the same"):
            Forwarder.ensure(box, boot, config, {}, 1, who="kafka sink 'b'")
    finally:
        fw.release(0)
