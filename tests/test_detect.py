"""Detector contract tests (every detector), plain references, decisions, evaluation, CLI."""

from __future__ import annotations

import csv
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow import evaluate
from edgeflow.batch import Batch
from edgeflow.ops import detect
from tests.helpers import edgeflow

ALL = {
    "zscore": lambda: detect.zscore(window=64),
    "ewma": lambda: detect.ewma(alpha=0.1),
    "mad": lambda: detect.mad(window=32, stride=4),
    "mad_diff": lambda: detect.MAD(window=32, stride=4, diff=True),
    "cusum": lambda: detect.cusum(),
    "seasonal": lambda: detect.seasonal(window=128, refresh=32, warmup=32),
    "auto": lambda: detect.auto(),
    "limits": lambda: detect.limits(low=-6.0, high=6.0),
}


#: detectors scored across keys in stacked 2-D passes (edgeflow/ops/detect/stacked.py)
STACKED = [
    detect.zscore,
    detect.ewma,
    detect.cusum,
    detect.mad,
    lambda: detect.MAD(window=32, stride=4, diff=True),
    lambda: detect.seasonal(window=128, refresh=32, warmup=32),
    lambda: detect.VarianceChange(level=3.0),
    detect.auto,
]


def signal(seed: int, n: int = 1500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.sin(np.arange(n) / 15) * 2 + rng.normal(0, 0.3, n)
    x[rng.choice(n, 8, replace=False)] += rng.choice([-8, 8], 8)  # spikes
    x[n // 2 :] += 3  # a level shift
    return x


def one_at_a_time(make: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: feed points one by one."""
    drv = detect.Driver(make())  # type: ignore[operator]
    state = drv.init()
    scores, anomalies = [], []
    for v in x:
        out = drv.run(state, np.array([v]))
        scores.append(out.score[0])
        anomalies.append(out.anomaly[0])
    return np.array(scores), np.array(anomalies)


@pytest.mark.parametrize("name", sorted(ALL))
def test_vectorised_driver_equals_one_point_at_a_time(name: str) -> None:
    x = signal(1)
    drv = detect.Driver(ALL[name]())
    whole = drv.run(drv.init(), x)
    ref_scores, ref_anomalies = one_at_a_time(ALL[name], x)
    np.testing.assert_allclose(whole.score, ref_scores, rtol=1e-9, atol=1e-12)
    assert (whole.anomaly == ref_anomalies).all()
    assert whole.anomaly.any(), "the spikes and the shift must be found"


@pytest.mark.parametrize("name", sorted(ALL))
@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 1499), max_size=12))
def test_batching_and_snapshot_round_trip_do_not_change_results(name: str, cuts: list[int]) -> None:
    x = signal(2)
    drv = detect.Driver(ALL[name]())
    whole = drv.run(drv.init(), x)
    state = drv.init()
    parts = []
    bounds = [0, *sorted(set(cuts)), len(x)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        parts.append(drv.run(state, x[a:b]))
        state = pickle.loads(pickle.dumps(state))  # resume from a snapshot at every cut
    np.testing.assert_allclose(
        np.concatenate([p.score for p in parts]), whole.score, rtol=1e-9, atol=1e-12
    )
    assert (np.concatenate([p.anomaly for p in parts]) == whole.anomaly).all()
    assert (np.concatenate([p.event for p in parts]) == whole.event).all()


@pytest.mark.parametrize("name", sorted(ALL))
def test_state_stays_bounded_over_a_long_stream(name: str) -> None:
    drv = detect.Driver(ALL[name]())
    state = drv.init()
    sizes = []
    for i in range(40):
        drv.run(state, signal(i, 500))
        sizes.append(len(pickle.dumps(state)))
    assert max(sizes[10:]) <= 1.2 * sizes[10], sizes


@pytest.mark.parametrize("name", sorted(ALL))
def test_scores_are_in_0_1_and_anomalies_are_not_learnt(name: str) -> None:
    x = signal(3)
    out = detect.Driver(ALL[name]()).run(detect.Driver(ALL[name]()).init(), x)
    assert ((out.score >= 0) & (out.score < 1.0 + 1e-12)).all()
    learner = detect.Driver(ALL[name](), learn_anomalies=True)
    taught = learner.run(learner.init(), x)
    assert taught.anomaly.sum() <= out.anomaly.sum() or name in ("cusum", "auto")


def test_limits_flag_exactly_the_values_outside_the_range() -> None:
    x = np.array([0.0, 44.9, 45.0, 120.0, 120.1, 300.0, -1.0, 80.0])
    det = detect.limits(low=45.0, high=120.0)
    out = detect.Driver(det, detect.threshold(cooldown=0)).run(detect.Driver(det).init(), x)
    assert out.anomaly.tolist() == [True, True, False, False, True, True, True, False]
    assert (out.score[out.anomaly] >= 0.999).all() and (out.score[~out.anomaly] == 0).all()
    assert out.score[5] > out.score[4], "further outside scores higher"
    assert (out.low == 45.0).all() and (out.high == 120.0).all()
    with pytest.raises(ValueError, match="low=, high="):
        detect.limits()
    with pytest.raises(ValueError, match="must be below"):
        detect.limits(low=5, high=1)


def test_zscore_matches_a_plain_rolling_reference() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(10, 2, 400)
    x[300] = 40
    det = detect.zscore(window=50, warmup=10)
    out = detect.Driver(det).run(detect.Driver(det).init(), x)
    learnt: list[float] = []
    flagged = []
    for i, v in enumerate(x):
        w = learnt[-50:]
        if len(learnt) < 10:
            z = 0.0
        else:
            m = sum(w) / len(w)
            sd = math.sqrt(sum((a - m) ** 2 for a in w) / len(w))
            z = abs(v - m) / sd
        assert math.isclose(out.raw[i], z, rel_tol=1e-7, abs_tol=1e-9), i
        if 1 - 10 ** (-3 * z / 3) < 0.999:
            learnt.append(v)
        else:
            flagged.append(i)
    assert out.anomaly[300] and np.flatnonzero(out.anomaly).tolist() == flagged


def test_ewma_and_cusum_match_plain_recurrences() -> None:
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(0, 1, 300), rng.normal(1.5, 1, 200)])
    det = detect.ewma(alpha=0.1, warmup=0)
    st_ = det.init()
    s = det.score(st_, x)
    mr, v = 0.0, 0.0  # the EW recursions of the mean (weight 0.1) and variance (0.05) from 0
    for i, xi in enumerate(x):  # prefix semantics: each point against the state before it
        m = mr / (1 - 0.9**i) if i else xi  # bias-corrected: both recursions start at 0
        vu = v / ((1 - 0.95**i) * 0.95) if i else v  # (and E[v] = 0.95 E[(x - m)^2])
        assert math.isclose(
            s.raw[i], abs(xi - m) / max(math.sqrt(vu), 1e-6 * (1 + abs(m))), rel_tol=1e-9
        ) or (v == 0 and s.raw[i] >= 0)
        d = xi - m
        mr, v = 0.9 * mr + 0.1 * xi, 0.95 * v + 0.05 * 0.95 * d * d
    cus = detect.cusum()
    out = detect.Driver(cus).run(detect.Driver(cus).init(), x)
    hits = np.flatnonzero(out.anomaly)
    assert ((hits >= 300) & (hits < 340)).any(), (
        "a 1.5-sigma shift is caught within a few dozen points"
    )
    assert (hits < 300).sum() <= 1, (
        "and at most one false alarm in 300 in-control points (ARL0 ~ 465)"
    )


def test_adaptive_quantile_decision_follows_recent_scores() -> None:
    x = signal(4, 3000)
    fixed = detect.Driver(detect.zscore(), detect.threshold(0.999))
    adaptive = detect.Driver(detect.zscore(), detect.quantile(0.9, every=128, floor=0.5))
    a = fixed.run(fixed.init(), x)
    b = adaptive.run(adaptive.init(), x)
    assert b.anomaly.sum() > a.anomaly.sum(), "a low quantile flags more"
    assert len(set(b.threshold.tolist())) > 2, "the threshold moves"


def test_auto_beats_the_3_sigma_baseline_on_the_generated_corpus() -> None:
    corpus = evaluate.generate(11, n_series=16, min_points=1500, max_points=2500)
    classic = [evaluate.classic_3sigma(s.x) for s in corpus]
    base = evaluate.evaluate_events("3-sigma", classic, corpus)
    auto = evaluate.evaluate("auto", lambda: detect.Driver(detect.auto()), corpus)
    assert auto.scores["low_fp"] > base.scores["low_fp"], (auto.scores, base.scores)
    never = evaluate.evaluate_events("never", evaluate.never_alarm(corpus), corpus)
    assert never.scores == {"standard": 0.0, "low_fp": 0.0}, "never alarming scores 0"


def test_edgeflow_score_writes_one_scored_row_per_input_row(tmp_path: Path) -> None:
    data = tmp_path / "rec.csv"
    rng = np.random.default_rng(8)
    with data.open("w") as f:
        f.write("timestamp,value\n")
        for i in range(1200):
            v = 5 + rng.normal(0, 0.2) + (6 if i == 900 else 0)
            f.write(
                f"2026-03-01T00:{i // 60:02d}:{i % 60:02d}+00:00,{'' if i == 50 else round(v, 4)}\n"
            )
    out = tmp_path / "scored.csv"
    edgeflow(
        "score",
        "--detector",
        "auto",
        "--input",
        str(data),
        "--time-col",
        "timestamp",
        "--value-col",
        "value",
        "--out",
        str(out),
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1200
    assert rows[50]["score"] == "" and rows[50]["is_anomaly"] == "false"
    scores = [float(r["score"]) for r in rows if r["score"]]
    assert all(0 <= s <= 1 for s in scores)
    assert rows[900]["is_anomaly"] == "true"
    bad = edgeflow(
        "score",
        "--input",
        str(data),
        "--time-col",
        "when",
        "--value-col",
        "value",
        "--out",
        str(out),
        check=False,
    )
    assert bad.returncode == 2 and "column 'when' is not in" in bad.stderr


def ticks_batch(keys: tuple[str, ...], rows: np.ndarray, t0: int) -> Batch:
    """A batch of whole ticks: row j of ``rows`` holds every key's reading at time t0 + j."""
    per, n_keys = rows.shape
    return Batch(
        ("v",),
        keys,
        np.tile(np.arange(n_keys, dtype=np.int32), per),
        np.repeat(np.arange(t0, t0 + per, dtype=np.int64), n_keys),
        rows.reshape(1, -1),
    )


def _event_rows(c: dict) -> list[tuple]:
    """Anomaly events as comparable rows: key, time, score and expected range (rounded;
    None for a range a detector does not give)."""

    def r(v: np.ndarray, digits: int) -> list:
        return [None if not np.isfinite(f) else round(float(f), digits) for f in v]

    return list(
        zip(
            c["key"],
            np.asarray(c["t"]).tolist(),
            r(c["score"], 8),
            r(c["expected_low"], 6),
            r(c["expected_high"], 6),
            strict=True,
        )
    )


@pytest.mark.parametrize("per", [1, 3])
@pytest.mark.parametrize("make", STACKED)
def test_live_batches_scored_across_keys_equal_the_per_key_driver(make: object, per: int) -> None:
    """Live batches (``per`` readings per key: ticks, which z-score, EWMA and CUSUM score
    from a few numbers per key) give the same events, scores and expected ranges as one
    bulk batch, and as each key's own Driver."""
    from edgeflow.ops.detect.kernel import DetectKernel

    keys = tuple(f"d{i}" for i in range(40))
    rng = np.random.default_rng(12)
    x = rng.normal(size=(1200, 40))
    x[rng.random(x.shape) < 0.003] += 8
    x[600:, :5] += 4  # lasting shifts: exercises adaptation after a streak
    x[300:400, 10:20] *= 10  # bursts of variance
    live = DetectKernel("d", "v", make(), detect.threshold())  # type: ignore[operator]
    st_live = live.init()
    got = []
    for i in range(0, 1200, per):
        rows = x[i : i + per]
        b = ticks_batch(keys, rows, i)
        out = live.step_batch(st_live, b)
        if out:
            got += _event_rows(out.columns)
    bulk = DetectKernel("d", "v", make(), detect.threshold())  # type: ignore[operator]
    out = bulk.step_batch(
        bulk.init(),
        ticks_batch(keys, x, 0),
    )
    assert out is not None
    assert sorted(got) == sorted(_event_rows(out.columns))
    want = []
    for i, key in enumerate(keys):
        drv = detect.Driver(make())  # type: ignore[operator]
        o = drv.run(drv.init(), x[:, i])
        at = np.flatnonzero(o.event)
        cols = {
            "t": at,
            "score": o.score[at],
            "expected_low": o.low[at],
            "expected_high": o.high[at],
        }
        want += _event_rows({"key": [key] * len(at), **cols})
    assert sorted(got) == sorted(want)
    assert len(got) > 10


@pytest.mark.parametrize("make", STACKED)
def test_bulk_batches_scored_in_2d_passes_equal_the_per_key_driver(make: object) -> None:
    from edgeflow.ops.detect.kernel import DetectKernel

    keys = tuple(f"d{i}" for i in range(30))
    rng = np.random.default_rng(13)
    x = np.sin(np.arange(900)[:, None] / 20 + rng.uniform(0, 6, 30)) + rng.normal(0, 0.3, (900, 30))
    x[rng.random(x.shape) < 0.004] += 9
    x[400:, :4] += 5  # lasting shifts: streaks hand keys over to the driver mid-batch
    kern = DetectKernel("d", "v", make(), detect.threshold())  # type: ignore[operator]
    st_ = kern.init()
    got = []
    for a in range(0, 900, 300):  # 300 readings per key per batch: the bulk path
        b = ticks_batch(keys, x[a : a + 300], a)
        out = kern.step_batch(st_, b)
        if out:
            got += list(
                zip(
                    out.columns["key"],
                    out.columns["t"].tolist(),
                    np.round(out.columns["score"], 8).tolist(),
                    strict=True,
                )
            )
    want = []
    for i, key in enumerate(keys):
        drv = detect.Driver(make())  # type: ignore[operator]
        o = drv.run(drv.init(), x[:, i])
        want += [(key, int(t), round(float(o.score[t]), 8)) for t in np.flatnonzero(o.event)]
    assert sorted(got) == sorted(want)
    assert len(want) > 20


@pytest.mark.parametrize("make", STACKED)
def test_stacked_state_follows_keys_that_come_go_and_reorder(make: object) -> None:
    """Keys get state rows as they appear; batches name them in any order, some skip
    batches, some readings are NaN; results equal each key's own Driver, and a pickled
    state resumes identically."""
    from edgeflow.ops.detect.kernel import DetectKernel

    rng = np.random.default_rng(21)
    n_keys, n = 12, 600
    x = rng.normal(size=(n, n_keys)) + np.sin(np.arange(n)[:, None] / 30)
    x[rng.random(x.shape) < 0.01] += 7
    x[300:360, :8] *= 10  # bursts of variance
    x[rng.random(x.shape) < 0.01] = np.nan
    kern = DetectKernel("d", "v", make(), detect.threshold())  # type: ignore[operator]
    st_ = kern.init()
    got: list[tuple[str, int]] = []
    fed: dict[str, list[int]] = {}
    i = 0
    while i < n:
        rows = np.arange(i, min(n, i + int(rng.integers(1, 7))))
        present = [k for k in range(n_keys) if k < 4 + i // 60 and rng.random() < 0.8]
        rng.shuffle(present)
        if present:
            names = tuple(f"k{k}" for k in present)
            codes = np.tile(np.arange(len(present), dtype=np.int32), len(rows))
            t = np.repeat(rows, len(present)).astype(np.int64)
            vals = x[t, np.tile(present, len(rows))]
            out = kern.step_batch(st_, Batch(("v",), names, codes, t, vals[None, :]))
            if out:
                got += list(zip(out.columns["key"], out.columns["t"].tolist(), strict=True))
            for k in present:
                fed.setdefault(f"k{k}", []).extend(rows.tolist())
        st_ = pickle.loads(pickle.dumps(st_))
        i = int(rows[-1]) + 1
    want = []
    for key, ts in fed.items():
        col = int(key[1:])
        ts_ok = [t for t in ts if np.isfinite(x[t, col])]
        drv = detect.Driver(make())  # type: ignore[operator]
        out = drv.run(drv.init(), x[ts_ok, col])
        want += [(key, ts_ok[j]) for j in np.flatnonzero(out.event).tolist()]
    assert sorted(got) == sorted(want)
    assert len(want) > 10


@pytest.mark.parametrize("make", STACKED)
def test_alarm_heavy_then_quiet_batches_equal_the_per_key_driver(make: object) -> None:
    """Keys that alarm every few points make the next batch start with short passes; a
    quiet batch after them, and busy ones again, still give each key's Driver events."""
    from edgeflow.ops.detect.kernel import DetectKernel

    keys = tuple(f"d{i}" for i in range(20))
    rng = np.random.default_rng(31)
    n, per = 1000, 200
    x = rng.normal(0, 0.3, (n, 20)) + np.sin(np.arange(n)[:, None] / 25)
    busy = np.zeros(n, bool)
    busy[200:400] = busy[600:800] = True  # batches 2 and 4: a spike every ~4 points
    x[busy[:, None] & (rng.random(x.shape) < 0.25)] += rng.choice([-9.0, 9.0])
    kern = DetectKernel("d", "v", make(), detect.threshold())  # type: ignore[operator]
    st_ = kern.init()
    got, hinted = [], []
    for a in range(0, n, per):
        b = ticks_batch(keys, x[a : a + per], a)
        out = kern.step_batch(st_, b)
        if out:
            got += list(zip(out.columns["key"], out.columns["t"].tolist(), strict=True))
        parts = getattr(st_["stacked"], "parts", [st_["stacked"]])
        hinted.append(any(p.reach_hint is not None for p in parts))
    want = []
    for i, key in enumerate(keys):
        drv = detect.Driver(make())  # type: ignore[operator]
        o = drv.run(drv.init(), x[:, i])
        want += [(key, int(t)) for t in np.flatnonzero(o.event)]
    assert sorted(got) == sorted(want)
    assert hinted[1] and hinted[3]  # the busy batches did make the next start short


@pytest.mark.parametrize("adapt", [3, 256])
@pytest.mark.parametrize("make", [lambda: detect.zscore(window=64), detect.ewma, detect.cusum])
def test_batches_of_a_few_ticks_equal_the_per_key_driver(make: object, adapt: int) -> None:
    """A batch holding a few whole ticks (a source polled late) is scored tick by tick, and
    keys that start adapting to a lasting shift mid-batch (learning their anomalies) stay on
    that path. Events (and their values) equal each key's own Driver."""
    from edgeflow.ops.detect.kernel import DetectKernel

    n_keys, n, per = 16, 800, 5
    keys = tuple(f"d{i}" for i in range(n_keys))
    rng = np.random.default_rng(41)
    x = rng.normal(size=(n, n_keys))
    x[rng.random(x.shape) < 0.004] += 8
    # lasting shifts: with adapt=3 keys start adapting at tick 3 and 4 of a batch and at the
    # start of the next; spikes in other keys just after
    x[300:, 0] += 9
    x[451:, 1] -= 9
    x[602:, 2] += 9
    x[[304, 454, 606], [12, 14, 13]] += 9
    kern = DetectKernel("d", "v", make(), detect.threshold())  # type: ignore[operator]
    kern.driver.adapt_after = adapt
    st_ = kern.init()
    got = []
    for i in range(0, n, per):
        b = ticks_batch(keys, x[i : i + per], i)
        out = kern.step_batch(st_, b)
        if out:
            key_col = [int(k[1:]) for k in out.columns["key"]]
            assert (out.columns["value"] == x[out.columns["t"], key_col]).all()
            c = out.columns
            got += zip(
                c["key"],
                c["t"].tolist(),
                np.round(c["score"], 8).tolist(),
                np.round(c["expected_low"], 6).tolist(),
                np.round(c["expected_high"], 6).tolist(),
                strict=True,
            )
    want = []
    for j, key in enumerate(keys):
        drv = detect.Driver(make(), adapt_after=adapt)  # type: ignore[operator]
        o = drv.run(drv.init(), x[:, j])
        want += [
            (key, int(t), round(float(o.score[t]), 8), round(float(o.low[t]), 6),
             round(float(o.high[t]), 6))
            for t in np.flatnonzero(o.event)
        ]  # fmt: skip
    assert sorted(got) == sorted(want)  # events, scores and expected ranges
    assert ("d12", 304) in [w[:2] for w in want] and len(want) > 10


@pytest.mark.parametrize("make", STACKED)
def test_a_snapshot_of_an_older_array_layout_resumes_identically(make: object) -> None:
    """Snapshots pickle the stacked arrays; one written by an older edgeflow (another
    layout: attributes missing) is read out key by key and resumes as if never stopped."""
    from edgeflow.ops.detect.kernel import DetectKernel
    from edgeflow.ops.detect.stacked import Stacked

    n_keys = 10
    keys = tuple(f"d{i}" for i in range(n_keys))
    rng = np.random.default_rng(51)
    x = rng.normal(size=(900, n_keys)) + np.sin(np.arange(900)[:, None] / 20)
    x[rng.random(x.shape) < 0.01] += 8
    x[650:700, :5] *= 8  # a burst of variance

    def feed(kern: DetectKernel, st: dict, a: int, b: int, per: int) -> list[tuple[str, int]]:
        got = []
        for i in range(a, b, per):
            bt = ticks_batch(keys, x[i : i + per], i)
            out = kern.step_batch(st, bt)
            if out:
                got += list(zip(out.columns["key"], out.columns["t"].tolist(), strict=True))
        return got

    kern = DetectKernel("d", "v", make(), detect.threshold())  # type: ignore[operator]
    st_ = kern.init()
    feed(kern, st_, 0, 600, 50)
    old = pickle.loads(pickle.dumps(st_))
    for part in getattr(old["stacked"], "parts", [old["stacked"]]):
        assert isinstance(part, Stacked)
        del part.__dict__["layout"], part.__dict__["all_rows"]  # what older layouts lack
        for name in ("cnt", "full"):  # (and a model's attributes added since)
            part.model.__dict__.pop(name, None)
    resumed = pickle.loads(pickle.dumps(old))
    want = feed(kern, st_, 600, 900, 1)  # live ticks after the snapshot
    assert feed(kern, resumed, 600, 900, 1) == want
    assert want
