"""Evaluate detectors on a seeded corpus of realistic monitoring series, scored as an operator would.

**Corpus** (:func:`generate`): each :class:`Series` has a sampling interval (10 s, 1 min or
5 min), int64 ns UTC timestamps and float readings, in the shapes real monitoring data takes
(:data:`SHAPES`):

* ``counts``: Poisson counts per 5 min with a daily and weekly rhythm (integers, many repeats;
  every other count series has a low rate of 0.05-1.5, mostly 0s and 1s);
* ``cpu_percent``: CPU % in fixed steps of 1 or 5 points, daily and weekly rhythm, clipped to 0-100;
* ``slow_sensor``: a sensor that reports a new reading only every 6-30 samples, on a 0.1 or
  0.5 grid, exactly constant for its first 10-30 % and then moving (long flat stretches);
* ``square_wave``: on/off cycles (a compressor, a pump) with duty cycles 0.1-0.9;
* ``daily_weekly``: load with a daily peak, quieter weekends, and holidays;
* ``random_walk``, ``drift`` (a slow linear drift, white or red noise), ``heavy_tailed``
  (Student-t noise, df 3-5).

About 30 % of the series have a missing stretch (a gap in time: 30-300 readings absent) and
about 15 % a clock reset (readings continue, timestamps go back 1-26 h). Exactly
``round(0.45 * n_series)`` series are labelled, a third of them with two windows; the rest (55 %)
have no anomaly at all, as real monitoring data mostly has none. Labelled kinds (:data:`KINDS`),
each only on shapes where an operator would call it an anomaly:

* ``spike`` / ``dip``: 1-3 readings beyond the normal range (6-12 noise scales, and beyond the
  largest normal noise of a heavy-tailed series, beyond the whole swing of a square wave); a dip
  of a count series is an outage (5-15 zero counts); window = the anomaly + 9 readings;
* ``level_shift``: a lasting change of level (labelled at the shift; after it the new level is
  normal); window = 60 readings;
* ``variance``: the noise grows 3-6x (CPU %: to at least two steps) for 200-600 readings;
  window = that stretch;
* ``pattern``: a broken daily pattern: one night (22:00-06:00 UTC) carries the daytime load of
  the next working day; window = that night;
* ``flatline``: a stuck sensor repeating its last reading for 60-300 readings (3+ cycles of a
  square wave); window = that stretch.

**Holidays are normal**: a weekday of a weekly series may look like a Sunday (its peak missing);
it is not labelled, and an event on it is a false alarm (``Series.holidays`` lists them).
Windows and their grace never touch a gap or a clock reset, and start after at least a fifth
of the series (at least 400 readings; 3 days for a broken pattern) so detectors have warmed up.

**Events.** A detector's events are the Driver's ``event`` output (one per episode), not
every anomalous reading. Readings that are not finite are skipped, as in a flow.

**Scoring** (windowed, in the spirit of the NAB benchmark). Per window ``[start, end)``, the
first event inside it detects it, at relative position ``p = (i - start) / (end - start)``;
events after the first, and events in the grace period after the window
(``max(20, min(100, length // 2))`` readings), count neither way; any other event is a
false alarm. Each profile (:data:`PROFILES`) has three weights:

=========  ==============================  =====================  ======================
profile    detected window earns            missed window costs    each false alarm costs
=========  ==============================  =====================  ======================
standard   ``1.0 * (1 - p / 2)``            1.0                    0.11
low_fp     ``0.5 * (1 - p / 2)``            0.2                    0.22
=========  ==============================  =====================  ======================

so detecting early earns up to twice as much as detecting at the window's end, and in
``low_fp`` a false alarm costs more than a missed window (three false alarms cost about as much as
a window detected at its start is worth). The corpus total is normalised per profile:
``score = 100 * (raw - never) / (perfect - never)`` with ``never = -fn * windows`` (never
alarm: score 0) and ``perfect = tp * windows`` (every window detected at its first reading,
no false alarm: 100). One false alarm therefore costs ``100 * fp / ((tp + fn) * windows)``
points: ``5.5 / windows`` in ``standard`` and ``31.43 / windows`` in ``low_fp``. Scores can
be negative (worse than never alarming).

Also reported: false alarms per series per day (false alarms / series-days, where a series
covers the sum of its forward timestamp steps: a gap counts, a clock reset adds nothing),
recall, and the median detection delay from window start, in readings and in time.
No detector default was tuned on public anomaly benchmarks; they stay an independent check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgeflow.batch import F64, I64

if TYPE_CHECKING:
    from edgeflow.ops.detect import Driver

SHAPES = (
    "counts",
    "cpu_percent",
    "slow_sensor",
    "square_wave",
    "daily_weekly",
    "random_walk",
    "drift",
    "heavy_tailed",
)
KINDS = ("spike", "dip", "level_shift", "variance", "pattern", "flatline")
SECOND_NS = 1_000_000_000
HOUR_NS = 3600 * SECOND_NS
DAY_NS = 24 * HOUR_NS
EPOCH_NS = 1_767_571_200 * SECOND_NS  # 2026-01-05T00:00:00Z, a Monday
LABELLED_SHARE = 0.45
OTHER_KINDS = ("spike", "dip", "level_shift", "variance", "flatline")  # shapes without a rhythm


@dataclass(frozen=True)
class Profile:
    """Weights of one scoring profile (see the module docstring)."""

    name: str
    tp: float  # earned by a window detected at its first reading (half of it at its end)
    fn: float  # cost of a missed window
    fp: float  # cost of each false alarm


PROFILES = (Profile("standard", 1.0, 1.0, 0.11), Profile("low_fp", 0.5, 0.2, 0.22))


@dataclass(frozen=True)
class Window:
    """A labelled anomaly: readings ``[start, end)`` by index in the series."""

    start: int
    end: int
    kind: str

    @property
    def grace(self) -> int:
        """Readings after ``end`` where an event is neither a detection nor a false alarm."""
        return max(20, min(100, (self.end - self.start) // 2))


@dataclass
class Series:
    name: str
    shape: str
    interval_ns: int
    t: I64  # int64 ns UTC, as the clock reported them (gaps and resets included)
    x: F64
    windows: list[Window] = field(default_factory=list)
    holidays: list[tuple[int, int]] = field(default_factory=list)  # [start, end) readings
    gaps: list[int] = field(default_factory=list)  # i: t[i] - t[i - 1] is a missing stretch
    resets: list[int] = field(default_factory=list)  # i: t[i] < t[i - 1] (a clock reset)


def series_days(t: I64) -> float:
    """Days a series covers: the sum of its forward timestamp steps (a gap in the data
    counts, as the operator is on duty through it; a clock reset going back adds nothing)."""
    if len(t) < 2:
        return 0.0
    steps = np.diff(np.asarray(t, np.int64))
    return float(steps[steps > 0].sum()) / DAY_NS


# -- the corpus --------------------------------------------------------------------------------
@dataclass
class _Base:
    level: F64  # expected value per reading
    noise: F64  # additive noise (steps of the walk when ``integrate``)
    scale: float  # typical size of the noise: anomalies are sized in these
    observe: Callable[[F64], F64]  # continuous value -> reading (quantise, hold, Poisson)
    quantise: Callable[[F64], F64]  # re-applied after spikes, dips
    kinds: tuple[str, ...]
    integrate: bool = False
    extra: float = 0.0  # added to spike / dip sizes (a square wave's swing)
    rhythm: Callable[[I64], F64] | None = None  # daily/weekly component by true time
    cycle: int = 0  # a square wave's period in readings


def _grid(res: float, low: float = -math.inf, high: float = math.inf) -> Callable[[F64], F64]:
    def q(v: F64) -> F64:
        out: F64 = np.clip(np.round(v / res) * res, low, high)
        return out

    return q


def _red(rng: np.random.Generator, n: int, sigma: float) -> F64:
    """AR(1) noise with coefficient 0.8 and stationary standard deviation ``sigma``."""
    from scipy.signal import lfilter

    e = rng.normal(0, sigma * math.sqrt(1 - 0.8**2), n)
    out: F64 = np.asarray(lfilter([1.0], [1.0, -0.8], e), np.float64)
    return out


def _rhythm(rng: np.random.Generator, amp: float, holidays: I64) -> Callable[[I64], F64]:
    """A daily peak (11-15 h UTC) that is ``weekend`` times as high on weekends and holidays."""
    peak, width, weekend = rng.uniform(11, 15), rng.uniform(2.0, 3.5), rng.uniform(0.2, 0.6)

    def at(tt: I64) -> F64:
        rel = tt - EPOCH_NS
        day = rel // DAY_NS
        d = np.abs((rel % DAY_NS) / HOUR_NS - peak)
        prof = np.exp(-0.5 * (np.minimum(d, 24 - d) / width) ** 2)
        off = (day % 7 >= 5) | np.isin(day, holidays)
        out: F64 = amp * prof * np.where(off, weekend, 1.0)
        return out

    return at


def _base(
    rng: np.random.Generator, shape: str, tt: I64, holidays: I64, interval_ns: int, variant: int
) -> _Base:
    n = len(tt)
    if shape == "counts":
        # every other count series has a low rate (mostly 0s and 1s), the rest 3-30 per reading
        low, high = (0.05, 1.5) if variant % 2 == 0 else (3.0, 30.0)
        base = math.exp(rng.uniform(math.log(low), math.log(high)))
        amp = base * rng.uniform(0.5, 3.0)
        rhythm = _rhythm(rng, amp, holidays)
        level = base + rhythm(tt)
        kinds = ["spike"]
        if base >= 3:
            kinds.append("level_shift")
        if amp >= 6 * math.sqrt(base) + 2 and n * interval_ns >= 4 * DAY_NS:
            kinds.append("pattern")
        if base >= 8:
            kinds.append("dip")
        if base >= 15:
            kinds.append("flatline")

        def poisson(v: F64) -> F64:
            return rng.poisson(np.maximum(v, 0.0)).astype(np.float64)

        return _Base(
            level,
            np.zeros(n),
            math.sqrt(base + amp),
            poisson,
            _grid(1.0, 0.0),
            tuple(kinds),
            rhythm=rhythm,
        )
    if shape in ("cpu_percent", "daily_weekly"):
        cpu = shape == "cpu_percent"
        sigma = rng.uniform(0.5, 4.0) if cpu else rng.uniform(1.0, 10.0)
        base = rng.uniform(5, 35) if cpu else rng.uniform(20, 200)
        amp = rng.uniform(10, 45) if cpu else sigma * rng.uniform(5, 15)
        rhythm = _rhythm(rng, amp, holidays)
        noise = rng.normal(0, sigma, n) if rng.random() < 0.6 else _red(rng, n, sigma)
        res = float(rng.choice([1.0, 5.0])) if cpu else 0.01
        quant = _grid(res, 0.0, 100.0) if cpu else _grid(res)
        kinds = ["spike", "dip", "level_shift", "variance"]
        if n * interval_ns >= 4 * DAY_NS:
            kinds.append("pattern")
        if not cpu or sigma >= res:
            kinds.append("flatline")
        scale = max(sigma, res)  # a spike of CPU % in steps of 5 is at least 30 points
        return _Base(base + rhythm(tt), noise, scale, quant, quant, tuple(kinds), rhythm=rhythm)
    if shape == "slow_sensor":
        res = float(rng.choice([0.1, 0.5]))
        hold = int(rng.integers(6, 31))
        flat = int(n * rng.uniform(0.1, 0.3))
        amp = res * rng.uniform(5, 20)
        arg = 2 * np.pi * np.maximum(np.arange(n) - flat, 0) / (n * rng.uniform(0.5, 1.0))
        level = rng.uniform(15, 40) + amp * np.sin(arg)
        noise = rng.normal(0, 0.3 * res, n)
        noise[:flat] = 0.0
        quant = _grid(res)

        def held(v: F64) -> F64:
            q = quant(v)
            out: F64 = q[(np.arange(n) // hold) * hold]
            return out

        return _Base(level, noise, res, held, quant, ("spike", "dip", "level_shift"))
    if shape == "square_wave":
        lo = rng.uniform(0, 20)
        swing = rng.uniform(5, 50)
        period = int(rng.integers(20, 300))
        duty = rng.uniform(0.1, 0.9)
        phase = (np.arange(n) + rng.integers(period)) % period
        level = np.asarray(lo + swing * (phase < duty * period), np.float64)
        sigma = swing * rng.uniform(0.02, 0.1)
        quant = _grid(0.01)
        noise = rng.normal(0, sigma, n)
        return _Base(level, noise, sigma, quant, quant, OTHER_KINDS, extra=swing, cycle=period)
    if shape == "random_walk":
        step = rng.uniform(0.05, 1.0)
        quant = _grid(0.01)
        return _Base(
            np.full(n, rng.uniform(-50, 50)),
            rng.normal(0, step, n),
            3 * step,  # a walk wanders: its spikes and shifts are 18-36 and 15-30 steps
            quant,
            quant,
            OTHER_KINDS,
            integrate=True,
        )
    if shape == "drift":
        sigma = rng.uniform(0.1, 2.0)
        total = sigma * rng.uniform(3, 10) * rng.choice([-1, 1])
        level = rng.uniform(-20, 80) + total * np.arange(n) / n
        noise = rng.normal(0, sigma, n) if rng.random() < 0.5 else _red(rng, n, sigma)
        quant = _grid(0.001)
        return _Base(level, noise, sigma, quant, quant, OTHER_KINDS)
    if shape == "heavy_tailed":
        sigma = rng.uniform(0.2, 3.0)
        noise = sigma * rng.standard_t(rng.uniform(3.0, 5.0), n)
        quant = _grid(0.001)
        return _Base(np.full(n, rng.uniform(-10, 100)), noise, sigma, quant, quant, OTHER_KINDS)
    raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def _duration(
    rng: np.random.Generator, kind: str, shape: str, b: _Base, interval_ns: int
) -> tuple[int, int]:
    """(readings the anomaly lasts, readings its window lasts)."""
    if kind in ("spike", "dip"):
        d = int(rng.integers(5, 16)) if (kind, shape) == ("dip", "counts") else 0
        d = d or int(rng.integers(1, 4))
        return d, d + 9
    if kind == "level_shift":
        return 0, 60
    if kind == "variance":
        d = int(rng.integers(200, 601))
        return d, d
    if kind == "pattern":
        d = int(8 * HOUR_NS // interval_ns)
        return d, d
    d = max(int(rng.integers(60, 301)), 3 * b.cycle)  # a square wave: stuck for 3+ cycles
    return d, d


def _place(
    rng: np.random.Generator,
    kind: str,
    length: int,
    tt: I64,
    taken: list[tuple[int, int]],
    earliest: int,
) -> int | None:
    """A start index whose window and grace (plus margins) avoid every ``taken`` stretch."""
    n = len(tt)
    grace = max(20, min(100, length // 2))
    if kind == "pattern":
        rel = tt - EPOCH_NS
        day = rel // DAY_NS
        nxt = day + 1
        cand = np.flatnonzero((rel % DAY_NS == 22 * HOUR_NS) & (nxt % 7 < 5))
    else:
        cand = np.arange(earliest, n)
    tail = 600 if kind == "level_shift" else 50
    cand = cand[(cand >= earliest) & (cand + length + grace + tail < n)]
    for _ in range(200):
        if not len(cand):
            return None
        s = int(rng.choice(cand))
        lo, hi = s - 100, s + length + grace + 100
        if all(hi <= a or lo >= b for a, b in taken):
            return s
    return None


def _series(
    rng: np.random.Generator, i: int, n: int, kinds_wanted: int, used: dict[str, int]
) -> Series:
    shape = SHAPES[i % len(SHAPES)]
    interval_s = {
        "counts": [300],
        "cpu_percent": [60, 300],
        "slow_sensor": [10],
        "square_wave": [10, 60],
        "daily_weekly": [300],
        "random_walk": [60],
        "drift": [60],
        "heavy_tailed": [10],
    }[shape]
    interval = int(rng.choice(interval_s)) * SECOND_NS
    gap_len = int(rng.integers(30, 301)) if (rng.random() < 0.3 or i == 1) else 0
    m = n + gap_len  # readings on the true time grid, the gap's included
    t0 = EPOCH_NS + int(rng.integers(0, 7)) * DAY_NS + int(rng.integers(0, 24)) * HOUR_NS
    tt: I64 = t0 + np.arange(m, dtype=np.int64) * interval
    days = np.unique((tt - EPOCH_NS) // DAY_NS)
    weekdays = days[(days % 7 < 5) & (days > days[0] + 2) & (days < days[-1])]
    holidays: I64 = np.asarray(
        rng.choice(weekdays, 1) if len(weekdays) >= 5 and rng.random() < 0.7 else [],
        np.int64,
    )
    b = _base(rng, shape, tt, holidays, interval, i // len(SHAPES))
    earliest = max(400, m // 5)
    taken: list[tuple[int, int]] = []
    # holidays are normal, but a broken night must not sit next to one
    for h in holidays.tolist():
        at = np.flatnonzero((tt - EPOCH_NS) // DAY_NS == h)
        taken.append((int(at[0]) - 6 * int(HOUR_NS // interval), int(at[-1]) + 1))
    g0 = 0
    if gap_len:
        g0 = int(rng.integers(m // 10, m - m // 10 - gap_len))
        taken.append((g0 - 50, g0 + gap_len + 50))
    reset = 0
    if rng.random() < 0.15 or i == 2:
        reset = int(rng.integers(m // 10, m - m // 10))
        while any(a <= reset < c for a, c in taken):
            reset = int(rng.integers(m // 10, m - m // 10))
        taken.append((reset - 50, reset + 50))
    planned: list[tuple[int, int, int, str]] = []  # start, lasts, window, kind
    for _ in range(kinds_wanted):
        order = sorted(b.kinds, key=lambda k: (used[k], rng.random()))
        for kind in order:
            if any(k == kind for *_, k in planned):
                continue
            lasts, length = _duration(rng, kind, shape, b, interval)
            earliest_k = (
                max(earliest, int(3 * DAY_NS // interval)) if kind == "pattern" else earliest
            )
            s = _place(rng, kind, length, tt, taken, earliest_k)
            if s is None:
                continue
            taken.append((s - 100, s + length + max(20, min(100, length // 2)) + 100))
            planned.append((s, lasts, length, kind))
            used[kind] += 1
            break
    noise = b.noise.copy()
    level = b.level.copy()
    for s, lasts, _, kind in planned:  # changes of the process itself
        if kind == "level_shift":
            if shape == "counts":  # the rate grows 2.5-4x or falls to 0.2-0.35x
                up = rng.random() < 0.7
                level[s:] *= rng.uniform(2.5, 4.0) if up else rng.uniform(0.2, 0.35)
                continue
            delta = rng.uniform(5, 10) * b.scale + rng.uniform(0.4, 0.8) * b.extra
            level[s:] += delta * float(rng.choice([-1, 1]))
        elif kind == "variance":
            grow = rng.uniform(3, 6)
            if shape == "cpu_percent":  # visible through steps of 5: at least 2 steps of noise
                grow = max(grow, 2 * b.scale / max(float(noise[s : s + lasts].std()), 1e-9))
            noise[s : s + lasts] *= grow
        elif kind == "pattern" and b.rhythm is not None:
            seg = tt[s : s + lasts]
            level[s : s + lasts] += b.rhythm(seg + 12 * HOUR_NS) - b.rhythm(seg)
    x = b.observe(level + (np.cumsum(noise) if b.integrate else noise))
    big = float(np.abs(b.noise).max()) if len(b.noise) else 0.0
    for s, lasts, _, kind in planned:  # faults of the reading
        if kind in ("spike", "dip"):
            if kind == "dip" and shape == "counts":
                x[s : s + lasts] = 0.0
                continue
            size = max(rng.uniform(6, 12) * b.scale, rng.uniform(1.2, 1.6) * big) + b.extra
            size = max(size, 5.0) if shape == "counts" else size  # a burst of 5+ counts
            sign = 1.0 if kind == "spike" else -1.0
            x[s : s + lasts] = b.quantise(x[s : s + lasts] + sign * size)
        elif kind == "flatline":
            x[s : s + lasts] = x[s - 1]
    t = tt.copy()
    if reset:
        t[reset:] -= int(rng.integers(1, 27)) * HOUR_NS
    keep = np.ones(m, bool)
    keep[g0 : g0 + gap_len] = False
    at = np.cumsum(keep) - 1  # index of each grid reading once the gap is dropped
    windows = sorted(
        (Window(int(at[s]), int(at[s + length - 1]) + 1, kind) for s, _, length, kind in planned),
        key=lambda w: w.start,
    )
    hol = [
        (int(at[np.flatnonzero(d)[0]]), int(at[np.flatnonzero(d)[-1]]) + 1)
        for d in ((tt - EPOCH_NS) // DAY_NS == h for h in holidays.tolist())
        if d.any()
    ]
    return Series(
        name=f"{shape}-{i:02d}",
        shape=shape,
        interval_ns=interval,
        t=t[keep],
        x=np.asarray(x[keep], np.float64),
        windows=[w for w in windows if w.end > w.start],
        holidays=hol,
        gaps=[int(at[g0 + gap_len])] if gap_len else [],
        resets=[int(at[reset])] if reset else [],
    )


def generate(
    seed: int = 7, n_series: int = 80, min_points: int = 2000, max_points: int = 10_000
) -> list[Series]:
    """A deterministic corpus (same seed and sizes, same series) of ``n_series`` series of
    ``min_points``-``max_points`` readings; series ``i`` has shape ``SHAPES[i % 8]``. Kinds
    are spread so that each appears as evenly as the shapes allow."""
    rng = np.random.default_rng(seed)
    labelled = set(rng.permutation(n_series)[: round(LABELLED_SHARE * n_series)].tolist())
    two = {i for i in sorted(labelled) if rng.random() < 1 / 3}
    used = dict.fromkeys(KINDS, 0)
    out = []
    for i in range(n_series):
        n = int(rng.integers(min_points, max_points + 1))
        wanted = (2 if i in two else 1) if i in labelled else 0
        out.append(_series(rng, i, n, wanted, used))
    return out


# -- scoring -----------------------------------------------------------------------------------
@dataclass
class SeriesOutcome:
    """How one series' events fall: per window the first event inside it (or None)."""

    first: list[int | None]
    false_alarms: int
    events: int


def match(events: np.ndarray, windows: Sequence[Window]) -> SeriesOutcome:
    """Match event indices to windows: the first event in a window detects it; events in a
    window (after the first) or in its grace period are ignored; the rest are false alarms."""
    ev = np.sort(np.asarray(events, np.int64))
    covered = np.zeros(len(ev), bool)
    first: list[int | None] = []
    for w in windows:
        inside = ev[(ev >= w.start) & (ev < w.end)]
        first.append(int(inside[0]) if len(inside) else None)
        covered |= (ev >= w.start) & (ev < w.end + w.grace)
    return SeriesOutcome(first, int((~covered).sum()), len(ev))


def normalised(outcomes: Sequence[tuple[SeriesOutcome, Sequence[Window]]], p: Profile) -> float:
    """100 * (raw - never) / (perfect - never): never alarming = 0, perfect = 100, where raw
    sums ``tp * (1 - p / 2)`` per detected window, ``-fn`` per missed one and ``-fp`` per
    false alarm. Computed as the gain over never alarming (a detected window gains
    ``tp * (1 - p / 2) + fn``), so never alarming is exactly 0.0."""
    gain, windows = 0.0, 0
    for out, ws in outcomes:
        windows += len(ws)
        for w, i in zip(ws, out.first, strict=True):
            if i is not None:
                gain += p.tp * (1.0 - 0.5 * (i - w.start) / (w.end - w.start)) + p.fn
        gain -= p.fp * out.false_alarms
    return 100.0 * gain / ((p.tp + p.fn) * max(windows, 1)) + 0.0  # + 0.0: never -0.0


@dataclass
class Result:
    name: str
    scores: dict[str, float]  # profile name -> normalised score
    windows: int
    detected: int
    false_alarms: int
    events: int
    series: int
    days: float  # series-days covered
    delays: list[int]  # readings from window start to the detecting event
    delays_ns: list[int]
    per_kind: dict[str, tuple[int, int]]  # kind -> (detected, windows)
    per_shape: dict[str, tuple[int, float]] = field(default_factory=dict)  # false alarms, days

    @property
    def recall(self) -> float:
        return self.detected / self.windows if self.windows else float("nan")

    @property
    def fa_per_day(self) -> float:
        """False alarms per series per day."""
        return self.false_alarms / self.days if self.days else float("nan")

    @property
    def delay(self) -> float:
        return float(np.median(self.delays)) if self.delays else float("nan")

    @property
    def delay_s(self) -> float:
        return float(np.median(self.delays_ns)) / SECOND_NS if self.delays_ns else float("nan")


def evaluate_events(name: str, events: Sequence[np.ndarray], corpus: Sequence[Series]) -> Result:
    """Score given event indices (one array per series of ``corpus``)."""
    outcomes = [(match(e, s.windows), s.windows) for e, s in zip(events, corpus, strict=True)]
    delays, delays_ns = [], []
    per_kind = {k: [0, 0] for k in KINDS}
    per_shape: dict[str, tuple[int, float]] = {}
    for (out, _), s in zip(outcomes, corpus, strict=True):
        fa, days = per_shape.get(s.shape, (0, 0.0))
        per_shape[s.shape] = (fa + out.false_alarms, days + series_days(s.t))
    for (out, windows), s in zip(outcomes, corpus, strict=True):
        for w, i in zip(windows, out.first, strict=True):
            per_kind[w.kind][1] += 1
            if i is not None:
                per_kind[w.kind][0] += 1
                delays.append(i - w.start)
                delays_ns.append(int(s.t[i] - s.t[w.start]))
    return Result(
        name,
        {p.name: normalised(outcomes, p) for p in PROFILES},
        windows=sum(len(s.windows) for s in corpus),
        detected=len(delays),
        false_alarms=sum(o.false_alarms for o, _ in outcomes),
        events=sum(o.events for o, _ in outcomes),
        series=len(corpus),
        days=sum(series_days(s.t) for s in corpus),
        delays=delays,
        delays_ns=delays_ns,
        per_kind={k: (v[0], v[1]) for k, v in per_kind.items()},
        per_shape=per_shape,
    )


def detections(driver: Driver, x: F64) -> np.ndarray:
    """Indices (in x) of the driver's events; readings that are not finite are skipped."""
    ok = np.flatnonzero(np.isfinite(x))
    out = driver.run(driver.init(), x[ok])
    found: np.ndarray = ok[out.event]
    return found


def run(make: Callable[[], Driver], corpus: Sequence[Series]) -> list[np.ndarray]:
    """Each series' event indices, a fresh driver per series."""
    return [detections(make(), s.x) for s in corpus]


def evaluate(name: str, make: Callable[[], Driver], corpus: Sequence[Series]) -> Result:
    return evaluate_events(name, run(make, corpus), corpus)


def never_alarm(corpus: Sequence[Series]) -> list[np.ndarray]:
    return [np.empty(0, np.int64) for _ in corpus]


def random_events(
    counts: Sequence[int], corpus: Sequence[Series], seed: int = 0
) -> list[np.ndarray]:
    """``counts[i]`` events at uniformly random readings of series ``i`` (a chance baseline
    at another detector's alarm count)."""
    rng = np.random.default_rng(seed)
    return [
        np.sort(rng.choice(len(s.x), size=min(c, len(s.x)), replace=False))
        for c, s in zip(counts, corpus, strict=True)
    ]


def _duration_text(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(results: Sequence[Result]) -> str:
    """A Markdown table: one row per result, per-kind columns as detected/windows."""
    head = (
        "| detector | score (standard) | score (low FP) | false alarms / series / day | recall "
        "| median delay | events | " + " | ".join(KINDS) + " |"
    )
    sep = "|---" * (7 + len(KINDS)) + "|"
    rows = []
    for r in results:
        delay = "-" if math.isnan(r.delay) else f"{r.delay:.0f} ({_duration_text(r.delay_s)})"
        kinds = " | ".join(f"{r.per_kind[k][0]}/{r.per_kind[k][1]}" for k in KINDS)
        rows.append(
            f"| {r.name} | {r.scores['standard']:.1f} | {r.scores['low_fp']:.1f} "
            f"| {r.fa_per_day:.2f} | {r.recall:.2f} | {delay} | {r.events} | {kinds} |"
        )
    return "\n".join([head, sep, *rows])


def shape_table(results: Sequence[Result]) -> str:
    """A Markdown table of false alarms per series per day by shape (where detectors alarm)."""
    shapes = [sh for sh in SHAPES if any(sh in r.per_shape for r in results)]
    head = "| detector | " + " | ".join(shapes) + " |"
    sep = "|---" * (1 + len(shapes)) + "|"
    rows = []
    for r in results:
        cells = []
        for sh in shapes:
            fa, days = r.per_shape.get(sh, (0, 0.0))
            cells.append(f"{fa / days:.2f}" if days else "-")
        rows.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows])


#: detectors of ``edgeflow score`` in the table (``limits`` needs per-series limits: left out)
SCORED = ("zscore", "ewma", "mad", "cusum", "seasonal", "auto")
BASELINE = "3-sigma rolling z (baseline)"


def classic_3sigma(x: F64, window: int = 256, level: float = 3.0, cooldown: int = 64) -> I64:
    """The textbook baseline, frozen here so that improving edgeflow's detectors cannot move
    it: each reading's z-score against the mean and standard deviation of the ``window``
    readings before it (all of them, anomalies included), an alarm at ``|z| >= level``, and
    one event per ``cooldown`` readings as edgeflow's decisions do. Returns event indices;
    readings that are not finite are skipped."""
    ok = np.flatnonzero(np.isfinite(x))
    v = x[ok]
    n = len(v)
    if n < 2:
        return np.empty(0, np.int64)
    base = float(v[0])
    c1 = np.concatenate([[0.0], np.cumsum(v - base)])
    c2 = np.concatenate([[0.0], np.cumsum((v - base) ** 2)])
    end = np.arange(n)
    start = np.maximum(end - window, 0)
    cnt = np.maximum(end - start, 1)
    mean = (c1[end] - c1[start]) / cnt
    std = np.sqrt(np.maximum((c2[end] - c2[start]) / cnt - mean**2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(v - base - mean) / std
    alarm = np.flatnonzero((end >= 16) & (np.nan_to_num(z, nan=0.0) >= level))
    events: list[int] = []
    for i in alarm.tolist():
        if not events or i - events[-1] > cooldown:
            events.append(i)
    out: I64 = ok[np.asarray(events, np.int64)] if events else np.empty(0, np.int64)
    return out


def standard_suite() -> list[tuple[str, Callable[[], Driver]]]:
    """(name, driver factory) for each detector of ``edgeflow score`` with its defaults, the
    decision ``edgeflow score`` uses (the Driver's default). The 3-sigma baseline is
    :func:`classic_3sigma`, not one of these."""
    from edgeflow.ops import detect

    def drv(name: str) -> Callable[[], Driver]:
        return lambda: detect.Driver(detect.make(name))

    return [(n, drv(n)) for n in SCORED]


@dataclass
class Delivery:
    """How a flow's alerts cover a simulator's injected anomalies."""

    injected: int
    delivered: int  # injected anomalies with at least one alert for their key inside them
    false_alerts: int  # alerts inside no injected anomaly (nor its grace period)
    missed: list[tuple[str, int, int, str]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.delivered / self.injected if self.injected else 1.0


def delivery(
    injected: list[tuple[str, int, int, str]],
    alerts: list[tuple[str, int]],
    grace_ns: int,
    min_ns: int = 0,
) -> Delivery:
    """Match alerts (key, event time ns) to injected anomalies (key, start ns, end ns, kind):
    an anomaly is delivered when an alert of its key falls in [start, end + grace].
    Anomalies lasting less than ``min_ns`` (cut short by the end of the stream: shorter
    than one window, so no window summary can show them) are not counted."""
    injected = [a for a in injected if a[2] - a[1] >= min_ns]
    by_key: dict[str, list[int]] = {}
    for key, t in alerts:
        by_key.setdefault(key, []).append(t)
    times = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in by_key.items()}
    used: dict[str, np.ndarray] = {k: np.zeros(len(v), bool) for k, v in times.items()}
    delivered, missed = 0, []
    for key, start, end, kind in injected:
        at = times.get(key, np.empty(0, np.int64))
        inside = (at >= start) & (at <= end + grace_ns)
        if inside.any():
            delivered += 1
            used[key] |= inside
        else:
            missed.append((key, start, end, kind))
    false = sum(int((~u).sum()) for u in used.values())
    return Delivery(len(injected), delivered, false, missed)
