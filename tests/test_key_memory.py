"""Per-key memory is returned: a window step forgets keys idle for ``key_ttl`` (their codes,
per-key arrays and names go, and the memory with them), and the shard splitter's key cache
is bounded, so neither grows with every key ever seen."""

from __future__ import annotations

import tracemalloc

import numpy as np

from edgeflow.batch import Batch
from edgeflow.engine.shard import Sharder
from edgeflow.ops import agg
from edgeflow.ops import window as win

S = 1_000_000_000
T0 = 1_767_225_600 * S


def many_keys(n: int, t: int, prefix: str = "sensor-") -> Batch:
    names = tuple(f"{prefix}{i:07d}" for i in range(n))
    return Batch(
        ("x",),
        names,
        np.arange(n, dtype=np.int32),
        np.full(n, t, np.int64),
        np.ones((1, n)),
    )


def test_keys_idle_for_key_ttl_are_forgotten_and_their_memory_returned() -> None:
    kernel = win.WindowKernel(
        "w", win.tumbling("1s").resolve(), [agg.count(), agg.mean("x")], ["x"], key_ttl_ns=5 * S
    )
    state = kernel.init()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kernel.step_batch(state, many_keys(100_000, T0), T0)
        held = tracemalloc.get_traced_memory()[0] - base
        out = kernel.flush(state)  # every window out: nothing buffered keeps a key
        assert out.windows is not None and out.windows.n == 100_000
        del out
        kernel.on_time(state, T0 + 2 * S)  # not idle for the TTL yet: kept
        assert len(state.names) == 100_000
        kernel.on_time(state, T0 + 6 * S)
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(state.names) == 0 and not state.codes and len(state.max_t) == 0
    assert held > 5 * 2**20, f"100,000 keys held only {held} bytes?"
    assert left < held / 20, f"{left} of {held} bytes still held after the keys expired"
    # a key that comes back starts afresh and is windowed as before
    again = kernel.step_batch(state, many_keys(3, T0 + 7 * S), T0 + 7 * S)
    assert again.late is None and len(state.names) == 3


def test_the_shard_cache_does_not_grow_with_every_key_seen() -> None:
    sharder = Sharder(8)
    for i in range(12):  # new key tuples each time, as a live source makes them
        batch = many_keys(30_000, T0, prefix=f"round{i}-")
        parts = sharder.split(batch)
        assert sum(len(b) for _, b in parts) == len(batch)
        for sid, b in parts:  # each key in its stable shard
            assert all(sharder.shard_of(k) == int(sid) for k in b.keys[:50])
    assert len(sharder._cache) <= 1 << 18  # not all 360,000 keys seen
