"""The rules every detection runner applies for every detector (issue 13): the score map,
the robust warm-up block, the key's resolution (the spread floor) and adapting to a lasting
change - on the reference Driver and on the stacked runner alike."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest

from edgeflow.batch import F64, Batch
from edgeflow.ops import detect
from edgeflow.ops.detect.base import Detector, Scores, calibrate, raw_at
from edgeflow.ops.detect.decision import ADAPT_AFTER, warm_up_inliers
from edgeflow.ops.detect.kernel import DetectKernel
from edgeflow.ops.detect.spread import floored, resolution, resolution_rows


class Recorder(Detector):
    """A mean detector that records what it learns and when it is told to adapt."""

    name = "recorder"
    level = 3.0
    warmup = 8

    def init(self) -> dict[str, Any]:
        return {"n": 0, "sum": 0.0, "learnt": [], "adapted": []}

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        mean = st["sum"] / st["n"] if st["n"] else 0.0
        raw = np.abs(x - mean)
        return Scores(raw, calibrate(raw, self.level), x * 0 + mean - 3, x * 0 + mean + 3)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        st["n"] += len(x)
        st["sum"] += float(x.sum())
        st["learnt"].extend(x.tolist())

    def adapt(self, st: dict[str, Any], recent: F64) -> None:
        st["adapted"].append(recent.tolist())


def test_calibrate_is_strictly_increasing_never_one_and_inverted_by_raw_at() -> None:
    raw = np.concatenate([[0.0], np.logspace(-6, 9, 200_000)])
    s = calibrate(raw, 3.0)
    assert s[0] == 0.0 and (s < 1.0).all()
    assert (np.diff(s) > 0).all(), "distinct raw values, distinct scores"
    assert calibrate(np.array([3.0]), 3.0)[0] == pytest.approx(0.999)
    assert calibrate(np.array([30.0]), 3.0)[0] == pytest.approx(0.9999)
    assert calibrate(np.array([2.0]), 3.0)[0] == pytest.approx(0.99)
    for r in (0.1, 1.0, 2.9, 3.0, 3.1, 300.0, 3e6):
        assert raw_at(float(calibrate(np.array([r]), 3.0)[0]), 3.0) == pytest.approx(r, rel=1e-6)
    assert raw_at(1.0, 3.0) == math.inf


def test_the_warm_up_block_gives_no_verdict_and_is_learnt_without_its_outliers() -> None:
    drv = detect.Driver(Recorder())
    st = drv.init()
    x = np.array([10.0, 10.5, 0.0, 9.5, 10.2, 10.4, 9.8, 10.1, 10.3, 9.9, 30.0])
    out = drv.run(st, x)
    assert (out.score[:8] == 0).all() and not out.anomaly[:8].any(), "no verdict in warm-up"
    assert sorted(st["det"]["learnt"][:7]) == sorted([10.0, 10.5, 9.5, 10.2, 10.4, 9.8, 10.1])
    assert 0.0 not in st["det"]["learnt"], "the power-on zero is not learnt"
    assert out.anomaly[10] and not out.anomaly[8:10].any()


def test_warm_up_inliers_keep_quantised_and_two_level_blocks_whole() -> None:
    assert warm_up_inliers(np.array([5.0] * 12 + [6.0] * 3 + [4.0])).all()
    assert warm_up_inliers(np.array([0.0, 10.0] * 8)).all()
    assert warm_up_inliers(np.r_[np.zeros(12), np.full(4, 10.0)]).all(), "a 25 % level stays"
    assert warm_up_inliers(np.full(16, 7.0)).all()
    keep = warm_up_inliers(np.r_[np.full(14, 7.0), 7.0 + 1e-3, 400.0])
    assert not keep[-1] and keep[:-1].all()


@pytest.mark.parametrize("cuts", [[1], [3, 5], [100]])
def test_the_warm_up_does_not_depend_on_batching(cuts: list[int]) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 60)
    x[2] = 40.0
    whole = detect.Driver(Recorder())
    sw = whole.init()
    want = whole.run(sw, x)
    drv = detect.Driver(Recorder())
    st = drv.init()
    got, i, k = [], 0, 0
    while i < len(x):
        step = cuts[k % len(cuts)]
        got.append(drv.run(st, x[i : i + step]))
        st = pickle.loads(pickle.dumps(st))
        i, k = i + step, k + 1
    assert np.array_equal(np.concatenate([g.anomaly for g in got]), want.anomaly)
    assert st["det"]["learnt"] == sw["det"]["learnt"]


def test_resolution_is_the_smallest_nonzero_learnt_step() -> None:
    res, last = resolution(math.inf, None, np.array([5.0, 5.0, 5.0]))
    assert res == math.inf and last == 5.0
    res, last = resolution(res, last, np.array([5.0, 7.0, 6.5, 6.5]))
    assert res == 0.5 and last == 6.5
    rows_res, rows_last = resolution_rows(
        np.array([np.inf, 2.0]),
        np.array([np.nan, 1.0]),
        np.array([[1.0, 1.25, 9.0], [1.0, 1.0, np.nan]]),
        np.array([2, 2]),
    )
    assert rows_res.tolist() == [0.25, 2.0] and rows_last.tolist() == [1.25, 1.0]
    assert floored(0.0, 0.5, 100.0) == 0.5
    assert floored(0.0, math.inf, 100.0) == pytest.approx(1e-6 * 101)
    assert floored(2.0, 0.5, 0.0) == 2.0


def test_driver_and_stacked_runner_keep_the_same_resolution_per_key() -> None:
    rng = np.random.default_rng(5)
    keys = ("a", "b", "c")
    grids = {"a": 1.0, "b": 0.25, "c": 0.0}  # c: continuous
    series = {
        k: (np.round(rng.normal(10, 2, 400) / g) * g if g else rng.normal(10, 2, 400))
        for k, g in grids.items()
    }
    kern = DetectKernel("d", "v", detect.zscore(), detect.threshold())
    kst = kern.init()
    for a in range(0, 400, 50):
        codes = np.repeat(np.arange(3, dtype=np.int32), 50)
        x = np.concatenate([series[k][a : a + 50] for k in keys])
        t = np.tile(np.arange(a, a + 50, dtype=np.int64), 3)
        kern.step_batch(kst, Batch(("v",), keys, codes, t, x[None, :]))
    stacked = kst["stacked"]
    for k in keys:
        drv = detect.Driver(detect.zscore())
        st = drv.init()
        drv.run(st, series[k])
        r = stacked.rows[k]
        assert stacked.res[r] == st["det"]["res"], k
    assert stacked.res[stacked.rows["a"]] == 1.0
    assert stacked.res[stacked.rows["b"]] == 0.25


def test_a_lasting_change_adapts_after_adapt_after_anomalies_with_the_streak() -> None:
    drv = detect.Driver(Recorder())
    st = drv.init()
    x = np.r_[np.full(8, 0.0) + np.arange(8) * 1e-3, np.full(40, 50.0)]
    out = drv.run(st, x)
    alarms = np.flatnonzero(out.anomaly)
    assert alarms[0] == 8 and len(alarms) >= ADAPT_AFTER
    assert st["det"]["adapted"], "adapt was called"
    assert st["det"]["adapted"][0] == [50.0] * ADAPT_AFTER, "with the streak's values"
    assert out.event.sum() == 1, "a lasting change is one event"
