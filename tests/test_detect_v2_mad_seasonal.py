"""Detection v2 (issue #13) for the robust detectors: MAD, seasonal and variance change.

What a user relies on: a quantised or flat signal does not make them alarm on one-quantum
moves (their spreads never collapse to 0), a square wave is learnt once its period has been
seen, a lasting step is one event and at most ``adapts_within`` alarms, and the seasonal
detector finds the exact period of a two-level signal, keeps its phase across anomalies and
does not take noise for a season."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.ops import detect


def run(det: detect.Detector, x: np.ndarray) -> detect.DriverOut:
    drv = detect.Driver(det, detect.threshold())
    return drv.run(drv.init(), np.asarray(x, dtype=np.float64))


def hovering_integers(seed: int, n: int) -> np.ndarray:
    """49, 50 or 51, the previous reading repeated 55 % of the time (about 70 % repeats)."""
    rng = np.random.default_rng(seed)
    x = 50.0 + rng.integers(-1, 2, n).astype(np.float64)
    keep = rng.random(n) < 0.55
    for i in range(1, n):
        if keep[i]:
            x[i] = x[i - 1]
    return x


def sticky_counts(seed: int, n: int) -> np.ndarray:
    """Poisson(2) counts, a fresh draw 30 % of the time, else the previous count."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(2.0, n).astype(np.float64)
    keep = rng.random(n) < 0.7
    for i in range(1, n):
        if keep[i]:
            x[i] = x[i - 1]
    return x


def square_wave(seed: int, half: int, n: int = 2000) -> np.ndarray:
    """Levels 0 and 10, bounded noise of standard deviation 0.5."""
    levels = np.where((np.arange(n) // half) % 2 == 0, 0.0, 10.0)
    wave: np.ndarray = levels + np.random.default_rng(seed).uniform(-0.866, 0.866, n)
    return wave


@pytest.mark.parametrize("name", ["mad", "seasonal"])
def test_quantised_signal_with_a_flat_stretch_is_quiet_until_a_real_jump(name: str) -> None:
    """Whole-number readings that mostly repeat, then 1,000 identical ones, then moving
    again: no alarm on one- or two-quantum moves; a jump of 15 levels alarms."""
    for seed in (0, 1):
        x = hovering_integers(seed, 3600)
        x[600:1600] = x[599]
        x[2400:2405] += 15.0
        out = run(detect.make(name), x)
        early = np.flatnonzero(out.anomaly[300:2400])
        assert not len(early), f"{name} seed {seed}: alarms at {300 + early[:5]}"
        assert out.anomaly[2400:2405].any(), f"{name} seed {seed}: the +15 jump is missed"


def test_variance_change_is_quiet_when_a_quantised_signal_stops_and_moves_again() -> None:
    """Variances floored by the resolution squared: a flat stretch of a quantised signal and
    its restart are not variance changes; an 8x noise burst still is."""
    x = hovering_integers(3, 3600)
    x[600:1600] = x[599]
    out = run(detect.VarianceChange(), x)
    assert not out.anomaly[300:].any(), f"alarms at {300 + np.flatnonzero(out.anomaly[300:])[:5]}"
    noise = np.random.default_rng(4).normal(0.0, 1.0, 2000)
    noise[1200:] *= 8.0
    burst = run(detect.VarianceChange(), noise)
    assert burst.anomaly[1200:1300].any()


@pytest.mark.parametrize("half", [30, 108])
def test_mad_learns_a_square_wave_after_its_first_period(half: int) -> None:
    """The spread of a two-level window is its IQR (the MAD of two equal levels is 0), and
    a lasting change keeps enough of the old level: no alarm after the first period."""
    for seed in (0, 1):
        out = run(detect.mad(), square_wave(seed, half))
        late = np.flatnonzero(out.anomaly[2 * half :])
        assert not len(late), f"seed {seed}: {len(late)} alarms, first at {2 * half + late[:5]}"


def test_seasonal_learns_a_square_wave_of_half_period_30() -> None:
    """Period 60 (fits the 512-point window): it used to alarm hundreds of times (a
    period estimate 5 % off and a phase that slipped at every skipped anomaly)."""
    for seed in (0, 1, 2):
        out = run(detect.seasonal(), square_wave(seed, 30))
        late = np.flatnonzero(out.anomaly[60:])
        assert not len(late), f"seed {seed}: {len(late)} alarms, first at {60 + late[:5]}"


def test_seasonal_finds_the_exact_period_of_a_square_wave_seen_twice() -> None:
    from edgeflow.ops.detect.seasonal import seasonal_estimate

    x = square_wave(0, 30, 128)  # 2.13 periods of 60
    assert int(seasonal_estimate(x[None, :])[0][0]) == 60


def test_seasonal_takes_no_period_from_a_mostly_repeating_count() -> None:
    """A count that mostly repeats has a red spectrum whose peaks are not a season."""
    from edgeflow.ops.detect.seasonal import seasonal_estimate

    x = sticky_counts(0, 3000)
    rows = np.stack([x[a : a + 512] for a in range(0, 2488, 128)])
    assert (seasonal_estimate(rows)[0] == 1).all()


def test_seasonal_keeps_its_phase_across_anomalies() -> None:
    """A sine of period 50 with spikes: each spike is one alarm; the readings after it, and
    one period later, are normal (the history keeps every reading's place)."""
    rng = np.random.default_rng(5)
    n = 3000
    x = 10.0 * np.sin(2 * np.pi * np.arange(n) / 50) + rng.uniform(-0.5, 0.5, n)
    spikes = np.arange(900, n - 100, 173)
    x[spikes] += 8.0
    out = run(detect.seasonal(), x)
    alarms = np.flatnonzero(out.anomaly[600:]) + 600
    assert set(alarms.tolist()) == set(spikes.tolist()), f"alarms at {alarms[:10]}"


@pytest.mark.parametrize("name", ["mad", "seasonal"])
def test_lasting_step_is_one_event_and_at_most_adapts_within_alarms(name: str) -> None:
    det = detect.make(name)
    bound = int(getattr(det, "adapts_within", 64))
    assert bound <= det.window  # type: ignore[attr-defined]
    for seed in range(4):
        clean = np.random.default_rng([seed, 8]).normal(0.0, 1.0, 1500)
        x = clean.copy()
        x[800:] += 8.0
        out, ref = run(detect.make(name), x), run(detect.make(name), clean)
        extra = int(out.anomaly[800:].sum()) - int(ref.anomaly[800:].sum())
        assert extra <= bound, f"seed {seed}: {extra} alarms beyond the noise's own"
        events = np.flatnonzero(out.event[800 : 800 + bound + 1])
        assert len(events) == 1 and events[0] <= 5, f"seed {seed}: events at {800 + events}"
        assert not (out.anomaly[800 + bound + 1 :] & ~ref.anomaly[800 + bound + 1 :]).any()


def test_robust_spread_never_collapses() -> None:
    """Median and spread: the IQR for two equal levels, the mean non-zero deviation when
    most values repeat, 0 only for a constant window; NaN padding is ignored."""
    from edgeflow.ops.detect.mad import robust_spread

    two_levels = np.r_[np.zeros(70), np.full(30, 10.0)]  # MAD 0, IQR 10
    repeats = np.r_[np.zeros(90), np.ones(5), -np.ones(5)]
    constant = np.full(100, 3.0)
    med, spread = robust_spread(np.stack([two_levels, repeats, constant]))
    assert spread[0] == pytest.approx(10.0 / 1.349)
    assert med[1] == 0.0 and spread[1] == pytest.approx(1.2533)
    assert med[2] == 3.0 and spread[2] == 0.0
    padded = np.r_[np.full(28, np.nan), np.arange(100.0)]
    m1, s1 = robust_spread(padded[None, :])
    m2, s2 = robust_spread(np.arange(100.0)[None, :])
    assert m1[0] == m2[0] and s1[0] == s2[0]


def test_seasonal_lasting_step_on_a_rhythm_is_one_event_then_the_new_normal() -> None:
    """A +8 sigma step on a sine of period 64: the alarms interleave with normal readings
    (no streak of 16 in a row), yet the history is re-based within ``adapts_within``
    alarms and the rhythm at its new level raises no more (it used to alarm for a period
    and more, then echo the substituted old level)."""
    bound = int(getattr(detect.seasonal(), "adapts_within", 32))
    t = np.arange(2000)
    for seed in range(4):
        clean = 5.0 * np.sin(2 * np.pi * t / 64) + np.random.default_rng([seed, 9]).normal(
            0.0, 1.0, 2000
        )
        x = clean.copy()
        x[1200:] += 8.0
        out, ref = run(detect.seasonal(), x), run(detect.seasonal(), clean)
        extra = int(out.anomaly[1200:].sum()) - int(ref.anomaly[1200:].sum())
        assert extra <= bound, f"seed {seed}: {extra} alarms beyond the noise's own"
        assert out.anomaly[1200:1206].any(), f"seed {seed}: the step is missed"
        events = int(out.event[1200:].sum()) - int(ref.event[1200:].sum())
        assert events <= 1, f"seed {seed}: {events} events beyond the noise's own"
        late = out.anomaly[1200 + bound + 1 :].sum()
        assert late <= ref.anomaly[1200 + bound + 1 :].sum(), f"seed {seed}: {late} late alarms"
