"""Hostile contract tests for detection (issue #13, must-show 1 and the `auto` bullet).

Written from the issue text only, against the public API (``detect.make``, ``detect.Driver``,
``detect.threshold``): they state what a user must see, not how a detector gets there.

Noise conventions, so that a failure is the detector's fault and not a fair noise tail:

* Gaussian N(0, 1) noise legitimately crosses a 3-sigma alarm level a few times per thousand
  points. Tests on Gaussian noise therefore compare with the *same noise without the
  anomaly* (the "clean run") and only count alarms beyond what the clean run raises.
* Tests that demand "no alarm at all" (quantised signals, square waves, rhythms) use bounded
  noise (uniform, same standard deviation) or integers hovering within +-1 of a level, so no
  reading is ever more than about 1.8 of its own noise deviations from its level. Poisson
  counts are the exception: an alarm on a count whose tail probability is below 0.5 % is fair.

A lasting change may alarm for at most ``N = getattr(det, "adapts_within", 64)`` points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from edgeflow.ops import detect

DETECTORS = ["zscore", "ewma", "mad", "cusum", "seasonal", "auto"]
SEEDS = (0, 1, 2)
#: readings a model may spend learning before the quantised-signal test counts its alarms
WARMUP_GRACE = 300
#: a detection "within a few points" of a sudden change
FEW = 5


def make(name: str) -> detect.Detector:
    if name == "limits":
        return detect.make("limits", low=-3.0, high=3.0)
    return detect.make(name)


@dataclass(frozen=True)
class Scored:
    """What one key's Driver returned for a series (chunked runs concatenated)."""

    raw: np.ndarray
    score: np.ndarray
    anomaly: np.ndarray
    event: np.ndarray


def run(name: str, x: np.ndarray, chunk: int | None = None) -> Scored:
    """Score ``x`` on one key with the default decision, whole or in chunks of ``chunk``."""
    drv = detect.Driver(make(name), detect.threshold())
    state = drv.init()
    x = np.asarray(x, dtype=np.float64)
    step = len(x) if chunk is None else chunk
    parts = [drv.run(state, x[i : i + step]) for i in range(0, len(x), step)]
    return Scored(
        raw=np.concatenate([np.asarray(p.raw, dtype=np.float64) for p in parts]),
        score=np.concatenate([np.asarray(p.score, dtype=np.float64) for p in parts]),
        anomaly=np.concatenate([np.asarray(p.anomaly, dtype=bool) for p in parts]),
        event=np.concatenate([np.asarray(p.event, dtype=bool) for p in parts]),
    )


def bound(name: str) -> int:
    """The documented number of points a lasting change may alarm for."""
    return int(getattr(make(name), "adapts_within", 64))


def where(mask: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Indices in [lo, hi) where ``mask`` is set."""
    hi = len(mask) if hi is None else hi
    return lo + np.flatnonzero(np.asarray(mask, dtype=bool)[lo:hi])


def show(idx: np.ndarray, k: int = 6) -> str:
    head = ", ".join(str(int(i)) for i in idx[:k])
    return f"[{head}{', ...' if len(idx) > k else ''}]"


def check(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def rng_for(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, tag))])


def uniform_noise(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    """Bounded noise with standard deviation ``std`` (never beyond 1.74 std)."""
    half_width = std * np.sqrt(3.0)
    return rng.uniform(-half_width, half_width, n)


# --------------------------------------------------------------------------------------
# 1. Scores rank
# --------------------------------------------------------------------------------------


def spiky(seed: int, n: int = 3000) -> np.ndarray:
    """Unit noise with ~50 spikes from 0.5 sigma to 1e4 sigma, in random order and sign."""
    rng = rng_for(seed, "spiky")
    x = rng.normal(0.0, 1.0, n)
    at = np.arange(80, n - 10, 58)
    mags = np.logspace(np.log10(0.5), 4.0, len(at))
    rng.shuffle(mags)
    x[at] += mags * rng.choice([-1.0, 1.0], len(at))
    return x


@pytest.mark.parametrize("name", [*DETECTORS, "limits"])
def test_scores_rank_in_zero_one(name: str) -> None:
    """Scores lie in [0, 1), never 1.0, rise with raw, and never tie distinct raw values."""
    problems: list[str] = []
    for seed in SEEDS:
        out = run(name, spiky(seed))
        raw = np.asarray(out.raw, dtype=np.float64)
        score = np.asarray(out.score, dtype=np.float64)
        tag = f"{name} seed {seed}"
        bad = where(~np.isfinite(score) | (score < 0.0) | (score >= 1.0))
        ones = where(score == 1.0)
        if len(ones):
            problems.append(
                f"{tag}: {len(ones)} of {len(score)} scores are exactly 1.0 (README promises "
                f"[0, 1)), e.g. at {show(ones)} with raw {float(raw[ones[0]])!r}"
            )
        elif len(bad):
            problems.append(f"{tag}: {len(bad)} scores outside [0, 1) at {show(bad)}")
        ok = np.isfinite(raw) & np.isfinite(score)
        r, s = raw[ok], score[ok]
        order = np.lexsort((s, r))
        r, s = r[order], s[order]
        falls = np.flatnonzero(s[1:] < np.maximum.accumulate(s)[:-1])
        if len(falls):
            i = falls[0] + 1
            j = int(np.argmax(s[:i]))
            problems.append(
                f"{tag}: score falls while raw rises at {len(falls)} places, e.g. raw "
                f"{float(r[j])!r} scores {float(s[j])!r} but the larger raw {float(r[i])!r} "
                f"scores {float(s[i])!r}"
            )
        # distinct raw values (beyond 1e-9 relative, i.e. 9 printed digits) must not tie
        gap = np.diff(r) > 1e-9 * np.maximum(np.abs(r[1:]), 1e-300)
        ties = np.flatnonzero(gap & (s[1:] == s[:-1]))
        if len(ties):
            i = ties[-1]
            problems.append(
                f"{tag}: {len(ties)} pairs of distinct raw values share one score, e.g. raw "
                f"{float(r[i])!r} and {float(r[i + 1])!r} both score {float(s[i])!r}"
            )
        texts = [repr(float(v)) for v in s[1:][gap]]
        prev = [repr(float(v)) for v in s[:-1][gap]]
        printed = sum(a == b for a, b in zip(texts, prev, strict=True))
        if printed and not len(ties):
            problems.append(f"{tag}: {printed} distinct raw values print the same score")
    check(problems)


# --------------------------------------------------------------------------------------
# 2. Quantised signals
# --------------------------------------------------------------------------------------


def hovering_integer(rng: np.random.Generator, n: int, start: float = 50.0) -> np.ndarray:
    """CPU % hovering in whole steps: 49, 50 or 51, a fresh reading 45 % of the time, else the
    previous one (about 70 % of readings repeat). Bounded, so its own spread is clear: any
    alarm on it is the quantisation's fault, not a noise tail."""
    keep = rng.random(n) < 0.55
    x = start + rng.integers(-1, 2, n).astype(np.float64)
    for i in range(1, n):
        if keep[i]:
            x[i] = x[i - 1]
    return x


def repeated_poisson(rng: np.random.Generator, n: int, lam: float = 2.0) -> np.ndarray:
    """Counts near 0: a fresh Poisson(lam) draw 30 % of the time, else the previous count."""
    draws = rng.poisson(lam, n).astype(np.float64)
    keep = rng.random(n) < 0.7
    x = draws.copy()
    for i in range(1, n):
        if keep[i]:
            x[i] = x[i - 1]
    return x


def flat_then_moving(rng: np.random.Generator, n: int) -> np.ndarray:
    """Hovering integers, then 1,000 identical readings, then the same movement again."""
    x = hovering_integer(rng, n)
    x[600:1600] = x[599]
    return x


#: variant -> (series builder, length, anomaly start, lowest value a fair alarm may sit on)
QUANTISED: dict[str, tuple[Callable[[np.random.Generator, int], np.ndarray], int, int, float]] = {
    # +15 levels on readings that never leave 49..51: any earlier alarm is false
    "integer_percent": (hovering_integer, 3000, 2000, np.inf),
    # Poisson(2): a reading of 7 or more has tail probability < 0.5 %, an alarm there is fair
    "poisson_counts": (repeated_poisson, 3000, 2000, 7.0),
    "flat_1000_then_moving": (flat_then_moving, 3600, 2400, np.inf),
}


#: detectors that are a symmetric mean/std rule: held to a rate on skewed repeated counts
SYMMETRIC_3_SIGMA = ("zscore", "ewma", "mad", "cusum")
#: events per reading they may raise on the Poisson counts before its anomaly
POISSON_EVENT_RATE = 0.006


@pytest.mark.parametrize("variant", list(QUANTISED))
@pytest.mark.parametrize("name", DETECTORS)
def test_quantised_signal_quiet_until_its_anomaly(name: str, variant: str) -> None:
    """Values on a 1.0 grid with 70 % repeats: no alarm after warm-up until the labelled
    anomaly (+15 levels for 5 points), and at least one alarm inside it."""
    build, n, at, fair_from = QUANTISED[variant]
    problems: list[str] = []
    for seed in SEEDS:
        x = build(rng_for(seed, variant), n)
        x[at : at + 5] += 15.0
        out = run(name, x)
        tag = f"{name} seed {seed} ({variant})"
        early = where(out.anomaly & (x < fair_from), WARMUP_GRACE, at)
        if variant == "poisson_counts" and name in SYMMETRIC_3_SIGMA:
            # (lead, issue 13) Repeated Poisson(2) counts break both assumptions of a
            # symmetric mean/std rule: the counts are skewed (a 6 is a 1.2 % event, a
            # Gaussian 2.8 sigma is 0.25 %) and repeats make a window's std run low. These
            # classic detectors are held to a rate instead (today's code: 83 % of a count
            # series flagged), and README says to use `auto` or `seasonal` for counts.
            events = where(out.event & (x < fair_from), WARMUP_GRACE, at)
            if len(events) > POISSON_EVENT_RATE * (at - WARMUP_GRACE):
                problems.append(
                    f"{tag}: {len(events)} events on the counts before the anomaly at {at}, "
                    f"more than {POISSON_EVENT_RATE:.1%} of the readings, first at {show(events)}"
                )
            early = early[:0]
        if len(early):
            problems.append(
                f"{tag}: {len(early)} alarms on the quantised signal before its anomaly at "
                f"{at}, first at {show(early)}"
            )
        if not out.anomaly[at : at + 5].any():
            problems.append(
                f"{tag}: no alarm inside the anomaly [{at}, {at + 5}) (+15 levels); its best "
                f"score there is {float(np.max(out.score[at : at + 5])):.6f}"
            )
    check(problems)


# --------------------------------------------------------------------------------------
# 3. A lasting step is one event, then the new normal
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETECTORS)
def test_lasting_step_is_one_event_and_at_most_n_alarms(name: str) -> None:
    """A +8 sigma step at 800 of 1500: one event at 800..805, at most N alarms, none after
    800 + N beyond those the same noise raises without the step."""
    n, at = 1500, 800
    big_n = bound(name)
    problems: list[str] = []
    window = getattr(make(name), "window", None)
    if isinstance(window, int) and big_n > window:
        problems.append(f"{name}: adapts_within={big_n} is more than one window ({window})")
    for seed in SEEDS:
        clean = rng_for(seed, "step").normal(0.0, 1.0, n)
        x = clean.copy()
        x[at:] += 8.0
        out, ref = run(name, x), run(name, clean)
        tag = f"{name} seed {seed}"
        end = at + big_n + 1
        events = where(out.event, at, end)
        if len(events) != 1 or events[0] > at + FEW:
            problems.append(
                f"{tag}: a +8 sigma step at {at} raised {len(events)} events in "
                f"[{at}, {end}) at {show(events)}; expected exactly one by {at + FEW}"
            )
        late = len(where(out.anomaly, end))
        late_ref = len(where(ref.anomaly, end))
        if late > late_ref:
            problems.append(
                f"{tag}: {late} alarms after point {end - 1} ({at} + N={big_n}) on a lasting "
                f"+8 sigma step (first at {show(where(out.anomaly, end))}); the same noise "
                f"without the step raises {late_ref} there"
            )
        total = len(where(out.anomaly, at))
        if total > big_n + late_ref:
            problems.append(f"{tag}: {total} alarms from point {at} on; documented bound N={big_n}")
    check(problems)


# --------------------------------------------------------------------------------------
# 4. A square wave is learnt after one period
# --------------------------------------------------------------------------------------

#: half-periods each detector must learn. 8 and 30 for all. 108 only for detectors whose
#: memory spans a whole period: for ewma and cusum (memory of ~20-40 points) each switch
#: of a 108-point half-period is a lasting step, which may fairly raise an event.
SQUARE_FAIR = {
    "zscore": (8, 30, 108),
    "ewma": (8, 30),
    "mad": (8, 30, 108),
    "cusum": (8, 30),
    "seasonal": (8, 30, 108),
    "auto": (8, 30, 108),
}


def square_wave(seed: int, half: int, n: int = 2000) -> np.ndarray:
    """Two levels 10 sigma apart (0 and 10), bounded noise of 0.5 sigma, low half first."""
    levels = np.where((np.arange(n) // half) % 2 == 0, 0.0, 10.0)
    wave: np.ndarray = levels + uniform_noise(rng_for(seed, f"square{half}"), n, 0.5)
    return wave


@pytest.mark.parametrize(
    ("name", "half"), [(name, half) for name, halves in SQUARE_FAIR.items() for half in halves]
)
def test_square_wave_quiet_after_first_period(name: str, half: int) -> None:
    """Two levels 10 sigma apart, noise 0.5 sigma: no alarm once a full period has been seen."""
    problems: list[str] = []
    for seed in SEEDS:
        out = run(name, square_wave(seed, half))
        alarms = where(out.anomaly, 2 * half)
        if len(alarms):
            problems.append(
                f"{name} seed {seed}: {len(alarms)} alarms ({int(out.event[2 * half :].sum())} "
                f"events) on a steady square wave (half-period {half}) after its first period, "
                f"first at {show(alarms)}"
            )
    check(problems)


# --------------------------------------------------------------------------------------
# 5. Outliers in the warm-up do not poison the model
# --------------------------------------------------------------------------------------


def _unit_noise_pm20(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """N(0, 1) readings; +20 sigma at 3 and -20 sigma at 9."""
    clean = rng_for(seed, "warmup").normal(0.0, 1.0, n)
    x = clean.copy()
    x[3] += 20.0
    x[9] -= 20.0
    return x, clean


def _sensor_dropouts(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A temperature-like sensor (20 +- 2 slowly, noise 0.3) that reads 0 twice at power-on."""
    t = np.arange(n)
    clean = 20.0 + 2.0 * np.sin(t / 80.0) + rng_for(seed, "sensor").normal(0.0, 0.3, n)
    x = clean.copy()
    x[[3, 9]] = 0.0
    return x, clean


#: variant -> (contaminated series and its clean twin, noise standard deviation)
WARMUP: dict[str, tuple[Callable[[int, int], tuple[np.ndarray, np.ndarray]], float]] = {
    "unit_noise_pm20sigma": (_unit_noise_pm20, 1.0),
    "sensor_reads_0_twice": (_sensor_dropouts, 0.3),
}


@pytest.mark.parametrize("variant", list(WARMUP))
@pytest.mark.parametrize("name", DETECTORS)
def test_warmup_outliers_do_not_poison_the_model(name: str, variant: str) -> None:
    """Two outliers among the first 13 readings (at 3 and 9), then 2,000 normal readings and
    one +6 sigma spike at 150: no alarm after index 13 beyond those the same readings raise
    without the two outliers, and the spike is not missed if the clean run catches it."""
    build, sigma = WARMUP[variant]
    n, spike = 2013, 150
    problems: list[str] = []
    for seed in SEEDS:
        x, clean = build(seed, n)
        x[spike] += 6.0 * sigma
        clean[spike] += 6.0 * sigma
        out, ref = run(name, x), run(name, clean)
        tag = f"{name} seed {seed} ({variant})"
        after = where(out.anomaly & (np.arange(n) != spike), 13)
        after_ref = where(ref.anomaly & (np.arange(n) != spike), 13)
        # (lead, issue 13) a detector that already alarms on the clean readings (a drifting
        # sine) may alarm once more or once less with a slightly different first fit; the
        # issue's failure was dozens of alarms in a row
        slack = 1 if len(after_ref) else 0
        if len(after) > len(after_ref) + slack:
            problems.append(
                f"{tag}: two warm-up outliers (at 3 and 9) are followed by {len(after)} alarms "
                f"on normal readings, first at {show(after)}; the same readings without them "
                f"raise {len(after_ref)}"
            )
        if ref.anomaly[spike] and not out.anomaly[spike]:
            problems.append(
                f"{tag}: a +6 sigma spike at {spike} is missed (score "
                f"{float(out.score[spike]):.6f}) because of the warm-up outliers; without them "
                f"it scores {float(ref.score[spike]):.6f} and alarms"
            )
    check(problems)


@pytest.mark.parametrize("name", DETECTORS)
def test_plain_unit_noise_rarely_alarms(name: str) -> None:
    """On N(0, 1) noise the 0.999 level is a classic alarm level (3 sigma: 0.27 % of points):
    at most 0.6 % of 3,000 readings alarm. Guards the clean runs that the step, warm-up and
    `auto` tests compare with (a detector that alarms everywhere would pass those)."""
    n = 3000
    problems: list[str] = []
    for seed in SEEDS:
        out = run(name, rng_for(seed, "plain").normal(0.0, 1.0, n))
        alarms = where(out.anomaly)
        if len(alarms) > 0.006 * n:
            problems.append(
                f"{name} seed {seed}: {len(alarms)} alarms on {n} readings of plain unit noise "
                f"(first at {show(alarms)})"
            )
    check(problems)


# --------------------------------------------------------------------------------------
# 6. `auto` as a real default
# --------------------------------------------------------------------------------------

PERIOD = 288


def _noise(seed: int, tag: str, n: int) -> np.ndarray:
    return rng_for(seed, tag).normal(0.0, 1.0, n)


def _spike(seed: int) -> tuple[np.ndarray, np.ndarray]:
    clean = _noise(seed, "spike", 2000)
    x = clean.copy()
    x[1200] += 10.0
    return x, clean


def _dip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    clean = _noise(seed, "dip", 2000)
    x = clean.copy()
    x[1200] -= 10.0
    return x, clean


def _shift(seed: int) -> tuple[np.ndarray, np.ndarray]:
    clean = _noise(seed, "shift", 2000)
    x = clean.copy()
    x[1200:] += 8.0
    return x, clean


def _variance(seed: int) -> tuple[np.ndarray, np.ndarray]:
    clean = _noise(seed, "variance", 2000)
    x = clean.copy()
    x[1200:] *= 4.0
    return x, clean


def _broken_daily(seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = 10 * PERIOD
    noise = _noise(seed, "daily", n)
    rhythm = 5.0 * np.sin(2 * np.pi * np.arange(n) / PERIOD)
    x = rhythm + noise
    x[6 * PERIOD : 7 * PERIOD] = noise[6 * PERIOD : 7 * PERIOD]
    return x, rhythm + noise


#: scenario -> (series and its clean twin, start of the anomaly, points allowed to find it)
AUTO_EVENTS: dict[str, tuple[Callable[[int], tuple[np.ndarray, np.ndarray]], int, int]] = {
    "spike": (_spike, 1200, 2),
    "dip": (_dip, 1200, 2),
    "lasting_shift": (_shift, 1200, FEW),
    # (lead, issue 13) a variance change shows only through several readings: on seed 0 the
    # first 17 readings after it have 2.4x, not 4x, the noise (first-difference std) and none
    # beyond 5.2 sigma; 24 readings is still "near its start" for a 4x change
    "variance_x4": (_variance, 1200, 24),
    "broken_daily_pattern": (_broken_daily, 6 * PERIOD, PERIOD),
}


@pytest.mark.parametrize("scenario", list(AUTO_EVENTS))
def test_auto_raises_one_event_near_the_start(scenario: str) -> None:
    """Each anomaly, after a clean warm-up of several periods, raises exactly one event within
    a few points of its start (a broken pattern: within one period), and no later event beyond
    those the clean twin raises."""
    build, at, within = AUTO_EVENTS[scenario]
    problems: list[str] = []
    for seed in SEEDS:
        x, clean = build(seed)
        out, ref = run("auto", x), run("auto", clean)
        tag = f"auto seed {seed} ({scenario} at {at})"
        near = where(out.event, at, at + within + 1)
        if len(near) != 1:
            problems.append(
                f"{tag}: {len(near)} events in [{at}, {at + within}] at {show(near)}; "
                f"expected exactly one (max score there "
                f"{float(np.max(out.score[at : at + within + 1])):.6f})"
            )
        later = where(out.event, at + within + 1)
        later_ref = where(ref.event, at + within + 1)
        if len(later) > len(later_ref):
            problems.append(
                f"{tag}: {len(later)} more events after {at + within} at {show(later)} "
                f"({int(out.anomaly[at + within + 1 :].sum())} alarms); the clean series "
                f"raises {len(later_ref)} there"
            )
    check(problems)


def _steady_square(seed: int) -> np.ndarray:
    return square_wave(seed, 54, 2000)


def _daily_rhythm(seed: int) -> np.ndarray:
    n = 10 * PERIOD
    rhythm = 10.0 * np.sin(2 * np.pi * np.arange(n) / PERIOD)
    day: np.ndarray = rhythm + uniform_noise(rng_for(seed, "rhythm"), n, 1.0)
    return day


@pytest.mark.parametrize(
    ("scenario", "build", "period"),
    [("square_wave_half_54", _steady_square, 108), ("daily_rhythm_288", _daily_rhythm, PERIOD)],
)
def test_auto_quiet_on_steady_rhythm(
    scenario: str, build: Callable[[int], np.ndarray], period: int
) -> None:
    """A steady square wave and a daily rhythm raise no event after their first period."""
    problems: list[str] = []
    for seed in SEEDS:
        out = run("auto", build(seed))
        events = where(out.event, period)
        if len(events):
            problems.append(
                f"auto seed {seed}: {len(events)} events on a steady {scenario} after its first "
                f"period ({int(out.anomaly[period:].sum())} alarms), first at {show(events)}"
            )
    check(problems)


# --------------------------------------------------------------------------------------
# 7. Batching does not change results
# --------------------------------------------------------------------------------------


def mixed(seed: int, n: int = 2000) -> np.ndarray:
    """Spikes, a quantised stretch with a flat run, and a lasting step in one series."""
    x = spiky(seed, n)
    x[700:1300] = hovering_integer(rng_for(seed, "mixed"), 600, start=0.0)
    x[900:1000] = x[899]
    x[1500:] += 8.0
    return x


@pytest.mark.parametrize("name", DETECTORS)
def test_batching_gives_same_results(name: str) -> None:
    """Chunks of 1, 7 and 100 give the same alarms and events as the whole series, and scores
    equal up to floating-point rounding (README: scores do not depend on batching)."""
    problems: list[str] = []
    for seed in SEEDS:
        x = mixed(seed)
        whole = run(name, x)
        for chunk in (1, 7, 100):
            part = run(name, x, chunk)
            tag = f"{name} seed {seed}: chunks of {chunk} vs whole"
            diff = where(part.event != whole.event)
            if len(diff):
                problems.append(f"{tag}: events differ at {len(diff)} points {show(diff)}")
            diff = where(part.anomaly != whole.anomaly)
            if len(diff):
                problems.append(f"{tag}: alarms differ at {len(diff)} points {show(diff)}")
            close = np.isclose(part.score, whole.score, rtol=1e-7, atol=1e-9, equal_nan=True)
            if not close.all():
                i = int(np.flatnonzero(~close)[0])
                problems.append(
                    f"{tag}: {int((~close).sum())} scores differ, first at {i}: "
                    f"{float(part.score[i])!r} vs {float(whole.score[i])!r}"
                )
    check(problems)
