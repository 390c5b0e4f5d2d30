"""Least exposure: the metrics endpoint listens on 127.0.0.1 unless told otherwise, serves
liveness and readiness probes, and what a run keeps in its state directory is 0600/0700."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import edgeflow, popen_edgeflow, records, write_flow
from tests.kafka_helpers import free_port

SIM_FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, simulate
flow = Flow('exposure')
r = flow.source(simulate.sensors(devices=3, rate_hz=20, seed=1, duration='1h'))
r.window(window.tumbling('1s'), agg.count()).to(files.sink({out!r}))
"""


def listeners(port: int) -> list[str]:
    """The local addresses listening on TCP ``port`` (``ss -ltn``)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[3].rsplit(":", 1)[-1] == str(port):
            found.append(cols[3].rsplit(":", 1)[0])
    return found


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(what: str, check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            got = check()
            if got:
                return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def engine_running(port: int) -> bool:
    """Readings flow (a SIGTERM before the engine starts is not what these tests are about)."""
    m = re.search(r"^edgeflow_readings_in_total\{[^}]*\} (\S+)$", get(port, "/metrics")[1], re.M)
    return bool(m and float(m.group(1)) > 0)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err


def test_metrics_listen_on_localhost_only_unless_metrics_host_widens_it(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flow.py", SIM_FLOW.format(out=str(tmp_path / "w.jsonl")))
    for extra, expected in (((), ["127.0.0.1"]), (("--metrics-host", "0.0.0.0"), ["0.0.0.0"])):
        port = free_port()
        proc = popen_edgeflow("run", str(flow), "--metrics-port", str(port), "--no-live", *extra)
        try:
            wait_for(f"a listener on port {port}", lambda p=port: listeners(p))
            assert listeners(port) == expected, (extra, listeners(port))
            assert get(port, "/healthz")[0] == 200
            # a flow without broker sources is ready while it runs
            assert get(port, "/ready") == (200, "ready\n")
            wait_for("readings in the metrics", lambda p=port: engine_running(p))
        finally:
            err = stop(proc)
        assert "Traceback" not in err, err


def test_metrics_host_from_the_environment_and_a_bad_host_is_one_line(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flow.py", SIM_FLOW.format(out=str(tmp_path / "w.jsonl")))
    port = free_port()
    env = {**os.environ, "EDGEFLOW_METRICS_HOST": "0.0.0.0"}
    proc = popen_edgeflow("run", str(flow), "--metrics-port", str(port), "--no-live", env=env)
    try:
        wait_for(f"a listener on port {port}", lambda: listeners(port))
        assert listeners(port) == ["0.0.0.0"]
        wait_for("readings in the metrics", lambda: engine_running(port))
    finally:
        stop(proc)
    res = edgeflow(
        "run", str(flow), "--metrics-port", str(port), "--metrics-host", "192.0.2.1",
        "--for", "5s", "--no-live", check=False,
    )  # fmt: skip
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr
    assert f"192.0.2.1:{port}" in errors[0] and "--metrics-host" in errors[0], errors
    assert "Traceback" not in res.stderr


def test_ready_is_503_with_the_reason_until_the_broker_source_connects(tmp_path: Path) -> None:
    broker = free_port()  # nothing listens there
    flow = write_flow(
        tmp_path / "flow.py",
        "from edgeflow import Flow\n"
        "from edgeflow.connectors import mqtt, files\n"
        "flow = Flow('not-ready')\n"
        f"r = flow.source(mqtt.source('t/+', fields=['v'], port={broker}), name='plant')\n"
        f"r.to(files.sink({str(tmp_path / 'o.jsonl')!r}))\n",
    )
    port = free_port()
    proc = popen_edgeflow("run", str(flow), "--metrics-port", str(port), "--no-live")
    try:

        def answer_once_tried() -> tuple[int, str] | None:
            # before its first attempt the source is "not started connecting yet" (also 503);
            # after it, the reason names the broker it cannot reach
            code, body = get(port, "/ready")
            return (code, body) if f"127.0.0.1:{broker}" in body else None

        code, body = wait_for("/ready to name the source and its broker", answer_once_tried)
        assert code == 503 and len(body.strip().splitlines()) == 1, body
        assert "plant" in body, body
        assert get(port, "/healthz")[0] == 200  # alive, though not ready
    finally:
        stop(proc)


def modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    out["."] = stat.S_IMODE(root.stat().st_mode)
    return out


def test_state_files_are_0600_and_dirs_0700_output_files_keep_the_umask(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    state = tmp_path / "state"
    # state an older edgeflow left world-readable
    (state / "old").mkdir(parents=True, mode=0o755)
    (state / "old" / "notes.txt").write_text("x")
    os.chmod(state, 0o755)
    os.chmod(state / "old" / "notes.txt", 0o644)
    out, inside = tmp_path / "out" / "windows.jsonl", state / "dead.jsonl"
    flow = write_flow(
        tmp_path / "flow.py",
        "from edgeflow import Flow, agg, window\n"
        "from edgeflow.connectors import files, kafka, simulate\n"
        "flow = Flow('private')\n"
        "r = flow.source(simulate.sensors(devices=3, rate_hz=50, seed=1, speed=20,"
        " duration='20s', start='2026-01-01T00:00:00Z'))\n"
        "w = r.window(window.tumbling('1s'), agg.mean('temp'))\n"
        f"w.to(files.sink({str(out)!r}))\n"
        f"w.to(kafka.sink('exposure-private', bootstrap={kafka_bootstrap!r}))\n"
        f"r.to(files.sink({str(inside)!r}))\n",
    )
    old = os.umask(0o022)
    try:
        edgeflow("run", str(flow), "--state-dir", str(state), "--no-live")
    finally:
        os.umask(old)
    found = modes(state)
    assert "outbox.sqlite" in found and "plan.json" in found, found
    assert any(k.startswith("recovery/part-") for k in found), found
    for name, mode in found.items():
        want = 0o700 if (state / name).is_dir() else 0o600
        assert mode == want, f"{name}: {oct(mode)} (want {oct(want)}); all: {found}"
    # the user's own output outside the state dir keeps the user's umask
    assert records(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o755
