"""Ensembles: :class:`Ensemble` (several detectors on one field), :func:`Auto` (the
default ensemble) and :class:`StackedEnsemble` (an ensemble's stacked form).

An ensemble's parts each decide and learn on their own (a part's learning is its own: an
alarm a part raised is not learnt by that part, whatever the ensemble makes of it). The
ensemble combines them point by point with :func:`counted`, by each part's **role**:

* evidence of something new: :data:`CHANGE` (a jump), :data:`SHIFT` (a sustained shift, a
  variance change), :data:`LEVEL` (a reading outside the recent range), :data:`SEASON`
  (off the seasonal pattern) and :data:`ALARM` (any other detector);
* context that *explains* a point - the reading lies inside the part's expected range:
  :data:`SEASON` (on the pattern, once a period P > 1 was found), :data:`SEEN` (within the
  first CHANGE part's half-width of the values the key was at recently, where those span
  more than that half-width: a jump back to a level the key has been at, a square wave or
  a duty cycle; a spike beyond a sine's range is not explained) and :data:`NOISE` (a jump
  within the recent point-to-point noise, after a variance change).

A part's anomaly counts unless a part of a role in :data:`EXPLAINED_BY` for its role
explains the point (a SEASON part's counts where it has a period; NOISE and SEEN parts
never alarm). A point is anomalous when a counted part flags it. Its raw statistic is the largest
of the counted parts' ``raw_i / level_i`` (each in units of that part's alarm level, so 1.0
is an alarm) and its score ``calibrate(raw, 1.0)``: monotone in raw across the whole series,
0.999 where the first counted part reaches its alarm level. Its expected range is the first
part's. The ensemble's cooldown turns its anomalies into events (one per episode across
parts); an anomaly only the SEASON part raised waits a whole period (the one that scored
it) after the last event (:func:`season_cooldown`: one broken day is one event). :class:`~edgeflow.ops.detect.driver.Driver` runs an ensemble part by part and calls
:func:`combine`; :class:`StackedEnsemble` runs each part stacked (one
:class:`~edgeflow.ops.detect.stacked.Stacked` per part) and combines the same way, with the
same results.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import level, points, rate
from edgeflow.ops.detect.base import Detector, Scores, calibrate, parts_of
from edgeflow.ops.detect.cusum import CUSUM
from edgeflow.ops.detect.decision import NO_EVENT_YET, episode_starts, starts_episode
from edgeflow.ops.detect.driver import Driver, DriverOut
from edgeflow.ops.detect.mad import MAD, MADStacked, floored_before, robust_spread
from edgeflow.ops.detect.seasonal import Seasonal, SeasonalStacked
from edgeflow.ops.detect.spread import step_floor_rows
from edgeflow.ops.detect.stacked import (
    FLOOR_FROM,
    Events,
    Rows,
    Stacked,
    StackedModel,
    run_stacked,
)
from edgeflow.ops.detect.variance import VarianceChange
from edgeflow.ops.scipy_lazy import lfilter

ALARM = "alarm"  #: anomalies always count
CHANGE = "change"  #: a jump: explained by the seasonal pattern, a wide level range or noise
SHIFT = "shift"  #: a sustained change: explained by the seasonal pattern or a wide level range
LEVEL = "level"  #: outside the recent range: explained by the seasonal pattern or noise
SEASON = "season"  #: off the seasonal pattern: counts once a period was found
NOISE = "noise"  #: context only: the recent point-to-point noise
SEEN = "seen"  #: context only: the range of values the key has been at recently
ROLES = (ALARM, CHANGE, SHIFT, LEVEL, SEASON, NOISE, SEEN)
#: which roles' parts explain (inside their expected range) an anomaly of each role
EXPLAINED_BY: dict[str, tuple[str, ...]] = {
    ALARM: (),
    CHANGE: (SEASON, SEEN, NOISE),
    SHIFT: (SEASON, SEEN),
    LEVEL: (SEASON, NOISE),
    SEASON: (),
    NOISE: (),
    SEEN: (),
}
#: roles whose parts never alarm (context only)
CONTEXT_ROLES = (NOISE, SEEN)


class Ensemble(Detector):
    """Several detectors on the same field, each deciding and learning on its own, combined
    point by point by their ``roles`` (one per part, default every part :data:`ALARM`: a
    point is anomalous when any part says so); see the module docstring."""

    name = "ensemble"
    #: the ensemble's raw statistic is in units of its parts' alarm levels
    level = 1.0

    def __init__(
        self, parts: list[Detector], name: str = "ensemble", roles: tuple[str, ...] | None = None
    ) -> None:
        self.parts = parts
        self.name = name
        self.roles = tuple(roles) if roles is not None else (ALARM,) * len(parts)

    # An ensemble is run by Driver part by part; these are never called directly.
    def init(self) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        raise NotImplementedError

    def learn(self, st: dict[str, Any], x: F64) -> None:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {
            "parts": [
                {"name": p.name, "role": r, **p.params()}
                for p, r in zip(self.parts, self.roles, strict=True)
            ]
        }

    def problems(self) -> list[str]:
        if not self.parts or not all(isinstance(p, Detector) for p in self.parts):
            return [f"detect.{self.name}: parts={self.parts!r} must be a list of detectors"]
        if len(self.roles) != len(self.parts) or not set(self.roles) <= set(ROLES):
            return [
                f"detect.{self.name}: roles={self.roles!r} must give each part one of "
                f"{', '.join(ROLES)}"
            ]
        return [m for p in self.parts for m in p.problems()]


#: the state entry where :class:`SeasonalContext` notes its period changes (see there)
PERIOD_LOG = "period_log"
#: the most period changes a Driver state keeps between batches (the ensemble consumes
#: them every batch; only a SeasonalContext run on its own would keep adding)
PERIOD_LOG_MAX = 4096


class SeasonalContext(Seasonal):
    """:class:`~edgeflow.ops.detect.seasonal.Seasonal` as an ensemble's seasonal evidence:
    the same scores once a period P > 1 is established; before that no verdict (raw 0) and
    no expected range (NaN), so it neither alarms nor explains a point (with P = 1 it would
    only repeat the change part's first differences) and it learns every reading in order
    while it looks for a period.

    Each change of period is noted in ``st[PERIOD_LOG]`` as (readings seen, old period, new
    period): the new period scores the key's readings from that count on (every reading
    is learnt or forgotten, so the count is the position in the key's stream). The
    ensemble reads and clears the notes every batch to give each anomaly the period that
    scored it (:func:`periods_at`), however the stream is cut into batches."""

    def _estimate(self, st: dict[str, Any]) -> None:
        before = int(st["period"])
        super()._estimate(st)
        if int(st["period"]) != before:
            log = st.setdefault(PERIOD_LOG, [])
            log.append((int(st["n"]), before, int(st["period"])))
            del log[:-PERIOD_LOG_MAX]

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        s = super().score(st, x)
        if int(st["period"]) <= 1:
            nan = np.full(len(x), np.nan)
            zero = np.zeros(len(x))
            return Scores(zero, zero, nan, nan)
        return s

    def stacked_model(self, states: list[dict[str, Any]]) -> SeasonalContextStacked:
        return SeasonalContextStacked(self, states)


class SeasonalContextStacked(SeasonalStacked):
    """The stacked form of :class:`SeasonalContext`. Its period changes are noted per row
    in :attr:`period_log` (row -> notes as the reference form's), which
    :class:`StackedEnsemble` reads and clears every batch (never in a snapshot)."""

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        raw, centre, half = super().score(rows, x)
        seasonal = (self.period[rows] > 1)[:, None]
        return np.where(seasonal, raw, 0.0), np.where(seasonal, centre, np.nan), half

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("period_log", None)  # (read every batch: not state)
        return state

    @property
    def period_log(self) -> dict[int, list[tuple[int, int, int]]]:
        log: dict[int, list[tuple[int, int, int]]] = self.__dict__.setdefault("period_log", {})
        return log

    def _estimate(self, rows: Rows) -> None:
        before = self.period[rows].copy()
        super()._estimate(rows)
        changed = np.flatnonzero(self.period[rows] != before)
        for i in changed.tolist():  # (rare: a period found or lost)
            r = int(rows[i])
            note = (int(self.n[r]), int(before[i]), int(self.period[r]))
            self.period_log.setdefault(r, []).append(note)

    def load(self, i: int, s: dict[str, Any]) -> None:
        super().load(i, s)
        notes = s.pop(PERIOD_LOG, None)  # the Driver's (a key it finished): kept in order
        if notes:
            self.period_log.setdefault(i, []).extend(notes)


class RecentNoise(Detector):
    """Context, never an alarm: the recent point-to-point noise, a fast exponentially
    weighted mean of squared first differences (weight ``alpha``, about 2 / alpha readings
    of memory). Its expected range is the previous reading -/+ ``level`` recent noise
    deviations (floored by the key's resolution); its raw statistic is always 0, so it
    learns every reading and follows a change of variance within a few dozen readings."""

    name = "noise"
    ARGS = (rate("alpha"), level(), points("warmup", 2))

    def __init__(self, alpha: float = 0.1, level: float = 3.0, warmup: int = 16) -> None:
        self.alpha, self.level, self.warmup = alpha, level, warmup

    def init(self) -> dict[str, Any]:
        return {"prev": None, "v": None, "n": 0}

    def _before(self, prev: float, v0: float, x: F64) -> tuple[F64, F64, F64]:
        """(previous reading, noise variance before each point, variance after each)."""
        before = np.concatenate([[prev], x[:-1]])
        a = self.alpha
        after: F64 = lfilter([a], [1, -(1 - a)], (x - before) ** 2, zi=[(1 - a) * v0])[0]
        v_before: F64 = np.concatenate([[v0], after[:-1]])
        return before, v_before, after

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        if st["prev"] is None:  # nothing learnt yet: no expectation
            nan, zero = np.full(len(x), np.nan), np.zeros(len(x))
            return Scores(zero, zero, nan, nan)
        before, v, _ = self._before(st["prev"], st["v"], x)
        half = self.level * floored_before(
            np.sqrt(v), st.get("res", math.inf), st["prev"], x, before
        )
        zero = np.zeros(len(x))
        return Scores(zero, zero, before - half, before + half)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        if not len(x):
            return
        prev = float(x[0]) if st["prev"] is None else st["prev"]
        v0 = st["v"]
        if v0 is None:  # the first block learnt: its mean squared step
            v0 = float(np.mean(np.diff(np.concatenate([[prev], x])) ** 2))
        _, _, after = self._before(prev, v0, x)
        st["v"], st["prev"] = float(after[-1]), float(x[-1])
        st["n"] += len(x)

    def stacked_model(self, states: list[dict[str, Any]]) -> RecentNoiseStacked:
        return RecentNoiseStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "level": self.level}


class RecentNoiseStacked(StackedModel):
    """The stacked form of :class:`RecentNoise`: each key's last reading and noise variance."""

    PASS_DATA = ("after", "x")

    def __init__(self, det: RecentNoise, sts: list[dict[str, Any]]) -> None:
        self.det = det
        self.prev = np.array([np.nan if s["prev"] is None else s["prev"] for s in sts])
        self.v = np.array([np.nan if s["v"] is None else s["v"] for s in sts])
        self.n = np.array([s["n"] for s in sts], np.int64)

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        p0 = self.prev[rows]
        before = np.concatenate([p0[:, None], x[:, :-1]], axis=1)  # NaN: nothing learnt
        d2 = (x - before) ** 2
        v0 = self.v[rows]
        v0 = np.where(np.isnan(v0), d2[:, 0], v0)
        a = self.det.alpha
        after = lfilter([a], [1, -(1 - a)], d2, axis=1, zi=((1 - a) * v0)[:, None])[0]
        v = np.concatenate([v0[:, None], after[:, :-1]], axis=1)
        self.after, self.x = after, x
        res = self.resolution(rows)
        half = self.det.level * floored_before(np.sqrt(v), res, p0, x, before)
        return np.zeros_like(x), before, half

    def learn(self, rows: Rows, f: Rows) -> None:
        moved = np.flatnonzero(f > 0)
        last = f[moved] - 1
        r = rows[moved]
        first = np.isnan(self.prev[r])  # a row's first readings: its first step starts it
        v = self.after[moved, last]
        if first.any():  # a row's first block: as the reference learns it
            v[first] = self._first_blocks(moved[first], last[first] + 1)
        self.v[r] = v
        self.prev[r] = self.x[moved, last]
        self.n[rows] += f
        self.after = self.x = np.empty((0, 0))  # the pass is done: no arrays kept for it

    def _first_blocks(self, at: Rows, length: Rows) -> F64:
        """The noise variance after each pass row ``at[i]`` learnt its first ``length[i]``
        readings as its first block: :meth:`RecentNoise.learn`'s arithmetic, the rows of
        each length together (keys that start at once: one or a few lengths)."""
        out = np.empty(len(at))
        a = self.det.alpha
        for n in np.unique(length).tolist():
            sel = np.flatnonzero(length == n)
            x = self.x[at[sel], :n]
            before = np.concatenate([x[:, :1], x[:, :-1]], axis=1)  # (prev: the first)
            v0 = np.mean(np.diff(np.concatenate([x[:, :1], x], axis=1), axis=1) ** 2, axis=1)
            after = lfilter([a], [1, -(1 - a)], (x - before) ** 2, axis=1,
                            zi=((1 - a) * v0)[:, None])[0]  # fmt: skip
            out[sel] = after[:, -1]
        return out

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        s["prev"] = None if np.isnan(self.prev[i]) else float(self.prev[i])
        s["v"] = None if np.isnan(self.v[i]) else float(self.v[i])
        s["n"] = int(self.n[i])

    def load(self, i: int, s: dict[str, Any]) -> None:
        self.prev[i] = np.nan if s["prev"] is None else s["prev"]
        self.v[i] = np.nan if s["v"] is None else s["v"]
        self.n[i] = s["n"]

    def extend(self, other: RecentNoiseStacked) -> None:
        for name in ("prev", "v", "n"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


#: the quantile :class:`TailMAD` reads the window's tails at (a normal distribution's 1 %
#: and 99 % quantiles are 4.65 standard deviations apart)
TAIL_Q = 0.01


class TailMAD(MAD):
    """:class:`~edgeflow.ops.detect.mad.MAD` whose spread also reflects the window's tails:
    the larger of the robust spread and (q99 - q01) / 4.65 of the window (both estimate the
    standard deviation of normal noise, so on normal noise it is MAD's spread). On
    heavy-tailed noise (Student t, Laplace) a reading 6 robust sigmas out is routine, and
    the spread widens by as much as the window's own 1 % tails show."""

    def estimate(self, win: F64) -> tuple[F64, F64]:
        return robust_spread(win, tails=TAIL_Q, scratch=True)

    def stacked_model(self, states: list[dict[str, Any]]) -> MADStacked:
        return MADStacked(self, states)  # (it estimates with this class's estimate)


class SeenRange(MAD):
    """Context, never an alarm: the range of values a key has been at recently, from the
    ``quantile`` to the ``1 - quantile`` quantile of its last ``window`` readings (a few
    outliers learnt among them do not widen it), re-estimated every ``stride`` readings as
    :class:`~edgeflow.ops.detect.mad.MAD` re-estimates its median. Its raw statistic is
    always 0, so it learns every reading. A jump back into this range (to within the change
    part's half-width, see :func:`counted`) is a return to a level the key has been at: a
    square wave, a duty cycle. A spike beyond the range of a sine is not."""

    name = "seen"

    def __init__(
        self, window: int = 256, stride: int = 16, warmup: int = 32, quantile: float = 0.01
    ) -> None:
        super().__init__(window, 1.0, stride, warmup)
        self.quantile = quantile

    def estimate(self, win: F64) -> tuple[F64, F64]:
        """The centre and half-width of the range between the quantiles of each window."""
        win.sort(axis=-1)  # the caller's scratch block (see MAD.estimate)
        lo, hi = tail_quantiles(win, self.quantile)
        return (lo + hi) / 2, (hi - lo) / 2

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        s = super().score(st, x)
        zero = np.zeros(len(x))
        return Scores(zero, zero, s.low, s.high)

    def stacked_model(self, states: list[dict[str, Any]]) -> SeenRangeStacked:
        return SeenRangeStacked(self, states)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "quantile": self.quantile}


class SeenRangeStacked(MADStacked):
    """The stacked form of :class:`SeenRange`."""

    def score(self, rows: Rows, x: F64, wanted: np.ndarray | None = None) -> tuple[F64, F64, F64]:
        _, centre, half = super().score(rows, x, wanted)
        return np.zeros(x.shape), centre, half


def tail_quantiles(srt: F64, q: float) -> tuple[F64, F64]:
    """The q- and (1 - q)-quantiles (linear between order statistics, as np.quantile) of each
    window of values, sorted (the last axis; NaN: an empty slot, sorted last; NaN where a
    window is empty). Full windows, the usual case, are indexed directly."""
    w = srt.shape[-1]
    if w and not np.isnan(srt[..., -1]).any():
        p = (w - 1) * q
        i = math.floor(p)
        j = min(i + 1, w - 1)
        frac = p - i
        lo = srt[..., i] + frac * (srt[..., j] - srt[..., i])
        hi = srt[..., w - 1 - i] - frac * (srt[..., w - 1 - i] - srt[..., w - 1 - j])
        return lo, hi
    count = np.count_nonzero(~np.isnan(srt), axis=-1)
    out = []
    for qq in (q, 1 - q):
        pp = np.maximum((count - 1) * qq, 0.0)
        lo_i = np.floor(pp).astype(np.int64)
        hi_i = np.minimum(lo_i + 1, np.maximum(count - 1, 0))
        a = np.take_along_axis(srt, lo_i[..., None], axis=-1)[..., 0]
        b = np.take_along_axis(srt, hi_i[..., None], axis=-1)[..., 0]
        with np.errstate(invalid="ignore"):
            out.append(np.where(count > 0, a + (pp - lo_i) * (b - a), np.nan))
    return out[0], out[1]


def Auto() -> Ensemble:  # noqa: N802 - reads as a class at call sites
    """The default ensemble, needing no tuning. Parts and roles, and why these settings:

    * change (:data:`CHANGE`, MAD of first differences, window 128, level 5, re-estimated
      every 32 readings): spikes, dips and the start of steps, also on trends and random
      walks. Level 5 (was 6): a +10 sigma spike on unit noise is a jump of about 7 sigma of
      the differences less the noise before it; 5 still puts Gaussian false alarms near
      one in a million readings;
    * CUSUM (:data:`SHIFT`): sustained shifts and drifts (settings unchanged);
    * variance change (:data:`SHIFT`, level 2, was 3: a fast variance of the differences
      e^2 = 7.4 times the slow one, which 4x larger noise (16x the variance) reaches within
      a few readings; level 3 (20x) it never reached);
    * seasonal (:data:`SEASON`, :class:`SeasonalContext`, level 4, window 1024 (was 512)
      so that a daily rhythm of 288 readings fits twice; while no period is known it looks
      for one at 256, 512 and 1024 readings, then every 2048: one FFT per 2048 readings
      keeps one stream fast): a broken pattern; a reading on the pattern is explained;
    * level (:data:`LEVEL`, :class:`TailMAD` of the values, window 256, level 6,
      re-estimated every 16 readings; the spread of a two-level window is its IQR, of a
      heavy-tailed one its 1 % tails): a reading far outside the recent range;
    * noise (:data:`NOISE`, :class:`RecentNoise`, 4 recent deviations): after a variance
      change, jumps the new noise makes ordinary are explained (a jump of 4 recent
      deviations or more is still news);
    * seen (:data:`SEEN`, :class:`SeenRange`, the 1 %..99 % range of the last 256 readings,
      re-estimated every 24: a first half-period of 30 is in it by reading 48): a jump back
      to a level the key has been at (a square wave before its period is known) is
      explained.

    Chosen from the parts' null distributions and the scenarios of issue #13 (spike, dip,
    lasting shift, 4x variance, broken daily pattern, square wave, daily rhythm), not tuned
    on public datasets.
    """
    return Ensemble(
        [
            MAD(window=128, level=5.0, stride=32, diff=True, warmup=32),
            CUSUM(k=1.5, h=10.0, alpha=0.005, warmup=64),
            VarianceChange(level=2.0),
            SeasonalContext(window=1024, level=4.0, refresh=2048),
            TailMAD(window=256, level=6.0, stride=16, warmup=32),
            RecentNoise(alpha=0.1, level=4.0),
            SeenRange(window=256, stride=24),
        ],
        name="auto",
        roles=(CHANGE, SHIFT, SHIFT, SEASON, LEVEL, NOISE, SEEN),
    )


def roles_of(det: Detector) -> tuple[str, ...]:
    """The roles of an ensemble's parts (every part :data:`ALARM` when it has none)."""
    parts = parts_of(det) or []
    roles = getattr(det, "roles", None)
    return tuple(roles) if roles is not None else (ALARM,) * len(parts)


def counted(roles: tuple[str, ...], x: F64, low: list[F64], high: list[F64]) -> list[np.ndarray]:
    """Where each part's anomalies count, point by point (see the module docstring), from
    the readings ``x`` and each part's expected range (NaN: none). A :data:`SEEN` part's range
    (the values the key was at recently) explains a point within the first :data:`CHANGE`
    part's half-width of it, where the range is wider than that half-width (the key has been
    at levels an alarming jump apart): a jump back to a level the key has been at. Unit
    noise's range is narrower than its alarming jumps: a spike there is never explained."""
    ref = next((h - lo for r, lo, h in zip(roles, low, high, strict=True) if r == CHANGE), None)
    explains: dict[str, np.ndarray] = {r: np.zeros(np.shape(x), bool) for r in ROLES}
    with np.errstate(invalid="ignore"):  # (NaN compares False: no expectation)
        for role, lo, h in zip(roles, low, high, strict=True):
            if role == SEEN:  # levels further apart than an alarming jump: a jump back
                near = ref / 2 if ref is not None else 0.0
                inside = (x >= lo - near) & (x <= h + near) & (h - lo > near)
            else:
                inside = (x >= lo) & (x <= h)
            explains[role] |= inside
        out = []
        for role, lo in zip(roles, low, strict=True):
            c = np.ones(np.shape(x), bool)
            for by in EXPLAINED_BY[role]:
                c &= ~explains[by]
            if role == SEASON:
                c &= np.isfinite(lo)
            elif role in CONTEXT_ROLES:
                c[:] = False
            out.append(c)
    return out


def combine(
    det: Detector,
    outs: list[DriverOut],
    x: F64,
    cooldown: int = 0,
    states: list[dict[str, Any]] | None = None,
) -> DriverOut:
    """The ensemble's output from its parts' (the Driver's path) on readings ``x``:
    anomalous where a counted part is, raw the largest counted ``raw_i / level_i``, score
    ``calibrate(raw, 1.0)``, the first part's expected range, and each point's cooldown
    (:func:`season_cooldown`; ``states``: the parts' Driver states)."""
    parts = parts_of(det) or []
    roles = roles_of(det)
    counts = counted(roles, x, [o.low for o in outs], [o.high for o in outs])
    ratio = np.zeros(len(x))
    flagged = np.zeros(len(x), bool)
    other = np.zeros(len(x), bool)  # flagged by a counted part that is not SEASON
    for p, o, c, role in zip(parts, outs, counts, roles, strict=True):
        np.maximum(ratio, np.where(c, o.raw / p.level, 0.0), out=ratio)
        hit = np.asarray(o.anomaly, bool) & c
        flagged |= hit
        if role != SEASON:
            other |= hit
    out = DriverOut(
        ratio, calibrate(ratio, 1.0), flagged, outs[0].low, outs[0].high, outs[0].threshold
    )
    if SEASON in roles and states is not None:
        st = states[roles.index(SEASON)]["det"]
        notes = st.pop(PERIOD_LOG, None)  # this batch's changes of period: read once
        period: Any = int(st.get("period", 1))
        if notes:  # each point's own (its position: readings of the key before it)
            period = periods_at(notes, int(st["n"]) - len(x) + np.arange(len(x)))
        out.cooldown = season_cooldown(flagged & ~other, period, cooldown)
    return out


def periods_at(notes: list[tuple[int, int, int]], at: Rows) -> Rows:
    """The period that scored the readings at positions ``at`` (counts of the key's readings
    before each), from a batch's notes of period changes, in order: (position from which the
    new period scores, old period, new period); see :class:`SeasonalContext`."""
    starts = np.array([n[0] for n in notes], np.int64)
    table = np.array([notes[0][1], *(n[2] for n in notes)], np.int64)
    out: Rows = table[np.searchsorted(starts, at, side="right")]
    return out


def season_cooldown(season_only: np.ndarray, period: Any, cooldown: int) -> Rows:
    """Each anomaly's cooldown: an anomaly only the seasonal part raised (off the pattern,
    nothing else unusual) raises no event within ``max(cooldown, period)`` points of the
    last event, so one broken day (a peak and a trough of the pattern missing, half a period
    apart) is one event; any other anomaly the decision's ``cooldown``. ``period``: the
    seasonal part's period that scored each anomaly (scalar, or per anomaly), so the
    events do not depend on where a batch ends (a re-estimate later in the batch)."""
    out: Rows = np.where(season_only, np.maximum(period, cooldown), cooldown).astype(np.int64)
    return out


class StackedEnsemble:
    """An ensemble's detection state for every key of a shard: one :class:`Stacked` per part
    (the keys get the same row in each) and the ensemble's own cooldown counter."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.parts = [Stacked(p) for p in driver.parts]
        self.roles = roles = roles_of(driver.detector)
        # the parts whose expected ranges the combination reads: the first (the ensemble's
        # range), the first CHANGE part and the parts that explain points
        explain = {r for by in EXPLAINED_BY.values() for r in by}
        self.ranged = {0, *(i for i, r in enumerate(roles) if r in explain)}
        if CHANGE in roles:
            self.ranged.add(roles.index(CHANGE))
        self.since = np.zeros(0, np.int64)

    @property
    def names(self) -> list[str]:
        return self.parts[0].names

    def __len__(self) -> int:
        return len(self.parts[0])

    def rows_of(self, names: tuple[str, ...] | list[str]) -> Rows:
        rows = self.parts[0].rows_of(names)
        for part in self.parts[1:]:
            part.rows_of(names)
        grow = len(self.parts[0]) - len(self.since)
        if grow:
            self.since = np.concatenate([self.since, np.full(grow, NO_EVENT_YET, np.int64)])
        return rows

    def run(self, rows: Rows, xmat: F64, lens: Rows) -> Events:
        """The ensemble's events over a grid of keys' points (as :func:`run_stacked`)."""
        width = xmat.shape[1]
        self._season_notes()  # (the last batch's notes: read already)
        ranges: list[tuple[F64, F64] | None] = [None] * len(self.parts)
        found: list[tuple[Rows, F64]] = [(np.empty(0, np.int64), np.empty(0))] * len(self.parts)
        # parts that alarm first; then the context parts (never an alarm): their ranges are
        # read only where some part flagged a point
        order = sorted(range(len(self.parts)), key=lambda i: self.roles[i] in CONTEXT_ROLES)
        wanted = None
        # (the same readings for every part: their smallest steps found once)
        floor = step_floor_rows(xmat, lens) if xmat.size >= FLOOR_FROM else None
        for i in order:
            part = self.parts[i]
            if self.roles[i] in CONTEXT_ROLES and wanted is None:
                wanted = np.zeros(xmat.shape, bool)
                flat = np.concatenate([f[0] for f in found])
                wanted.flat[flat] = True
            rg = (np.empty_like(xmat), np.empty_like(xmat)) if i in self.ranged else None
            ranges[i] = rg
            gi, ci, _, raw, _, _ = run_stacked(
                part, rows, xmat, lens, every_anomaly=True, ranges=rg, wanted=wanted, floor=floor
            ).arrays()
            found[i] = (gi * width + ci, raw / part.driver.detector.level)
        out = Events()
        at = np.unique(np.concatenate([f[0] for f in found]))  # points some part flagged
        if not len(at):
            self.since[rows] += lens
            return out
        gi, ci = at // width, at % width
        anomaly, ratios = [], []
        for flat, ratio in found:
            hit = np.isin(at, flat)
            r = np.zeros(len(at))
            r[np.searchsorted(at, flat)] = ratio
            anomaly.append(hit)
            ratios.append(r)
        nan = np.full(len(at), np.nan)
        counts = counted(
            self.roles,
            xmat[gi, ci],
            [rg[0][gi, ci] if rg is not None else nan for rg in ranges],
            [rg[1][gi, ci] if rg is not None else nan for rg in ranges],
        )
        ratio = np.zeros(len(at))
        flagged = np.zeros(len(at), bool)
        other = np.zeros(len(at), bool)  # flagged by a counted part that is not SEASON
        for a, r, c, role in zip(anomaly, ratios, counts, self.roles, strict=True):
            np.maximum(ratio, np.where(a & c, r, 0.0), out=ratio)
            flagged |= a & c
            if role != SEASON:
                other |= a & c
        season_only = (~other)[flagged]
        gi, ci, ratio = gi[flagged], ci[flagged], ratio[flagged]  # sorted by (row, column)
        if not len(gi):
            self.since[rows] += lens
            return out
        cooldown: Rows | int = self.driver.decision.cooldown
        if SEASON in self.roles and season_only.any():
            period = self._periods(rows, lens, gi, ci)
            cooldown = season_cooldown(season_only, period, int(cooldown))
        ev = self._events(rows, lens, gi, ci, cooldown)
        gi, ci, ratio = gi[ev], ci[ev], ratio[ev]
        rg0 = ranges[0]
        assert rg0 is not None
        out.add(gi, ci, calibrate(ratio, 1.0), ratio, rg0[0][gi, ci], rg0[1][gi, ci])
        return out

    def _season_notes(self) -> dict[int, list[tuple[int, int, int]]]:
        """The seasonal part's notes of period changes since the last call (row -> notes),
        cleared (see :class:`SeasonalContextStacked`)."""
        model = self.parts[self.roles.index(SEASON)].model if SEASON in self.roles else None
        notes: dict[int, list[tuple[int, int, int]]] | None = getattr(model, "period_log", None)
        if not notes:
            return {}
        model.__dict__["period_log"] = {}
        return notes

    def _periods(self, rows: Rows, lens: Rows, gi: Rows, ci: Rows) -> Rows:
        """The seasonal part's period that scored each anomaly (grid row ``gi``, column
        ``ci``, after the batch's passes): its period now, or for a key whose period changed
        in this batch, the one in force at the anomaly's position."""
        model = self.parts[self.roles.index(SEASON)].model
        period: Rows = getattr(model, "period", np.ones(len(self.since), np.int64))[rows[gi]]
        notes = self._season_notes()
        if notes:  # (rare: keys whose period changed in this batch)
            n = model.n  # type: ignore[attr-defined]
            key_rows = rows[gi]
            for r, got in notes.items():
                at = np.flatnonzero(key_rows == r)
                if len(at):
                    g = int(gi[at[0]])
                    start = int(n[r]) - int(lens[g])  # the key's position at column 0
                    period[at] = periods_at(got, start + ci[at])
        return period

    def _events(self, rows: Rows, lens: Rows, gi: Rows, ci: Rows, cooldown: Rows | int) -> Rows:
        """Which anomalies (sorted by grid row, then column) raise an event: none within
        ``cooldown`` points (one for all, or each anomaly's own) of the key's last event (the
        ensemble's counter moves on)."""
        since = self.since
        start = np.r_[True, gi[1:] != gi[:-1]]
        gap = np.where(start, since[rows[gi]] + ci + 1, np.diff(ci, prepend=0))
        event: Rows = starts_episode(gap, cooldown)
        for g in np.unique(gi[~event]).tolist():  # keys with close anomalies: in order
            at = np.flatnonzero(gi == g)
            cool = cooldown if isinstance(cooldown, int) else cooldown[at].tolist()
            event[at], _ = episode_starts(ci[at].tolist(), int(since[rows[g]]), cool)
        since[rows] += lens  # keys without events
        at_event = np.flatnonzero(event)
        g_last = gi[at_event]
        last_col = np.full(len(rows), -1, np.int64)
        np.maximum.at(last_col, g_last, ci[at_event])
        hit = last_col >= 0
        since[rows[hit]] = lens[hit] - 1 - last_col[hit]
        return event


def auto() -> Ensemble:
    """A sensible default needing no tuning: spikes/dips, level shifts/drifts, variance
    changes and broken seasonal patterns (see :func:`Auto`)."""
    return Auto()
