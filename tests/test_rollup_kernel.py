"""The rollup kernel (edgeflow/ops/rollup.py): node summaries combined exactly per group and
window, rollups of rollups equal to one rollup and to the raw values' statistics,
duplicates, late and malformed records, snapshots, idle closes and bounded memory."""

from __future__ import annotations

import copy
import math
import pickle
import random
from typing import Any

import numpy as np
import orjson
import pytest

from edgeflow.batch import Batch, RecordBatch
from edgeflow.ops import agg
from edgeflow.ops import window as win
from edgeflow.ops.rollup import RollupKernel, RollupSpec, RollupState, split_by_group
from edgeflow.ops.sketch import QuantileSketch
from edgeflow.ops.window_kernel import WindowKernel

S = 1_000_000_000
MIN = 60 * S
NODES = ("n1", "n2", "n3")


def raw_readings(seed: int, seconds: int = 180, dyadic: bool = True) -> dict[str, Batch]:
    """Per node: readings of machines ``<line>/<machine>`` at ~20 Hz with some NaNs.
    ``dyadic``: values are multiples of 1/64 below 2**10 (every sum is exact in float)."""
    rng = np.random.default_rng(seed)
    out = {}
    for node in NODES:
        n = seconds * 20 * 4
        t = np.sort(rng.integers(0, seconds * S, n))
        machines = [f"line{m % 2}/{node}-m{m}" for m in rng.integers(0, 4, n)]
        if dyadic:
            x = np.round(rng.lognormal(2, 1.2, n).clip(0, 900) * 64) / 64
            x[rng.random(n) < 0.1] *= -1
        else:
            x = rng.lognormal(0, 2, n) * rng.choice([-1.0, 1.0], n)
        x[rng.random(n) < 0.05] = np.nan
        x[rng.random(n) < 0.02] = 0.0
        out[node] = Batch.from_columns(machines, t, {"x": x})
    return out


def node_summaries(readings: dict[str, Batch]) -> list[RecordBatch]:
    """Each node's 1 s window summaries (agg.mergeable) with edgeflow ids, as JSON would
    carry them (through orjson, like the Kafka records source): one batch per second with
    the summaries of all nodes, as a fog tier receives them."""
    every: list[dict[str, Any]] = []
    for node, batch in readings.items():
        k = WindowKernel("w", win.tumbling("1s").resolve(), [agg.mergeable("x")], ["x"])
        state = k.init()
        parts = [k.step_batch(state, batch, 0).windows, k.flush(state).windows]
        rows = [r for p in parts if p is not None for r in p.rows()]
        rows = orjson.loads(orjson.dumps(rows))
        for r in rows:
            r["edgeflow_id"] = f"{node}/w/{r['key']}/{r['window_start']}"
            r["edgeflow_flow"] = node
        every += rows
    by_second: dict[int, list[dict[str, Any]]] = {}
    for r in every:
        by_second.setdefault(r["window_start"], []).append(r)
    return [_batch(by_second[t]) for t in sorted(by_second)]


def _batch(rows: list[dict[str, Any]], kind: str = "window") -> RecordBatch:
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    cols = {c: [r.get(c) for r in rows] for c in names}
    return RecordBatch(kind, "src", cols, len(rows), ("edgeflow_id",))


def rollup(
    spec: RollupSpec, batches: list[RecordBatch], *, cut: int = 0, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], RollupKernel, RollupState]:
    """Run a kernel over the batches (``cut``: re-cut them into batches of that many records,
    shuffled within the batch by ``seed``); flush at the end."""
    k = RollupKernel("r", spec)
    state = k.init()
    out: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    for rb in _recut(batches, cut, seed) if cut else batches:
        got, lt = k.step_records(state, rb, 0)
        out += got.rows() if got else []
        late += lt.rows() if lt else []
    fin = k.flush(state)
    out += fin.rows() if fin else []
    return out, late, k, state


def _recut(batches: list[RecordBatch], size: int, seed: int) -> list[RecordBatch]:
    rows = [r for b in batches for r in b.rows()]
    rng = random.Random(seed)
    out = []
    for i in range(0, len(rows), size):
        part = rows[i : i + size]
        rng.shuffle(part)
        out.append(_batch(part))
    return out


def _by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["key"], r["window_start"]): r for r in rows}


def _lines(readings: dict[str, Batch]) -> dict[tuple[str, int], np.ndarray]:
    """The raw values (not NaN) per (line, minute)."""
    acc: dict[tuple[str, int], list[float]] = {}
    for b in readings.values():
        keys = b.key_array()
        for k, t, v in zip(keys, b.t.tolist(), b.values[0].tolist(), strict=True):
            if not math.isnan(v):
                acc.setdefault((k.split("/")[0], t - t % MIN), []).append(v)
    return {k: np.array(v) for k, v in acc.items()}


LATE = 20 * S  # summaries come interleaved (shuffled in batches): some skew is not late
BY_LINE: dict[str, Any] = {
    "group_by": "key",
    "group_sep": "/",
    "fields": ("x",),
    "lateness_ns": LATE,
}


def test_rollup_of_rollups_equals_one_rollup_and_the_raw_statistics() -> None:
    readings = raw_readings(1)
    summaries = node_summaries(readings)
    direct, late_d, _, _ = rollup(RollupSpec(every_ns=MIN, **BY_LINE), summaries, cut=97)
    tens, late_t, _, _ = rollup(RollupSpec(every_ns=10 * S, **BY_LINE), summaries, cut=97)
    again = _batch(orjson.loads(orjson.dumps(tens)))
    minute, late_m, _, _ = rollup(
        RollupSpec(every_ns=MIN, group_by="key", fields=("x",), lateness_ns=LATE), [again]
    )
    assert late_d == late_t == late_m == []
    assert len(direct) == 2 * 3  # two lines, three minutes
    d, m = _by_key(direct), _by_key(minute)
    assert d.keys() == m.keys()
    for key, row in d.items():
        other = m[key]
        for c in row:
            if c == "records":
                continue  # what was merged differs: 1 s summaries vs 10 s rollups
            assert orjson.dumps(other[c]) == orjson.dumps(row[c]), (key, c)
        assert row["keys"] == 6 and len(row["key_list"]) == 6  # 3 nodes x 2 machines
    raw = _lines(readings)
    assert raw.keys() == d.keys()
    for key, x in raw.items():
        row = d[key]
        assert row["count_x"] == len(x)
        assert row["sum_x"] == float(x.sum())  # dyadic values: every sum is exact
        assert (row["min_x"], row["max_x"]) == (x.min(), x.max())
        assert math.isclose(row["sumsq_x"], float((x * x).sum()), rel_tol=1e-9)
        assert math.isclose(row["mean_x"], float(x.mean()), rel_tol=1e-9)
        assert math.isclose(row["std_x"], float(x.std()), rel_tol=1e-9)
        xs = np.sort(x)
        for q in (50, 95, 99):
            exact = xs[math.floor(q / 100 * (len(xs) - 1))]
            got = row[f"p{q}_x"]
            assert abs(got - exact) <= 0.01 * abs(exact) * (1 + 1e-9), (key, q, got, exact)
        want = QuantileSketch.from_values(x).to_json()
        assert orjson.dumps(row["sketch_x"]) == orjson.dumps(want)


def test_any_float_values_any_arrival_order_and_batching_give_the_same_rollups() -> None:
    readings = raw_readings(2, seconds=120, dyadic=False)
    summaries = node_summaries(readings)
    spec = RollupSpec(every_ns=MIN, **{**BY_LINE, "lateness_ns": 200 * S})
    base, _, _, _ = rollup(spec, summaries)
    for cut, seed in ((1, 0), (13, 1), (500, 2)):
        got, late, _, _ = rollup(spec, summaries, cut=cut, seed=seed)
        assert late == []
        assert orjson.dumps(got) == orjson.dumps(base), (cut, seed)
    raw = _lines(readings)
    for key, row in _by_key(base).items():
        x = raw[key]
        assert row["count_x"] == len(x)
        assert math.isclose(row["sum_x"], math.fsum(x.tolist()), rel_tol=1e-15)
        assert (row["min_x"], row["max_x"]) == (x.min(), x.max())


def test_duplicated_records_change_nothing_while_their_window_is_open() -> None:
    summaries = node_summaries(raw_readings(3, seconds=60))
    spec = RollupSpec(every_ns=MIN, **BY_LINE)
    once, _, k1, s1 = rollup(spec, summaries)
    rows = [r for b in summaries for r in b.rows()]
    dup = rows + rows[::3] + rows[::7]
    random.Random(5).shuffle(dup)
    spec_late = RollupSpec(every_ns=MIN, **{**BY_LINE, "lateness_ns": 100 * S})
    twice, late, k2, s2 = rollup(
        spec_late, [_batch(dup[i : i + 50]) for i in range(0, len(dup), 50)]
    )
    assert late == []
    assert orjson.dumps(twice) == orjson.dumps(once)
    assert k2.duplicates(s2) == len(rows[::3]) + len(rows[::7]) and k1.duplicates(s1) == 0
    # records without an id are never taken for duplicates
    no_id = [{k: v for k, v in r.items() if k != "edgeflow_id"} for r in rows[:5]]
    out, _, k3, s3 = rollup(spec, [_batch(no_id + no_id)])
    assert k3.duplicates(s3) == 0 and sum(r["records"] for r in out) == 10


def test_late_records_go_to_the_late_port_and_closed_windows_are_freed() -> None:
    summaries = node_summaries(raw_readings(4, seconds=180))
    rows = sorted((r for b in summaries for r in b.rows()), key=lambda r: r["window_start"])
    spec = RollupSpec(every_ns=MIN, group_by="key", group_sep="/", fields=("x",))
    k = RollupKernel("r", spec)
    state = k.init()
    first_minute = [r for r in rows if r["window_start"] < MIN]
    later = [r for r in rows if r["window_start"] >= 2 * MIN][:10]
    closed, late = k.step_records(state, _batch(first_minute + later), 0)
    assert late is None and closed is not None and closed.n == 2  # minute 0 of both lines
    assert all(w[1] >= 2 * MIN for w in state.windows)  # closed windows and their ids freed
    open_ids = sum(len(w.ids) for w in state.windows.values())
    assert open_ids == 10
    stale = first_minute[:4]
    out, late = k.step_records(state, _batch(stale), 0)
    assert out is None and late is not None and late.n == 4
    lrows = late.rows()
    assert {r["reason"] for r in lrows} == {"window closed"}
    assert all(r["error"] is None for r in lrows)
    assert all(r["watermark"] == state.max_t[r["key"].split("/")[0]] for r in lrows)
    assert [r["edgeflow_id"] for r in lrows] == [r["edgeflow_id"] for r in stale]
    assert late.kind == "late" and late.id_columns == ("edgeflow_id",)


def test_memory_stays_bounded_over_a_long_stream() -> None:
    spec = RollupSpec(every_ns=10 * S, group_by="key", fields=())
    k = RollupKernel("r", spec)
    state = k.init()
    emitted = 0
    for sec in range(2000):
        rows = [
            {"key": f"m{i}", "window_start": sec * S, "edgeflow_id": f"{sec}/{i}"}
            for i in range(20)
        ]
        out, late = k.step_records(state, _batch(rows), sec * S)
        assert late is None
        emitted += out.n if out else 0
        assert len(state.windows) <= 20 * 2
        assert sum(len(w.ids) for w in state.windows.values()) <= 20 * 11
    assert emitted == 20 * 199
    assert len(pickle.dumps(state)) < 100_000


def test_snapshot_and_restore_mid_stream_give_the_uninterrupted_output() -> None:
    summaries = node_summaries(raw_readings(5, seconds=150, dyadic=False))
    batches = _recut(summaries, 40, 3)
    spec = RollupSpec(every_ns=30 * S, **BY_LINE, idle_ns=3600 * S)
    whole, late_w, _, _ = rollup(spec, batches)
    for at in (1, len(batches) // 2, len(batches) - 1):
        k = RollupKernel("r", spec)
        state = k.init()
        out: list[dict[str, Any]] = []
        late: list[dict[str, Any]] = []
        for i, rb in enumerate(batches):
            if i == at:
                state = RollupKernel("r", spec).restore(k.snapshot(state), 10**18)
            got, lt = k.step_records(state, rb, 0)
            out += got.rows() if got else []
            late += lt.rows() if lt else []
        out += (k.flush(state) or _batch([])).rows()
        assert orjson.dumps(out) == orjson.dumps(whole) and late == late_w, at


def _malformed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    good = rows[0]
    bad: list[dict[str, Any]] = []

    def variant(**changes: Any) -> None:
        r = copy.deepcopy(good)
        r.update(changes)
        r["edgeflow_id"] = f"bad{len(bad)}"
        bad.append(r)

    sk = good["sketch_x"]
    variant(window_start=None)
    variant(window_start="2026-01-01")
    variant(window_start=1.5)
    variant(count_x="three")
    variant(count_x=-1)
    variant(count_x=good["count_x"] + 1)  # the sketch holds fewer values
    variant(min_x="low")
    variant(first_t_x=None)
    variant(sketch_x="not a sketch")
    variant(sketch_x={**sk, "pos": [0, [-1]]})
    variant(sketch_x={**sk, "alpha": 0.05})
    variant(key=None)  # no group
    return bad


def test_malformed_records_never_crash_and_go_to_the_late_port_with_a_reason() -> None:
    summaries = node_summaries(raw_readings(6, seconds=20))
    rows = [r for b in summaries for r in b.rows() if r["count_x"] > 0]
    bad = _malformed(rows)
    spec = RollupSpec(every_ns=MIN, **BY_LINE)
    clean, _, _, _ = rollup(spec, [_batch(rows)])
    mixed = rows[:5] + bad + rows[5:]
    got, late, k, state = rollup(spec, [_batch(mixed)])
    assert orjson.dumps(got) == orjson.dumps(clean)  # nothing of a bad record was merged
    assert [r["edgeflow_id"] for r in late] == [r["edgeflow_id"] for r in bad]
    assert {r["reason"] for r in late} == {"malformed"}
    for r in late:
        assert isinstance(r["error"], str) and "\n" not in r["error"], r
    errors = [r["error"] for r in late]
    assert "window_start" in errors[0] and "count_x" in errors[3]
    assert "sketch_x holds" in errors[5] and "relative accuracy" in errors[10]
    # a batch without a needed column: every record is malformed, named once each
    no_time = _batch([{k: v for k, v in r.items() if k != "window_start"} for r in rows[:3]])
    out, lt = k.step_records(state, no_time, 0)
    assert out is None and lt is not None and lt.n == 3
    assert set(lt.columns["error"]) == {"no time column 'window_start'"}
    no_sketch = _batch([{k: v for k, v in r.items() if k != "sketch_x"} for r in rows[:2]])
    _, lt = k.step_records(state, no_sketch, 0)
    assert lt is not None and "sketch_x" in lt.columns["error"][0]


def test_split_by_group_sends_each_group_to_one_shard() -> None:
    summaries = node_summaries(raw_readings(7, seconds=30))
    rb = _batch([r for b in summaries for r in b.rows()])
    spec = RollupSpec(every_ns=MIN, group_by="key", group_sep="/", fields=("x",))
    parts = split_by_group(spec, rb, 4)
    assert sum(p.n for _, p in parts) == rb.n
    seen: dict[str, str] = {}
    for shard, p in parts:
        for key in p.columns["key"]:
            assert seen.setdefault(key.split("/")[0], shard) == shard
    assert split_by_group(spec, rb, 1) == [("0", rb)]
    # per-shard kernels together give what one kernel gives
    whole, _, _, _ = rollup(spec, [rb])
    sharded = [row for _, p in parts for row in rollup(spec, [p])[0]]
    assert sorted(map(orjson.dumps, sharded)) == sorted(map(orjson.dumps, whole))
    one_group = RollupSpec(every_ns=MIN, fields=("x",))
    assert [s for s, _ in split_by_group(one_group, rb, 8)] == [str(_crc("all") % 8)]


def _crc(s: str) -> int:
    import zlib

    return zlib.crc32(s.encode())


def test_idle_groups_close_on_the_wall_clock_and_later_records_are_late() -> None:
    spec = RollupSpec(every_ns=MIN, group_by="key", fields=(), idle_ns=30 * S)
    k = RollupKernel("r", spec)
    state = k.init()
    rows = [{"key": "a", "window_start": i * S, "edgeflow_id": str(i)} for i in range(5)]
    out, _ = k.step_records(state, _batch(rows), now_ns=1000 * S)
    assert out is None and k.next_wakeup(state) == 1030 * S
    assert k.on_time(state, 1029 * S) is None
    closed = k.on_time(state, 1030 * S)
    assert closed is not None and closed.rows()[0]["records"] == 5
    assert k.next_wakeup(state) is None and not state.windows
    _, late = k.step_records(state, _batch([{"key": "a", "window_start": 6 * S}]), 1031 * S)
    assert late is not None and late.rows()[0]["reason"] == "window closed"
    # restoring restarts the idle clock: downtime is not silence
    k.step_records(state, _batch([{"key": "a", "window_start": 70 * S}]), 1040 * S)
    restored = k.restore(k.snapshot(state), 5000 * S)
    assert k.next_wakeup(restored) == 5030 * S


def test_min_keys_and_a_count_only_rollup_correlate_keys() -> None:
    spec = RollupSpec(every_ns=10 * S, group_by="line", fields=(), min_keys=2)
    rows = [
        {"line": "l1", "key": "m1", "window_start": 1 * S},
        {"line": "l1", "key": "m2", "window_start": 2 * S},
        {"line": "l1", "key": "m2", "window_start": 3 * S},
        {"line": "l2", "key": "m3", "window_start": 4 * S},
        {"line": "l2", "key": "m3", "window_start": 5 * S},
    ]
    out, _, _, _ = rollup(spec, [_batch(rows, "anomaly")])
    assert [(r["key"], r["records"], r["keys"], r["key_list"]) for r in out] == [
        ("l1", 3, 2, ["m1", "m2"])
    ]


def test_spec_problems_and_the_kernel_protocol() -> None:
    good = RollupSpec(every_ns=MIN, fields=("x",), group_by="key", group_sep="/")
    assert good.problems() == []
    assert orjson.loads(orjson.dumps(good.to_dict()))["fields"] == ["x"]
    assert "p99_9_x" in RollupSpec(every_ns=S, fields=("x",), quantiles=(99.9,)).output_columns()
    bad = [
        RollupSpec(every_ns=0),
        RollupSpec(every_ns=S, fields=("x", "x")),
        RollupSpec(every_ns=S, group_sep="/"),
        RollupSpec(every_ns=S, lateness_ns=-1),
        RollupSpec(every_ns=S, idle_ns=0),
        RollupSpec(every_ns=S, quantiles=(101.0,)),
        RollupSpec(every_ns=S, min_keys=0),
        RollupSpec(every_ns=S, group=""),
    ]
    for spec in bad:
        (msg,) = spec.problems()
        assert msg.startswith("rollup: ") and "\n" not in msg, msg
    k = RollupKernel("r", good)
    assert (k.inputs, k.outputs, k.problems()) == (("records",), ("rollups", "late"), [])
    summaries = node_summaries(raw_readings(8, seconds=70))
    s1, s2 = k.init(), k.init()
    for rb in summaries:
        fast = k.step_records(s1, rb, 0)
        emitted = k.process(s2, rb, 0)
        want = [(p, x) for p, x in zip(("rollups", "late"), fast, strict=True) if x is not None]
        assert [(p, _rows(x)) for p, x in emitted] == [(p, x.rows()) for p, x in want]
    fin = k.flush(s1)
    assert fin is not None
    assert [(p, _rows(x)) for p, x in k.finish(s2)] == [("rollups", fin.rows())]
    with pytest.raises(TypeError, match="reads summary records"):
        k.process(k.init(), Batch.empty(["x"]), 0)


def _rows(x: Batch | RecordBatch) -> list[dict[str, Any]]:
    assert isinstance(x, RecordBatch)
    return x.rows()


def test_a_group_that_comes_late_is_not_late_because_of_another_group() -> None:
    """A node whose uplink was down delivers its backlog after the others moved on: its
    records open its own windows (each group has its own watermark), none is late."""
    summaries = node_summaries(raw_readings(4, seconds=180))
    rows = [r for b in summaries for r in b.rows()]
    lines = sorted({r["key"].split("/")[0] for r in rows})
    assert len(lines) >= 2
    ahead = [r for r in rows if r["key"].startswith(lines[0] + "/")]
    behind = [r for r in rows if not r["key"].startswith(lines[0] + "/")]
    spec = RollupSpec(every_ns=MIN, group_by="key", group_sep="/", fields=("x",))
    k = RollupKernel("r", spec)
    state = k.init()
    outs = []
    for part in (ahead, behind):
        out, late = k.step_records(state, _batch(part), 0)
        assert late is None, "no record is late"
        outs.append(out)
    final = k.flush(state)
    assert final is not None
    got = [r for o in (*outs, final) if o is not None for r in o.rows()]
    assert sum(r["count_x"] for r in got) == sum(r["count_x"] for r in rows)
