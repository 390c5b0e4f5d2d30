"""The evaluation corpus and its operator-minded scoring (issue #13, "A harder evaluation corpus")."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow import evaluate
from edgeflow.evaluate import DAY_NS, KINDS, PROFILES, SHAPES, Series, Window

MINUTE_NS = 60 * 10**9


def one_series(n: int, windows: list[Window], interval_ns: int = MINUTE_NS) -> Series:
    t = np.arange(n, dtype=np.int64) * interval_ns + evaluate.EPOCH_NS
    return Series("hand", "drift", interval_ns, t, np.zeros(n), windows)


def scores(events: list[list[int]], corpus: list[Series]) -> dict[str, float]:
    arrays = [np.asarray(e, np.int64) for e in events]
    return evaluate.evaluate_events("hand", arrays, corpus).scores


@pytest.fixture(scope="module")
def corpus() -> list[Series]:
    return evaluate.generate(3, n_series=24, min_points=1500, max_points=2500)


def test_never_alarming_scores_0_and_perfect_detection_100_in_each_profile() -> None:
    series = [
        one_series(1000, [Window(200, 210, "spike"), Window(500, 560, "level_shift")]),
        one_series(1000, []),
    ]
    assert scores([[], []], series) == {"standard": 0.0, "low_fp": 0.0}
    perfect = scores([[200, 500], []], series)
    assert perfect == pytest.approx({"standard": 100.0, "low_fp": 100.0})


def test_one_false_alarm_costs_what_the_docstring_says_in_each_profile() -> None:
    series = [one_series(1000, [Window(500, 560, "level_shift")])]
    one_fa = scores([[100, 500]], series)
    # 100 * fp / (tp + fn) per window: 100 * 0.11 / 2 and 100 * 0.22 / 0.7
    assert one_fa["standard"] == pytest.approx(100 - 5.5)
    assert one_fa["low_fp"] == pytest.approx(100 - 100 * 0.22 / 0.7)
    assert round(100 * 0.22 / 0.7, 2) == 31.43
    weights = {p.name: (p.tp, p.fn, p.fp) for p in PROFILES}
    assert weights == {"standard": (1.0, 1.0, 0.11), "low_fp": (0.5, 0.2, 0.22)}
    low = weights["low_fp"]
    assert low[2] > low[1], "in low_fp a false alarm costs more than a missed window"
    # with two windows in the corpus a false alarm costs half as many points
    two = [one_series(1000, [Window(300, 310, "spike"), Window(500, 560, "level_shift")])]
    assert scores([[100, 300, 500]], two)["low_fp"] == pytest.approx(100 - 100 * 0.22 / 1.4)


def test_early_detection_earns_more_than_late_and_late_more_than_missing() -> None:
    series = [one_series(1000, [Window(500, 560, "level_shift")])]
    early, late, missed = (scores([e], series) for e in ([500], [550], []))
    for p in ("standard", "low_fp"):
        assert early[p] > late[p] > missed[p], (p, early, late, missed)
    # at the window's last reading a detection earns about half of an early one
    last = scores([[559]], series)["standard"]
    assert last == pytest.approx(100 * (1.0 * (1 - 0.5 * 59 / 60) + 1.0) / 2.0)


def test_only_events_outside_windows_and_their_grace_are_false_alarms() -> None:
    w = Window(500, 560, "level_shift")  # grace: max(20, min(100, 60 // 2)) = 30 readings
    assert w.grace == 30
    series = [one_series(1000, [w])]

    def fa(events: list[int]) -> int:
        return evaluate.evaluate_events("x", [np.asarray(events)], series).false_alarms

    assert fa([500, 520, 559, 589]) == 0, "repeats inside the window and in its grace are free"
    assert fa([499]) == 1, "an event before the window is a false alarm"
    assert fa([590]) == 1, "and one after the grace period"


def test_false_alarms_per_series_day_come_from_the_timestamps() -> None:
    # one day at 1-minute readings, with a 6-hour gap and a clock reset 3 hours back
    n = 1440
    t = np.arange(n, dtype=np.int64) * MINUTE_NS + evaluate.EPOCH_NS
    t[600:] += 6 * 60 * MINUTE_NS  # a missing stretch of 6 h: still on duty
    t[1000:] -= 3 * 60 * MINUTE_NS + 6 * 60 * MINUTE_NS  # back 3 h from where it was
    days = evaluate.series_days(t)
    forward = (n - 1) * MINUTE_NS + 6 * 60 * MINUTE_NS - MINUTE_NS  # the reset step adds 0
    assert days == pytest.approx(forward / DAY_NS)
    a = Series("a", "drift", MINUTE_NS, t, np.zeros(n))
    b = one_series(2 * n + 1, [], interval_ns=MINUTE_NS)  # exactly 2 days
    res = evaluate.evaluate_events("x", [np.asarray([10, 900]), np.asarray([5])], [a, b])
    assert res.false_alarms == 3
    assert res.fa_per_day == pytest.approx(3 / (days + 2.0))


def test_delay_is_reported_in_readings_and_time() -> None:
    series = [one_series(1000, [Window(500, 560, "level_shift")], interval_ns=5 * MINUTE_NS)]
    res = evaluate.evaluate_events("x", [np.asarray([504])], series)
    assert (res.delay, res.delay_s, res.recall) == (4.0, 20 * 60.0, 1.0)


def test_corpus_is_deterministic_per_seed(corpus: list[Series]) -> None:
    again = evaluate.generate(3, n_series=24, min_points=1500, max_points=2500)
    for a, b in zip(corpus, again, strict=True):
        assert np.array_equal(a.t, b.t) and np.array_equal(a.x, b.x)
        assert a.windows == b.windows
    other = evaluate.generate(4, n_series=24, min_points=1500, max_points=2500)
    assert not all(np.array_equal(a.x, b.x) for a, b in zip(corpus, other, strict=True))


def test_corpus_has_every_shape_and_kind_and_mostly_unlabelled_series(
    corpus: list[Series],
) -> None:
    assert {s.shape for s in corpus} == set(SHAPES)
    assert {w.kind for s in corpus for w in s.windows} == set(KINDS)
    unlabelled = sum(1 for s in corpus if not s.windows)
    assert unlabelled > len(corpus) / 2, "most monitoring series have no anomaly"
    assert all(len(s.windows) <= 2 for s in corpus)
    assert {s.interval_ns for s in corpus} >= {10 * 10**9, 60 * 10**9, 300 * 10**9}


def test_quantised_and_flat_shapes_repeat_values(corpus: list[Series]) -> None:
    def repeats(s: Series) -> float:
        return float(np.mean(np.diff(s.x) == 0))

    for s in corpus:
        if s.shape in ("counts", "cpu_percent"):
            assert np.array_equal(s.x, np.round(s.x)), "integers"
        if s.shape == "cpu_percent":
            assert s.x.min() >= 0 and s.x.max() <= 100
        if s.shape == "slow_sensor":
            assert repeats(s) > 0.8, "a slow sensor repeats its reading"
            assert np.all(s.x[: len(s.x) // 10] == s.x[0]), "constant, then moving"
            assert len(np.unique(s.x)) > 5
    counts = [repeats(s) for s in corpus if s.shape == "counts"]
    assert max(counts) > 0.5, "a low-rate count series is mostly repeats"


def test_timestamps_are_int64_ns_with_gaps_and_clock_resets(corpus: list[Series]) -> None:
    assert any(s.gaps for s in corpus) and any(s.resets for s in corpus)
    for s in corpus:
        assert s.t.dtype == np.int64 and len(s.t) == len(s.x)
        assert s.t.min() >= evaluate.EPOCH_NS  # 2026 and later, in ns
        steps = np.diff(s.t)
        back = np.flatnonzero(steps < 0) + 1
        assert back.tolist() == s.resets, "time goes back exactly at the clock resets"
        long = np.flatnonzero(steps > s.interval_ns) + 1
        assert long.tolist() == s.gaps, "and jumps forward exactly at the missing stretches"
        for w in s.windows:  # no window (nor its grace) straddles a gap or a reset
            for i in s.gaps + s.resets:
                assert not (w.start - 1 <= i <= w.end + w.grace)


def test_holidays_are_normal_and_never_labelled(corpus: list[Series]) -> None:
    holidays = [(s, h) for s in corpus for h in s.holidays]
    assert holidays, "some weekly series have a holiday"
    for s, (a, b) in holidays:
        for w in s.windows:
            assert w.end <= a or w.start >= b


def test_labelled_anomalies_stand_out_of_their_series(corpus: list[Series]) -> None:
    for s in corpus:
        for w in s.windows:
            if w.kind == "spike":
                before = s.x[max(0, w.start - 300) : w.start]
                assert s.x[w.start] > np.max(before), (s.name, w)
            if w.kind == "flatline":
                assert np.all(s.x[w.start : w.end] == s.x[w.start - 1]), (s.name, w)


def test_the_classic_3_sigma_baseline_is_a_plain_rolling_z_with_a_cooldown() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 600)
    x[[300, 310, 500]] += 12.0  # 310 is within the cooldown of 300
    x[50] = np.nan
    ev = evaluate.classic_3sigma(x, window=100, cooldown=64)
    assert 300 in ev and 500 in ev and 310 not in ev
    # the reference, one reading at a time over the finite readings
    ok = np.flatnonzero(np.isfinite(x))
    v = x[ok]
    want: list[int] = []
    for i in range(16, len(v)):
        w = v[max(0, i - 100) : i]
        z = abs(v[i] - w.mean()) / w.std() if w.std() > 0 else 0.0
        if z >= 3 and (not want or i - want[-1] > 64):
            want.append(i)
    assert ev.tolist() == ok[want].tolist()


def test_detectors_are_scored_by_their_events_with_random_and_never_baselines() -> None:
    from edgeflow.ops import detect

    small = evaluate.generate(5, n_series=8, min_points=1500, max_points=1800)
    names = [n for n, _ in evaluate.standard_suite()]
    assert names == ["zscore", "ewma", "mad", "cusum", "seasonal", "auto"]
    events = evaluate.run(lambda: detect.Driver(detect.zscore()), small)
    res = evaluate.evaluate_events("z", events, small)
    assert res.events == sum(len(e) for e in events) > 0
    chance = evaluate.random_events([len(e) for e in events], small, seed=1)
    assert [len(e) for e in chance] == [len(e) for e in events]
    never = evaluate.evaluate_events("never", evaluate.never_alarm(small), small)
    text = evaluate.table([never, res])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| detector | score (standard)")
    assert lines[2].startswith("| never | 0.0 | 0.0 | 0.00 | 0.00 |")
