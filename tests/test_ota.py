"""Over-the-air updates of a running deployment with signed bundles, on a real Kafka broker:
a version that crash-loops is rolled back by the node itself within its grace period with 0
records lost (the distinct readings in Kafka equal a reference run), and `edgeflow status`,
the status topic and `edgeflow fleet status` say what happened; a good update keeps the state
that fits it, and an update whose plan changed moves the old state aside (kept) and says so."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from edgeflow.bundle import build, generate, sign
from edgeflow.cli.supervisor import read_json
from tests.helpers import edgeflow, lines, stop_deployments, wait_for, write_flow
from tests.kafka_helpers import consume_all

SIM = (
    "simulate.sensors(devices=2, rate_hz=10, seed=11, speed={speed}, duration={duration!r}, "
    'start="2026-01-01T00:00:00Z")'
)
KEEP_ALL = "def keep(r):\n    return True\n"
#: the broken release: reads a few readings, then the process dies (as a native crash would)
CRASH_AFTER_5 = """import os
import sys
_seen = [0]
def keep(r):
    _seen[0] += 1
    if _seen[0] > 5:
        print("error: rules.keep: calibration table v2 does not match this line", flush=True)
        sys.stdout.flush()
        os._exit(1)
    return True
"""


def readings_in(d: Path) -> int:
    return int(read_json(d / "stats.json").get("counters", {}).get("readings_in", 0))


def release(
    src: Path, version: str, rules: str, sink: str, key: Path, duration: str, extra: str = ""
) -> Path:
    """A signed bundle of the flow "plant": simulated readings through rules.keep to ``sink``."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "rules.py").write_text(rules)
    flow = write_flow(
        src / "plant.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate
from rules import keep
flow = Flow("plant")
r = flow.source({SIM.format(speed=4, duration=duration)})
r.filter(keep).to({sink}, name="out")
{extra}
""",
    )
    out, _ = build(flow, src.parent / f"plant-{version}.efb", version=version)
    sign(out, key)
    return out


def reference_ids(tmp: Path, duration: str) -> set[tuple[str, int]]:
    """Every reading the source yields, from an uninterrupted run as fast as possible."""
    out = tmp / "reference.jsonl"
    flow = write_flow(
        tmp / "reference.py",
        f"""
from edgeflow import Flow
from edgeflow.connectors import files, simulate
flow = Flow("reference")
flow.source({SIM.format(speed=None, duration=duration)}).to(files.sink({str(out)!r}))
""",
    )
    edgeflow("run", str(flow))
    return {(r["key"], r["t"]) for r in map(json.loads, lines(out))}


def test_a_crash_looping_update_rolls_back_within_the_grace_period_with_no_record_lost(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic, status_topic = "ota-plant-readings", "ota-fleet-status"
    key, pub = generate(tmp_path / "release")
    sink = f"kafka.sink({topic!r}, bootstrap={kafka_bootstrap!r})"
    v1 = release(tmp_path / "v1", "1.0", KEEP_ALL, sink, key, "60s")
    v2 = release(tmp_path / "v2", "2.0", CRASH_AFTER_5, sink, key, "60s")
    root = tmp_path / "deployments"
    d = root / "plant"
    node = ("--root", str(root), "--trust", str(pub))
    try:
        edgeflow(
            "deploy", str(v1), "--detach", *node, "--snapshot-every", "500ms",
            "--status-topic", status_topic, "--status-bootstrap", kafka_bootstrap,
            "--node-id", "node-7",
        )  # fmt: skip
        wait_for(lambda: readings_in(d) >= 40, what="v1 reading input")
        t0 = time.monotonic()
        res = edgeflow("deploy", str(v2), *node, "--grace", "40s", check=False)
        took = time.monotonic() - t0
        assert res.returncode == 1, res.stdout + res.stderr
        err = res.stderr.strip().splitlines()[-1]
        assert err.startswith("error: update to 2.0 failed: worker exited 1 3 times in "), err
        assert "calibration table v2" in err and err.endswith(
            "rolled back to 1.0; see: edgeflow status plant"
        ), err
        print(f"rollback took {took:.1f}s: {err}")
        assert took < 40, f"rolled back after {took:.0f} s, not within the 40 s grace period"
        status = edgeflow("status", "plant", "--root", str(root)).stdout
        print(status)
        assert "running" in status and "version 1.0" in status, status
        assert "update to 2.0 failed: worker exited 1 3 times" in status, status
        assert "rolled back to 1.0" in status and "state kept" in status, status
        # v1 runs on from its state and finishes its input; its outbox reaches Kafka
        wait_for(
            lambda: read_json(d / "status.json").get("state") == "finished",
            timeout=120,
            what="v1 to finish its input",
        )
        want = reference_ids(tmp_path, "60s")
        got = consume_all(kafka_bootstrap, topic, expect=len(want), timeout=60)
        ids = {(v["key"], v["t"]) for v in (json.loads(m.value) for m in got)}
        assert len(want) == 1200
        assert ids == want, f"{len(want - ids)} readings lost, {len(ids - want)} unexpected"
        # the status topic (any Kafka consumer) and `edgeflow fleet status` say what happened
        reports = [
            json.loads(m.value)
            for m in consume_all(kafka_bootstrap, status_topic, timeout=30)
            if m.key == b"node-7/plant"
        ]
        last = reports[-1]
        assert last["version"] == "1.0" and last["state"] == "finished", last
        assert last["last_update"]["result"] == "rolled back", last
        assert "worker exited 1 3 times" in last["last_update"]["reason"], last
        assert any(r["health"] == "checking update" for r in reports)
        fleet = edgeflow(
            "fleet", "status", "--bootstrap", kafka_bootstrap, "--topic", status_topic,
            check=False,
        )  # fmt: skip
        assert fleet.returncode == 1, fleet.stderr
        print(fleet.stdout)
        row = next(ln for ln in fleet.stdout.splitlines() if ln.startswith("node-7"))
        assert "plant" in row and "1.0" in row and "2.0 failed, rolled back to 1.0" in row, row
    finally:
        stop_deployments(root)


def test_a_good_update_keeps_fitting_state_and_a_changed_plan_moves_it_aside(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    key, pub = generate(tmp_path / "release")
    sink = f"files.sink({str(out)!r})"
    v1 = release(tmp_path / "v1", "1.0", KEEP_ALL, sink, key, "600s")
    v3 = release(tmp_path / "v3", "3.0", "# tuned\n" + KEEP_ALL, sink, key, "600s")
    v4 = release(
        tmp_path / "v4", "4.0", KEEP_ALL, sink, key, "600s",
        extra=f'r.window(window.tumbling("1s"), agg.count()).to(files.sink({str(tmp_path / "w.jsonl")!r}))',
    )  # fmt: skip
    root = tmp_path / "deployments"
    d = root / "plant"
    node = ("--root", str(root), "--trust", str(pub))
    try:
        edgeflow("deploy", str(v1), "--detach", *node, "--snapshot-every", "500ms")
        wait_for(lambda: len(lines(out)) >= 40, what="v1 output")
        res = edgeflow("deploy", str(v3), *node, "--grace", "5s")
        assert "updated plant from 1.0 to 3.0" in res.stdout and "state kept" in res.stdout
        assert not list(d.glob("state.old-*")), "fitting state must be kept in place"
        n = len(lines(out))
        wait_for(lambda: len(lines(out)) >= n + 20, what="v3 output")
        first = json.loads(lines(out)[0])
        again = [
            r
            for r in map(json.loads, lines(out))
            if (r["key"], r["t"]) == (first["key"], first["t"])
        ]
        assert len(again) == 1, "v3 resumed from v1's state, not from the beginning"
        status = edgeflow("status", "plant", "--root", str(root)).stdout
        assert "version 3.0" in status and "updated 1.0 -> 3.0" in status, status
        res = edgeflow("deploy", str(v4), *node, "--grace", "5s")
        assert "updated plant from 3.0 to 4.0" in res.stdout, res.stdout
        aside = list(d.glob("state.old-*"))
        assert len(aside) == 1 and (aside[0] / "plan.json").exists(), "old state kept aside"
        assert (
            f"moved aside to {aside[0]}" in res.stdout and "starts from fresh state" in res.stdout
        )
        status = edgeflow("status", "plant", "--root", str(root)).stdout
        assert "version 4.0" in status and f"moved aside to {aside[0]}" in status, status
        assert sorted(p.name for p in (d / "versions").iterdir()) == ["1.0", "3.0", "4.0"]
    finally:
        stop_deployments(root)


def test_a_node_that_trusts_keys_refuses_plain_flows_and_unsigned_bundles_and_runs_a_signed_one(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    key, pub = generate(tmp_path / "release")
    signed = release(tmp_path / "v1", "1.0", KEEP_ALL, f"files.sink({str(out)!r})", key, "600s")
    unsigned, _ = build(tmp_path / "v1" / "plant.py", tmp_path / "unsigned.efb", version="1.1")
    root = tmp_path / "deployments"
    env = {**os.environ, "EDGEFLOW_TRUST": str(pub)}
    res = edgeflow(
        "deploy", str(tmp_path / "v1" / "plant.py"), "--detach", "--root", str(root),
        env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "accepts only signed bundles" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    res = edgeflow("deploy", str(unsigned), "--detach", "--root", str(root), env=env, check=False)
    assert res.returncode == 2 and "not signed" in res.stderr.lower(), res.stderr
    assert "Traceback" not in res.stderr and not (root / "plant").exists()
    # a signed bundle runs in the foreground too, from its extracted copy (no OTA there)
    res = edgeflow("deploy", str(signed), "--root", str(root), "--for", "1s", env=env)
    assert "bundle plant 1.0 verified (signed by" in res.stderr and lines(out)
    assert (root / "plant" / "versions" / "1.0" / "rules.py").exists()


def test_the_grace_check_fails_a_crash_loop_an_error_rate_and_a_version_that_reads_nothing() -> (
    None
):
    from edgeflow.fleet.health import GraceCheck

    def stats(readings: int, dead: int, at: float = 100.0) -> dict[str, Any]:
        return {"at": at, "counters": {"readings_in": readings, "dead_letters": dead}}

    check = GraceCheck(grace_s=30, started=0.0, need_input=True)
    assert check.verdict(1, True, {}, 100)[0] == "checking"  # still starting
    assert check.verdict(5, True, stats(100, 1), 100)[0] == "checking"
    verdict, reason = check.verdict(5, True, stats(100, 30), 100)
    assert verdict == "failed" and reason is not None and "30 dead letters of 100" in reason
    assert check.verdict(31, True, stats(100, 1), 100) == ("passed", None)
    verdict, reason = check.verdict(31, True, stats(0, 0), 100)
    assert verdict == "failed" and reason is not None and "no input read" in reason
    verdict, reason = check.verdict(31, True, stats(50, 0, at=60.0), 100)
    assert verdict == "failed" and reason is not None and "no figures" in reason
    slow = GraceCheck(grace_s=30, started=0.0, need_input=True)
    assert slow.verdict(40, True, {}, 100)[0] == "checking"  # a slow start gets longer
    assert slow.verdict(41, True, stats(0, 0), 100)[0] == "checking"  # its first figures
    assert slow.verdict(47, True, stats(0, 0), 100)[0] == "failed"
    assert slow.verdict(70, True, {}, 100)[0] == "failed"
    assert GraceCheck(grace_s=30, started=0.0, need_input=False).verdict(
        31, True, stats(0, 0), 100
    ) == ("passed", None)
    for t in (2.0, 4.0, 8.0):
        check.worker_exited(t, 1, "error: step x: boom")
    verdict, reason = check.verdict(8, False, {}, 100)
    assert verdict == "failed" and reason == "worker exited 1 3 times in 8 s: step x: boom"
    once = GraceCheck(grace_s=30, started=0.0)
    once.worker_exited(3.0, 2, None)
    assert once.verdict(10, True, stats(100, 0), 100)[0] == "checking"
    assert once.verdict(31, True, stats(100, 0), 100) == (
        "failed",
        "worker exited 2 once in 3 s: no error line",
    )


def test_a_node_takes_signed_bundles_from_its_control_topic_and_skips_a_rolled_back_one(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    out = tmp_path / "out.jsonl"
    control = "ota-control"
    key, pub = generate(tmp_path / "release")
    sink = f"files.sink({str(out)!r})"
    v1 = release(tmp_path / "v1", "1.0", KEEP_ALL, sink, key, "600s")
    v2 = release(tmp_path / "v2", "2.0", CRASH_AFTER_5, sink, key, "600s")
    v3 = release(tmp_path / "v3", "3.0", "# tuned\n" + KEEP_ALL, sink, key, "600s")
    unsigned, _ = build(tmp_path / "v3" / "plant.py", tmp_path / "unsigned.efb", version="9.0")
    root = tmp_path / "deployments"
    d = root / "plant"

    def current() -> str | None:
        return read_json(d / "release.json").get("current", {}).get("version")

    def update() -> dict[str, Any]:
        return read_json(d / "release.json").get("update") or {}

    def publish(bundle: Path, check: bool = True) -> Any:
        return edgeflow(
            "fleet", "publish", str(bundle), "--bootstrap", kafka_bootstrap, "--topic", control,
            check=check,
        )  # fmt: skip

    try:
        res = publish(unsigned, check=False)
        assert res.returncode == 2 and "not signed" in res.stderr, res.stderr
        edgeflow(
            "deploy", str(v1), "--detach", "--root", str(root), "--trust", str(pub),
            "--control-topic", control, "--status-bootstrap", kafka_bootstrap,
            "--snapshot-every", "500ms", "--grace", "5s",
        )  # fmt: skip
        wait_for(lambda: len(lines(out)) >= 20, what="v1 output")
        assert "published plant 3.0 for deployment plant" in publish(v3).stdout
        wait_for(lambda: update().get("result") == "succeeded" and current() == "3.0", 90, "3.0")
        publish(v2)
        wait_for(lambda: update().get("result") == "rolled back", 90, "the rollback of 2.0")
        assert current() == "3.0" and update()["to"] == "2.0"
        # a restart of the node does not take the rolled-back version again
        edgeflow("stop", "plant", "--root", str(root))
        edgeflow("deploy", str(v3), "--detach", "--root", str(root), "--trust", str(pub))
        n = len(lines(out))
        wait_for(lambda: len(lines(out)) >= n + 20, what="3.0 output after the restart")
        assert current() == "3.0" and update().get("result") == "rolled back"
        log = (d / "edgeflow.log").read_text()
        assert log.count("control topic ota-control: updating plant") == 2, log[-3000:]
    finally:
        stop_deployments(root)
