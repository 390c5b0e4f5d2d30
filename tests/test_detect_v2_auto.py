"""`auto` as a real default (issue #13): the ensemble's raw statistic is in units of its parts'
alarm levels and its score ranks with it; change alarms explained by a level the key has
seen or by its seasonal pattern are not anomalies; the stacked form gives the Driver's
events."""

from __future__ import annotations

import numpy as np

from edgeflow.ops import detect
from edgeflow.ops.detect.checks import (
    check_batching,
    check_bounded_state,
    check_stacked_equals_reference,
    grid_batch,
)
from edgeflow.ops.detect.decision import threshold
from edgeflow.ops.detect.ensemble import (
    ALARM,
    CHANGE,
    LEVEL,
    NOISE,
    SEASON,
    SEEN,
    SHIFT,
    Ensemble,
    RecentNoise,
    SeasonalContext,
    SeenRange,
    TailMAD,
    counted,
)
from edgeflow.ops.detect.kernel import DetectKernel
from edgeflow.ops.detect.mad import MAD, robust_spread


def run(det: detect.Detector, x: np.ndarray) -> detect.DriverOut:
    drv = detect.Driver(det, detect.threshold())
    return drv.run(drv.init(), np.asarray(x, dtype=np.float64))


def square(n: int, half: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = np.where((np.arange(n) // half) % 2 == 0, 0.0, 10.0)
    out: np.ndarray = levels + rng.uniform(-0.8, 0.8, n)
    return out


def test_auto_score_is_calibrate_of_raw_in_alarm_levels() -> None:
    """raw is in units of the parts' alarm levels (1.0 = an alarm), score = calibrate(raw, 1):
    scores rise with raw over the whole series, never tie distinct raws, and a point is
    anomalous exactly when its raw reaches 1 (score 0.999)."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, 3000)
    at = np.arange(400, 2900, 50)
    x[at] += np.geomspace(2.0, 1e4, len(at)) * rng.choice([-1.0, 1.0], len(at))
    out = run(detect.auto(), x)
    np.testing.assert_allclose(out.score, detect.calibrate(out.raw, 1.0), rtol=0, atol=0)
    assert (out.score < 1.0).all()
    order = np.argsort(out.raw, kind="stable")
    r, s = out.raw[order], out.score[order]
    assert (np.diff(s) >= 0).all()
    distinct = np.diff(r) > 1e-9 * r[1:]
    assert not (distinct & (np.diff(s) == 0)).any()
    assert np.array_equal(out.anomaly, out.raw >= 1.0 - 1e-12)
    assert out.anomaly[at[-10:]].all()  # the big spikes alarm


def test_counted_rules() -> None:
    """Who explains whom: a reading inside a SEASON part's range explains every evidence
    role; a SEEN part's range (the values the key was at) explains CHANGE and SHIFT within
    the CHANGE part's half-width of it, and only where it is wider than that half-width
    (levels an alarming jump apart); inside the NOISE part's range a point's CHANGE and
    LEVEL anomalies are explained, not SHIFT. ALARM always counts, NOISE and SEEN never,
    SEASON only with a period."""
    roles = (CHANGE, SHIFT, LEVEL, SEASON, NOISE, SEEN, ALARM)
    nan = np.nan
    x = np.array([0.0, 0.0, 0.0, 0.0, 5.0, 0.0])
    # point: 0 on the season; 1 near a wide seen range; 2 inside a narrow seen range;
    # 3 inside the noise range only; 4 nobody's; 5 beyond the seen range's reach
    # the CHANGE part's range: half-width 1 around 0.5
    low = [
        np.full(6, -0.5),
        np.full(6, nan),
        np.full(6, nan),
        np.array([-1, 1, 1, 1, nan, 1]),
        np.array([1, 1, 1, -1, 1.0, 1]),
        np.array([0.5, 0.5, -0.2, 1.5, 1.0, 1.5]),
        np.full(6, nan),
    ]
    high = [np.full(6, 1.5), np.full(6, nan), np.full(6, nan), np.array([1, 2, 2, 2, nan, 2]),
            np.array([2, 2, 2, 1, 2.0, 2]), np.array([9, 9, 0.2, 9, 2.0, 9]),
            np.full(6, nan)]  # fmt: skip
    change, shift, level, season, noise, seen, alarm = counted(roles, x, low, high)
    assert change.tolist() == [False, False, True, False, True, True]
    assert shift.tolist() == [False, False, True, True, True, True]
    assert level.tolist() == [False, True, True, False, True, True]
    assert season.tolist() == [True, True, True, True, False, True]
    assert not noise.any() and not seen.any() and alarm.all()


def test_return_to_a_seen_level_is_not_an_anomaly() -> None:
    """A square wave (levels 0 and 10, half-period 54): the change part flags every switch,
    but once both levels are among the values the key has been at a switch is no news -
    one event, at the first switch; a spike to a level never seen still raises one."""
    x = square(2000, 54, 0)
    x[1500] += 80.0
    det = Ensemble(
        [MAD(window=128, level=5.0, stride=16, diff=True, warmup=32), SeenRange(256, 16)],
        roles=(CHANGE, SEEN),
    )
    out = run(det, x)
    events = np.flatnonzero(out.event).tolist()
    assert events[0] == 54 and 1500 in events and len(events) == 2, events


def test_seasonal_part_needs_a_period() -> None:
    """The seasonal evidence has no verdict and no expected range until it finds a period;
    then a point off the pattern alarms, and one on it explains a change alarm."""
    x = square(3000, 50, 1)
    x[2500] -= 10.0  # off the pattern: the low level during a high half-period
    seasonal = run(SeasonalContext(window=512, level=4.0), x)
    first = int(np.flatnonzero(np.isfinite(seasonal.low))[0])
    assert (seasonal.raw[:first] == 0).all()
    assert first < 1000
    assert seasonal.anomaly[2500]
    det = Ensemble(
        [MAD(window=128, level=5.0, stride=16, diff=True), SeasonalContext(512, 4.0)],
        roles=(CHANGE, SEASON),
    )
    out = run(det, x)
    assert not out.event[1000:2500].any() and out.event[2500]


def test_recent_noise_explains_jumps_after_a_variance_change() -> None:
    """After the noise grows 4x, the change part keeps flagging larger jumps until its window
    re-learns; with the recent-noise context those jumps are explained within 64 readings."""
    alone, with_noise = 0, 0
    for seed in range(6):
        x = np.random.default_rng(seed).normal(0.0, 1.0, 2000)
        x[1000:] *= 4.0
        change = MAD(window=128, level=5.0, stride=16, diff=True)
        alone += int(run(Ensemble([change], roles=(CHANGE,)), x).anomaly[1064:].sum())
        both = Ensemble([change, RecentNoise(alpha=0.1, level=4.0)], roles=(CHANGE, NOISE))
        with_noise += int(run(both, x).anomaly[1064:].sum())
    assert alone > 0 and with_noise == 0, (alone, with_noise)


def test_recent_noise_forms_agree() -> None:
    """The recent-noise context's stacked form gives the reference's expected ranges, under
    any batching, with bounded state."""
    check_stacked_equals_reference(RecentNoise)
    check_batching(RecentNoise)
    check_bounded_state(RecentNoise)


def test_roles_are_checked() -> None:
    det = Ensemble([MAD(), MAD()], roles=(CHANGE, "guess"))
    assert any("roles" in m for m in det.problems())


def test_stacked_auto_gives_the_drivers_events() -> None:
    """On keys where the gating acts (square waves, a daily rhythm, spikes, a shift), the
    flow step's stacked ensemble raises the Driver's events with the same scores."""
    n = 1800
    rng = np.random.default_rng(9)
    keys = ("sq", "day", "spiky", "step")
    cols = [
        square(n, 54, 2),
        10 * np.sin(2 * np.pi * np.arange(n) / 100) + rng.uniform(-1, 1, n),
        rng.normal(0, 1, n),
        rng.normal(0, 1, n) + np.where(np.arange(n) >= 900, 8.0, 0.0),
    ]
    cols[0][1500] += 30.0
    cols[1][1400] += 8.0
    cols[2][[300, 700, 1300]] += [9.0, -12.0, 30.0]
    xs = np.stack(cols, axis=1)
    want: dict[tuple[str, int], float] = {}
    for k, x in zip(keys, cols, strict=True):
        out = run(detect.auto(), x)
        want.update({(k, int(t)): float(out.score[t]) for t in np.flatnonzero(out.event)})
    kernel = DetectKernel("check", "v", detect.auto(), threshold())
    st = kernel.init()
    got: dict[tuple[str, int], float] = {}
    for a in range(0, n, 450):
        rec = kernel.step_batch(st, grid_batch(keys, xs[a : a + 450], a))
        if rec is not None:
            c = rec.columns
            for k, t, s in zip(c["key"], np.asarray(c["t"]).tolist(), c["score"], strict=True):
                got[(k, int(t))] = float(s)
    assert got.keys() == want.keys(), (sorted(set(got) ^ set(want)))[:6]
    for k in want:
        assert abs(got[k] - want[k]) <= 1e-9, (k, got[k], want[k])


def sine_with_spikes(seed: int, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """A sine of period ~94 (amplitude 2, noise 0.3) with eight +/-8 spikes."""
    rng = np.random.default_rng(seed)
    x = np.sin(np.arange(n) / 15) * 2 + rng.normal(0, 0.3, n)
    at = np.sort(rng.choice(np.arange(40, n), 8, replace=False))
    x[at] += rng.choice([-8.0, 8.0], 8)
    return x, at


def test_spikes_on_a_sine_count_before_its_period_is_known() -> None:
    """While the seasonal part has no period, a sine's wide range of values does not explain
    a spike beyond it: each spike is an anomaly.
    (The seasonal part here never re-estimates after its warm-up, whose 128 readings hold
    too little of the period to find it.)"""
    for seed in range(4):
        x, at = sine_with_spikes(seed)
        det = detect.auto()
        assert isinstance(det.parts[3], SeasonalContext)
        det.parts[3] = SeasonalContext(window=1024, level=4.0, refresh=10**9)
        out = run(det, x)
        assert out.anomaly[at].all(), (seed, at.tolist(), np.flatnonzero(out.anomaly).tolist())


def test_seasonal_context_finds_a_square_waves_period_early() -> None:
    """While no period is known the seasonal part re-estimates at 2, 4, 8 ... times its
    warm-up, not only every ``refresh`` readings: a square wave of half-period 108 (period
    216) has its period by the estimate at 512 readings, not at 1024; the stacked form does
    the same."""
    x = square(3000, 108, 4)
    out = run(SeasonalContext(window=1024, level=4.0, refresh=1024), x)
    first = int(np.flatnonzero(np.isfinite(out.low))[0])
    assert first == 512, first
    det = SeasonalContext(window=1024, level=4.0, refresh=1024)
    assert [int(det.next_estimate(n, 1)) for n in (0, 128, 256, 300, 512, 1024)] == [
        128, 256, 512, 512, 1024, 2048,
    ]  # fmt: skip
    assert int(det.next_estimate(256, 216)) == 1024  # with a period: every refresh
    check_stacked_equals_reference(lambda: SeasonalContext(window=256, level=4.0, refresh=512))


def broken_day(seed: int, n: int = 3200, period: int = 288) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 5.0 * np.sin(2 * np.pi * np.arange(n) / period) + rng.normal(0.0, 1.0, n)
    x[6 * period : 7 * period] = rng.normal(0.0, 1.0, period)
    return x


def test_a_broken_day_is_one_event_in_both_paths() -> None:
    """A day whose rhythm is missing: the seasonal part flags its peak and its trough, about
    half a period apart (beyond the cooldown); anomalies only the seasonal part raised get a
    cooldown of a period, so the Driver and the flow step's stacked ensemble raise one
    event in that day, the same one."""
    keys = ("a", "b", "c")
    cols = [broken_day(s) for s in range(3)]
    want: dict[tuple[str, int], float] = {}
    for k, x in zip(keys, cols, strict=True):
        out = run(detect.auto(), x)
        ev = np.flatnonzero(out.event)
        assert len(ev[(ev >= 6 * 288) & (ev < 7 * 288)]) == 1, (k, ev.tolist())
        want.update({(k, int(t)): float(out.score[t]) for t in ev})
    kernel = DetectKernel("check", "v", detect.auto(), threshold())
    st = kernel.init()
    got: dict[tuple[str, int], float] = {}
    xs = np.stack(cols, axis=1)
    for a in range(0, len(cols[0]), 700):
        rec = kernel.step_batch(st, grid_batch(keys, xs[a : a + 700], a))
        if rec is not None:
            c = rec.columns
            for k, t, s in zip(c["key"], np.asarray(c["t"]).tolist(), c["score"], strict=True):
                got[(k, int(t))] = float(s)
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))[:6]


def test_level_spread_reflects_heavy_tails() -> None:
    """The level part's spread is MAD's on normal noise and widens to the window's 1 % tails
    on heavy-tailed noise, so Student-t noise (3 degrees of freedom) raises fewer events
    (48 in 5 x 4,000 readings; 81 with MAD's spread, 43 of them the level part's alone)."""
    rng = np.random.default_rng(0)
    normal = rng.normal(0.0, 1.0, (20, 256))
    tails = rng.standard_t(3, (20, 256))
    level = TailMAD(window=256, level=6.0, stride=16)
    for win, lo, hi in ((normal, 0.9, 1.25), (tails, 1.2, 3.0)):
        ratio = level.estimate(win)[1] / robust_spread(win)[1]
        assert lo <= ratio.mean() <= hi, (lo, ratio.mean(), hi)
    events = sum(
        int(run(detect.auto(), np.random.default_rng(s).standard_t(3, 4000)).event.sum())
        for s in range(5)
    )
    assert events <= 60, events


def test_recent_noise_floor_is_each_points_resolution() -> None:
    """The recent-noise range is floored by the resolution each point sees (as every
    detector's spread): whole or one reading at a time, a flat stretch gives the same
    ranges."""
    x = np.random.default_rng(2).normal(0.0, 1.0, 600)
    x[200:400] = x[199]
    x[450] = x[449] + 1e-4  # a tiny step: the resolution drops mid-pass
    whole = run(RecentNoise(alpha=0.1, level=4.0), x)
    drv = detect.Driver(RecentNoise(alpha=0.1, level=4.0), detect.threshold())
    st = drv.init()
    ones = np.concatenate([drv.run(st, x[i : i + 1]).high for i in range(len(x))])
    np.testing.assert_array_equal(whole.high, ones)
