"""Hostile input at every source (issue 12, items 2, 4, 11, 12, 15 and 19).

Bad records become dead letters with a reason and an id of their own; good records pass;
nothing crashes, nothing is lost, memory stays bounded. The last test throws all of it at
the files, MQTT and Kafka sources of one flow run as a subprocess and measures its peak RSS.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from edgeflow.batch import Batch, RecordBatch
from edgeflow.connectors import files
from edgeflow.connectors.base import SourceContext
from edgeflow.connectors.parse import BatchBuilder, dead_letters, parse_time
from edgeflow.connectors.payloads import Decoder, Limits, PayloadError, Schema
from tests.helpers import ROOT, edgeflow, records, write_flow
from tests.mqtt_helpers import prime_session, publish_all

NOW_S = int(time.time()) // 10 * 10 - 120  # a 10-s boundary two minutes ago
MB10 = 10 * 1024 * 1024


def read_all(
    path: Path, key: str = "dev", **options: Any
) -> tuple[list[Batch], list[dict[str, Any]]]:
    """Every batch and dead letter the files source gives for ``path``."""
    spec = files.source(str(path), **options)
    part = spec.open(str(path), None, SourceContext("f", "src", key, "ts", ("temp",)))
    batches: list[Batch] = []
    dls: list[dict[str, Any]] = []
    try:
        while True:
            for item in part.next_batch():
                if isinstance(item, Batch):
                    batches.append(item)
                else:
                    dls.extend(item.rows())
    except StopIteration:
        pass
    finally:
        part.close()
    return batches, dls


def run_until(
    tmp_path: Path, args: list[str], done: Callable[[], bool], timeout: float = 110
) -> tuple[int, str, float]:
    """Run ``edgeflow run ARGS --for 120s`` until ``done()`` (polled), then stop it with
    SIGTERM (a graceful stop). Returns the exit code, the output and the peak RSS in MB of
    the flow and its children (os.wait4 of that process, not of every child of pytest)."""
    log_path = tmp_path / f"run-{uuid.uuid4().hex[:6]}.out"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeflow", "run", *args, "--for", "120s"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        while not pid and time.monotonic() < deadline and not done():
            time.sleep(0.2)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if not pid:
            proc.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, log_path.read_text(errors="replace"), usage.ru_maxrss / 1024


def keys_of(batches: list[Batch]) -> list[str]:
    return [k for b in batches for k in b.key_array().tolist()]


def line(dev: Any, ts: Any, temp: Any = 1.0) -> bytes:
    return orjson.dumps({"dev": dev, "ts": ts, "temp": temp})


# -- item 2: times outside int64 ns, ambiguous epochs, far future ------------------------------
def test_iso_times_outside_int64_ns_are_dead_letters_and_the_good_lines_pass(
    tmp_path: Path,
) -> None:
    p = tmp_path / "in.jsonl"
    bad = ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2262-04-12T00:00:00Z"]
    body = [line("a", NOW_S), *(line("a", t) for t in bad), line("b", NOW_S + 1)]
    p.write_bytes(b"\n".join(body) + b"\n")
    batches, dls = read_all(p)
    assert keys_of(batches) == ["a", "b"], "the good lines of the batch are kept"
    assert [d["source"] for d in dls] == [f"{p}:{i}" for i in (2, 3, 4)]
    assert "after 2262-04-11" in dls[0]["error"] and "'9999-12-31T23:59:59Z'" in dls[0]["error"]
    assert "before 1677-09-21" in dls[1]["error"]
    assert "after 2262-04-11" in dls[2]["error"]


def test_epoch_seconds_and_ms_in_year_9999_are_refused_not_read_as_1978() -> None:
    for v in (253402300799, 253402300799000, "253402300799"):
        with pytest.raises(ValueError, match=r"ambiguous.*1978.*time_unit="):
            parse_time(v, "auto")
    assert parse_time(1_790_000_000_000, "auto") == 1_790_000_000 * 10**9
    assert parse_time(253402300799, "ms") == 253402300799 * 10**6, "an explicit unit is obeyed"
    with pytest.raises(ValueError, match="beyond the year 2262"):
        parse_time(253402300799, "s")


def test_files_source_bounds_times_like_mqtt(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    future = (time.time_ns() // 10**9 + 40 * 86400) * 1000  # 40 days ahead, in ms
    p.write_bytes(
        b"\n".join([line("a", NOW_S), line("a", future), line("a", NOW_S + 1), line("a", 1)])
        + b"\n"
    )
    batches, dls = read_all(p)
    assert [d["source"].rsplit(":", 1)[1] for d in dls] == ["2"]
    assert "in the future" in dls[0]["error"] and "max_future" in dls[0]["error"]
    assert len(keys_of(batches)) == 3, "old times replay: files have no max_past by default"
    _, dls = read_all(p, max_past="30d", max_future=None)
    assert [d["source"].rsplit(":", 1)[1] for d in dls] == ["4"]
    assert "in the past" in dls[0]["error"]


# -- item 4: long keys ------------------------------------------------------------------------
def test_a_key_over_256_bytes_is_a_dead_letter_in_every_format(tmp_path: Path) -> None:
    ok, long_ = "k" * 256, "é" * 129  # 256 and 258 bytes of UTF-8
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"\n".join(line(k, NOW_S) for k in (ok, long_, "x" * 50_000)) + b"\n")
    batches, dls = read_all(p)
    assert keys_of(batches) == [ok]
    assert len(dls) == 2 and all("keys are at most 256 bytes" in d["error"] for d in dls)
    assert all(len(d["error"]) < 300 for d in dls), "the reason does not echo the key"
    c = tmp_path / "in.csv"
    c.write_text(f"dev,ts,temp\n{ok},{NOW_S},1\n{long_},{NOW_S},1\n")
    batches, dls = read_all(c)
    assert keys_of(batches) == [ok] and "at most 256 bytes" in dls[0]["error"]
    mqtt = Decoder("json", Schema("topic[1]", "ts", ("temp",), {}, {}), Limits())
    with pytest.raises(PayloadError, match="at most 256 bytes"):
        mqtt.decode(b'{"ts": 1790000000, "temp": 1}', f"p/{long_}/t", 1_790_000_000 * 10**9)


def test_batches_do_not_grow_with_the_longest_key() -> None:
    """One 20,000-character key among 10,000 readings: fixed-width key arrays would take
    10,000 x 80 KB = 800 MB; interned keys take the key once."""
    keys = ["x" * 20_000] + [f"k{i % 50}" for i in range(9_999)]
    tracemalloc.start()
    try:
        b = BatchBuilder(("temp",), "src")
        for i, k in enumerate(keys):
            b.add((k, i, [1.0]))
        (batch,) = b.items()
        direct = Batch.from_columns(keys, np.arange(len(keys)), {"temp": np.ones(len(keys))})
        as_records = batch.key_array()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB"
    assert isinstance(batch, Batch) and len(batch.keys) == 51 and direct.keys == batch.keys
    assert batch.keys == tuple(sorted(batch.keys)), "key names stay sorted"
    assert as_records.tolist() == keys and direct.key_array().tolist() == keys


# -- item 12: truncated echoes ------------------------------------------------------------------
def test_dead_letters_truncate_the_echoed_input_and_reason_with_a_marker(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    huge = line("a", NOW_S, "y" * MB10)
    p.write_bytes(huge + b"\n" + line("a", NOW_S) + b"\n")
    batches, dls = read_all(p)
    assert keys_of(batches) == ["a"]
    (dl,) = dls
    assert len(dl["error"]) <= 1024 and len(dl["raw"]) <= 1024
    assert "over the 262144-byte limit" in dl["error"]
    assert dl["raw"].endswith(f"...[truncated, {len(huge)} bytes]")
    assert dl["raw"].startswith('{"dev":"a"')
    # a huge reason is cut too, and escaped invalid UTF-8 stays within the limit
    rb = dead_letters("s", [("t", b"\xff" * 5000, "why " * 100_000)])
    (row,) = rb.rows()
    assert len(row["raw"]) <= 1024 and row["raw"].endswith("...[truncated, 5000 bytes]")
    assert len(row["error"]) <= 1024 and row["error"].endswith("...[truncated, 400000 bytes]")
    # with the line limit raised, the parser's reason does not echo the 10 MB value
    _, dls = read_all(p, max_payload=20 * 1024 * 1024)
    assert "is a str, expected a number" in dls[0]["error"] and len(dls[0]["error"]) < 200
    assert dls[0]["raw"].endswith(f"...[truncated, {len(huge)} bytes]")


# -- item 19: one set of rules ------------------------------------------------------------------
def test_every_source_refuses_duplicate_keys_and_reads_a_bom(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_bytes(
        b"\xef\xbb\xbf"
        + line("a", NOW_S)
        + b"\n"
        + b'{"dev": "a", "ts": %d, "temp": 1, "temp": 2}\n' % NOW_S
        + b'{"dev": "a", "ts": %d, "temp": 1, "\\u0074emp": 2}\n' % NOW_S
        + b'{"dev": "a", "ts": %d, "temp": 3, "x": {"y": 1, "y": 2}}\n' % NOW_S
    )
    batches, dls = read_all(p)
    assert keys_of(batches) == ["a"], "a byte-order mark before the first line is skipped"
    assert [d["source"].rsplit(":", 1)[1] for d in dls] == ["2", "3", "4"]
    assert all("duplicate key" in d["error"] for d in dls)
    mqtt = Decoder("json", Schema("topic[1]", "ts", ("v",), {}, {}), Limits())
    with pytest.raises(PayloadError, match="duplicate key 'v'"):
        mqtt.decode(b'{"ts": 1790000000, "v": 1, "\\u0076": 2}', "p/k/t", 1_790_000_000 * 10**9)
    c = tmp_path / "in.csv"
    c.write_bytes(
        b"\xef\xbb\xbfdev,ts,temp\r\n"
        + b"".join(b"d%d,%d,%d\r\n" % (i, NOW_S, i) for i in range(3))
    )
    batches, dls = read_all(c)
    assert dls == [] and keys_of(batches) == ["d0", "d1", "d2"]
    assert files.source(str(c)).columns() == ["dev", "ts", "temp"]


# -- item 15 ----------------------------------------------------------------------------------
def test_a_files_sink_that_writes_nothing_replaces_the_earlier_output(tmp_path: Path) -> None:
    data, dead = tmp_path / "in.csv", tmp_path / "dead.jsonl"
    data.write_text(f"dev,ts,temp\na,{NOW_S},1\na,oops,2\n")
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files
flow = Flow("empty-sink")
r = flow.source(files.source({str(data)!r}), key="dev", time="ts")
r.window(window.tumbling("10s"), agg.count()).to(files.sink({str(tmp_path / "out.jsonl")!r}))
r.dead_letters.to(files.sink({str(dead)!r}))
""",
    )
    edgeflow("run", str(flow))
    assert len(records(dead)) == 1
    data.write_text(f"dev,ts,temp\na,{NOW_S},1\n")  # this time nothing is bad
    edgeflow("run", str(flow))
    assert dead.exists() and records(dead) == [], "the earlier run's dead letter is gone"


# -- item 11 ----------------------------------------------------------------------------------
def test_each_mqtt_dead_letter_has_its_own_id(tmp_path: Path, mqtt_port: int) -> None:
    dead = tmp_path / "dead.jsonl"
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, mqtt
flow = Flow("dl-ids")
r = flow.source(mqtt.source("ids12/#", port={mqtt_port}, fields=["t"]), key="topic[1]", time="received", name="probe")
r.window(window.tumbling("10s"), agg.count()).to(files.sink({str(tmp_path / "out.jsonl")!r}))
r.dead_letters.to(files.sink({str(dead)!r}))
""",
    )
    prime_session(mqtt_port, "edgeflow-dl-ids-probe", ["ids12/#"])
    bad = [b"not json %d" % (i % 4) for i in range(16)]  # 4 distinct payloads, 4 times each
    publish_all(mqtt_port, [("ids12/dev1/t", p) for p in bad])

    def done() -> bool:
        try:
            return len(records(dead)) >= 16
        except orjson.JSONDecodeError:  # a line being written
            return False

    code, output, _ = run_until(tmp_path, [str(flow)], done)
    assert code == 0, output
    dls = records(dead)
    assert [d["raw"] for d in dls] == [p.decode() for p in bad]
    rb = RecordBatch(
        "dead_letter", "probe", {"source": [d["source"] for d in dls]}, len(dls), ("source",)
    )
    ids = rb.record_ids("dl-ids")  # the edgeflow-id the Kafka sink would give each
    assert len(set(ids)) == 16 and all(i.startswith("dl-ids/probe/ids12/dev1/t#") for i in ids)


# -- must-show 2: everything at once, at all three sources ---------------------------------------
def hostile_json(now_s: int, big: int) -> list[tuple[bytes, str]]:
    """(payload, a words of the reason it must be refused with), for JSON sources."""
    t = now_s * 1000
    far = (int(time.time()) + 30 * 86400) * 1000
    deep = b'{"a":' * 20 + b"1" + b"}" * 20
    return [
        (line("g0", "9999-12-31T23:59:59Z"), "after 2262-04-11"),
        (line("g0", "0001-01-01T00:00:00Z"), "before 1677-09-21"),
        (line("g0", "2262-04-12T00:00:00Z"), "after 2262-04-11"),
        (line("g0", 253402300799), "ambiguous"),
        (line("g0", 253402300799000), "ambiguous"),
        (line("g0", far), "in the future"),
        (line("x" * 50_000, t), "at most 256 bytes"),
        (line("é" * 200, t), "at most 256 bytes"),
        (line("", t), "not a non-empty string"),
        (b'{"dev": "g0", "ts": %d, "temp": 1, "temp": 2}' % t, "duplicate key"),
        (b'{"dev": "g0", "ts": %d, "temp": 1, "\\u0074emp": 2}' % t, "duplicate key"),
        (b"\xef\xbb\xbf" + line("g0", t), "not valid JSON"),
        (line("g0", t, "z" * big), "-byte limit"),
        (line("g0", t, "NaN"), "is a str"),
        (line("g0", t, "-Infinity"), "is a str"),
        (b'{"dev": "g0", "ts": %d, "temp": NaN}' % t, "not valid JSON"),
        (b'{"dev": "g0", "ts": %d, "temp": 1e400}' % t, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (deep, "nested deeper"),
        (b'{"dev": "g\xff\xfe", "ts": %d, "temp": 1}' % t, "not valid JSON"),
        (b"[" + line("g1", t) + b", " + line("g1", "soon") + b"]", "reading 1"),
        *((b"garbage", "not valid JSON") for _ in range(4)),  # the same bytes, 4 dead letters
    ]


def good_json(now_s: int, n: int) -> list[tuple[str, bytes]]:
    return [
        (f"g{i % 5}", line(f"g{i % 5}", (now_s - 60) * 1000 + i * 10, float(i % 9)))
        for i in range(n)
    ]


def interleave(good: list[bytes], bad: list[bytes]) -> list[bytes]:
    out = list(good)
    step = max(1, len(good) // (len(bad) + 1))
    for i, b in enumerate(bad):
        out.insert((i + 1) * step + i, b)
    return out


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
    for v in values:
        producer.send(topic, v)
    producer.flush()
    producer.close()


def check_dead_letters(name: str, dls: list[dict[str, Any]], reasons: list[str]) -> None:
    assert len(dls) == len(reasons), (name, [d["error"] for d in dls])
    assert len({d["source"] for d in dls}) == len(dls), f"{name}: every dead letter has its own id"
    assert all(len(d["raw"]) <= 1024 and 0 < len(d["error"]) <= 1024 for d in dls), name
    for d, want in zip(dls, reasons, strict=True):
        assert want in d["error"], (name, want, d["error"])


def test_hostile_input_at_files_mqtt_and_kafka_sources(
    tmp_path: Path, mqtt_port: int, kafka_bootstrap: str
) -> None:
    # files: a JSON-lines file and a CSV file, each starting with a byte-order mark
    good_f = good_json(NOW_S, 10_000)
    bad_f = hostile_json(NOW_S, MB10)
    jl_lines = interleave([g for _, g in good_f], [b for b, _ in bad_f])
    jl = tmp_path / "in.jsonl"
    jl.write_bytes(b"\xef\xbb\xbf" + b"\n".join(jl_lines) + b"\n")
    t = NOW_S - 30
    csv_good = [f"c{i % 3},{t + i},{i}".encode() for i in range(300)]
    csv_bad = [
        (b"c0,9999-12-31T23:59:59Z,1", "after 2262-04-11"),
        (b"c0,253402300799,1", "ambiguous"),
        (f"{'k' * 300},{t},1".encode(), "at most 256 bytes"),
        (f"c0,{t},NaN".encode(), "not a finite number"),
        (f"c0,{t},-inf".encode(), "not a finite number"),
        (f"c0,{t},".encode() + b"9" * MB10, "-byte limit"),
        (f"c0,{t},1\xff".encode("latin-1"), "not valid UTF-8"),
        (f"c0,{t}".encode(), "expected 3 columns"),
    ]
    csv_lines = interleave(csv_good, [b for b, _ in csv_bad])
    cs = tmp_path / "in.csv"
    cs.write_bytes(b"\xef\xbb\xbfdev,ts,temp\n" + b"\n".join(csv_lines) + b"\n")
    # MQTT: every message on one topic (ordered), key from the payload
    good_m = good_json(NOW_S, 2_000)
    bad_m = hostile_json(NOW_S, MB10)
    m_msgs = interleave([g for _, g in good_m], [b for b, _ in bad_m])
    # Kafka: a message is at most 1 MB there, so the big string is 900 KB
    good_k = good_json(NOW_S, 2_000)
    bad_k = hostile_json(NOW_S, 900 * 1024)
    k_msgs = interleave([g for _, g in good_k], [b for b, _ in bad_k])
    topic = f"hostile12-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, k_msgs)
    out = {s: tmp_path / f"out-{s}.jsonl" for s in ("files", "mqtt", "kafka")}
    dead = {s: tmp_path / f"dead-{s}.jsonl" for s in ("files", "mqtt", "kafka")}
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, mqtt
flow = Flow("hostile-all")
sources = {{
    "files": files.source([{str(jl)!r}, {str(cs)!r}]),
    "mqtt": mqtt.source("hostile12/#", port={mqtt_port}, fields=["temp"]),
    "kafka": kafka.source({topic!r}, stop_at_end=True, fields=["temp"]),
}}
for name, spec in sources.items():
    r = flow.source(spec, key="dev", time="ts", name=name + "_in", lateness="5m")
    r.window(window.tumbling("10s"), agg.count(), agg.sum("temp"), idle="1s", name=name + "_win").to(
        files.sink({str(tmp_path)!r} + "/out-" + name + ".jsonl"))
    r.dead_letters.to(files.sink({str(tmp_path)!r} + "/dead-" + name + ".jsonl"))
""",
    )
    prime_session(mqtt_port, "edgeflow-hostile-all-mqtt_in", ["hostile12/#"])
    publish_all(mqtt_port, [("hostile12/dev/t", m) for m in m_msgs])

    expected = {
        "files": (Counter(k for k, _ in good_f) + Counter(f"c{i % 3}" for i in range(300))),
        "mqtt": Counter(k for k, _ in good_m),
        "kafka": Counter(k for k, _ in good_k),
    }
    want_dead = {
        "files": len(bad_f) + len(csv_bad),
        "mqtt": len(bad_m),
        "kafka": len(bad_k),
    }

    def counts(s: str) -> Counter[str]:
        c: Counter[str] = Counter()
        for r in records(out[s]):
            c[r["key"]] += r["count"]
        return c

    def done() -> bool:
        try:
            return all(
                counts(s) == expected[s] and len(records(dead[s])) >= want_dead[s] for s in expected
            )
        except orjson.JSONDecodeError:  # a line being written
            return False

    code, output, peak_mb = run_until(
        tmp_path, [str(flow), "--kafka-bootstrap", kafka_bootstrap], done
    )
    assert code == 0, output
    assert "Traceback" not in output and "panicked" not in output, output

    for s in expected:
        assert counts(s) == expected[s], f"{s}: every good reading passes"
    files_dead = records(dead["files"])
    by_file = {
        str(jl): [d for d in files_dead if d["source"].startswith(str(jl) + ":")],
        str(cs): [d for d in files_dead if d["source"].startswith(str(cs) + ":")],
    }
    check_dead_letters("jsonl", by_file[str(jl)], [r for _, r in bad_f])
    check_dead_letters("csv", by_file[str(cs)], [r for _, r in csv_bad])
    check_dead_letters("mqtt", records(dead["mqtt"]), [r for _, r in bad_m])
    check_dead_letters("kafka", records(dead["kafka"]), [r for _, r in bad_k])
    print(f"peak RSS of the flow (and its children): {peak_mb:.0f} MB")
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"


# -- hostile testing of item 19, round 2 -----------------------------------------------------------
def _count_flow(tmp_path: Path, name: str, source: str, aggs: str, fields: str) -> Path:
    return write_flow(
        tmp_path / f"{name}.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka
flow = Flow({name!r})
r = flow.source({source}, key="dev", time="ts", fields={fields})
r.window(window.tumbling("10s"), {aggs}, idle="1s").to(files.sink({str(tmp_path / (name + "-out.jsonl"))!r}))
r.dead_letters.to(files.sink({str(tmp_path / (name + "-dead.jsonl"))!r}))
""",
    )


def test_a_declared_field_is_checked_whether_or_not_the_flow_uses_it(tmp_path: Path) -> None:
    """Hostile #8: with fields=["v"], a line whose v is "xxx" is a dead letter whether the
    flow counts readings only or also averages v: dead letters never depend on the steps
    downstream (before, agg.count() alone let all 10 through and agg.mean("v") none)."""
    p = tmp_path / "in.jsonl"
    rows = [{"dev": "a", "ts": NOW_S + i, "v": "xxx", "w": 1} for i in range(10)]
    rows += [{"dev": "a", "ts": NOW_S + i, "v": 2.5, "w": 1} for i in range(5)]
    p.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    got = {}
    for name, aggs in (("count_only", "agg.count()"), ("with_mean", 'agg.count(), agg.mean("v")')):
        flow = _count_flow(tmp_path, name, f"files.source({str(p)!r})", aggs, '["v", "w"]')
        edgeflow("run", str(flow))
        dead = records(tmp_path / f"{name}-dead.jsonl")
        out = records(tmp_path / f"{name}-out.jsonl")
        got[name] = (sum(r["count"] for r in out), len(dead))
        assert all("field 'v': 'xxx' is a str" in d["error"] for d in dead), dead
    assert got == {"count_only": (5, 10), "with_mean": (5, 10)}


def test_a_declared_field_is_checked_by_the_decoder_even_when_not_carried() -> None:
    """The record parser every source shares: a checked (declared, unused) field refuses the
    payload like a carried one, and is not in the readings."""
    dec = Decoder(
        "json", Schema("dev", "ts", (), {}, {"temp": math.nan}, checked=("temp",)), Limits()
    )
    t = NOW_S * 1000
    good = b'[{"dev": "a", "ts": %d, "temp": 1}, {"dev": "a", "ts": %d}]' % (t, t)
    assert [r[2] for r in dec.decode(good, "k", NOW_S * 10**9)] == [[], []]
    with pytest.raises(PayloadError, match="reading 1: field 'temp': 'x' is a str"):
        dec.decode(
            b'[{"dev": "a", "ts": %d, "temp": 1}, {"dev": "a", "ts": %d, "temp": "x"}]' % (t, t),
            "k",
            NOW_S * 10**9,
        )
    csv_dec = Decoder(
        "csv",
        Schema("dev", "ts", (), {}, {"temp": math.nan}, "auto", ("dev", "ts", "temp"), ("temp",)),
        Limits(),
    )
    with pytest.raises(PayloadError, match="field 'temp': 'x' is not a number"):
        csv_dec.decode(b"a,%d,x" % NOW_S, "", NOW_S * 10**9)


def test_kafka_checks_a_declared_field_the_flow_does_not_use(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Hostile #8 at Kafka: the message [{temp: 1}, {temp: "x"}] is one dead letter, also
    when the flow only counts (it gave two readings)."""
    topic = f"declared8-{uuid.uuid4().hex[:8]}"
    t = NOW_S * 1000
    produce(
        kafka_bootstrap,
        topic,
        [
            b'[{"dev": "a", "ts": %d, "temp": 1}, {"dev": "a", "ts": %d, "temp": "x"}]' % (t, t),
            line("a", t + 1),
        ],
    )
    source = f"kafka.source({topic!r}, stop_at_end=True, start='earliest', fields=['temp'])"
    flow = _count_flow(tmp_path, "kcount", source, "agg.count()", "None")
    edgeflow("run", str(flow), "--kafka-bootstrap", kafka_bootstrap)
    dead = records(tmp_path / "kcount-dead.jsonl")
    assert [d["error"] for d in dead] == [
        "reading 1: field 'temp': 'x' is a str, expected a number; send numbers as JSON numbers"
    ]
    assert sum(r["count"] for r in records(tmp_path / "kcount-out.jsonl")) == 1


def test_a_csv_header_naming_a_column_twice_makes_every_row_a_dead_letter(tmp_path: Path) -> None:
    """Hostile #9: `dev,ts,temp,temp` was read with the last column winning; like a JSON key
    given twice it is refused: each row a dead letter naming the file and the column."""
    c = tmp_path / "dup.csv"
    c.write_text("dev,ts,temp,temp\n" + "".join(f"d{i},{NOW_S},{i},{i + 1}\n" for i in range(3)))
    batches, dls = read_all(c)
    assert batches == [] and len(dls) == 3
    assert [d["source"] for d in dls] == [f"{c}:{i}" for i in (2, 3, 4)]
    assert all(f"line 1 of {c}) names column 'temp' twice" in d["error"] for d in dls), dls


def test_a_bom_at_the_start_of_a_later_line_is_a_dead_letter(tmp_path: Path) -> None:
    """Hostile #9: a byte-order mark is allowed at the start of a file only; at the start of
    row 2 it made the key "\\ufeffd1" silently. JSON lines and MQTT/Kafka payloads too."""
    c = tmp_path / "bom.csv"
    c.write_bytes(
        b"\xef\xbb\xbfdev,ts,temp\nd0,%d,1\n\xef\xbb\xbfd1,%d,2\nd2,%d,3\n" % (NOW_S, NOW_S, NOW_S)
    )
    batches, dls = read_all(c)
    assert keys_of(batches) == ["d0", "d2"]
    assert [d["source"] for d in dls] == [f"{c}:3"]
    assert "byte-order mark" in dls[0]["error"] and "start of a file" in dls[0]["error"]
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + line("a", NOW_S) + b"\n\xef\xbb\xbf" + line("b", NOW_S) + b"\n")
    batches, dls = read_all(j)
    assert keys_of(batches) == ["a"] and len(dls) == 1
    assert "byte-order mark" in dls[0]["error"]
    mqtt = Decoder(
        "csv", Schema("dev", "ts", ("temp",), {}, {}, "auto", ("dev", "ts", "temp")), Limits()
    )
    with pytest.raises(PayloadError, match="byte-order mark"):
        mqtt.decode(b"\xef\xbb\xbfd1,%d,2" % NOW_S, "t", NOW_S * 10**9)
