"""The Kafka source of the fog tier against a real broker: many topics or a pattern, records
as node flows publish them, de-duplication by ``edgeflow-id`` (also across a resume)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from edgeflow.batch import RecordBatch
from edgeflow.connectors import kafka
from edgeflow.connectors.base import SourceContext
from edgeflow.engine.counters import COUNTERS
from edgeflow.errors import EdgeflowError
from tests.helpers import edgeflow, records, write_flow
from tests.kafka_helpers import consume_all, headers

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns


def _topics(bootstrap: str, *names: tuple[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, parts, 1) for name, parts in names])
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, messages: list[tuple[Any, dict[str, str] | None]],
             partition: int | None = None, key: str | None = None) -> None:  # fmt: skip
    """(value, headers) messages; a value that is not bytes is sent as JSON. With a ``key``
    (as node flows send their records: the device key) copies go to the original's partition."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for value, hdrs in messages:
        producer.send(
            topic,
            key=None if key is None else key.encode(),
            value=value if isinstance(value, bytes) else orjson.dumps(value),
            headers=[(k, v.encode()) for k, v in (hdrs or {}).items()],
            partition=partition,
        )
    producer.flush()
    producer.close()


def _window(key: str, i: int, **extra: Any) -> dict[str, Any]:
    return {"key": key, "window_start": T0 + i * 10**9, "window_end": T0 + (i + 1) * 10**9,
            "count": 10, "mean_v": float(i), **extra}  # fmt: skip


def _node_headers(rid: str, schema: str = "window/v1", flow: str = "node1") -> dict[str, str]:
    return {"edgeflow-id": rid, "edgeflow-flow": flow, "edgeflow-schema": schema}


def _ctx(step: str) -> SourceContext:
    return SourceContext(flow="fog", step=step, key="key", time="t", fields=None)


def _drain(
    spec: Any, step: str, resume: dict[str, Any] | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Every item of every partition (stop_at_end), and each partition's last snapshot."""
    items: list[Any] = []
    snaps: dict[str, Any] = {}
    for name in spec.partitions():
        part = spec.open(name, (resume or {}).get(name), _ctx(step))
        deadline = time.monotonic() + 60
        try:
            while True:
                try:
                    items.extend(part.next_batch())
                except StopIteration:
                    break
                assert time.monotonic() < deadline, f"partition {name} did not reach its end"
            snaps[name] = part.snapshot()
        finally:
            part.close()
    return items, snaps


def _rows(items: list[Any], kind: str) -> list[dict[str, Any]]:
    return [r for it in items if isinstance(it, RecordBatch) and it.kind == kind for r in it.rows()]


def test_pattern_reads_every_partition_of_the_matching_topics_only(kafka_bootstrap: str) -> None:
    _topics(kafka_bootstrap, ("fogp.summary.a", 2), ("fogp.summary.b", 1), ("fogp.other", 1))
    for p in (0, 1):
        _produce(kafka_bootstrap, "fogp.summary.a",
                 [(_window(f"a{p}", i), _node_headers(f"a/{p}/{i}")) for i in range(5)], partition=p)  # fmt: skip
    _produce(kafka_bootstrap, "fogp.summary.b", [(_window("b", i), _node_headers(f"b/{i}")) for i in range(3)])  # fmt: skip
    _produce(kafka_bootstrap, "fogp.other", [(_window("x", i), _node_headers(f"x/{i}")) for i in range(4)])  # fmt: skip
    spec = kafka.source(pattern=r"fogp\.summary\..*", records=True, stop_at_end=True,
                        bootstrap=kafka_bootstrap)  # fmt: skip
    assert spec.yields_records and spec.problems() == []
    assert spec.partitions() == ["fogp.summary.a:0", "fogp.summary.a:1", "fogp.summary.b:0"]
    items, snaps = _drain(spec, "summaries")
    rows = _rows(items, "window")
    assert sorted(r["edgeflow_id"] for r in rows) == sorted(
        [f"a/{p}/{i}" for p in (0, 1) for i in range(5)] + [f"b/{i}" for i in range(3)]
    )
    assert {r["topic"] for r in rows} == {"fogp.summary.a", "fogp.summary.b"}
    assert {name: s["offset"] for name, s in snaps.items()} == {
        "fogp.summary.a:0": 5, "fogp.summary.a:1": 5, "fogp.summary.b:0": 3}  # fmt: skip
    # topics=[...] names partitions the same way; a single topic keeps the bare numbers
    both = kafka.source(topics=["fogp.summary.b", "fogp.other"], bootstrap=kafka_bootstrap)
    assert both.partitions() == ["fogp.other:0", "fogp.summary.b:0"]
    assert kafka.source("fogp.summary.a", bootstrap=kafka_bootstrap).partitions() == ["0", "1"]


def test_a_pattern_no_topic_matches_is_one_line_naming_it_and_the_broker(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeflow.connectors import kafka_source

    monkeypatch.setattr(kafka_source, "TOPIC_WAIT_S", 1.0)
    spec = kafka.source(pattern=r"nothing\.like\.this\..*", records=True, bootstrap=kafka_bootstrap)
    with pytest.raises(EdgeflowError) as err:
        spec.partitions()
    line = str(err.value)
    assert "\n" not in line
    assert r"nothing\\.like\\.this\\..*" in line and kafka_bootstrap in line, line
    missing = kafka.source(topics=["fogp-none-1"], bootstrap=kafka_bootstrap)
    with pytest.raises(EdgeflowError, match="Kafka topic 'fogp-none-1' does not exist at"):
        missing.partitions()


def test_records_of_a_node_flow_come_back_as_record_batches_and_replays_are_skipped(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A real node flow publishes window summaries; a second run from fresh state publishes
    the same records again (same edgeflow-id), as a node that lost its state would."""
    out = tmp_path / "node.jsonl"
    flow = write_flow(tmp_path / "node.py", f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate

flow = Flow("node7")
r = flow.source(simulate.sensors(devices=3, rate_hz=10, seed=3, speed=None, duration="10s",
                                 start="2026-01-01T00:00:00Z"))
w = r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), agg.max("temp"), name="summary")
w.to(kafka.sink("fogn.summary.node7", bootstrap={kafka_bootstrap!r}, drain_timeout="120s"))
w.to(files.sink({str(out)!r}))
""")  # fmt: skip
    for state in ("st1", "st2"):
        edgeflow("run", str(flow), "--state-dir", str(tmp_path / state), timeout=180)
    want = records(out)  # the second run's (files.sink starts its file afresh)
    assert len(want) == 30  # 3 devices x 10 one-second windows
    published = consume_all(kafka_bootstrap, "fogn.summary.node7", expect=60)
    assert len(published) == 60, "the second run published every record again"
    COUNTERS.reset()
    spec = kafka.source("fogn.summary.node7", records=True, stop_at_end=True, bootstrap=kafka_bootstrap)  # fmt: skip
    items, _ = _drain(spec, "summaries")
    assert COUNTERS.snapshot() == {"duplicates.summaries": 30}
    (rb,) = items
    assert isinstance(rb, RecordBatch) and rb.kind == "window" and rb.step == "summaries"
    assert rb.id_columns == ("edgeflow_id",) and rb.n == 30
    assert list(rb.columns) == [*want[0], "edgeflow_id", "edgeflow_flow", "topic", "t"]
    assert list(rb.columns) == ["key", "window_start", "window_end", "count", "mean_accel",
                                "max_temp", "edgeflow_id", "edgeflow_flow", "topic", "t"]  # fmt: skip
    rows = rb.rows()
    strip = ("edgeflow_id", "edgeflow_flow", "topic", "t")
    assert sorted(
        orjson.dumps({k: v for k, v in r.items() if k not in strip}) for r in rows
    ) == sorted(orjson.dumps(r) for r in want)
    ids = {headers(m)["edgeflow-id"] for m in published}
    assert {r["edgeflow_id"] for r in rows} == ids
    assert all(r["edgeflow_id"] == f"node7/summary/{r['key']}/{r['window_start']}" for r in rows)
    assert {r["edgeflow_flow"] for r in rows} == {"node7"}
    assert {r["topic"] for r in rows} == {"fogn.summary.node7"}
    assert isinstance(rb.columns["t"], np.ndarray) and rb.columns["t"].dtype == np.int64
    assert rb.columns["t"].tolist() == [r["window_start"] for r in rows]
    # dedup=0: every copy comes
    everything, _ = _drain(kafka.source("fogn.summary.node7", records=True, stop_at_end=True, dedup=0,
                                        bootstrap=kafka_bootstrap), "summaries")  # fmt: skip
    assert sum(it.n for it in everything) == 60


def test_duplicates_are_skipped_bounded_per_partition_and_remembered_across_a_resume(
    kafka_bootstrap: str,
) -> None:
    _topics(kafka_bootstrap, ("fogd", 1))
    first = [(_window("m1", i), _node_headers(f"id{i}")) for i in range(20)]
    again = [(_window("m1", i), _node_headers(f"id{i}")) for i in range(5)]
    no_id = {"edgeflow-schema": "window/v1"}
    anonymous = [(_window("m2", 0), no_id), (_window("m2", 0), no_id)]  # no id: both kept
    _produce(kafka_bootstrap, "fogd", first + again + anonymous)
    COUNTERS.reset()
    spec = kafka.source("fogd", records=True, stop_at_end=True, bootstrap=kafka_bootstrap)
    items, snaps = _drain(spec, "fog_in")
    got = [r["edgeflow_id"] for r in _rows(items, "window")]
    assert got == [f"id{i}" for i in range(20)] + ["fogd/0@25", "fogd/0@26"]
    assert COUNTERS.snapshot() == {"duplicates.fog_in": 5}
    # more come, some re-delivered from before the snapshot: a resumed run still knows them
    _produce(kafka_bootstrap, "fogd", [(_window("m1", i), _node_headers(f"id{i}")) for i in range(15, 25)])  # fmt: skip
    spec = kafka.source("fogd", records=True, stop_at_end=True, bootstrap=kafka_bootstrap)
    items, _ = _drain(spec, "fog_in", resume=snaps)
    assert [r["edgeflow_id"] for r in _rows(items, "window")] == [f"id{i}" for i in range(20, 25)]
    assert COUNTERS.snapshot() == {"duplicates.fog_in": 10}
    # the memory is bounded: with dedup=3 only the last 3 ids are known
    _produce(kafka_bootstrap, "fogd3", [(_window("m", i), _node_headers(rid)) for i, rid in enumerate("abcdad")])  # fmt: skip
    small = kafka.source(
        "fogd3", records=True, stop_at_end=True, dedup=3, bootstrap=kafka_bootstrap
    )
    items, _ = _drain(small, "fog_small")
    got = [r["edgeflow_id"] for r in _rows(items, "window")]
    assert got == ["a", "b", "c", "d", "a"], "a was forgotten before its copy came, d was not"
    # an older single-topic snapshot (a bare offset) still resumes
    items, _ = _drain(spec, "fog_in", resume={"0": 32})
    assert [r["edgeflow_id"] for r in _rows(items, "window")] == ["id20", "id21", "id22", "id23", "id24"]  # fmt: skip


def test_messages_that_are_not_records_are_dead_letters_with_the_reason(
    kafka_bootstrap: str,
) -> None:
    sketch = {"alpha": 0.01, "zero": 0, "pos": [10, [1, 2, 3]], "neg": [0, []]}
    _produce(kafka_bootstrap, "fogg", [
        (_window("m1", 0, sketch_v=sketch), _node_headers("g0")),
        (b"{broken", _node_headers("g1")),
        ([1, 2, 3], _node_headers("g2")),
        ("just text", None),
        ({"key": "m1", "count": 3}, _node_headers("g3")),  # a window record without window_start
        ({"key": "m1", "t": T0 + 5, "score": 4.5}, _node_headers("g4", "anomaly/v1")),
        ({"note": "hello"}, None),  # no schema: a plain record, timed by the message
        ({"key": "m1", "window_start": "late", "count": 1}, _node_headers("g5")),
        (b'{"key": "m1", "window_start": 1, "s": {"b": 1, "b": 2}}', _node_headers("g6")),
        (b'{"key": "m1", "window_start": 1, "s": [[[[[[[[1]]]]]]]]}', _node_headers("g7")),
        (b'{"key": "m1", "pad": "' + b"x" * 300_000 + b'"}', _node_headers("g8")),
    ])  # fmt: skip
    before = time.time_ns()
    spec = kafka.source("fogg", records=True, stop_at_end=True, bootstrap=kafka_bootstrap)
    items, _ = _drain(spec, "fog")
    dead = {r["source"]: r["error"] for r in _rows(items, "dead_letter")}
    assert set(dead) == {f"fogg/0@{i}" for i in (1, 2, 3, 4, 7, 8, 9, 10)}
    assert "duplicate key 'b'" in dead["fogg/0@8"]
    assert "nested deeper than 8 levels" in dead["fogg/0@9"]
    assert "over the 262144-byte limit" in dead["fogg/0@10"]
    assert "not valid JSON" in dead["fogg/0@1"]
    assert "is an array" in dead["fogg/0@2"] and "is a string" in dead["fogg/0@3"]
    assert "without its time column 'window_start'" in dead["fogg/0@4"]
    assert "time column 'window_start'" in dead["fogg/0@7"]
    (win,) = _rows(items, "window")
    assert win["sketch_v"] == sketch and win["t"] == T0
    (anomaly,) = _rows(items, "anomaly")
    assert (
        anomaly["t"] == T0 + 5 and anomaly["score"] == 4.5 and anomaly["edgeflow_flow"] == "node1"
    )
    (plain,) = _rows(items, "record")
    assert plain["note"] == "hello" and plain["edgeflow_id"] == "fogg/0@6"
    assert plain["edgeflow_flow"] is None
    assert before - 120 * 10**9 < plain["t"] <= time.time_ns(), "the Kafka message time, in ns"
    # the columns of one kind are the union of its records' keys; a missing key is None
    kinds = {it.kind: it for it in items}
    assert kinds["window"].columns["sketch_v"] == [sketch]


def test_a_readings_flow_over_two_topics_skips_duplicates_and_says_so(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    _topics(kafka_bootstrap, ("fogr.a", 2), ("fogr.b", 1))
    ms = T0 // 10**6
    for topic, dev in (("fogr.a", "d1"), ("fogr.b", "d2")):
        msgs = [({"device": dev, "ts": ms + i * 100, "v": float(i)}, {"edgeflow-id": f"{dev}/{i}"}) for i in range(50)]  # fmt: skip
        _produce(kafka_bootstrap, topic, msgs + msgs[:10], key=dev)  # 10 re-delivered
    _produce(kafka_bootstrap, "fogr.a", [({"device": "d3", "ts": ms, "v": 1.0}, None)] * 2)
    out = tmp_path / "out.jsonl"
    flow = write_flow(tmp_path / "fog.py", f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka
flow = Flow("fog-readings")
r = flow.source(kafka.source(topics=["fogr.a", "fogr.b"], stop_at_end=True, fields=["v"]),
                key="device", time="ts", name="plant")
r.window(window.tumbling("10s"), agg.count(), agg.sum("v")).to(files.sink({str(out)!r}))
""")  # fmt: skip
    res = edgeflow("run", str(flow), "--kafka-bootstrap", kafka_bootstrap, "--state-dir", str(tmp_path / "st"))  # fmt: skip
    got = {r["key"]: (r["count"], r["sum_v"]) for r in records(out)}
    assert got == {
        "d1": (50, float(sum(range(50)))),
        "d2": (50, float(sum(range(50)))),
        "d3": (2, 2.0),
    }
    assert "duplicates skipped (same edgeflow-id): 20 by plant" in res.stderr, res.stderr


def test_argument_problems_are_one_line_each(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "bad.py", """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka
flow = Flow("bad-args")
r = flow.source(kafka.source(pattern="edgeflow\\\\.summary\\\\.(", dedup=-5, bootstrap="127.0.0.1:1",
                             fields=["v"]), key="k", time="t")
r.window(window.tumbling("1s"), agg.count()).to(files.sink("/dev/null"))
""")  # fmt: skip
    res = edgeflow("validate", str(flow), check=False)
    assert res.returncode == 2, res
    text = res.stdout + res.stderr
    assert "Traceback" not in text
    assert "pattern= is not a valid regular expression: missing ), unterminated subpattern" in text
    assert "dedup=-5: give how many record ids each partition remembers" in text
    assert kafka.source("t", pattern="x.*", bootstrap="b:1").problems() == [
        "kafka.source('t'): give exactly one of a topic, topics=[...] or pattern='regex' (2 given)"
    ]
    assert kafka.source(topics=[], bootstrap="b:1").problems() == [
        "kafka.source(topics=[]): topics= must be a non-empty list of topic names"
    ]
    assert kafka.source(topics=["a"], dedup=True, bootstrap="b:1").problems() == [
        "kafka.source(topics=['a']): dedup=True: give how many record ids each partition "
        "remembers to skip duplicates, a whole number >= 0 (0 turns it off)"
    ]
    assert not kafka.source("t", bootstrap="b:1").yields_records


def test_skipped_duplicates_are_a_prometheus_counter_per_step() -> None:
    from edgeflow.engine.metrics import _Collector

    COUNTERS.reset()
    COUNTERS.add("duplicates.summaries", 7)
    try:
        fams = {f.name: f for f in _Collector("fog", None).collect()}  # type: ignore[attr-defined]
    finally:
        COUNTERS.reset()
    (sample,) = [
        s for s in fams["edgeflow_duplicates_skipped"].samples if s.name.endswith("_total")
    ]
    assert sample.labels == {"flow": "fog", "step": "summaries"} and sample.value == 7


def test_the_id_memory_is_bounded_and_survives_a_snapshot_exactly() -> None:
    from edgeflow.connectors.recent_ids import RecentIds

    mem = RecentIds(1000)
    assert [mem.seen(f"node/summary/dev-{i % 1500}/{i % 1500}") for i in range(3000)].count(
        True
    ) == 0
    assert len(mem) == 1000, "1500 distinct ids went round twice: each was forgotten in between"
    again = RecentIds.load(mem.dump(), 1000)
    assert again.dump() == mem.dump() and "node/summary/dev-1499/1499" in again
    assert "node/summary/dev-499/499" not in again
    assert again.seen("node/summary/dev-1499/1499") and not again.seen("a new one")
    fewer = RecentIds.load(mem.dump(), 10)
    assert len(fewer) == 10 and "node/summary/dev-1490/1490" in fewer
    with pytest.raises(ValueError, match="not a saved id memory"):
        RecentIds.load(b"short", 10)
