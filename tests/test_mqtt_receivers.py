"""MQTT scale-out (``receivers=N``: N receiver processes in one shared subscription) against a
real Mosquitto: every QoS 1 message is counted exactly once and the windows are exact, also
across a kill -9; the option is validated; the connection state stays one line per source."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from edgeflow.connectors import mqtt
from edgeflow.connectors.base import SourceContext
from edgeflow.connectors.connection_state import Connections
from tests.helpers import edgeflow, popen_edgeflow, records, write_flow
from tests.mqtt_helpers import prime_session, publish_all
from tests.test_mqtt import NOW_S, expected_windows, got_windows


def prime_shared(port: int, client_id: str, topic: str, receivers: int) -> None:
    """Create the sessions of the flow's receivers (``client_id``, ``client_id-r1``, ...) in
    their shared subscription, so the broker queues for them before the flow first runs."""
    shared = f"$share/{client_id}/{topic}"
    for i in range(receivers):
        prime_session(port, client_id if i == 0 else f"{client_id}-r{i}", [shared])


def counted(out: Path) -> int:
    """Readings counted in the windows written so far."""
    return sum(n for n, _, _ in got_windows(out).values()) if out.exists() else 0


def stop_when(proc: subprocess.Popen[str], done: Callable[[], bool], what: str) -> str:
    """Stop the run (SIGTERM: gracefully) once ``done()``, and a moment later (a duplicate
    would show up meanwhile); its stderr. The run must exit 0."""
    deadline = time.monotonic() + 90
    while not done():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def source_flow(path: Path, port: int, name: str, topic: str, out: Path, dead: Path) -> Path:
    return write_flow(
        path,
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, mqtt
flow = Flow({name!r})
r = flow.source(mqtt.source({topic!r}, port={port}, qos=1, fields=["temp"], receivers=2), key="topic[1]", time="ts", name="line", lateness="1m")
r.window(window.tumbling("10s"), agg.count(), agg.sum("temp"), agg.max("temp"), idle="1500ms").to(files.sink({str(out)!r}))
r.dead_letters.to(files.sink({str(dead)!r}))
""",
    )


def test_two_receivers_count_every_qos1_message_once_and_windows_are_exact(
    tmp_path: Path, mqtt_port: int
) -> None:
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    flow = source_flow(tmp_path / "f.py", mqtt_port, "recv2", "recv/+/t", out, dead)
    prime_shared(mqtt_port, "edgeflow-recv2-line", "recv/+/t", 2)
    rng = random.Random(15)
    sent = [(f"d{i % 5}", (NOW_S + rng.randrange(60)) * 1000 + i % 1000, float(i % 17)) for i in range(4_000)]  # fmt: skip
    messages = [(f"recv/{k}/t", orjson.dumps({"ts": t, "temp": v})) for k, t, v in sent]
    bad = [(f"recv/bad{i % 3}/t", b"not json %d" % i) for i in range(40)]
    publish_all(mqtt_port, messages + bad)
    run = popen_edgeflow("run", str(flow), "--for", "120s")
    err = stop_when(
        run, lambda: counted(out) >= len(sent) and len(records(dead)) >= len(bad), "the windows"
    )
    got = got_windows(out)
    assert sum(n for n, _, _ in got.values()) == len(sent), "every message counted exactly once"
    assert got == expected_windows(sent)
    dls = records(dead)
    assert len(dls) == len(bad)
    # the broker shared the messages out: both receivers delivered some (receiver 1's dead
    # letters are marked -r1-), and their ids do not collide
    by_receiver = {"-r1-" in d["source"] for d in dls}
    assert by_receiver == {True, False}, [d["source"] for d in dls]
    assert len({d["source"] for d in dls}) == len(bad)
    # one line for the source, not one per receiver, and no spurious failure before it
    assert err.count("connected to the MQTT broker") == 1, err
    assert "cannot reach" not in err and "Traceback" not in err, err


def test_kill_9_with_two_receivers_qos1_persistent_sessions_loses_nothing(
    tmp_path: Path, mqtt_port: int
) -> None:
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    flow = source_flow(tmp_path / "f.py", mqtt_port, "restart2", "line2/+/t", out, dead)
    prime_shared(mqtt_port, "edgeflow-restart2-line", "line2/+/t", 2)
    sent: list[tuple[str, int, float]] = [
        (f"m{i % 4}", (NOW_S + i // 40) * 1000 + i % 40, float(i % 11)) for i in range(3_000)
    ]

    def publisher() -> None:  # about 6 s of steady traffic
        for i in range(0, len(sent), 50):
            chunk = sent[i : i + 50]
            publish_all(
                mqtt_port,
                [(f"line2/{k}/t", orjson.dumps({"ts": t, "temp": v})) for k, t, v in chunk],
            )
            time.sleep(0.1)

    args = ("run", str(flow), "--state-dir", str(tmp_path / "st"), "--snapshot-every", "300ms")
    first = popen_edgeflow(*args, "--for", "60s")
    pub = threading.Thread(target=publisher)
    pub.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "st").exists() or not any((tmp_path / "st").rglob("*")):
        assert time.monotonic() < deadline, "the first run never wrote a snapshot"
        time.sleep(0.1)
    time.sleep(1.5)  # mid-stream: some messages acked, some in flight, some not yet sent
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(1)  # the broker queues for both persistent sessions meanwhile
    second = popen_edgeflow(*args, "--for", "120s")
    pub.join()
    err = stop_when(second, lambda: counted(out) >= len(sent), "the windows of all messages")
    got = got_windows(out)
    total = sum(n for n, _, _ in got.values())
    assert total == len(sent), f"every accepted message is counted once; second run: {err}"
    assert got == expected_windows(sent)


@pytest.mark.parametrize("bad", [0, -1, 17, 2.0, "2", True, None])
def test_receivers_must_be_a_whole_number_from_1_to_16(bad: object) -> None:
    spec = mqtt.source("a/+/t", fields=["temp"], receivers=bad)
    lines = [p for p in spec.problems() if "receivers" in p]
    assert len(lines) == 1, spec.problems()
    assert lines[0].startswith(f"mqtt.source: receivers={bad!r} ") or bad is None, lines
    assert "[1, 16]" in lines[0]
    assert spec.partitions() == ["0"], "an invalid value never starts receivers"


def test_receivers_give_one_partition_each_and_a_shared_subscription() -> None:
    one = mqtt.source("a/+/t", fields=["temp"])
    assert one.problems() == [] and one.partitions() == ["0"]
    assert one.filters("edgeflow-f-s") == (["a/+/t"], ["$share/edgeflow-f-s/a/+/t"])
    two = mqtt.source(["a/+/t", "b/#"], fields=["temp"], receivers=2)
    assert two.problems() == [] and two.partitions() == ["0", "1"]
    assert not two.keys_partitioned(), "a key's readings may come through either receiver"
    subscribe, stale = two.filters("edgeflow-f-s")
    assert subscribe == ["$share/edgeflow-f-s/a/+/t", "$share/edgeflow-f-s/b/#"]
    assert stale == ["a/+/t", "b/#"], "a session from a run with one receiver drops its plain one"


def test_invalid_receivers_are_refused_by_validate_with_one_line(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "f.py",
        """
from edgeflow import Flow
from edgeflow.connectors import files, mqtt
flow = Flow("bad-receivers")
r = flow.source(mqtt.source("a/+/t", fields=["temp"], receivers=0), key="topic[1]", time="ts", name="devices")
r.to(files.sink("out.jsonl"))
""",
    )
    res = edgeflow("validate", str(flow), check=False)
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "receivers=0" in ln]
    assert len(lines) == 1, res.stdout + res.stderr
    assert "devices" in lines[0] and "[1, 16]" in lines[0]
    assert "Traceback" not in res.stderr


def test_a_source_with_two_connections_is_connected_when_both_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = Connections()
    c.open("s", "MQTT broker", "h:1", "0")
    c.open("s", "MQTT broker", "h:1", "1")
    c.report("s", True, member="0")
    assert not c.snapshot()["s"]["connected"], "one of two connected is not connected"
    assert capsys.readouterr().err == "", "no line until every receiver has reported"
    c.report("s", True, member="1")
    assert c.snapshot()["s"]["connected"]
    c.report("s", False, "connection lost", member="1")
    c.report("s", False, "connection lost", member="0")
    c.report("s", True, member="0")
    assert not c.snapshot()["s"]["connected"]
    c.report("s", True, member="1")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3, err
    assert "connected to" in err[0] and "disconnected" in err[1] and "reconnected" in err[2]
    assert c.never_connected() == []


class _Pipe:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, obj: object) -> None:
        self.sent.append(obj)


def test_ids_just_acked_stay_in_the_snapshot_so_a_lost_ack_is_not_counted_twice() -> None:
    """A crash right after a snapshot is saved can lose the acks it sent (the receiver dies
    before they reach the broker), and the broker then redelivers those messages with DUP:
    their ids must be in that snapshot's pending list to be recognised."""
    part = object.__new__(mqtt._MqttPartition)
    part.manual_ack, part.origin, part.seq = True, 1, 0
    part.current, part.unacked = [], collections.deque()
    part.conn = _Pipe()  # type: ignore[assignment]
    pendings = []
    for epoch in ([1, 2], [3], [4, 5], [6]):
        part.current = list(epoch)
        pendings.append(part.snapshot()["pending"])
    assert part.conn.sent == [("ack", [1, 2]), ("ack", [3])]  # type: ignore[attr-defined]
    assert pendings[2] == [1, 2, 3, 4, 5], "acked at this snapshot, still recognised after it"
    assert pendings[3] == [3, 4, 5, 6]


def test_a_restored_id_skips_its_redelivery_but_not_a_new_message_under_that_id() -> None:
    spec = mqtt.source("a/+/t", fields=["temp"])
    ctx = SourceContext("f", "s", "topic[1]", "ts", None)
    dec = mqtt._Decoding(spec, ctx, {7, 8}, 10, "1-")
    pay, now = orjson.dumps({"ts": (NOW_S + 1) * 1000, "temp": 1.0}), time.time_ns()
    _, items, mids, seq, _ = dec.decode(
        [("a/d/t", pay, 7, 1, True, now), ("a/d/t", pay, 8, 1, False, now), ("a/d/t", pay, 9, 1, False, now)]
    )  # fmt: skip
    assert mids == [7, 8, 9], "every message is acked, redeliveries too"
    assert [type(b).__name__ for b in items] == ["Batch"], items
    assert len(items[0]) == 2 and seq == 12, "the redelivery of 7 is not counted"
    assert dec.replayed == set(), "8 came back as a new message: the restored 8 is done"
