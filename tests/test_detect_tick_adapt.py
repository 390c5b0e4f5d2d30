"""Live ticks where a key starts adapting to a lasting change stay on the tick path.

A key that has raised ``adapt_after`` anomalies in a row adapts on its next reading. On a
live tick (one reading per key) that key used to leave the tick for the per-key Driver
(its state read out, the reference detector run on one reading, the state laid out again):
a few hundred µs on the tick that carries the other keys' anomaly events, which is what
bench/detect.py's latency p99 measures (issue 13: live latency must not regress). The
z-score's tick form now adapts such rows in place; the Driver still takes a key whose
verdict is within rounding of the threshold or whose reading raises an event, so events,
scores and the state left behind are the Driver path's to the bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgeflow.batch import Batch
from edgeflow.ops import detect
from edgeflow.ops.detect import stacked as stacked_mod
from edgeflow.ops.detect.base import calibrate
from edgeflow.ops.detect.decision import event_scores
from edgeflow.ops.detect.driver import Driver
from edgeflow.ops.detect.kernel import DetectKernel

KEYS = 20
TICKS = 400


def readings(seed: int = 4) -> np.ndarray:
    """(ticks, keys): unit noise; half the keys step up by 8 sigma for good at tick 150 + key
    (each then raises one event and adapts after ADAPT_AFTER anomalies in a row), and keys
    3 and 7 step up again at tick 300."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (TICKS, KEYS))
    for k in range(0, KEYS, 2):
        x[150 + k :, k] += 8.0
    x[300:, 3] += 8.0
    x[300:, 7] += 8.0
    return x


def run_ticks(x: np.ndarray) -> tuple[list[tuple[Any, ...]], DetectKernel, dict[str, Any]]:
    """Every row of ``x`` as one live tick (one reading per key, the same key tuple each
    time, as a source hands them over). Returns the events (key, t, score, raw, low, high)."""
    kernel = DetectKernel("alerts", "v", detect.zscore(window=32), detect.threshold())
    state = kernel.init()
    keys = tuple(f"k{i}" for i in range(KEYS))
    codes = np.arange(KEYS, dtype=np.int32)
    events: list[tuple[Any, ...]] = []
    for i, row in enumerate(x):
        t = np.full(KEYS, i * 10_000_000, np.int64)
        out = kernel.step_batch(state, Batch(("v",), keys, codes, t, row[None, :].copy()))
        if out is None:
            continue
        c = out.columns
        for j in range(out.n):
            events.append(
                (c["key"][j], int(c["t"][j]), float(c["score"][j]), float(c["raw"][j]),
                 float(c["expected_low"][j]), float(c["expected_high"][j]))
            )  # fmt: skip
    return sorted(events), kernel, state


def test_keys_starting_to_adapt_stay_on_the_tick_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"driver": 0}
    run = Driver.run

    def counting_run(self: Driver, st: dict[str, Any], xs: np.ndarray) -> Any:
        calls["driver"] += 1
        return run(self, st, xs)

    monkeypatch.setattr(Driver, "run", counting_run)
    x = readings()
    warm = detect.zscore(window=32).warmup
    # the warm-up block goes through the Driver: count only the ticks after it
    _, kernel, state = run_ticks(x[:warm])
    calls["driver"] = 0
    keys = tuple(f"k{i}" for i in range(KEYS))
    codes = np.arange(KEYS, dtype=np.int32)
    stacked = state["stacked"]
    started = 0
    for i in range(warm, TICKS):
        started += int((stacked.streak == kernel.driver.adapt_after).sum())
        t = np.full(KEYS, i * 10_000_000, np.int64)
        kernel.step_batch(state, Batch(("v",), keys, codes, t, x[i][None, :].copy()))
    assert started >= 10  # every stepped key started adapting on a live tick
    assert calls["driver"] == 0, "a key starting to adapt left the tick for the Driver"


def test_the_same_events_scores_and_state_as_the_driver_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = readings()
    fast, _, fast_state = run_ticks(x)
    # every key starting to adapt handed to the Driver, as before the tick form adapted
    monkeypatch.setattr(
        type(fast_state["stacked"].model), "adapt_tick", lambda self, rows: False, raising=False
    )
    slow, _, slow_state = run_ticks(x)
    assert len(fast) >= KEYS // 2 + 2  # a step is one event per key, each step
    assert fast == slow  # the same events, scores, raw values and ranges, to the bit
    a, b = fast_state["stacked"], slow_state["stacked"]
    for r in range(KEYS):
        sa, sb = a.driver_state(r), b.driver_state(r)
        np.testing.assert_array_equal(sa["det"]["hist"], sb["det"]["hist"])
        assert (sa["det"]["n"], sa["streak"], sa["since_event"], sa["det"]["res"]) == (
            sb["det"]["n"], sb["streak"], sb["since_event"], sb["det"]["res"]
        )  # fmt: skip


def test_a_verdict_the_tick_form_cannot_settle_goes_to_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys whose verdict is near the threshold go back to their state before the tick and
    the Driver: forced for every other one here, the events are still the same."""
    x = readings()
    want, _, _ = run_ticks(x)
    seen = {"n": 0}

    def every_other(self: Any, at: np.ndarray, *args: Any) -> np.ndarray:
        seen["n"] += len(at)
        out = np.zeros(len(at), bool)
        out[seen["n"] % 2 :: 2] = True
        return out

    monkeypatch.setattr(stacked_mod.Stacked, "_driver_decides", every_other)
    got, _, _ = run_ticks(x)
    assert seen["n"] >= 10
    assert got == want


@pytest.mark.parametrize("level", [3.0, 2.5, 0.7])
def test_event_scores_are_calibrate_to_the_bit(level: float) -> None:
    """A live tick scores its events without calibrate's array operations: the same bits."""
    rng = np.random.default_rng(9)
    above = level * np.exp(rng.uniform(0.0, 30.0, 2000))
    edges = np.array([level, np.nextafter(level, np.inf), level * (1 + 1e-15), 1e300, 0.5 * level])
    for raw in [*np.split(above, 500), *[edges[i : i + 2] for i in range(len(edges))], edges]:
        np.testing.assert_array_equal(event_scores(raw, level), calibrate(raw, level))
    np.testing.assert_array_equal(event_scores(np.array([np.nan]), level), [np.nan])
