"""The swinging door for many keys at once (``DownsampleKernel`` on a batch of many keys,
edgeflow/ops/door_segments.py ``run_rows``) reports exactly what a plain per-reading door
reports for each key, leaves the same state whichever form a key goes through, and does
not depend on how the stream is cut into batches (with snapshots in between).

The reference below is written from the documented rules (README / downsample docstring)
and shares no code with the kernel: per key, readings sorted by time (equal times in arrival
order), non-finite values dropped, one reading per timestamp (the first), readings at or
before the newest one already taken skipped; then the door one reading at a time."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from edgeflow.batch import Batch
from edgeflow.ops import door_segments
from edgeflow.ops.downsample import DownsampleKernel, swinging_door
from edgeflow.timeutil import parse_duration

Points = dict[str, list[tuple[int, float]]]
Stream = tuple[int, np.ndarray, np.ndarray, np.ndarray]  # keys, key of row, t, value


class ReferenceDoor:
    """One key's swinging door, one reading at a time (the specification)."""

    def __init__(self, dev: float, max_interval: int | None) -> None:
        self.dev, self.mi = dev, max_interval
        self.newest: int | None = None
        self.a: tuple[int, float] | None = None
        self.lo, self.hi = -math.inf, math.inf
        self.prev: tuple[int, float] | None = None

    def take(self, t: list[int], x: list[float]) -> tuple[list[tuple[int, float]], int]:
        """Readings of one batch in arrival order; returns (reported points, skipped)."""
        rows = sorted(
            (ti, i, xi) for i, (ti, xi) in enumerate(zip(t, x, strict=True)) if math.isfinite(xi)
        )
        out: list[tuple[int, float]] = []
        skipped = 0
        last_t: int | None = None
        for ti, _, xi in rows:
            if ti == last_t or (self.newest is not None and ti <= self.newest):
                skipped += 1
                continue
            last_t = ti
            self.step(ti, xi, out)
        if rows and last_t is not None:
            self.newest = last_t
        return out, skipped

    def step(self, ti: int, xi: float, out: list[tuple[int, float]]) -> None:
        e, mi = self.dev, self.mi
        if self.a is None:
            self.a = (ti, xi)
            out.append(self.a)
            self.lo, self.hi, self.prev = -math.inf, math.inf, None
            return
        ta, va = self.a
        dt = ti - ta
        nlo = max(self.lo, (xi - e - va) / dt)
        nhi = min(self.hi, (xi + e - va) / dt)
        if not (nlo > nhi or (mi is not None and dt > mi)):
            self.lo, self.hi, self.prev = nlo, nhi, (ti, xi)
            return
        if self.prev is not None:  # the point on the door at the previous reading
            tp, vp = self.prev
            s = min(max((vp - va) / (tp - ta), self.lo), self.hi)
            self.a = (tp, va + s * (tp - ta))
            out.append(self.a)
            ta, va = self.a
        dt = ti - ta
        if self.prev is None or (mi is not None and dt > mi):
            self.a = (ti, xi)
            out.append(self.a)
            self.lo, self.hi, self.prev = -math.inf, math.inf, None
        else:
            self.lo, self.hi, self.prev = (xi - e - va) / dt, (xi + e - va) / dt, (ti, xi)

    def flush(self) -> list[tuple[int, float]]:
        if self.a is None or self.prev is None or self.prev[0] == self.a[0]:
            return []
        (ta, va), (tp, vp) = self.a, self.prev
        s = min(max((vp - va) / (tp - ta), self.lo), self.hi)
        return [(tp, va + s * (tp - ta))]


def stream(rng: np.random.Generator, keys: int, per_key: int, late: bool = True) -> Stream:
    """Many keys of many shapes, in a roughly time-ordered arrival order; with ``late``
    False, each key's readings arrive in time order."""
    ks, ts, xs = [], [], []
    for k in range(keys):
        n = int(rng.integers(1, per_key + 1)) if per_key > 3 else per_key
        step = 10_000_000
        t = np.arange(n, dtype=np.int64) * step + int(rng.integers(0, 5)) * step
        shape = k % 9
        if shape == 0:  # noisy: short segments
            x = rng.normal(0, 1, n)
        elif shape == 1:  # flat
            x = np.full(n, 3.0)
        elif shape == 2:  # quantised walk
            x = np.round(np.cumsum(rng.normal(0, 0.3, n)) * 5) / 5
        elif shape == 3:  # steps
            x = np.where((np.arange(n) // 37) % 2 == 0, 0.0, 5.0)
        elif shape == 4:  # equal timestamps
            t[rng.random(n) < 0.2] -= step
            t = np.maximum.accumulate(t)
            x = 22 + np.sin(t / 5e9)
        elif shape == 5 and late:  # out of order
            swap = rng.random(n) < 0.05
            t[swap] += rng.integers(-30, 30, int(swap.sum())) * step
            x = 22 + np.sin(t / 5e9) + rng.normal(0, 0.01, n)
        elif shape == 6:  # gaps longer than max_interval
            t = np.cumsum(rng.integers(1, 4, n) * step * np.where(rng.random(n) < 0.03, 200, 1))
            x = 22 + np.sin(t / 5e9)
        elif shape == 7:  # non-finite readings in a smooth signal
            x = 22 + 2 * np.sin(t / 3e10)
            x[rng.random(n) < 0.05] = np.nan
            x[rng.random(n) < 0.01] = np.inf
        else:  # smooth: long segments
            x = 22 + 2.5 * np.sin(t / 3e10) + rng.normal(0, 0.01, n)
        ks.append(np.full(n, k))
        ts.append(t.astype(np.int64))
        xs.append(x.astype(np.float64))
    k_all, t_all, x_all = np.concatenate(ks), np.concatenate(ts), np.concatenate(xs)
    jitter = rng.integers(0, 200_000_000, len(t_all)) if late else 0
    order = np.argsort(t_all + jitter, kind="stable")
    return keys, k_all[order], t_all[order], x_all[order]


def batches(s: Stream, cuts: list[int], rng: np.random.Generator) -> list[Batch]:
    """Batches at row cuts; each names only its own keys, in a shuffled order (so a key
    has a different code from one batch to the next, and appears in only some batches)."""
    nk, k, t, x = s
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        present = np.unique(k[a:b])
        perm = rng.permutation(len(present))
        code = np.zeros(nk, np.int32)
        code[present[perm]] = np.arange(len(perm), dtype=np.int32)
        names = tuple(f"k{present[i]}" for i in perm)
        out.append(Batch(("v",), names, code[k[a:b]], t[a:b].copy(), x[None, a:b].copy()))
    return out


def run_kernel(
    kern: DownsampleKernel, bs: list[Batch], snapshots: bool
) -> tuple[list[tuple[str, int, float]], list[tuple[str, int, float]], dict[str, Any]]:
    """(reported points in record order, flushed points, final state)."""
    st = kern.init()
    got: list[tuple[str, int, float]] = []
    for b in bs:
        rb = kern.step_batch(st, b)
        if rb is not None:
            got += zip(
                rb.columns["key"], rb.columns["t"].tolist(), rb.columns["v"].tolist(), strict=True
            )
        if snapshots:
            st = kern.restore(kern.snapshot(st), 0)
    rb = kern.flush(st)
    flushed = (
        []
        if rb is None
        else list(
            zip(rb.columns["key"], rb.columns["t"].tolist(), rb.columns["v"].tolist(), strict=True)
        )
    )
    return got, flushed, st


def run_reference(
    bs: list[Batch], dev: float, mi: int | None
) -> tuple[list[tuple[str, int, float]], list[tuple[str, int, float]], int]:
    doors: dict[str, ReferenceDoor] = {}
    got: list[tuple[str, int, float]] = []
    skipped = 0
    for b in bs:
        for code in sorted(set(b.key_idx.tolist())):  # the kernel reports keys in code order
            key = b.keys[code]
            rows = np.flatnonzero(b.key_idx == code)
            door = doors.setdefault(key, ReferenceDoor(dev, mi))
            pts, sk = door.take(b.t[rows].tolist(), b.values[0, rows].tolist())
            got += [(key, ti, vi) for ti, vi in pts]
            skipped += sk
    flushed = [(key, ti, vi) for key, d in doors.items() for ti, vi in d.flush()]
    return got, flushed, skipped


CASES = [  # (keys, readings per key at most, deviation, max_interval)
    (1, 3000, 0.2, None),
    (3, 700, 0.05, "1s"),
    (60, 400, 0.2, None),
    (60, 400, 1e-9, None),
    (200, 150, 0.5, "300ms"),
    (400, 40, 5.0, None),
    (2000, 3, 0.2, None),
]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(("keys", "per_key", "dev", "mi"), CASES)
def test_many_keys_report_the_per_reading_doors_points(
    seed: int, keys: int, per_key: int, dev: float, mi: str | None
) -> None:
    rng = np.random.default_rng(seed)
    mi_ns = None if mi is None else parse_duration(mi)
    s = stream(rng, keys, per_key)
    n = len(s[1])
    kern = DownsampleKernel("trend", swinging_door("v", deviation=dev, max_interval=mi))
    for cuts in ([0, n], sorted({0, n, *rng.integers(0, n, 6).tolist()}), [*range(0, n, 97), n]):
        bs = batches(s, cuts, rng)
        got, flushed, st = run_kernel(kern, bs, snapshots=False)
        want, want_flushed, skipped = run_reference(bs, dev, mi_ns)
        assert got == want, cuts[:5]
        assert flushed == want_flushed
        assert st.get("skipped", 0) == skipped
        assert st["in"] == n and st["out"] == len(want) + len(want_flushed)


def test_ten_thousand_keys_with_a_few_readings_each() -> None:
    rng = np.random.default_rng(7)
    s = stream(rng, 10_000, 3)
    n = len(s[1])
    kern = DownsampleKernel("trend", swinging_door("v", deviation=0.2))
    bs = batches(s, [0, n // 3, n], rng)
    got, flushed, _ = run_kernel(kern, bs, snapshots=False)
    want, want_flushed, _ = run_reference(bs, 0.2, None)
    assert got == want and flushed == want_flushed


@pytest.mark.parametrize("seed", range(3))
def test_any_batching_with_snapshots_equals_one_run(seed: int) -> None:
    """Per key, the points reported over a stream and the state left at its end do not
    depend on where the batches are cut or on a snapshot/restore between batches (for
    readings that arrive in time order: a late one is sorted into place within its batch
    and skipped in a later batch)."""
    rng = np.random.default_rng(seed)
    s = stream(rng, 120, 600, late=False)
    n = len(s[1])
    kern = DownsampleKernel("trend", swinging_door("v", deviation=0.1, max_interval="1s"))
    one, one_flushed, one_st = run_kernel(kern, batches(s, [0, n], rng), snapshots=False)

    def per_key(points: list[tuple[str, int, float]]) -> Points:
        out: Points = {}
        for key, ti, vi in points:
            out.setdefault(key, []).append((ti, vi))
        return out

    for cuts in (
        sorted({0, n, *rng.integers(0, n, 20).tolist()}),
        [*range(0, n, 1000), n],
        [*range(0, n, 31), n],
    ):
        got, flushed, st = run_kernel(kern, batches(s, cuts, rng), snapshots=True)
        assert per_key(got) == per_key(one)
        assert sorted(flushed) == sorted(one_flushed)
        assert {k: repr(v) for k, v in st["keys"].items()} == {
            k: repr(v) for k, v in one_st["keys"].items()
        }


@pytest.mark.parametrize("seed", range(3))
def test_a_key_may_change_form_between_batches(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The many-key form and the per-key form (taken for some batches) report the same
    points and leave the same state (the same values and types), so a key may go through
    either form from one batch to the next."""
    rng = np.random.default_rng(seed)
    s = stream(rng, 80, 500)
    n = len(s[1])
    bs = batches(s, sorted({0, n, *rng.integers(0, n, 10).tolist()}), rng)
    kern = DownsampleKernel("trend", swinging_door("v", deviation=0.2, max_interval="2s"))
    fast = run_kernel(kern, bs, snapshots=False)
    fits = door_segments.lockstep_fits
    flips = iter(rng.random(len(bs) * 4) < 0.5)
    monkeypatch.setattr(
        "edgeflow.ops.downsample.lockstep_fits", lambda x: bool(next(flips)) and fits(x)
    )
    mixed = run_kernel(kern, bs, snapshots=False)
    assert mixed[0] == fast[0] and mixed[1] == fast[1]
    assert repr(mixed[2]) == repr(fast[2])


def test_smooth_keys_go_through_the_lockstep_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many keys of a smooth signal in one batch cost one set of array passes, not a
    per-key call (run_segments) or the per-reading loop."""
    calls: list[str] = []
    seg = door_segments.run_segments

    def counting(*a: Any) -> Any:
        calls.append("run_segments")
        return seg(*a)

    monkeypatch.setattr(door_segments, "run_segments", counting)
    monkeypatch.setattr("edgeflow.ops.downsample.run_segments", counting)
    kern = DownsampleKernel("trend", swinging_door("v", deviation=0.2))
    assert kern.door is not None
    loop = kern.door.run

    def counting_loop(*a: Any) -> Any:
        calls.append("loop")
        return loop(*a)

    monkeypatch.setattr(kern.door, "run", counting_loop)
    keys, per = 300, 400
    t = np.repeat(np.arange(per, dtype=np.int64) * 10_000_000, keys)
    k = np.tile(np.arange(keys, dtype=np.int32), per)
    x = 22 + 2.5 * np.sin(t / 3e10 + k)
    names = tuple(f"d{i}" for i in range(keys))
    st = kern.init()
    rb = kern.step_batch(st, Batch(("v",), names, k, t, x[None, :]))
    assert rb is not None and keys <= len(rb.columns["t"]) < 3 * keys
    assert calls == []
