"""The window buffer appends batches without copying what is buffered and tells from
per-key figures whether anything can close; results must not depend on when it is laid
out in one piece (a snapshot, a wake-up question, a close), for sources that interleave
partitions (closing rows are not a prefix of the buffer) and for tick-major batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgeflow.batch import Batch
from edgeflow.ops import agg
from edgeflow.ops import window as win
from tests.reference_windows import reference
from tests.test_window_kernel import ALL_AGGS, assert_same

S = 1_000_000_000


def tick_major_partitions(
    seed: int, parts: int, keys_per_part: int, ticks: int, per_batch: int
) -> list[Batch]:
    """Like the simulator: each partition's devices, every 10 ms, in batches of whole ticks,
    the partitions' batches interleaved (their times overlap)."""
    rng = np.random.default_rng(seed)
    out: list[Batch] = []
    for lo in range(0, ticks, per_batch):
        hi = min(ticks, lo + per_batch)
        for p in range(parts):
            names = tuple(f"p{p}-d{i}" for i in range(keys_per_part))
            n = (hi - lo) * keys_per_part
            t = np.repeat(np.arange(lo, hi, dtype=np.int64) * (S // 100), keys_per_part)
            vals = rng.normal(size=(2, n))
            vals[1, rng.random(n) < 0.05] = np.nan
            key_idx = np.tile(np.arange(keys_per_part, dtype=np.int32), hi - lo)
            out.append(Batch(("x", "y"), names, key_idx, t, vals))
    return out


def rows_of(batches: list[Batch]) -> list[tuple[str, int, dict[str, float]]]:
    rows = []
    for b in batches:
        for i in range(len(b)):
            key = b.keys[int(b.key_idx[i])]
            rows.append(
                (key, int(b.t[i]), {"x": float(b.values[0, i]), "y": float(b.values[1, i])})
            )
    return rows


def run(spec: win.WindowSpec, batches: list[Batch], *, poke: bool) -> list[dict[str, Any]]:
    """Run the batches; with ``poke``, ask for the next wake-up and round-trip a snapshot
    between batches (both lay the buffer out in one piece)."""
    k = win.WindowKernel(
        "w", spec.resolve(), ALL_AGGS, ["x", "y"], lateness_ns=S // 2, idle_ns=None
    )
    state = k.init()
    out: list[dict[str, Any]] = []
    for i, b in enumerate(batches):
        res = k.step_batch(state, b, now_ns=0)
        if res.windows:
            out.extend(res.windows.rows())
        assert res.late is None
        if poke and i % 3 == 1:
            k.next_wakeup(state)
        if poke and i % 4 == 2:
            state = k.restore(k.snapshot(state), now_ns=0)
    fin = k.flush(state).windows
    if fin:
        out.extend(fin.rows())
    assert state.buffered() == 0
    return out


@pytest.mark.parametrize(
    "spec", [win.tumbling("1s"), win.tumbling("300ms", offset="70ms"), win.hopping("1s", "250ms")]
)
def test_interleaved_partitions_equal_the_reference(spec: win.WindowSpec) -> None:
    batches = tick_major_partitions(seed=5, parts=3, keys_per_part=7, ticks=420, per_batch=37)
    want, _ = reference(
        spec.kind,
        {
            "size": spec.resolve().size,
            "slide": spec.resolve().slide,
            "offset": spec.resolve().offset,
        },
        ALL_AGGS,
        rows_of(batches),
        S // 2,
    )
    plain = run(spec, batches, poke=False)
    assert_same(plain, want)
    assert_same(run(spec, batches, poke=True), want)


def test_idle_wakeup_and_processing_time_end_come_from_per_key_figures() -> None:
    k = win.WindowKernel(
        "w", win.tumbling("1s", time="processing").resolve(), [agg.count()], ["x"], idle_ns=5 * S
    )
    st = k.init()
    k.step_batch(st, Batch.from_columns(["a", "b"], [0, 0], {"x": [1.0, 2.0]}), now_ns=10 * S + 1)
    k.step_batch(st, Batch.from_columns(["b"], [0], {"x": [3.0]}), now_ns=10 * S + 7)
    # the earliest of: a's idle time (seen at 10 s + 1) and the processing window's end (11 s)
    assert k.next_wakeup(st) == 11 * S
    out = k.on_time(st, 11 * S).windows
    assert out is not None and sorted((r["key"], r["count"]) for r in out.rows()) == [
        ("a", 1),
        ("b", 2),
    ]
    assert st.buffered() == 0
