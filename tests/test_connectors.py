"""Connectors on their own: simulator determinism, file source/sink resume, parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from edgeflow.batch import Batch, RecordBatch
from edgeflow.connectors import files, simulate
from edgeflow.connectors.base import SinkContext, SourceContext, SourcePartition
from edgeflow.timeutil import parse_iso_ns


def drain(part: SourcePartition, limit: int | None = None) -> list[Any]:
    out: list[Any] = []
    try:
        while limit is None or len(out) < limit:
            out.extend(part.next_batch())
    except StopIteration:
        pass
    return out


def concat(batches: list[Batch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys = np.concatenate([b.key_array() for b in batches])
    return (
        keys,
        np.concatenate([b.t for b in batches]),
        np.concatenate([b.values for b in batches], axis=1),
    )


def ctx(
    batch_max: int = 65_536,
    fields: tuple[str, ...] | None = None,
    key: str = "device",
    time: str = "ts",
) -> SourceContext:
    return SourceContext("f", "src", key, time, fields, batch_max=batch_max)


@pytest.mark.parametrize("batch_max", [1, 7, 500, 100_000])
def test_simulator_is_deterministic_however_batches_are_cut(batch_max: int) -> None:
    spec = simulate.sensors(
        devices=9, rate_hz=50, seed=3, speed=None, duration="12s", jitter="50ms", partitions=3
    )
    ref = concat(drain(spec.open("1", None, ctx(64))))
    got = concat(drain(spec.open("1", None, ctx(batch_max))))
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a, b)
    assert len(ref[1]) == 3 * 50 * 12  # devices 1, 4, 7 of partition "1"


def test_simulator_resumes_after_its_snapshot_and_seeds_differ() -> None:
    spec = simulate.sensors(devices=4, rate_hz=100, seed=5, speed=None, duration="5s")
    whole = concat(drain(spec.open("0", None, ctx(40))))
    part = spec.open("0", None, ctx(40))
    first = drain(part, limit=3)
    resumed = spec.open("0", part.snapshot(), ctx(40))
    rest = drain(resumed)
    joined = concat(first + rest)
    for a, b in zip(whole, joined, strict=True):
        assert np.array_equal(a, b)
    other = concat(
        drain(
            simulate.sensors(devices=4, rate_hz=100, seed=6, speed=None, duration="5s").open(
                "0", None, ctx(40)
            )
        )
    )
    assert not np.array_equal(whole[2], other[2])


def test_simulator_in_real_time_does_not_block_and_emits_what_is_due() -> None:
    spec = simulate.sensors(devices=2, rate_hz=10, seed=1, speed=1.0)
    part = spec.open("0", None, ctx())
    first = part.next_batch()  # the tick that is due now
    assert sum(len(b) for b in first) >= 1
    assert part.next_batch() == []  # nothing new is due yet: returns at once
    awake = part.next_awake()
    assert awake is not None


def test_simulator_injects_spikes() -> None:
    spec = simulate.sensors(
        devices=20, rate_hz=100, seed=2, speed=None, duration="60s", spike_prob=0.001
    )
    _, _, vals = concat(drain(spec.open("0", None, ctx(fields=("accel",)))))
    assert vals.shape[0] == 1  # only the fields the flow needs are generated
    big = np.abs(vals[0]) > 4.5
    assert 10 < big.sum() < 200  # ~0.1% of 30,000 readings


@pytest.mark.parametrize("shift_prob", [0.0, 1.0])
def test_a_simulated_field_is_the_same_whichever_other_fields_are_read(shift_prob: float) -> None:
    """The simulator computes only the fields a flow reads; each field's values do not
    depend on that (the same spikes, shifts and noise as when both are read)."""
    spec = simulate.sensors(
        devices=7, rate_hz=100, seed=4, speed=None, duration="9s", jitter="3ms",
        spike_prob=0.01, shift_prob=shift_prob,
    )  # fmt: skip
    _, t_both, both = concat(drain(spec.open("0", None, ctx(300, fields=("accel", "temp")))))
    t_a, accel = concat(drain(spec.open("0", None, ctx(300, fields=("accel",)))))[1:]
    t_t, temp = concat(drain(spec.open("0", None, ctx(300, fields=("temp",)))))[1:]
    assert np.array_equal(t_both, t_a) and np.array_equal(t_both, t_t)
    assert np.array_equal(both[0], accel[0]) and np.array_equal(both[1], temp[0])
    assert (np.abs(accel[0]) > 4.5).sum() > 5  # spikes are in the compared values


def test_csv_and_jsonl_parsing_and_dead_letters(tmp_path: Path) -> None:
    jl = tmp_path / "r.jsonl"
    jl.write_bytes(
        b'{"id": "m1", "ts": "2026-03-01T10:00:00.5+00:00", "temp": 20.5, "rpm": 1500}\n'
        b'{"id": "m1", "ts": 1772359201000, "temp": 21}\n'
        b'{"id": 7, "ts": 1772359202.25, "temp": 22, "rpm": 1400}\n'
        b"not json\n"
        b'{"id": "m1", "ts": "2026-03-01T10:00:03", "temp": 1}\n'
        b'{"id": "m1", "ts": 1772359204, "temp": "hot"}\n'
        b'{"id": "m1", "temp": 5}\n'
        b"[1, 2]\n"
        b'{"id": true, "ts": 1772359204, "temp": 1}\n'
    )
    spec = files.source(str(jl))
    assert list(spec.columns() or []) == ["id", "ts", "temp", "rpm"]
    items = drain(spec.open(str(jl), None, ctx(key="id", time="ts", fields=("temp", "rpm"))))
    batches = [i for i in items if isinstance(i, Batch)]
    dls = [i for i in items if isinstance(i, RecordBatch)]
    keys, t, vals = concat(batches)
    base = parse_iso_ns("2026-03-01T10:00:00Z")
    assert keys.tolist() == ["m1", "m1", "7"]
    assert t.tolist() == [base + 500_000_000, base + 1_000_000_000, base + 2_250_000_000]
    assert vals[0].tolist() == [20.5, 21.0, 22.0]
    assert np.isnan(vals[1][1])  # missing field is "no value", not an error
    rows = [r for d in dls for r in d.rows()]
    assert [r["source"].rsplit(":", 1)[1] for r in rows] == ["4", "5", "6", "7", "8", "9"]
    errors = [r["error"] for r in rows]
    assert "not valid JSON" in errors[0]
    assert "no UTC offset" in errors[1]
    assert "send numbers as JSON numbers" in errors[2]
    assert "missing time field 'ts'" in errors[3]
    assert "expected a JSON object" in errors[4]
    assert "not a non-empty string or integer" in errors[5]


def test_file_source_resumes_exactly_after_its_snapshot(tmp_path: Path) -> None:
    p = tmp_path / "in.csv"
    p.write_text("dev,ts,v\n" + "".join(f"d{i % 3},{1_700_000_000 + i},{i}\n" for i in range(1000)))
    spec = files.source(str(p), batch_lines=64)
    c = ctx(key="dev", time="ts", fields=("v",))
    part = spec.open(str(p), None, c)
    first = drain(part, limit=5)
    snap = part.snapshot()
    rest = drain(spec.open(str(p), snap, c))
    _, _, vals = concat(first + rest)
    assert vals[0].tolist() == [float(i) for i in range(1000)]


def test_file_sink_truncates_to_its_snapshot_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.jsonl"
    sink = files.sink(out)
    sc = SinkContext("f", "out")

    def rb(i: int) -> RecordBatch:
        return RecordBatch(
            "window", "w", {"key": ["a"], "window_start": np.array([i]), "count": np.array([1])}, 1
        )

    part = sink.open("0", None, sc)
    part.write([rb(1), rb(2)])
    snap = part.snapshot()
    part.write([rb(3)])  # written after the snapshot: a crash here must not leave it behind
    part = sink.open("0", snap, sc)
    part.write([rb(4)])
    part.close()
    assert [orjson.loads(x)["window_start"] for x in out.read_text().splitlines()] == [1, 2, 4]
    fresh = sink.open("0", None, sc)  # a new run (no snapshot) starts the file anew
    fresh.close()
    assert out.read_text() == ""
