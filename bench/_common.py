"""Helpers shared by the bench scripts: child processes, peak RSS, the final JSON line."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a fresh process (so each side's peak RSS is its own); parse its last JSON line."""
    res = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    last = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    out: dict[str, Any] = json.loads(last)
    return out


def source_batches(spec: Any, ctx: Any) -> Iterator[Any]:
    """Every batch an edgeflow source ``spec`` makes, partition after partition, read
    straight from its partitions (no engine): for benches that feed a kernel or count bytes
    themselves."""
    for p in spec.partitions():
        part = spec.open(p, None, ctx)
        while True:
            try:
                batches = part.next_batch()
            except StopIteration:
                break
            yield from batches


def emit(figures: dict[str, Any]) -> None:
    print(json.dumps(figures), flush=True)


def per_reading_source(spec: Any, ctx: Any, counts: dict[str, int]) -> Any:
    """A bytewax source of the same readings as edgeflow source ``spec``, one Python tuple
    ``(key, t, value, ...)`` per reading (the baselines' per-item path); ``counts["readings"]``
    counts them."""
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    class Part(StatefulSourcePartition[Any, Any]):
        def __init__(self, p: str) -> None:
            self.inner = spec.open(p, None, ctx)

        def next_batch(self) -> list[Any]:
            out: list[Any] = []
            for b in self.inner.next_batch():
                keys = b.keys
                columns = [b.key_idx.tolist(), b.t.tolist(), *(v.tolist() for v in b.values)]
                out.extend((keys[row[0]], *row[1:]) for row in zip(*columns, strict=True))
            counts["readings"] += len(out)
            return out

        def snapshot(self) -> Any:
            return None

    class Src(FixedPartitionedSource[Any, Any]):
        def list_parts(self) -> list[str]:
            return list(spec.partitions())

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Part:
            return Part(for_part)

    return Src()


def simulated_sensors(seconds: int, seed: int, devices: int = 1000, rate_hz: int = 100) -> Any:
    """The benches' data: ``devices`` simulated sensors at ``rate_hz``, ``seconds`` of
    readings generated as fast as they can be (speed None), from ``seed``."""
    from edgeflow.connectors import simulate

    return simulate.sensors(
        devices=devices, rate_hz=rate_hz, seed=seed, speed=None, duration=f"{seconds}s"
    )


def discard_sink() -> Any:
    """A sink that drops what it gets: the benches measure the flow, not an output."""
    from edgeflow.connectors.base import SinkContext, SinkPartition, SinkSpec

    class Discard(SinkSpec):
        kind = "discard"

        def describe(self) -> dict[str, Any]:
            return {"kind": self.kind}

        def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
            class Part(SinkPartition):
                def write(self, batches: list[Any]) -> None:
                    pass

            return Part()

    return Discard()


def run_baseline_flow(flow: Any, counts: dict[str, int]) -> dict[str, Any]:
    """Run a bytewax baseline dataflow with ``run_main``: wall and CPU time and rates of the
    ``counts["readings"]`` it read and the ``counts["windows"]`` it wrote."""
    from bytewax.testing import run_main

    t0, c0 = time.perf_counter(), time.process_time()
    run_main(flow)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = counts["readings"]
    return {
        "side": "baseline",
        "readings": n,
        "seconds": dt,
        "per_s": n / dt,
        "per_cpu_s": n / cpu,
        "windows": counts["windows"],
    }


def window_summary(acc: list[float]) -> dict[str, float]:
    """count, mean, min, max, std and p95 (linear, as numpy) of one window's values, one
    Python pass: what a per-reading baseline computes for edgeflow's six aggregations."""
    n = len(acc)
    mean = sum(acc) / n
    s = sorted(acc)
    h = (n - 1) * 0.95
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return {
        "count": n, "mean": mean, "min": s[0], "max": s[-1],
        "std": math.sqrt(sum((x - mean) ** 2 for x in acc) / n),
        "p95": s[lo] + (h - lo) * (s[hi] - s[lo]),
    }  # fmt: skip


def outbox_records(n: int, topic: str) -> list[Any]:
    """``n`` outbox records of 200 B (window-summary-like JSON, an ``edgeflow-id`` header),
    keys over 1,000 devices: what the Kafka delivery benches send."""
    import orjson

    from edgeflow.connectors.outbox import OutRecord

    out = []
    for i in range(n):
        key = f"dev-{i % 1000}".encode()
        value = orjson.dumps(
            {"key": key.decode(), "window_start": 1_767_225_600_000_000_000 + i, "mean": i * 0.5}
        ).ljust(200, b" ")
        headers = orjson.dumps(
            [["edgeflow-id", f"bench/w/{key.decode()}/{i}"], ["edgeflow-schema", "window/v1"]]
        )
        out.append(OutRecord(topic, key, value[:200], headers))
    return out
