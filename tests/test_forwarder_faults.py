"""Forwarder faults: a killed forwarder, SIGTERM to the process group, an unreachable broker,
a full disk. Each test fails on a forwarder that is not watched, restarted and stopped
without locks (issue 12, items 1, 10 and 18)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgeflow.connectors import forwarder
from edgeflow.connectors.forwarder import Forwarder
from edgeflow.connectors.kafka import KafkaSink
from edgeflow.connectors.outbox import Outbox, OutRecord, read_stats
from tests.helpers import lines, popen_edgeflow, records, write_flow
from tests.kafka_helpers import KafkaBroker, consume_all, free_port, headers

FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate

flow = Flow({name!r})
r = flow.source(simulate.sensors(devices={devices}, rate_hz=20, seed=7, speed={speed},
                                 duration={duration!r}, start="2026-01-01T00:00:00Z"))
w = r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), name="summary")
w.to(kafka.sink({topic!r}, bootstrap={bootstrap!r}), name="to_kafka")
w.to(files.sink({out!r}), name="to_file")
"""


def flow_file(
    tmp: Path, name: str, topic: str, bootstrap: str, devices: int, speed: int, duration: str
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


def start_flow(*args: str) -> subprocess.Popen[str]:
    """``edgeflow ...`` in a process group of its own (so a test can signal the whole group)."""
    return popen_edgeflow(*args, new_session=True)


@pytest.fixture
def flows() -> Iterator[list[subprocess.Popen[str]]]:
    """Flows a test started; whatever is left of them (forwarders included) is killed at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_for(what: str, check: Callable[[], object], timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def outbox_status(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        db = ro(path)
        try:
            return dict(db.execute("SELECT name, value FROM status").fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def delivered(path: Path, sink: str = "to_kafka") -> int:
    try:
        return read_stats(path).get(f"delivered.{sink}", 0) if path.exists() else 0
    except sqlite3.Error:
        return 0


def forwarders(path: Path) -> dict[int, list[int]]:
    """pid -> lanes of the forwarder processes the outbox's status names."""
    out = {}
    for name, value in outbox_status(path).items():
        m = re.match(r"pid (\d+) lanes ([\d,]+)", value) if name.startswith("forwarder.") else None
        if m:
            out[int(m[1])] = [int(x) for x in m[2].split(",")]
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    """The forwarder processes (multiprocessing spawn children) of process ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    spawned = []
    for child in out:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes() and alive(child):
                spawned.append(child)
        except OSError:
            continue
    return spawned


def in_flight_ids(path: Path, lanes: list[int]) -> set[str]:
    """The edgeflow-ids of the records the forwarder of ``lanes`` has fetched and not yet deleted."""
    db = ro(path)
    try:
        stats = dict(db.execute("SELECT name, value FROM stats").fetchall())
        ids = set()
        marks = ",".join(map(str, lanes))
        for lane, seq, hdrs in db.execute(
            f"SELECT lane, seq, headers FROM outbox WHERE lane IN ({marks})"
        ):
            if seq <= int(stats.get(f"inflight.{lane}", 0)):
                ids.add(dict(orjson.loads(hdrs))["edgeflow-id"])
        return ids
    finally:
        db.close()


def newest_seq(path: Path) -> int:
    db = ro(path)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


def sending_after(path: Path, lanes: list[int], seq: int) -> bool:
    """Has the forwarder of ``lanes`` fetched records appended after ``seq``?"""
    db = ro(path)
    try:
        stats = dict(db.execute("SELECT name, value FROM stats").fetchall())
        return int(stats.get(f"inflight.{lanes[0]}", 0)) > seq
    except sqlite3.Error:
        return False
    finally:
        db.close()


def kafka_ids(bootstrap: str, topic: str, expect: int) -> Counter[str]:
    msgs = consume_all(bootstrap, topic, expect=expect, timeout=90)
    return Counter(headers(m)["edgeflow-id"] for m in msgs)


def file_ids(flow: str, out: Path) -> set[str]:
    return {f"{flow}/summary/{r['key']}/{r['window_start']}" for r in records(out)}


def test_kill_9_of_a_forwarder_mid_delivery_restarts_it_and_sigterm_stops_the_flow_losing_nothing(
    tmp_path: Path, kafka_bootstrap: str, flows: list[subprocess.Popen[str]]
) -> None:
    topic = f"fwd-kill-{uuid.uuid4().hex[:8]}"
    flow, out = flow_file(tmp_path, "fwdkill", topic, kafka_bootstrap, 40, 5, "600s")
    box = tmp_path / "st" / "outbox.sqlite"
    proc = start_flow("run", str(flow), "--state-dir", str(tmp_path / "st"))
    flows.append(proc)
    wait_for("records delivered", lambda: delivered(box) >= 200 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    pids = forwarders(box)
    assert len(pids) == 2, pids
    victim, lanes = next(iter(pids.items()))
    # freeze it while it has records in flight, note them, then kill it
    in_flight: set[str] = set()
    for _ in range(200):
        os.kill(victim, signal.SIGSTOP)
        in_flight = in_flight_ids(box, lanes)
        if in_flight:
            break
        os.kill(victim, signal.SIGCONT)
        time.sleep(0.03)
    assert in_flight, "the forwarder was caught with records in flight"
    os.kill(victim, signal.SIGKILL)
    newest_at_kill = newest_seq(box)
    restarted = wait_for(
        "the forwarder of the killed one's lanes to be started again",
        lambda: [
            p for p, ls in forwarders(box).items() if ls == lanes and p != victim and alive(p)
        ],
        timeout=60,
    )
    assert restarted
    wait_for(
        "its lanes to be sent again, past what was queued at the kill",
        lambda: sending_after(box, lanes, newest_at_kill),
        timeout=60,
    )
    assert proc.poll() is None
    stopped_at = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - stopped_at
    print(f"stopped {took:.1f}s after SIGTERM")
    assert proc.returncode == 0, stderr
    assert took < 10, f"the flow took {took:.1f}s to stop on SIGTERM"
    assert "died (killed by signal 9" in stderr, stderr
    want = file_ids("fwdkill", out)
    got = kafka_ids(kafka_bootstrap, topic, len(want))
    assert not want - set(got), f"{len(want - set(got))} records lost"
    assert set(got) == want
    dups = {rid for rid, n in got.items() if n > 1}
    assert dups <= in_flight, "only records the killed forwarder had in flight are sent twice"
    assert read_stats(box)["depth"] == 0


def test_sigterm_to_the_whole_process_group_ends_the_run_cleanly_losing_nothing(
    tmp_path: Path, kafka_bootstrap: str, flows: list[subprocess.Popen[str]]
) -> None:
    topic = f"fwd-group-{uuid.uuid4().hex[:8]}"
    flow, out = flow_file(tmp_path, "fwdgroup", topic, kafka_bootstrap, 40, 5, "600s")
    box = tmp_path / "st" / "outbox.sqlite"
    proc = start_flow("run", str(flow), "--state-dir", str(tmp_path / "st"))
    flows.append(proc)
    wait_for("records delivered", lambda: delivered(box) >= 400 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    stopped_at = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # as systemd and GNU timeout do
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - stopped_at
    print(f"stopped {took:.1f}s after SIGTERM to the group")
    assert proc.returncode == 0, stderr
    assert took < 30, f"the flow took {took:.1f}s to stop"
    assert "Traceback" not in stderr, stderr
    want = file_ids("fwdgroup", out)
    got = kafka_ids(kafka_bootstrap, topic, len(want))
    assert not want - set(got), f"{len(want - set(got))} of {len(want)} records lost"
    assert set(got) == want
    assert max(got.values()) == 1, "a clean stop sends nothing twice"
    assert read_stats(box)["depth"] == 0, "the forwarders drained the outbox before exiting"


def test_a_for_run_ends_on_time_when_kafka_is_unreachable_and_says_so_once(
    tmp_path: Path, flows: list[subprocess.Popen[str]]
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    flow, out = flow_file(tmp_path, "fwdclosed", "unreachable", closed, 5, 1, "600s")
    box = tmp_path / "st" / "outbox.sqlite"
    started = time.monotonic()
    proc = start_flow("run", str(flow), "--for", "5s", "--state-dir", str(tmp_path / "st"))
    flows.append(proc)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - started
    print(f"a --for 5s run against a closed port took {took:.1f}s")
    assert proc.returncode == 0, stderr
    ran = float(re.search(r"ran ([\d.]+)s", stderr)[1])  # type: ignore[index]
    assert ran < 5 + 8, f"a --for 5s run took {ran}s: it waited for an unreachable broker"
    assert took < 30, took
    # one edgeflow line for the connection state, no kafka-python lines
    assert len([x for x in stderr.splitlines() if "is unreachable" in x]) == 1, stderr
    assert not re.search(r"kafka\.(net|conn|client|producer|cluster)", stderr), stderr
    assert stderr.count("ECONNREFUSED") <= 3, stderr
    # records stay in the outbox, and the summary says so
    n = len(lines(out))
    assert n > 0 and read_stats(box)["depth"] == n
    assert f"{n} records stay in the outbox" in stderr, stderr
    state = outbox_status(box)["kafka.connection"]
    assert state.startswith("unreachable since ") and "ECONNREFUSED" in state, state


def test_a_killed_forwarder_is_restarted_and_stop_never_hangs(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.append("s", 2, [OutRecord("t", f"k{i}".encode(), b"{}", b"[]") for i in range(50)])
    fw = Forwarder(box.path, f"127.0.0.1:{free_port()}", KafkaSink("t").producer_config(), 2)
    try:
        first = wait_for(
            "two forwarders", lambda: len(children(os.getpid())) == 2 and children(os.getpid())
        )
        assert isinstance(first, list)
        os.kill(first[0], signal.SIGKILL)
        wait_for(
            "the killed forwarder to be started again",
            lambda: len(children(os.getpid())) == 2 and first[0] not in children(os.getpid()),
            timeout=60,
        )
        os.kill(children(os.getpid())[-1], signal.SIGKILL)  # and again, just before the stop
        t0 = time.monotonic()
        fw.stop(30)
        took = time.monotonic() - t0
        print(f"stop took {took:.1f}s")
    finally:
        for pid in children(os.getpid()):
            os.kill(pid, signal.SIGKILL)
    assert took < 15, f"stop took {took:.1f}s"
    assert children(os.getpid()) == [], "no forwarder outlives the stop"
    assert box.depth()[0] == 50, "the records stay in the outbox for the next run"


class FlakyOutbox:
    """An outbox on a full disk: opening it fails twice, re-queueing three times."""

    opens_failing = 0
    releases_failing = 0
    command: Any

    def __init__(self, path: Path) -> None:
        if FlakyOutbox.opens_failing:
            FlakyOutbox.opens_failing -= 1
            raise sqlite3.OperationalError("database or disk is full")
        self.path = path

    def set_status(self, name: str, value: str) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def release(self, lanes: list[int], lo: int) -> None:
        if FlakyOutbox.releases_failing:
            FlakyOutbox.releases_failing -= 1
            raise sqlite3.OperationalError("database or disk is full")
        from edgeflow.connectors.process import ABORT

        FlakyOutbox.command.set(ABORT)  # it worked: the test is over


def test_a_forwarder_retries_outbox_errors_with_one_line_each_and_never_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from edgeflow.connectors.process import Command, Parent

    ctx = mp.get_context("spawn")
    command = Command(ctx)
    monkeypatch.setattr(FlakyOutbox, "opens_failing", 2)
    monkeypatch.setattr(FlakyOutbox, "releases_failing", 3)
    monkeypatch.setattr(FlakyOutbox, "command", command, raising=False)
    monkeypatch.setattr(forwarder, "Outbox", FlakyOutbox)
    drain = forwarder._Drain(
        tmp_path / "o.sqlite", f"127.0.0.1:{free_port()}", {}, 0, [0, 1],
        forwarder._Links(ctx, 1), Parent(command, os.getppid()),
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="edgeflow.forwarder")
    done = threading.Thread(target=drain.run, daemon=True)
    done.start()
    done.join(60)
    assert not done.is_alive(), "the forwarder got past the errors and stopped when told"
    assert FlakyOutbox.opens_failing == FlakyOutbox.releases_failing == 0
    said = [r.getMessage() for r in caplog.records]
    assert len([x for x in said if "cannot open it" in x]) == 1, said
    assert len([x for x in said if "cannot re-queue" in x]) == 1, said
    assert all("database or disk is full" in x for x in said if "cannot" in x), said
    assert len([x for x in said if "works again" in x]) == 2, said


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (tests run as root); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the file to delete to free it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_a_forwarder_survives_a_full_disk_at_start_and_delivers_when_space_returns(
    small_disk: Path, kafka_bootstrap: str, capfd: pytest.CaptureFixture[str]
) -> None:
    topic = f"fwd-disk-{uuid.uuid4().hex[:8]}"
    path = small_disk / "outbox.sqlite"
    box = Outbox(path)
    box.set_status(f"topic.{topic}", "1,1")
    recs = [
        OutRecord(
            topic,
            f"k{i % 7}".encode(),
            orjson.dumps({"i": i}),
            orjson.dumps([["edgeflow-id", f"id-{i}"]]),
        )
        for i in range(300)
    ]
    box.append("s", 2, recs)
    box.db.execute(
        "PRAGMA wal_checkpoint(TRUNCATE)"
    )  # the forwarder's first write must grow the WAL
    filler = fill(small_disk)
    fw = Forwarder(path, kafka_bootstrap, KafkaSink(topic).producer_config(), 1)
    try:
        pids = wait_for("the forwarder", lambda: children(os.getpid()))
        assert isinstance(pids, list)
        time.sleep(3)
        assert children(os.getpid()) == pids, "the forwarder did not die on the full disk"
        filler.unlink()
        got = wait_for(
            "the records in Kafka",
            lambda: (
                len(msgs := consume_all(kafka_bootstrap, topic, expect=300, timeout=10)) >= 300
                and msgs
            ),
            timeout=90,
        )
        assert isinstance(got, list)
        assert sorted(headers(m)["edgeflow-id"] for m in got) == sorted(
            f"id-{i}" for i in range(300)
        )
        assert children(os.getpid()) == pids, "the same forwarder delivered them"
    finally:
        fw.stop(10)
    err = capfd.readouterr().err
    said = [x for x in err.splitlines() if "cannot" in x and "outbox" in x]
    assert len(said) <= 3, f"one line per outbox error, not one per retry:\n{err}"


def test_a_broker_outage_is_one_line_when_it_starts_and_one_when_it_ends_and_status_shows_it(
    tmp_path: Path, own_broker: KafkaBroker, flows: list[subprocess.Popen[str]]
) -> None:
    topic = "fwd-outage"
    flow, out = flow_file(tmp_path, "fwdoutage", topic, own_broker.bootstrap, 10, 5, "600s")
    box = tmp_path / "st" / "outbox.sqlite"
    proc = start_flow("run", str(flow), "--state-dir", str(tmp_path / "st"))
    flows.append(proc)
    wait_for("records delivered", lambda: delivered(box) >= 50 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    assert outbox_status(box)["kafka.connection"].startswith("connected since ")
    own_broker.stop()
    down = wait_for(
        "the outage in the status",
        lambda: (
            outbox_status(box).get("kafka.connection", "").startswith("unreachable since ")
            and outbox_status(box)["kafka.connection"]
        ),
        timeout=60,
    )
    assert "ECONNREFUSED" in str(down) or "Connection" in str(down), down
    time.sleep(3)  # kafka-python would log several lines a second meanwhile
    own_broker.start()
    wait_for(
        "the reconnection in the status",
        lambda: outbox_status(box).get("kafka.connection", "").startswith("connected since "),
        timeout=90,
    )
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert len([x for x in stderr.splitlines() if "is unreachable" in x]) == 1, stderr
    assert len([x for x in stderr.splitlines() if "is reachable again" in x]) == 1, stderr
    assert not re.search(r"kafka\.(net|conn|client|producer|cluster)", stderr), stderr
    assert stderr.count("ECONNREFUSED") <= 3, stderr
    want = file_ids("fwdoutage", out)
    got = kafka_ids(own_broker.bootstrap, topic, len(want))
    assert set(got) == want and max(got.values()) == 1
    assert read_stats(box)["depth"] == 0


def test_forwarders_ignore_sigterm_but_die_with_the_flow(
    tmp_path: Path, flows: list[subprocess.Popen[str]]
) -> None:
    flow, _ = flow_file(tmp_path, "fwdorphan", "t", f"127.0.0.1:{free_port()}", 2, 1, "600s")
    proc = start_flow("run", str(flow), "--state-dir", str(tmp_path / "st"))
    flows.append(proc)
    kids = wait_for("two forwarders", lambda: len(children(proc.pid)) == 2 and children(proc.pid))
    assert isinstance(kids, list)
    for pid in kids:
        os.kill(pid, signal.SIGTERM)
    time.sleep(1)
    assert all(alive(pid) for pid in kids), "a forwarder leaves stopping to the flow"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    wait_for("the forwarders to die with the flow", lambda: not any(alive(p) for p in kids), 30)


def forwarder_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_every_forwarder_death_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edgeflow.forwarder")
    box = Outbox(tmp_path / "o.sqlite")
    box.append("s", 2, [OutRecord("t", f"k{i}".encode(), b"{}", b"[]") for i in range(20)])
    fw = Forwarder(box.path, f"127.0.0.1:{free_port()}", KafkaSink("t").producer_config(), 1)
    # deaths further apart than a crash loop's (one line per DEATH_LOG_EVERY_S at most)
    apart = getattr(forwarder, "DEATH_LOG_EVERY_S", 1.0)
    try:
        for kill in range(4):
            pids = wait_for("a running forwarder", lambda: children(os.getpid()), timeout=60)
            assert isinstance(pids, list)
            time.sleep(apart)
            os.kill(pids[0], signal.SIGKILL)
            wait_for(
                f"death {kill + 1} to be logged",
                lambda n=kill + 1: len(forwarder_lines(caplog, "died (")) >= n,  # type: ignore[misc]
                timeout=30,
            )
    finally:
        fw.stop(0)
    died = forwarder_lines(caplog, "died (")
    assert len(died) == 4, died
    assert "4 time(s) in this run" in died[-1], died


@pytest.fixture
def signal_stop() -> Iterator[Callable[[], None]]:
    """``runner.stop()`` as SIGTERM calls it, outside a run; the registry is reset afterwards."""
    from edgeflow.connectors.connection_state import CONNECTIONS
    from edgeflow.engine import runner

    yield runner.stop
    if hasattr(CONNECTIONS, "run_started"):
        CONNECTIONS.run_started(None)


def test_a_stop_by_signal_with_a_frozen_forwarder_ends_within_10s_saying_what_stays(
    tmp_path: Path,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
    signal_stop: Callable[[], None],
) -> None:
    from edgeflow.connectors.outbox import lane_of

    caplog.set_level(logging.WARNING, logger="edgeflow.forwarder")
    topic = f"fwd-frozen-{uuid.uuid4().hex[:8]}"
    box = Outbox(tmp_path / "o.sqlite")
    box.set_status(f"topic.{topic}", "1,1")
    fw = Forwarder(box.path, kafka_bootstrap, KafkaSink(topic).producer_config(), 2)
    frozen: list[int] = []
    try:
        pids = wait_for(
            "two forwarders", lambda: len(forwarders(box.path)) == 2 and forwarders(box.path)
        )
        assert isinstance(pids, dict)
        victim, lanes = next(iter(pids.items()))
        os.kill(victim, signal.SIGSTOP)  # hangs, as a forwarder stuck in a system call would
        frozen.append(victim)
        recs = [OutRecord(topic, f"k{i}".encode(), b"{}", b"[]") for i in range(200)]
        box.append("s", 2, recs)
        stuck = sum(1 for r in recs if lane_of(r.key) in lanes)
        assert 0 < stuck < 200
        wait_for("the other forwarder's lanes to be delivered", lambda: box.depth()[0] == stuck)
        signal_stop()  # SIGTERM / Ctrl-C / edgeflow stop
        t0 = time.monotonic()
        fw.stop(30)
        took = time.monotonic() - t0
        print(f"stop took {took:.1f}s")
    finally:
        for pid in children(os.getpid()):
            os.kill(pid, signal.SIGKILL)
    assert took < 10, f"a stop by a signal took {took:.1f}s"
    assert not alive(frozen[0]), "the frozen forwarder was killed"
    assert box.depth()[0] == stuck
    stays = forwarder_lines(caplog, "stay in the outbox")
    assert len(stays) == 1 and f"{stuck} records stay in the outbox" in stays[0], stays


def test_a_record_the_topic_refuses_is_rejected_once_and_the_rest_delivered(
    tmp_path: Path, kafka_bootstrap: str, capfd: pytest.CaptureFixture[str]
) -> None:
    import base64

    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"fwd-small-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30_000)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "400"})])
    finally:
        admin.close()
    box = Outbox(tmp_path / "o.sqlite")
    recs = []
    for i in range(30):  # every 10th record is over the topic's limit (and hardly compresses)
        big = i % 10 == 3
        value = orjson.dumps(
            {"i": i, "v": base64.b64encode(os.urandom(900)).decode() if big else i}
        )
        hdrs = orjson.dumps([["edgeflow-id", f"f/s/{i}"]])
        recs.append(OutRecord(topic, f"k{i % 4}".encode(), value, hdrs))
    box.append("to_small", 2, recs)
    fw = Forwarder(box.path, kafka_bootstrap, KafkaSink(topic).producer_config(), 2)
    try:
        wait_for("the outbox to be empty", lambda: box.depth()[0] == 0, timeout=60)
    finally:
        fw.stop(10)
    stats = box.stats()
    assert stats.get("rejected.to_small") == 3, stats
    assert stats.get("delivered.to_small") == 27, stats
    got = kafka_ids(kafka_bootstrap, topic, 27)
    assert set(got) == {f"f/s/{i}" for i in range(30) if i % 10 != 3}, got
    err = capfd.readouterr().err  # the forwarder processes' lines
    rejected = [x for x in err.splitlines() if "refused record" in x]
    assert len(rejected) == 3, rejected
    assert all("to_small" in x and topic in x and "MessageSizeTooLarge" in x for x in rejected)
    assert "Exception ignored" not in err and "Traceback" not in err, err[-3000:]
