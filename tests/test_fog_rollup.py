"""The fog tier end to end on a real broker: three node flows publish mergeable 1 s summaries
to Kafka, a fog flow reads every node's topic (a pattern) and rolls them up per line and for
the plant. Its rollups must equal statistics computed directly from the raw readings the
nodes saw (kept in a file beside each node): counts, sums, min and max exactly, mean and std
to float precision, percentiles within the quantile sketch's stated relative accuracy; and
records duplicated into the topics (the same message again, in its own topic or another
node's) must change nothing."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import popen_edgeflow, records, write_flow
from tests.kafka_helpers import consume_all

NODES = ("line1", "line2", "line3")
DEVICES = 4
LINE_EVERY_NS = 10_000_000_000
PLANT_EVERY_NS = 20_000_000_000
ALPHA = 0.01  # agg.mergeable's default relative accuracy

NODE_FLOW = """
import os
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, kafka, simulate

NODE, P = os.environ["NODE"], os.environ["PREFIX"]
flow = Flow(f"{P}-node-{NODE}")
readings = flow.source(
    simulate.sensors(devices=%(devices)d, rate_hz=50, seed=int(NODE[-1]), prefix=f"{NODE}/m",
                     speed=None, duration="40s", start="2026-01-01T00:00:00Z"),
    key="device", time="ts",
)
readings.to(files.sink(os.environ["RAW"]), name="raw")
summaries = readings.window(window.tumbling("1s"), agg.count(), agg.mergeable("accel"),
                            name="summaries")
# line3 publishes in Kafka transactions: the fog reads committed records only, once each
summaries.to(kafka.sink(f"{P}.summary.{NODE}", exactly_once=NODE == "line3"), name="to_kafka")
"""

FOG_FLOW = """
import os
from edgeflow import Flow
from edgeflow.connectors import files, kafka

P = os.environ["PREFIX"]
flow = Flow(f"{P}-fog")
summaries = flow.records(
    kafka.source(pattern=P.replace(".", "\\\\.") + r"\\.summary\\..*", records=True,
                 stop_at_end=True),
    name="summaries",
)
# (the topics' partitions are read in any interleaving: a generous lateness merges them all)
lines = summaries.rollup("10s", fields=["accel"], group_by="key", group_sep="/",
                         lateness="1h", name="line_rollups")
lines.to(files.sink(os.environ["LINES_OUT"]), name="lines_out")
plant = lines.rollup("20s", fields=["accel"], group="plant", lateness="1h",
                     name="plant_rollups")
plant.to(files.sink(os.environ["PLANT_OUT"]), name="plant_out")
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _expected(
    raw: list[dict[str, Any]], group_of: Any, every_ns: int
) -> dict[tuple[str, int], Any]:
    """Per (group, window start): the raw accel values of that group and window."""
    by: dict[tuple[str, int], list[float]] = {}
    for r in raw:
        g = group_of(r["key"])
        by.setdefault((g, r["t"] // every_ns * every_ns), []).append(r["accel"])
    return {k: np.asarray(v, np.float64) for k, v in by.items()}


def _check(rollups: list[dict[str, Any]], expected: dict[tuple[str, int], Any]) -> None:
    got = {(r["key"], r["window_start"]): r for r in rollups}
    assert sorted(got) == sorted(expected), "one rollup per group and window, none missing"
    assert len(rollups) == len(got), "no rollup emitted twice"
    for k, x in expected.items():
        r = got[k]
        assert r["count_accel"] == len(x), k
        assert r["sum_accel"] == pytest.approx(float(x.sum()), rel=1e-12, abs=1e-9), k
        assert r["min_accel"] == float(x.min()) and r["max_accel"] == float(x.max()), k
        assert r["sumsq_accel"] == pytest.approx(float((x * x).sum()), rel=1e-12), k
        assert r["mean_accel"] == pytest.approx(float(x.mean()), rel=1e-9, abs=1e-12), k
        assert r["std_accel"] == pytest.approx(float(x.std()), rel=1e-6), k
        for q in (50, 95, 99):
            lo = float(np.quantile(x, q / 100, method="lower"))
            hi = float(np.quantile(x, q / 100, method="higher"))
            v = r[f"p{q}_accel"]
            bound = ALPHA * max(abs(lo), abs(hi)) + 1e-12
            assert lo - bound <= v <= hi + bound, (k, q, v, lo, hi)


def test_fog_rollups_of_three_nodes_equal_the_raw_statistics_and_ignore_duplicates(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"fog{uuid.uuid4().hex[:8]}"
    node_flow = write_flow(tmp_path / "node.py", NODE_FLOW % {"devices": DEVICES})
    fog_flow = write_flow(tmp_path / "fog.py", FOG_FLOW)
    nodes = [
        popen_edgeflow(
            "run",
            str(node_flow),
            "--kafka-bootstrap",
            kafka_bootstrap,
            env=_env(NODE=n, PREFIX=prefix, RAW=str(tmp_path / f"raw-{n}.jsonl")),
        )
        for n in NODES
    ]
    for n, p in zip(NODES, nodes, strict=True):
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, f"node {n}: {out}\n{err}"
    raw = [r for n in NODES for r in records(tmp_path / f"raw-{n}.jsonl")]
    assert len(raw) == len(NODES) * DEVICES * 50 * 40

    # duplicates: 40 messages of line1 again in their own topic, 15 of them in line2's
    from kafka import KafkaProducer

    published = consume_all(kafka_bootstrap, f"{prefix}.summary.line1", expect=DEVICES * 40)
    assert len(published) == DEVICES * 40
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i, m in enumerate(published[:40]):
        producer.send(f"{prefix}.summary.line1", m.value, key=m.key, headers=m.headers)
        if i < 15:
            producer.send(f"{prefix}.summary.line2", m.value, key=m.key, headers=m.headers)
    producer.flush()
    producer.close()

    lines_out, plant_out = tmp_path / "lines.jsonl", tmp_path / "plant.jsonl"
    fog = popen_edgeflow(
        "run", str(fog_flow), "--kafka-bootstrap", kafka_bootstrap,
        env=_env(PREFIX=prefix, LINES_OUT=str(lines_out), PLANT_OUT=str(plant_out)),
    )  # fmt: skip
    try:
        _out, err = fog.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        fog.kill()
        _out, err = fog.communicate()
        raise AssertionError(f"the fog flow did not reach the end of its topics:\n{err}") from None
    assert fog.returncode == 0 and "Traceback" not in err, err
    _check(records(lines_out), _expected(raw, lambda k: k.split("/")[0], LINE_EVERY_NS))
    _check(records(plant_out), _expected(raw, lambda k: "plant", PLANT_EVERY_NS))
    line = records(lines_out)[0]
    assert line["keys"] == DEVICES and len(line["key_list"]) == DEVICES
    assert all(k.startswith(line["key"] + "/") for k in line["key_list"])
