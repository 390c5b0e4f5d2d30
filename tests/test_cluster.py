"""Flows as bytewax clusters (issue 17, part A): one flow run as 1 process, as
``--processes 3`` and as 3 ``--addresses`` members gives the same records; a member killed
with SIGKILL is reported in one line and the same command resumes from the snapshots with
no record missing or repeated; bad cluster options are one line, exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from edgeflow.cli.cluster import Launcher, _Member, free_ports, merge_counters, parse_addresses
from edgeflow.cli.main import main
from tests.helpers import edgeflow, popen_edgeflow, write_flow

#: 20 simulated devices over 4 source partitions (spread over the members), 1-s windows
#: per device and a z-score detector: 24,000 readings, 1,200 windows
FLOW = """
from edgeflow import Flow, agg, detect, window
from edgeflow.connectors import files, simulate

flow = Flow("cluster-test")
r = flow.source(simulate.sensors(devices=20, rate_hz=20, seed=3, speed={speed}, duration="60s",
                                 start="2026-01-01T00:00:00Z", partitions=4, spike_prob=0.002))
r.window(window.tumbling("1s"), agg.count(), agg.mean("accel"), agg.max("temp"),
         name="win").to(files.sink({win!r}), name="win_out")
r.detect(detect.zscore(), "accel", name="alerts").to(files.sink({alerts!r}), name="alerts_out")
"""


def make(tmp: Path, name: str, speed: str = "None") -> tuple[Path, dict[str, Path]]:
    outs = {k: tmp / f"{name}-{k}.jsonl" for k in ("win", "alerts")}
    body = FLOW.format(speed=speed, **{k: str(v) for k, v in outs.items()})
    return write_flow(tmp / f"{name}.py", body), outs


def read(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def assert_same(ref: dict[str, Path], got: dict[str, Path], what: str) -> None:
    """Windows identical as sorted sets; alerts the same (key, time) with the same values up
    to float rounding (a paced run cuts batches differently); no record twice."""
    for k in ref:
        assert len(set(read(got[k]))) == len(read(got[k])), f"{what}: a {k} record repeated"
    assert sorted(read(ref["win"])) == sorted(read(got["win"])), what
    want = {(a["key"], a["t"]): a for a in map(orjson.loads, read(ref["alerts"]))}
    have = {(a["key"], a["t"]): a for a in map(orjson.loads, read(got["alerts"]))}
    assert want and set(have) == set(want), what
    for key, a in want.items():
        b = have[key]
        assert a.keys() == b.keys(), what
        for f, v in a.items():
            if isinstance(v, float):
                assert abs(b[f] - v) <= 1e-9 * (1 + abs(v)), (what, key, f)
            else:
                assert b[f] == v, (what, key, f)


def no_engine_noise(text: str) -> None:
    for bad in ("panicked", "Traceback", "PanicException", "RUST_BACKTRACE", "src/run.rs"):
        assert bad not in text, text


def wait_for(cond: Any, timeout: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def member_pid(launcher: int, index: int) -> int | None:
    """The pid of member ``index`` of the cluster the launcher ``launcher`` started."""
    try:
        kids = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    except OSError:
        return None
    for kid in kids:
        try:
            argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--process-id" in argv and argv[argv.index(b"--process-id") + 1] == str(index).encode():
            return int(kid)
    return None


def test_one_process_three_processes_and_three_members_give_the_same_records(
    tmp_path: Path,
) -> None:
    ref_flow, ref = make(tmp_path, "one")
    res = edgeflow("run", str(ref_flow), "--processes", "1")  # a plain run: no cluster
    assert "24000 readings in, 1200 window records" in res.stderr and "cluster of" not in res.stderr
    assert len(read(ref["win"])) == 1200

    three_flow, three = make(tmp_path, "three")
    res = edgeflow("run", str(three_flow), "--processes", "3")
    assert_same(ref, three, "--processes 3")
    # one summary for the cluster (the members' counters added up), no engine noise
    assert res.stderr.count("ran ") == 1, res.stderr
    assert "24000 readings in, 1200 window records" in res.stderr, res.stderr
    assert "error connecting" not in res.stderr + res.stdout
    no_engine_noise(res.stderr)

    members_flow, members = make(tmp_path, "members")
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    procs = [
        popen_edgeflow("run", str(members_flow), "--addresses", addresses, "--process-id", str(i))
        for i in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert_same(ref, members, "3 --addresses members")
    readings = sum(int(e.split(" readings in")[0].rsplit(" ", 1)[1]) for _, e in outs)
    assert readings == 24000  # each member read its own source partitions


def test_a_killed_member_is_one_line_and_the_same_command_resumes_with_nothing_missing(
    tmp_path: Path,
) -> None:
    ref_flow, ref = make(tmp_path, "ref")
    edgeflow("run", str(ref_flow))
    crash_flow, crash = make(tmp_path, "crash", speed="10")  # 60 s of data in ~6 s
    state = tmp_path / "state"
    args = ("run", str(crash_flow), "--processes", "3", "--state-dir", str(state))
    args += ("--snapshot-every", "200ms")
    launcher = popen_edgeflow(*args)
    wait_for(lambda: len(read(crash["win"])) >= 200, what="the cluster's first windows")
    victim = member_pid(launcher.pid, 1)
    assert victim is not None and launcher.poll() is None, "killed after the run ended"
    os.kill(victim, signal.SIGKILL)
    _, err = launcher.communicate(timeout=90)
    assert launcher.returncode == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert f"process 1 of 3 (pid {victim}) was killed by SIGKILL; the cluster stopped" in errors[0]
    assert f"resume from the last snapshot (state dir {state})" in errors[0]
    no_engine_noise(err)
    assert len(read(crash["win"])) < 1200, "the kill came after the end of input"
    # the same command again: every member resumes from the same snapshot epoch; the file
    # sinks cut their files back to the snapshot, so nothing repeats and nothing is missing
    res = edgeflow(*args)
    no_engine_noise(res.stderr)
    assert_same(ref, crash, "killed and resumed")


def test_members_whose_peer_dies_say_so_in_one_line(tmp_path: Path) -> None:
    flow, _ = make(tmp_path, "peers", speed="10")
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    procs = [
        popen_edgeflow("run", str(flow), "--addresses", addresses, "--process-id", str(i))
        for i in range(3)
    ]
    out = tmp_path / "peers-win.jsonl"
    try:
        wait_for(lambda: len(read(out)) >= 100, what="the members' first windows")
        procs[1].kill()
        results = [procs[i].communicate(timeout=60) for i in (0, 2)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    peer = addresses.split(",")[1]
    for i, (_, err) in zip((0, 2), results, strict=True):
        assert procs[i].returncode == 1, err
        errors = [ln for ln in err.splitlines() if ln.lower().startswith("error:")]
        assert len(errors) == 1, err
        assert f"process {i} of 3 of the cluster" in errors[0] and peer in errors[0], err
        no_engine_noise(err)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--processes", "0"], "--processes 0: give at least 1"),
        (
            ["--addresses", "127.0.0.1:5000,127.0.0.1", "--process-id", "0"],
            "'127.0.0.1' is not host:port",
        ),
        (["--addresses", "a:1;b:70000", "--process-id", "0"], "'b:70000' is not host:port"),
        (["--addresses", "a:1,b:2", "--process-id", "2"], "--process-id 2 is out of range"),
        (["--addresses", "a:1,b:2", "--process-id", "-1"], "--process-id -1 is out of range"),
        (["--addresses", "a:1, A:1", "--process-id", "0"], "'A:1' is given twice"),
        (["--addresses", "a:1,b:2"], "--addresses needs --process-id"),
        (["--process-id", "1"], "--process-id needs --addresses"),
        (
            ["--processes", "2", "--addresses", "a:1,b:2", "--process-id", "0"],
            "give one or the other",
        ),
    ],
)
def test_bad_cluster_options_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], says: str
) -> None:
    flow, _ = make(tmp_path, "bad")
    for cmd in ("run", "deploy"):
        res = CliRunner().invoke(main, [cmd, str(flow), *args])
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], res.output


def test_addresses_accept_commas_semicolons_and_blanks() -> None:
    assert parse_addresses(" node-a:2101 ; 10.0.0.2:2101,[::1]:7 ") == [
        "node-a:2101",
        "10.0.0.2:2101",
        "[::1]:7",
    ]


def test_the_cluster_summary_adds_counters_and_keeps_the_newest_watermark() -> None:
    got = merge_counters(
        [{"readings_in": 5, "watermark.w": 10}, {"readings_in": 7, "watermark.w": 4}]
    )
    assert got == {"readings_in": 12, "watermark.w": 10}


def test_a_one_process_state_resumes_on_three_processes(tmp_path: Path) -> None:
    """Rescaling by restart: state written by one process resumes on a cluster of three
    (bytewax routes the loaded snapshots to the workers that now own their keys)."""
    ref_flow, ref = make(tmp_path, "ref")
    edgeflow("run", str(ref_flow))
    flow, outs = make(tmp_path, "rescale", speed="10")
    state = ("--state-dir", str(tmp_path / "state"), "--snapshot-every", "200ms")
    edgeflow("run", str(flow), "--for", "2s", *state)  # stops with open windows snapshotted
    assert 0 < len(read(outs["win"])) < 1200
    res = edgeflow("run", str(flow), "--processes", "3", *state)
    assert "cluster of 3 processes" in res.stderr
    assert_same(ref, outs, "1 process, then 3")


def test_a_deployed_cluster_restarts_whole_after_a_member_dies(tmp_path: Path) -> None:
    flow, outs = make(tmp_path, "deployed", speed="10")
    root = tmp_path / "deployments"
    args = ("--root", str(root))
    res = edgeflow(
        "deploy",
        str(flow),
        "--name",
        "c3",
        "--detach",
        "--processes",
        "3",
        "--snapshot-every",
        "300ms",
        *args,
    )
    assert "deployed c3" in res.stdout
    d = root / "c3"
    try:
        wait_for(lambda: len(read(outs["win"])) >= 100, what="the deployed cluster's windows")
        launcher = int((d / "worker.pid").read_text())
        victim = member_pid(launcher, 2)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (d / "worker.pid").exists() and int((d / "worker.pid").read_text()) != launcher,
            what="the supervisor to start the cluster again",
        )
        before = len(read(outs["win"]))
        wait_for(lambda: len(read(outs["win"])) >= before + 60, what="windows after the restart")
        status = edgeflow("status", "c3", *args).stdout
        assert "3 processes x 1 worker" in status and "restarts 1" in status, status
        # the members' figures, once the restarted launcher has added them up (it writes them
        # every second): wait on them, a loaded machine may take a few seconds
        wait_for(
            lambda: re.search(r"[1-9]\d* readings/s in", edgeflow("status", "c3", *args).stdout),
            what="status to show the restarted members' readings/s",
        )
    finally:
        edgeflow("stop", "c3", *args, check=False)
    logs = edgeflow("logs", "c3", *args).stdout
    assert "process 2 of 3" in logs and "was killed by SIGKILL" in logs, logs
    wins = read(outs["win"])
    assert len(set(wins)) == len(wins), "no window twice after the restart"
    per_key: dict[str, list[int]] = {}
    for r in map(orjson.loads, wins):
        per_key.setdefault(r["key"], []).append(r["window_start"] // 1_000_000_000)
    for starts in per_key.values():
        starts.sort()
        assert starts == list(range(starts[0], starts[0] + len(starts))), "no gap"


def test_a_cluster_refuses_the_live_view_in_one_line(tmp_path: Path) -> None:
    flow, _ = make(tmp_path, "live")
    res = CliRunner().invoke(main, ["run", str(flow), "--processes", "2", "--live"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "--live shows the figures of one process" in res.output


def test_members_with_their_own_state_dirs_resume_after_a_kill(tmp_path: Path) -> None:
    """As on separate machines: each member keeps its own state directory (its own copy of
    the snapshot store); after a member is killed, all three started again with the same
    addresses resume, with no record missing or repeated."""
    ref_flow, ref = make(tmp_path, "ref")
    edgeflow("run", str(ref_flow))
    flow, outs = make(tmp_path, "apart", speed="10")
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))

    def start() -> list[subprocess.Popen[str]]:
        member = ("run", str(flow), "--addresses", addresses, "--snapshot-every", "200ms")
        return [
            popen_edgeflow(*member, "--process-id", str(i), "--state-dir", str(tmp_path / f"s{i}"))
            for i in range(3)
        ]

    procs = start()
    try:
        wait_for(lambda: len(read(outs["win"])) >= 200, what="the members' first windows")
        procs[2].kill()
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes[:2] == [1, 1] and len(read(outs["win"])) < 1200, codes
    procs = start()
    outs_again = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs_again
    assert_same(ref, outs, "members with their own state, killed and resumed")


def test_a_member_waiting_for_its_peers_stops_on_sigterm(tmp_path: Path) -> None:
    """A member whose peers never start waits for them (the engine retries), but a stop
    request ends it at once with one line instead of being ignored until SIGKILL."""
    flow, _ = make(tmp_path, "alone")
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    proc = popen_edgeflow("run", str(flow), "--addresses", addresses, "--process-id", "0")
    try:
        port = int(addresses.split(",")[0].rsplit(":", 1)[1])
        wait_for(lambda: listening(port), what="the member to wait for its peer")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped before the cluster formed: process 0 was still waiting" in err, err
    no_engine_noise(err)


def listening(port: int) -> bool:
    """Whether a process listens on ``port`` (the engine does while it waits for peers)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" for r in rows)


def test_a_kafka_sink_in_a_cluster_has_one_outbox_and_one_report(tmp_path: Path) -> None:
    """The Kafka sink has one partition: only the member whose worker holds it opens the
    outbox (its lock, its forwarder); the others send it their records. Without a broker
    the records wait in that one outbox, and the cluster's summary reports the sink once."""
    flow = write_flow(
        tmp_path / "k.py",
        """
from edgeflow import Flow, agg, window
from edgeflow.connectors import kafka, simulate
flow = Flow("cluster-kafka")
r = flow.source(simulate.sensors(devices=20, rate_hz=20, seed=3, speed=None, duration="20s",
                                 start="2026-01-01T00:00:00Z", partitions=4))
r.window(window.tumbling("1s"), agg.count(), name="win").to(kafka.sink("t.win"), name="to_kafka")
""",
    )
    env = {k: v for k, v in os.environ.items() if "KAFKA_BOOTSTRAP" not in k}
    state = tmp_path / "state"
    res = edgeflow("run", str(flow), "--processes", "3", "--state-dir", str(state), env=env)
    assert res.stderr.count("kafka sink 'to_kafka' -> t.win: 400 queued") == 1, res.stderr
    assert res.stderr.count(f"outbox {state / 'outbox.sqlite'}") == 1, res.stderr
    assert "another run" not in res.stderr


def test_the_member_killed_from_outside_is_named_even_when_a_peer_noticed_first(
    tmp_path: Path,
) -> None:
    """A peer that loses its connection may exit (code 1) before the launcher sees the member
    that was killed: the one line still names the killed member, the cause."""
    launcher = Launcher(None, [], 3, tmp_path, lambda _line: None)  # type: ignore[arg-type]
    peer = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim.kill()
    victim.wait()
    peer.wait()
    launcher.members = [
        _Member(i, p, tmp_path / f"s{i}.json") for i, p in enumerate((peer, alive, victim))
    ]
    try:
        code = launcher.wait()
    finally:
        launcher.kill()
    line = launcher.failure_line() or ""
    assert code == 1
    assert line.startswith(f"process 2 of 3 (pid {victim.pid}) was killed by SIGKILL"), line
