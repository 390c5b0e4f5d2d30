"""The stacked machinery: every key of a shard as rows of arrays, scored in 2-D passes.

Each key's state is a row of arrays kept between batches (:class:`Stacked`; each detector's
:class:`StackedModel` lives in that detector's file), so a batch costs no per-key Python
work. This serves live batches (a reading or a few per key: usually one pass, or
:meth:`Stacked.tick`) and bulk ones (a replay: a pass per anomaly). Each key's readings of the
batch form one row of a NaN-padded matrix. A pass (:func:`run_stacked`) scores every row with
the prefix semantics of the reference detectors (each point against the state after the
points before it), using cumulative sums and ``lfilter(axis=1)``. For each key, the points up
to its first anomaly are final and are learnt straight from the pass's arrays. The anomaly
is decided (streak, cooldown, forget: :mod:`edgeflow.ops.detect.decision`), and the key's
rest goes into the next pass. Passes repeat until every key is done, so a batch costs about
(anomalies per key + 1) vectorised passes.

The semantics are the Driver's (one point at a time) with a fixed threshold. A key in
warm-up (its first ``warmup`` readings, learnt as one block), adapting (``adapt_after``
anomalies in a row; except in an ensemble's part whose model adapts in the passes,
``StackedModel.adapts_in_pass``) or with a long run of readings in the batch
(:data:`DRIVER_ROW`) is handed to the Driver for the rest of the batch. The
key's resolution (the smallest non-zero step of its learnt readings, the floor of every
spread: :mod:`edgeflow.ops.detect.spread`) is kept here as a row array the models read with
:meth:`StackedModel.resolution`. Scores equal
the Driver's up to floating-point rounding: short passes filter and sum by small matrix
products instead of ``lfilter`` and ``cumsum``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect.base import Detector, calibrate, parts_of
from edgeflow.ops.detect.decision import (
    NO_EVENT_YET,
    Decision,
    RawThreshold,
    episode_starts,
    event_scores,
    is_adapting,
    starts_episode,
    streak_after,
    streak_after_tick,
    warm_up_inliers_rows,
)
from edgeflow.ops.detect.driver import Driver
from edgeflow.ops.detect.spread import resolution_rows, resolution_rows_within, step_floor_rows

Rows = np.ndarray  # row indices, counts and masks of the stacked state
#: grids of at least this many points look for their smallest steps once (see run_stacked)
FLOOR_FROM = 4096

#: a key with at least this many readings in a batch (one long series: a one-sensor flow, a
#: replay) runs them in the Driver, whose passes are cheaper than a stacked pass of one row;
#: the results are the same (check_detector: stacked = reference)
DRIVER_ROW = 2048
#: a pass after the first scores at least about this many points (a few keys left: each to
#: its end, not to the next short reach) where the model's results do not depend on the
#: pass's span (``StackedModel.SPAN_EXACT``): fewer passes, each cheap with few keys
WIDE_PASS = 16384


def has_stacked_form(det: Detector) -> bool:
    """Whether the detector's own class defines a stacked form, ``stacked_model(states)``
    (a subclass that does not define one again is run by the Driver: its math may differ)."""
    return callable(type(det).__dict__.get("stacked_model"))


def stacked_model_of(det: Detector, states: list[dict[str, Any]]) -> StackedModel:
    """The detector's stacked model holding the per-key ``states`` as rows."""
    if not has_stacked_form(det):
        raise TypeError(f"no stacked form of detector {det.name!r}")
    model: StackedModel = getattr(det, "stacked_model")(states)  # noqa: B009 - not on Detector
    return model


def supports(det: Detector, decision: Decision, learn_anomalies: bool) -> bool:
    """Whether ``det`` runs stacked: a detector with a stacked form, or an ensemble of them,
    with a fixed threshold and anomalies not learnt."""
    if decision.kind != "threshold" or learn_anomalies:
        return False
    parts = parts_of(det)
    if parts is not None:
        return all(has_stacked_form(p) for p in parts)
    return has_stacked_form(det)


def pack_rows(hists: list[F64], w: int) -> F64:
    """Histories as rows of a (keys, w) matrix, right-aligned, NaN where still empty."""
    h = np.full((len(hists), w), np.nan)
    for i, hist in enumerate(hists):
        if len(hist):
            h[i, w - len(hist) :] = hist
    return h


def unpad_row(row: F64) -> F64:
    out: F64 = row[~np.isnan(row)].copy()
    return out


def window_rows(z: F64, starts: Rows, w: int, last: Rows) -> F64:
    """``z[i, starts[i, j] : starts[i, j] + w]`` for every row i and column j: a (k, R, w)
    block, copied from a strided view of ``z`` (a gather of whole windows, not of an index
    per value: several times faster). A start past its row's ``last`` is never
    used: it gets the row's first window (``starts`` may run past the end there)."""
    from numpy.lib.stride_tricks import sliding_window_view

    view = sliding_window_view(z, w, axis=1)  # (k, L - w + 1, w), no copy
    at = np.minimum(starts, view.shape[1] - 1)
    out: F64 = view[np.arange(len(z))[:, None], at]  # whole windows: no index per value
    past = starts > last[:, None]
    if past.any():
        ii, jj = np.nonzero(past)
        out[ii, jj] = view[ii, 0]
    return out


def slide_rows(h: F64, rows: Rows, old: F64, new: F64, f: Rows) -> None:
    """Row i of ``h[rows]`` (which held ``old[i]``) learnt the first ``f[i]`` of ``new[i]``:
    keep the last w values of old + those."""
    moved = f > 0
    if not moved.any():
        return
    w = h.shape[1]
    if moved.all() and (f == f[0]).all():  # the common case: every row learnt f points
        step = int(f[0])
        if step >= w:
            h[rows] = new[:, step - w : step]
        else:
            h[rows] = np.concatenate([old[:, step:], new[:, :step]], axis=1)
        return
    steps = np.unique(f[moved])
    if len(steps) <= 4:  # a few distinct steps (live batches: 1 or 2): slices, no index
        for step in steps.tolist():
            at = np.flatnonzero(f == step)
            if step >= w:
                h[rows[at]] = new[at, step - w : step]
            else:
                h[rows[at]] = np.concatenate([old[at, step:], new[at, :step]], axis=1)
        return
    z = np.concatenate([old[moved], new[moved]], axis=1)
    cols = f[moved][:, None] + np.arange(w)  # the w columns of z ending before w + f
    h[rows[moved]] = np.take_along_axis(z, cols, axis=1)


def slide_joined_rows(h: F64, rows: Rows, joined: F64, f: Rows) -> None:
    """:func:`slide_rows` where the pass already joined each row's old values and new ones:
    ``joined[i]`` is ``old[i]`` (w values) followed by ``new[i]``. Row i keeps
    ``joined[i, f[i] : f[i] + w]``, copied as whole windows of a strided view."""
    moved = np.flatnonzero(f > 0)
    if not len(moved):
        return
    w = h.shape[1]
    step = int(f[moved[0]])
    if len(moved) == len(f) and (f == step).all():  # the common case: every row learnt f
        h[rows] = joined[:, step : step + w]
        return
    view = np.lib.stride_tricks.sliding_window_view(joined, w, axis=1)
    h[rows[moved]] = view[moved, f[moved]]


class StackedModel:
    """A stacked model: per-key state as rows of arrays (one row per key).

    ``score(rows, x)`` scores the (k, span) points of the state rows ``rows`` with prefix
    semantics and returns (raw, centre, half): the statistic and the expected range
    centre -/+ half. ``learn(rows, f)`` learns each row's first ``f`` points of the last
    pass, ``forget(rows)`` is told of an anomaly (not learnt; by default nothing to do).
    ``limit(rows)`` caps how many points each row may decide in a pass (by default None,
    no cap): a model re-estimated every N learnt points must learn up to that point before
    scoring past it."""

    #: each row's resolution (inf: no step seen yet), kept by :class:`Stacked`
    res: F64 = np.zeros(0)
    #: known: every row has seen a step (``res`` finite), so a live tick's spread floor is
    #: ``fmax(scale, res)`` (kept by :class:`Stacked`; False when unsure)
    res_finite: bool = False
    #: every point's results are the same bits whatever the span of the pass that scores it
    #: (no filters or running sums, whose rounding depends on it): :func:`run_stacked` may
    #: then give the keys left after an anomaly wider passes (:data:`WIDE_PASS`)
    SPAN_EXACT = False
    #: its keys adapt as the detector's ``adapt`` does in the Driver, ignoring the recent
    #: anomalies it is given, and its results do not depend on a pass's span: an ensemble's
    #: part keeps its adapting keys in the stacked passes (see :func:`_adapt_rows`)
    adapts_in_pass = False
    #: what a pass keeps from ``score`` for ``learn`` (the pass's readings, estimates):
    #: not state, so never in a snapshot
    PASS_DATA: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self.PASS_DATA:
            state.pop(name, None)
        return state

    def resolution(self, rows: Rows) -> F64:
        """The resolution of the keys at ``rows`` (inf where none was seen yet)."""
        out: F64 = self.res[rows]
        return out

    def tick_floor(self, rows: Rows, scale: F64, centre: F64) -> F64:
        """A live tick's spread floor (``rows``: every row, in order): one ``fmax`` once every
        row has seen a step (see :func:`~edgeflow.ops.detect.filters.floor_rows`)."""
        if self.res_finite:
            out: F64 = np.fmax(scale, self.res)
            return out
        from edgeflow.ops.detect.filters import floor_rows

        return floor_rows(scale, self.resolution(rows), centre)

    def score(self, rows: Rows, x: F64) -> tuple[F64, F64, F64]:
        raise NotImplementedError

    def learn(self, rows: Rows, f: Rows) -> None:
        raise NotImplementedError

    def forget(self, rows: Rows, x: F64 | None = None) -> None:
        """Rows met an anomaly (value ``x[i]`` for row i), which is not learnt."""
        return None

    def limit(self, rows: Rows) -> Rows | None:
        return None

    def tick(self, rows: Rows, x: F64) -> tuple[F64, F64, F64] | None:
        """A live tick: one reading ``x`` for every row (``rows``: all of them, in order),
        scored as :meth:`score` would in fewer operations; None (nothing done) when the
        model has no tick form or a row is not ready for it. Followed by :meth:`learn_tick`."""
        return None

    def learn_tick(self, rows: Rows, learnt: Rows | None, x: F64) -> None:
        """After :meth:`tick`: rows learnt their reading where ``learnt`` (None: all)."""
        raise NotImplementedError

    def adapt_tick(self, rows: Rows) -> bool:
        """Keys at ``rows`` start adapting on this tick: their rows adapt in place as the
        detector's ``adapt`` does in the Driver, before :meth:`tick` scores their reading
        (followed by :meth:`settle_adapted` once the tick has learnt). False (nothing done):
        no such form, the Driver takes those keys."""
        return False

    def undo_adapt(self, rows: Rows) -> None:
        """Rows adapted by the last :meth:`adapt_tick` back as they were before it (the
        Driver takes those keys)."""
        raise NotImplementedError

    def settle_adapted(self, rows: Rows) -> None:
        """After the tick that adapted ``rows`` (see :meth:`adapt_tick`) learnt their
        readings: the rows as loading the Driver's state of those keys leaves them."""
        raise NotImplementedError

    def scatter(self, i: int, s: dict[str, Any]) -> None:
        raise NotImplementedError

    def load(self, i: int, s: dict[str, Any]) -> None:
        raise NotImplementedError

    def extend(self, other: Any) -> None:
        raise NotImplementedError


class Stacked:
    """The detection state of every key of a shard, as rows of arrays: the model's
    (its :class:`StackedModel`), and the Driver's streak and cooldown counters.
    Keys get a row the first time they are seen; rows are never reused."""

    reach_hint: int | None = None  # the first pass's span, None: the whole grid (run_stacked)
    #: the layout of the arrays of this class and its models, kept in snapshots (pickles of
    #: the arrays: fast). Bump it when their attributes change: a snapshot of another
    #: layout is then converted on load (see __setstate__).
    LAYOUT = 3

    def __init__(self, driver: Driver) -> None:
        self.layout = Stacked.LAYOUT
        self.driver = driver
        self.rows: dict[str, int] = {}
        self.names: list[str] = []
        self.model = stacked_model_of(driver.detector, [])
        self.all_rows = np.zeros(0, np.int64)  # every row, in order
        self.streak = np.zeros(0, np.int64)
        self.since = np.zeros(0, np.int64)
        self.res = np.zeros(0)  # resolution per row (see edgeflow.ops.detect.spread)
        self.res_last = np.zeros(0)  # each row's last learnt reading (NaN: none)
        self.model.res = self.res
        self.warming: dict[int, list[float]] = {}  # rows in warm-up: their readings so far
        self._last_names: object = None
        self._last_rows = np.empty(0, np.int64)
        self._in_order = False
        self.quiet = False  # known: no key in a streak of anomalies (every streak is 0)

    def __len__(self) -> int:
        return len(self.names)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A snapshot of another layout (an older edgeflow's) is read out key by key with
        today's methods, as each key's Driver state, and laid out again."""
        self.__dict__.update(state)
        if state.get("layout") != Stacked.LAYOUT:
            n = len(self.names)  # layout 2 kept no resolution and no warm-up blocks
            self.__dict__.setdefault("res", np.full(n, np.inf))
            self.__dict__.setdefault("res_last", np.full(n, np.nan))
            self.__dict__.setdefault("warming", {})
            keys = [self.driver_state(r) for r in range(len(self.names))]
            self.__dict__ = restore_stacked(self.driver, list(self.names), keys).__dict__

    def rows_of(self, names: tuple[str, ...] | list[str]) -> Rows:
        """The row of each name, adding rows for names not seen before."""
        if names is self._last_names:  # a source reuses its key tuple batch after batch
            return self._last_rows
        out = np.empty(len(names), np.int64)
        new: list[str] = []
        for i, name in enumerate(names):
            r = self.rows.get(name)
            if r is None:
                r = self.rows[name] = len(self.names)
                self.names.append(name)
                new.append(name)
            out[i] = r
        if new:
            det = self.driver.detector
            self.model.extend(stacked_model_of(det, [det.init() for _ in new]))
            self.all_rows = np.arange(len(self.names))
            self.streak = np.concatenate([self.streak, np.zeros(len(new), np.int64)])
            self.since = np.concatenate([self.since, np.full(len(new), NO_EVENT_YET, np.int64)])
            self.res = np.concatenate([self.res, np.full(len(new), np.inf)])
            self.res_last = np.concatenate([self.res_last, np.full(len(new), np.nan)])
            self.model.res = self.res
            self.model.res_finite = False
            if det.warmup > 0:
                self.warming.update(
                    (r, []) for r in range(len(self.names) - len(new), len(self.names))
                )
        self._last_names, self._last_rows = names, out
        self._in_order = len(out) == len(self.names) and bool((out == np.arange(len(out))).all())
        return out

    def rows_in_order(self, rows: Rows) -> bool:
        """Whether ``rows`` (as :meth:`rows_of` last returned) is every row, in order."""
        return rows is self._last_rows and self._in_order

    def driver_state(self, r: int) -> dict[str, Any]:
        """Row r as the Driver's per-key state (for a key that adapts, finishing in the Driver)."""
        st = self.driver.init()
        self.model.scatter(r, st["det"])
        st["streak"], st["since_event"] = int(self.streak[r]), int(self.since[r])
        last = float(self.res_last[r])
        st["det"]["res"], st["det"]["res_last"] = float(self.res[r]), None if last != last else last
        warm = self.warming.get(r)
        st["warm"] = None if warm is None else list(warm)
        return st

    def load(self, r: int, st: dict[str, Any]) -> None:
        self.model.load(r, st["det"])
        self.model.res_finite = False
        self.streak[r], self.since[r] = st["streak"], st["since_event"]
        self.res[r] = st["det"].get("res", np.inf)
        last = st["det"].get("res_last")
        self.res_last[r] = np.nan if last is None else last
        if st.get("warm") is None:
            self.warming.pop(r, None)
        else:
            self.warming[r] = list(st["warm"])
        self.quiet = False

    def run(self, rows: Rows, xmat: F64, lens: Rows) -> Events:
        """The events of a grid of keys' points (see :func:`run_stacked`)."""
        return run_stacked(self, rows, xmat, lens)

    def tick(self, x: F64) -> Events | None:
        """A live tick: one reading for every key, keys in row order. The same result as
        :meth:`run` with the fewest array operations, for models that have a tick form;
        None (nothing done) when the model or a key's state needs the general path (another
        model, a new key, a key in warm-up, a key starting to adapt: the Driver calls its
        detector's ``adapt``). Keys adapting to a lasting change (past ``adapt_after`` anomalies
        in a row) learn their reading, anomalous or not, as the Driver's do."""
        model = self.model
        if len(x) != len(self.names) or self.warming:
            return None
        driver = self.driver
        adapt = driver.adapt_after
        adapting = None  # keys past ``adapt_after`` anomalies in a row learn this one too
        starting: list[tuple[int, dict[str, Any]]] = []  # keys that start adapting now
        adapted = None  # those of them whose rows adapted in place (the model's tick form)
        # (one reduction first: a key in a streak of adapt_after is rare)
        if not self.quiet and adapt is not None and int(self.streak.max()) >= adapt:
            past = is_adapting(self.streak, adapt)
            if past.any():
                start = self.streak == adapt
                adapting = past & ~start
                # the Driver calls their detector's adapt: their state before this tick
                at = np.flatnonzero(start)
                if len(at) and model.adapt_tick(at):
                    adapted = at  # adapted in place: they learn this reading, as adapting keys
                    adapting |= start
                else:
                    starting = [(r, self.driver_state(r)) for r in at.tolist()]
        rows = self.all_rows
        if not model.res_finite:  # (res only falls: once all are finite they stay so)
            model.res_finite = bool(len(self.res)) and bool(np.isfinite(self.res).all())
        got = model.tick(rows, x)
        if got is None:
            if adapted is not None:
                model.undo_adapt(adapted)
            return None
        raw, centre, half = got
        flagged, anomalous = self.decide().flags(raw)
        events = Events()
        if adapted is not None:  # the Driver decides the few the tick form may not
            slow = self._driver_decides(adapted, raw, centre, half, x, flagged)
            if slow.any():  # (their state before this tick, back for the Driver)
                model.undo_adapt(adapted[slow])
                starting = [(r, self.driver_state(r)) for r in adapted[slow].tolist()]
                adapted = adapted[~slow]
        if starting:  # the tick leaves them alone; the Driver takes their reading below
            aside = np.zeros(len(x), bool)
            aside[[r for r, _ in starting]] = True
            flagged &= ~aside
            assert adapting is not None
            adapting &= ~aside
            anomalous = True  # (the general branch: it keeps keys aside)
        if not anomalous:
            model.learn_tick(rows, None, x)  # every key learns
            self._learnt_tick(None, x)
            if adapted is not None and len(adapted):
                model.settle_adapted(adapted)
            self.since += 1
            if not self.quiet:
                self.streak[:] = 0
                self.quiet = True  # no key has a streak of anomalies
            return events
        self.quiet = False
        learnt = ~flagged if adapting is None else ~flagged | adapting
        gone = flagged if adapting is None else flagged & ~adapting
        if starting:
            learnt &= ~aside
        model.learn_tick(rows, learnt, x)
        self._learnt_tick(learnt, x)
        if adapted is not None and len(adapted):
            model.settle_adapted(adapted)
        # (rows: every row in order, so the rows of a mask are its indices; a few of them)
        hit = np.flatnonzero(flagged)
        left_out = hit if adapting is None else np.flatnonzero(gone)
        model.forget(left_out, x[left_out])  # anomalies not learnt (CUSUM restarts its sums)
        since = self.since
        since += 1  # learnt: one more point; flagged: the anomaly counts too
        r = hit[starts_episode(since[hit], driver.decision.cooldown)]
        since[r] = 0
        streak_after_tick(self.streak, flagged)
        if len(r):
            mid, dev, rr = centre[r], half[r], raw[r]
            events.add(r, np.zeros(len(r), np.int64), event_scores(rr, driver.detector.level), rr,
                       mid - dev, mid + dev)  # fmt: skip
        for row, st in starting:
            out = driver.run(st, x[row : row + 1])
            self.load(row, st)
            if out.event[0]:
                events.add(np.array([row]), np.zeros(1, np.int64), out.score, out.raw, out.low,
                           out.high)  # fmt: skip
        return events

    def _driver_decides(
        self, at: Rows, raw: F64, centre: F64, half: F64, x: F64, flagged: Rows
    ) -> Rows:
        """Of the keys at ``at`` (a few), adapted in place and scored by the tick form: which
        the Driver must take instead (from their state before the tick), so that every
        verdict and every event is the Driver's to the bit. Those whose raw statistic is near
        the threshold (the tick's sums round otherwise than the Driver's: far more than that
        rounding, 1e-8 relative plus 1e-9 of the reading's and centre's size in spreads), and
        those whose reading raises an event (its score and range are reported)."""
        level = self.driver.detector.level
        thr, cooldown = self.decide().raw_thr, self.driver.decision.cooldown
        out = np.zeros(len(at), bool)
        for i, r in enumerate(at.tolist()):
            spread, mid = float(half[r]) / level, float(centre[r])
            if not spread > 0:  # (NaN, 0: the Driver's)
                out[i] = True
                continue
            tol = 1e-8 * thr + 1e-9 * (abs(float(x[r])) + abs(mid)) / spread
            near = not abs(float(raw[r]) - thr) > tol  # (NaN: the Driver's)
            event = bool(flagged[r]) and bool(starts_episode(int(self.since[r]) + 1, cooldown))
            out[i] = near or event
        return out

    def decide(self) -> RawThreshold:
        """The threshold decision on raw statistics (made once: a live tick is a few µs)."""
        d = self.__dict__.get("_decide")
        if d is None:
            det, dec = self.driver.detector, self.driver.decision
            d = self.__dict__["_decide"] = RawThreshold(det.level, dec.value)
        return d

    def _learnt_tick(self, learnt: Rows | None, x: F64) -> None:
        """Every row learnt its reading ``x[i]`` where ``learnt`` (None: all): resolutions."""
        step = x - self.res_last
        np.abs(step, out=step)
        lower = step < self.res  # (NaN, a row's first reading, compares False: no step)
        if learnt is None:
            self.res_last[:] = x
        else:
            lower &= learnt
            np.copyto(self.res_last, x, where=learnt)
        if lower.any():
            lower &= step > 0  # no move is no step
            self.res[lower] = step[lower]


def restore_stacked(driver: Driver, names: list[str], keys: list[dict[str, Any]]) -> Stacked:
    """A :class:`Stacked` from each key's Driver state."""
    out = Stacked(driver)
    for r, st in zip(out.rows_of(names).tolist(), keys, strict=True):
        out.load(r, st)
    return out


class Events:
    """What :func:`run_stacked` found: the anomalies that raise an event, as grid row and
    column with their score, raw statistic and expected range."""

    def __init__(self) -> None:
        self.parts: list[tuple[Rows, ...]] = []

    def add(self, *cols: Rows) -> None:
        if len(cols[0]):
            self.parts.append(cols)

    def arrays(self) -> tuple[Rows, ...]:
        """(grid row, column, score, raw, low, high), in no particular order."""
        if not self.parts:
            return tuple(np.empty(0, t) for t in (np.int64, np.int64, *[np.float64] * 4))
        if len(self.parts) == 1:  # (a live tick: nothing to join)
            return self.parts[0]
        return tuple(np.concatenate(c) for c in zip(*self.parts, strict=True))


def run_stacked(
    stacked: Stacked,
    rows: Rows,
    xmat: F64,
    lens: Rows,
    *,
    every_anomaly: bool = False,
    ranges: tuple[F64, F64] | None = None,
    wanted: np.ndarray | None = None,
    floor: F64 | None = None,
) -> Events:
    """Score and learn ``xmat`` (row i: the points of the key at state row ``rows[i]``, the
    first ``lens[i]`` of them valid) with one-at-a-time semantics; the state moves on.

    Returns the anomalies that raise an event or, with ``every_anomaly``, every anomaly
    (an ensemble decides its events over all its parts' anomalies). ``ranges``: (low, high)
    matrices shaped like ``xmat`` that receive every point's expected range; ``wanted``
    (for a model that never alarms and scores lazily, see ``MADStacked.score``): the points
    of the grid whose range the caller reads - only those are then right. ``floor``: the
    grid's :func:`~edgeflow.ops.detect.spread.step_floor_rows` (made here if not given)."""
    driver = stacked.driver
    det, dec = driver.detector, driver.decision
    cooldown, adapt = dec.cooldown, driver.adapt_after
    k, width = xmat.shape
    events = Events()
    model, streak, since = stacked.model, stacked.streak, stacked.since
    stacked.quiet = False  # streaks change here
    pos = np.zeros(k, np.int64)
    if floor is None and xmat.size >= FLOOR_FROM:
        floor = step_floor_rows(xmat, lens)
    handoff: list[int] = []
    if stacked.warming:  # keys in warm-up: the Driver collects and learns their block
        _warm_up_rows(stacked, rows, xmat, lens, pos, events, every_anomaly, ranges)
    # (an ensemble's part whose model adapts as its detector does: adapting keys stay here)
    in_pass = every_anomaly and adapt is not None and model.adapts_in_pass
    adapting = lens - pos >= DRIVER_ROW
    if not in_pass:
        adapting |= is_adapting(streak[rows], adapt)
    handoff.extend(np.flatnonzero(adapting & (lens > pos)).tolist())
    active = np.flatnonzero(~adapting & (lens > pos))
    first = True
    # points per later pass: about twice the recent gap between anomalies. A shard whose
    # keys alarm often starts the next batch with passes of that size too (scoring a whole
    # grid when each key's first anomaly comes within a few points wastes most of it)
    hint = stacked.reach_hint
    reach = 96 if hint is None else hint
    found = 0
    decide = stacked.decide()
    # (an ensemble's part: its caller orders the anomalies, so the passes may change; the
    # events of a detector on its own leave in the order of its passes, kept as they were)
    wide = every_anomaly and model.SPAN_EXACT
    while len(active):
        g = rows[active]  # state rows of the active grid rows
        rem = lens[active] - pos[active]
        lim = model.limit(g)
        # after the first pass only keys that hit an anomaly remain: short passes suffice
        span = int(rem.max()) if first and hint is None else min(int(rem.max()), reach)
        if wide and not first:  # few keys left: fewer, wider passes
            span = min(int(rem.max()), max(span, WIDE_PASS // len(active)))
        if lim is not None:  # a row decides no further than its model's next refresh
            span = min(int(rem.max()), int(lim.max()))
            rem = np.minimum(rem, lim)
        inside = np.arange(span) < rem[:, None]
        whole = first and span == width and len(active) == k and not pos.any()
        if whole:
            x = xmat  # the whole grid: no gather
        else:
            cols = pos[active][:, None] + np.arange(span)
            x = np.where(inside, xmat[active[:, None], np.minimum(cols, width - 1)], np.nan)
        first = False
        ad = _adapt_rows(stacked, g) if in_pass else None  # (before scoring, as the Driver)
        if wanted is not None and getattr(model, "LAZY", False):
            want = (
                wanted
                if whole
                else np.where(inside, wanted[active[:, None], np.minimum(cols, width - 1)], False)
            )
            raw, centre, half = model.score(g, x, wanted=want)  # type: ignore[call-arg]
        else:
            raw, centre, half = model.score(g, x)  # expected range: centre -/+ half
        flagged, _ = decide.flags(raw, inside)
        has = flagged.any(axis=1)
        # points before the first anomaly, and points decided in this pass
        f = np.where(has, np.argmax(flagged, axis=1), np.minimum(rem, span))
        if ad is not None:  # adapting keys learn their points up to the first normal one
            ad_streak, ad_since = _adapting_pass(
                stacked, events, active, pos, g, ad, flagged, inside, raw, centre, half, f
            )
            has = has & ~ad
        if ranges is not None:
            keep_ranges(ranges, active, pos, centre, half, np.where(has, f + 1, f), whole)
        model.learn(g, f)
        if floor is None:  # (a small grid: scanned as it is)
            res_g, last_g = resolution_rows(stacked.res[g], stacked.res_last[g], x, f)
        else:
            res_g, last_g = resolution_rows_within(
                stacked.res[g], stacked.res_last[g], x, f, floor[active]
            )
        stacked.res[g], stacked.res_last[g] = res_g, last_g
        since[g] += f
        if has.any():
            hit, gh, fh = active[has], g[has], f[has]
            # scoring past a key's next anomaly is wasted: size the next pass to the gaps
            reach = int(min(96, max(8, 2 * (int(fh.sum()) / len(fh) + 1))))
            found += len(fh)
            model.forget(gh, x[np.flatnonzero(has), fh])
            ev = starts_episode(since[gh] + 1, cooldown)
            keep = np.ones(len(gh), bool) if every_anomaly else ev
            if keep.any():
                r = np.flatnonzero(has)[keep]
                c = fh[keep]
                mid, dev = centre[r, c], half[r, c]
                rc = raw[r, c]
                events.add(
                    hit[keep],
                    pos[hit][keep] + c,
                    calibrate(rc, det.level),
                    rc,
                    mid - dev,
                    mid + dev,
                )
            since[gh] = np.where(ev, 0, since[gh] + 1)
        else:  # no key met an anomaly within reach: look further
            reach = min(4 * reach, width)
        streak[g] = streak_after(streak[g], f, has)
        if ad is not None:
            streak[g[ad]], since[g[ad]] = ad_streak, ad_since
        pos[active] += np.where(has, f + 1, f)
        done = pos[active] >= lens[active]
        if adapt is not None:
            start = is_adapting(streak[g], adapt) & ~done & (not in_pass)
            handoff.extend(active[start].tolist())
            done |= start
        active = active[~done]
    # (many anomalies: on average 8 or more a key)
    stacked.reach_hint = reach if found >= 8 * k else None
    for i in handoff:  # adapting keys finish their points in the Driver (one at a time)
        r, p, n = int(rows[i]), int(pos[i]), int(lens[i])
        st = stacked.driver_state(r)
        rest = driver.run(st, xmat[i, p:n])
        stacked.load(r, st)
        at = np.flatnonzero(rest.anomaly if every_anomaly else rest.event)
        events.add(
            np.full(len(at), i), p + at, rest.score[at], rest.raw[at], rest.low[at], rest.high[at]
        )
        if ranges is not None:
            ranges[0][i, p:n], ranges[1][i, p:n] = rest.low, rest.high
    return events


def _adapt_rows(stacked: Stacked, g: Rows) -> np.ndarray | None:
    """Keys at state rows ``g`` that adapt (``adapt_after`` anomalies in a row) before this
    pass: the detector's ``adapt`` on each one's state, as the Driver calls it before each
    of its passes (with no recent anomalies: the Driver's list is empty after a hand-off;
    a model that adapts in a pass reads its own). Returns which rows of ``g`` adapt (None:
    none)."""
    ad = is_adapting(stacked.streak[g], stacked.driver.adapt_after)
    if not ad.any():
        return None
    det = stacked.driver.detector
    for r in g[ad].tolist():  # (a few keys)
        st = stacked.driver_state(r)
        det.adapt(st["det"], np.empty(0))
        stacked.load(r, st)
    out: np.ndarray = ad
    return out


def _adapting_pass(
    stacked: Stacked,
    events: Events,
    active: Rows,
    pos: Rows,
    g: Rows,
    ad: np.ndarray,
    flagged: np.ndarray,
    inside: np.ndarray,
    raw: F64,
    centre: F64,
    half: F64,
    f: Rows,
) -> tuple[Rows, Rows]:
    """The adapting rows ``ad`` of a pass (see :func:`_adapt_rows`), as the Driver's
    adapting passes: each learns its points up to and including its first normal one (all
    it decided when none is normal), every anomaly among them kept (an ensemble's part:
    ``every_anomaly``). Sets ``f`` (points learnt) for them, adds their anomalies to
    ``events``; returns their streaks and event counters after the pass."""
    det, cooldown = stacked.driver.detector, stacked.driver.decision.cooldown
    normal = ~flagged & inside
    back = normal.any(axis=1)
    f[ad] = np.where(back, np.argmax(normal, axis=1) + 1, inside.sum(axis=1))[ad]
    at = np.flatnonzero(ad)
    streak = np.where(back[at], 0, stacked.streak[g[at]] + f[at])
    since = stacked.since[g[at]].copy()
    for j, i in enumerate(at.tolist()):
        cols = np.flatnonzero(flagged[i, : f[i]])
        if len(cols):
            rc, mid, dev = raw[i, cols], centre[i, cols], half[i, cols]
            events.add(np.full(len(cols), active[i]), pos[active[i]] + cols,
                       calibrate(rc, det.level), rc, mid - dev, mid + dev)  # fmt: skip
        _, last = episode_starts(cols.tolist(), int(since[j]), cooldown)
        since[j] = int(f[i]) - 1 - last if last >= 0 else int(since[j]) + int(f[i])
    return streak, since


def _warm_up_rows(
    stacked: Stacked,
    rows: Rows,
    xmat: F64,
    lens: Rows,
    pos: Rows,
    events: Events,
    every_anomaly: bool,
    ranges: tuple[F64, F64] | None,
) -> None:
    """Keys of the grid still in warm-up: the Driver takes each one's readings up to the end
    of its warm-up (collecting them, then learning the block: no verdicts) and the key's
    position moves past them; the rest of its readings go through the stacked passes."""
    driver = stacked.driver
    need = driver.detector.warmup
    warming = np.flatnonzero(
        np.fromiter((r in stacked.warming for r in rows.tolist()), bool, len(rows))
    )
    # keys whose whole warm-up block is in this grid: learnt together
    whole = np.fromiter(
        (not stacked.warming[int(rows[i])] and lens[i] >= need for i in warming.tolist()),
        bool,
        len(warming),
    )
    if whole.sum() > 1 and need > 0:
        _learn_warm_up_blocks(stacked, rows, xmat, warming[whole], need, ranges)
        pos[warming[whole]] = need
        warming = warming[~whole]
    for i in warming.tolist():
        r = int(rows[i])
        take = min(int(lens[i]), driver.detector.warmup - len(stacked.warming[r]))
        st = stacked.driver_state(r)
        out = driver.run(st, xmat[i, :take])
        stacked.load(r, st)
        at = np.flatnonzero(out.anomaly if every_anomaly else out.event)  # (none: warm-up)
        events.add(np.full(len(at), i), at, out.score[at], out.raw[at], out.low[at], out.high[at])
        if ranges is not None:
            ranges[0][i, :take], ranges[1][i, :take] = out.low, out.high
        pos[i] = take


def _learn_warm_up_blocks(
    stacked: Stacked,
    rows: Rows,
    xmat: F64,
    at: Rows,
    need: int,
    ranges: tuple[F64, F64] | None,
) -> None:
    """The grid rows ``at`` hold their keys' first ``need`` readings (their whole warm-up
    block, nothing collected before): each key learns its block without its robust outliers
    (in order, with them, for a model that needs no gaps), as the Driver's warm-up does,
    all keys in one stacked pass. No verdicts: no events, no expected range."""
    det = stacked.driver.detector
    g = rows[at]
    block = xmat[at, :need]
    if getattr(det, "warm_up_in_order", False):
        learnt = block
        count = np.full(len(at), need, np.int64)
    else:
        keep = warm_up_inliers_rows(block)
        count = keep.sum(axis=1)
        order = np.argsort(~keep, axis=1, kind="stable")  # inliers first, in order
        learnt = np.take_along_axis(block, order, axis=1)
        learnt[np.arange(need)[None, :] >= count[:, None]] = np.nan
    stacked.model.score(g, learnt)
    stacked.model.learn(g, count)
    stacked.res[g], stacked.res_last[g] = resolution_rows(
        stacked.res[g], stacked.res_last[g], learnt, count
    )
    stacked.since[g] += need  # (no events in a warm-up)
    for r in g.tolist():
        del stacked.warming[r]
    if ranges is not None:
        ranges[0][at, :need] = ranges[1][at, :need] = np.nan
    stacked.quiet = False


def keep_ranges(
    ranges: tuple[F64, F64], active: Rows, pos: Rows, centre: F64, half: F64, d: Rows, whole: bool
) -> None:
    """Write the expected range of each active row's first ``d`` points of the pass (the
    points it decided) into the (low, high) matrices, at the row's position."""
    low, high = ranges
    if whole:  # the first pass over the whole grid: later passes overwrite what is redecided
        np.subtract(centre, half, out=low)
        np.add(centre, half, out=high)
        return
    span = centre.shape[1]
    decided = np.arange(span) < d[:, None]
    if decided.any():  # (flat positions in the matrices: one index for both)
        at = ((active * low.shape[1] + pos[active])[:, None] + np.arange(span))[decided]
        mid, dev = centre[decided], half[decided]
        np.put(low, at, mid - dev)
        np.put(high, at, mid + dev)
