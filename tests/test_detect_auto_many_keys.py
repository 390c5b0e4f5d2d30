"""auto() on many keys at once (a shard of simulated devices): robust spreads of windows
still filling up (every key starting together) estimated as full windows of each length,
with the same bits as the per-window order statistics; keys whose MAD parts adapt to a
lasting shift kept in the stacked passes, with the reference Driver's results."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from edgeflow.ops.detect import threshold
from edgeflow.ops.detect.ensemble import auto
from edgeflow.ops.detect.kernel import DetectKernel
from edgeflow.ops.detect.mad import robust_spread

mad_mod = importlib.import_module("edgeflow.ops.detect.mad")  # (the package exports mad())


def _partial_windows(seed: int, w: int = 64) -> np.ndarray:
    """(3, 40, w) windows with NaN after a few distinct counts (0, 1, 2, 3, w // 2, w - 1),
    some flat (a repeating value: the mean-deviation fallback), some on a coarse grid."""
    rng = np.random.default_rng(seed)
    win = rng.normal(size=(3, 40, w))
    win[0, :5] = 2.5  # constant windows
    win[1, :6] = np.round(win[1, :6])  # coarse: many ties
    win[2, :4, : w // 2] = 1.0  # mostly one value: MAD and IQR 0
    counts = rng.choice([0, 1, 2, 3, w // 2, w - 1], size=(3, 40))
    counts[0, 0] = w  # a full window among them
    win[np.arange(w) >= counts[..., None]] = np.nan
    win.sort(axis=-1)
    return win


@pytest.mark.parametrize("tails", [0.0, 0.01])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partial_windows_same_bits_as_per_window_order_statistics(
    monkeypatch: pytest.MonkeyPatch, tails: float, seed: int
) -> None:
    win = _partial_windows(seed)
    med, spread = robust_spread(win.copy(), tails=tails)
    monkeypatch.setattr(mad_mod, "PARTIAL_SIZES", -1)  # every window on its own
    monkeypatch.setattr(mad_mod, "PARTIAL_PER_SIZE", 1 << 40)
    ref_med, ref_spread = robust_spread(win.copy(), tails=tails)
    assert med.shape == spread.shape == win.shape[:-1]
    assert np.array_equal(med, ref_med, equal_nan=True)
    assert np.array_equal(spread, ref_spread, equal_nan=True)
    assert np.isnan(med[win[..., 0] != win[..., 0]]).all()  # an empty window: NaN


@pytest.mark.parametrize("tails", [0.0, 0.01])
def test_many_lengths_and_full_windows_same_bits(
    monkeypatch: pytest.MonkeyPatch, tails: float
) -> None:
    """4,000 windows of 60 lengths, a third of them full (a batch where most keys' windows
    have filled up): by lengths, the same bits as each window on its own."""
    rng = np.random.default_rng(5)
    win = rng.normal(size=(4000, 128))
    win[:50] = np.round(win[:50])
    counts = np.where(rng.random(4000) < 0.33, 128, rng.integers(40, 100, 4000))
    win[np.arange(128) >= counts[:, None]] = np.nan
    got = robust_spread(win.copy(), tails=tails)
    monkeypatch.setattr(mad_mod, "PARTIAL_SIZES", -1)
    monkeypatch.setattr(mad_mod, "PARTIAL_PER_SIZE", 1 << 40)
    ref = robust_spread(win.copy(), tails=tails)
    for a, b in zip(got, ref, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_partial_windows_need_no_gather_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of a few lengths are estimated as full windows (slices), not by gathering
    each window's order statistics one by one."""

    def gather(*_: object, **__: object) -> None:
        raise AssertionError("per-window gather used for windows of a few lengths")

    monkeypatch.setattr(mad_mod, "_order_stat", gather)
    win = _partial_windows(4, w=256)
    med, spread = robust_spread(win, tails=0.01, scratch=True)
    assert np.isfinite(spread[~np.isnan(med)]).all()


def test_auto_on_many_starting_keys_same_events_however_batched() -> None:
    """auto() on 300 keys that all start together (level shifts and spikes), in batches of
    ~130 readings a key and of 4 a key: the same events, scores and ranges (one run)."""
    rng = np.random.default_rng(7)
    keys, ticks = 300, 400
    t = np.arange(ticks)[:, None] / 100.0
    x = np.sin(2 * np.pi * rng.uniform(0.05, 2.0, keys) * t + rng.uniform(0, 6, keys))
    x = x + 0.1 * rng.standard_normal((ticks, keys))
    x[200:, ::7] += 3.0  # a lasting shift on some keys: they adapt
    x[rng.random((ticks, keys)) < 0.002] += 6.0
    flat = x.reshape(-1)
    codes = np.tile(np.arange(keys, dtype=np.int32), ticks)
    ts = np.repeat(np.arange(ticks, dtype=np.int64) * 10_000_000, keys)
    names = tuple(f"dev-{i}" for i in range(keys))

    def run(size: int) -> list[tuple[object, ...]]:
        from edgeflow.batch import Batch

        k = DetectKernel("detect", "accel", auto(), threshold())
        st = k.init()
        out: list[tuple[object, ...]] = []
        for a in range(0, len(flat), size):
            b = Batch(("accel",), names, codes[a : a + size], ts[a : a + size],
                      flat[a : a + size][None, :].copy())  # fmt: skip
            r = k.step_batch(st, b)
            if r is not None:
                cols = r.columns
                out += zip(cols["key"], cols["t"].tolist(), cols["raw"].tolist(),
                           cols["expected_low"].tolist(), cols["expected_high"].tolist(),
                           strict=True)  # fmt: skip
        return sorted(out, key=lambda e: (str(e[0]), e[1]))

    big, small = run(39_000), run(1_200)
    assert len(big) > 20
    assert big == small


def test_auto_keys_adapting_to_a_shift_stay_stacked_same_as_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys of auto() that adapt to a lasting shift (its MAD parts: 16 anomalies in a row)
    stay in the stacked passes - no hand-off to a per-key Driver - and raise the reference
    Driver's events, scores and ranges, key by key."""
    from edgeflow.batch import Batch
    from edgeflow.ops.detect.driver import Driver

    rng = np.random.default_rng(11)
    keys, ticks = 40, 600
    t = np.arange(ticks)[:, None] / 100.0
    x = np.sin(2 * np.pi * rng.uniform(0.05, 2.0, keys) * t + rng.uniform(0, 6, keys))
    x = x + 0.1 * rng.standard_normal((ticks, keys))
    x[300:, ::2] += 3.0  # a lasting level shift on half the keys
    names = tuple(f"dev-{i}" for i in range(keys))

    reference = []
    for i in range(keys):
        drv = Driver(auto(), threshold())
        out = drv.run(drv.init(), x[:, i].copy())
        at = np.flatnonzero(out.event)
        reference += [
            (names[i], int(j), float(out.raw[j]), float(out.low[j]), float(out.high[j]))
            for j in at.tolist()
        ]

    handed: list[str] = []
    run = Driver.run

    def spy(self: Driver, st: dict[str, object], xs: np.ndarray) -> object:
        handed.append(self.detector.name)
        return run(self, st, xs)

    monkeypatch.setattr(Driver, "run", spy)
    k = DetectKernel("detect", "accel", auto(), threshold())
    st = k.init()
    flat = x.reshape(-1)
    codes = np.tile(np.arange(keys, dtype=np.int32), ticks)
    ts = np.repeat(np.arange(ticks, dtype=np.int64), keys)
    got = []
    for a in range(0, len(flat), 200 * keys):
        b = Batch(("accel",), names, codes[a : a + 200 * keys], ts[a : a + 200 * keys],
                  flat[a : a + 200 * keys][None, :].copy())  # fmt: skip
        r = k.step_batch(st, b)
        if r is not None:
            c = r.columns
            got += zip(c["key"], c["t"].tolist(), c["raw"].tolist(), c["expected_low"].tolist(),
                       c["expected_high"].tolist(), strict=True)  # fmt: skip
    assert sum(1 for e in reference if e[1] >= 300) >= 10  # the shift raised events
    assert sorted(got) == sorted(reference)
    assert "mad" not in handed  # the MAD parts' adapting keys were not handed off
