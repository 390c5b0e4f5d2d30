"""``check_detector``: the checks every detector passes (River's ``check_estimator`` is the
model), so that a change to a detector's math, made in its one file, is proven consistent
across its forms.

Given a factory of a detector, :func:`check_detector` asserts, raising AssertionError with a
message naming the detector and the check:

* ``stacked = reference``: on generated series of several keys, the stacked form (2-D passes
  across keys, and live ticks of one reading per key) raises the same events and flags the
  same anomalies as the reference :class:`~edgeflow.ops.detect.driver.Driver`, with scores
  and expected ranges equal within 1e-9 relative (a detector without a stacked form: the
  flow's per-key path equals the Driver);
* ``batching``: any cutting of a stream into batches, with a pickle round-trip of the state
  at every cut, gives the uninterrupted run's results (the Driver's, and the flow step's),
  on short series of several keys and on a long realistic one (:func:`realistic_series`:
  tens of thousands of readings, long enough for models re-estimated every few thousand
  readings to re-estimate many times within one batch);
* ``bounded state``: the pickled state after 20,000 points is no larger than after 2,000
  points, give or take a small margin;
* ``scores rank``: on a series with spikes of many sizes, scores are monotone in the raw
  statistic and distinct raw values give distinct scores (each part of an ensemble on its
  own: their raw statistics are on different scales). :func:`check_scores_rank` runs this
  one alone.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeflow.batch import F64, Batch
from edgeflow.ops.detect.base import Detector
from edgeflow.ops.detect.decision import threshold
from edgeflow.ops.detect.driver import Driver
from edgeflow.ops.detect.ensemble import Ensemble, StackedEnsemble
from edgeflow.ops.detect.kernel import DetectKernel
from edgeflow.ops.detect.stacked import Stacked, run_stacked, supports

Factory = Callable[[], Detector]
RTOL = 1e-9


def series(seed: int, n: int) -> F64:
    """A test signal: a slow sine with noise, spikes up and down, a level shift halfway and
    a burst of variance."""
    rng = np.random.default_rng(seed)
    x: F64 = np.sin(np.arange(n) / 15) * 2 + rng.normal(0, 0.3, n)
    x[rng.choice(n, max(4, n // 200), replace=False)] += rng.choice([-8.0, 8.0], max(4, n // 200))
    x[n // 2 :] += 3
    x[n // 3 : n // 3 + n // 20] *= 4
    return x


def realistic_series(seed: int, n: int) -> F64:
    """A long test signal shaped like monitoring data: whole numbers on a daily rhythm of
    288 readings that moves to 200 halfway (its period changes), one day without its
    rhythm, spikes and dips in 0.2 % of readings and a lasting level shift at two thirds."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    period = np.where(i < n // 2, 288, 200)
    x: F64 = 20 + 10 * np.sin(np.cumsum(2 * np.pi / period)) + rng.normal(0, 1.5, n)
    day = int(rng.integers(3, max(4, n // 2 // 288))) * 288
    flat = x[day : day + 288]  # (a view)
    flat[:] = 20 + rng.normal(0, 1.5, len(flat))
    at = rng.choice(n, max(1, n // 500), replace=False)
    x[at] += rng.choice([-12.0, 12.0], len(at))
    x[2 * n // 3 :] += 15
    out: F64 = np.round(x)
    return out


def _fail(name: str, check: str, what: str) -> AssertionError:
    return AssertionError(f"check_detector({name}): {check}: {what}")


def _close(a: F64, b: F64) -> bool:
    """Equal within RTOL relative (to the larger magnitude of the two arrays), NaN = NaN."""
    scale = max(
        1.0, float(np.nanmax(np.abs(a), initial=0.0)), float(np.nanmax(np.abs(b), initial=0.0))
    )
    return bool(np.allclose(a, b, rtol=RTOL, atol=RTOL * scale, equal_nan=True))


def _driver_run(make: Factory, x: F64, cuts: list[int] | None = None) -> dict[str, F64]:
    """One key through the Driver, whole or cut at ``cuts`` with a pickle round-trip of the
    state at every cut."""
    drv = Driver(make(), threshold())
    st = drv.init()
    outs = []
    bounds = [0, *(cuts or []), len(x)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        o = drv.run(st, x[a:b])
        outs.append(o)
        st = pickle.loads(pickle.dumps(st))
    return {
        name: np.concatenate([getattr(o, name) for o in outs])
        for name in ("raw", "score", "anomaly", "event", "low", "high")
    }


def grid_batch(keys: tuple[str, ...], xs: F64, t0: int) -> Batch:
    """Readings (time, key) of every key, time by time, as one batch."""
    per, nk = xs.shape
    return Batch(
        ("v",),
        keys,
        np.tile(np.arange(nk, dtype=np.int32), per),
        np.repeat(np.arange(t0, t0 + per, dtype=np.int64), nk),
        np.ascontiguousarray(xs).reshape(1, -1),
    )


def _kernel_events(
    make: Factory, keys: tuple[str, ...], xs: F64, cuts: list[int], snapshot: bool
) -> dict[tuple[str, int], float]:
    """The flow step's events (key, time) -> score over ``xs`` (time x key) cut at ``cuts``."""
    kernel = DetectKernel("check", "v", make(), threshold())
    st = kernel.init()
    got: dict[tuple[str, int], float] = {}
    bounds = [0, *cuts, len(xs)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out = kernel.step_batch(st, grid_batch(keys, xs[a:b], a))
        if out is not None:
            c = out.columns
            for k, t, s in zip(c["key"], np.asarray(c["t"]).tolist(), c["score"], strict=True):
                got[(k, t)] = float(s)
        if snapshot:
            st = pickle.loads(pickle.dumps(st))
    return got


def _same_events(
    name: str, check: str, got: dict[tuple[str, int], float], want: dict[tuple[str, int], float]
) -> None:
    if got.keys() != want.keys():
        extra, missing = sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5]
        raise _fail(name, check, f"events differ: extra {extra}, missing {missing}")
    if want:
        ks = sorted(want)
        if not _close(np.array([got[k] for k in ks]), np.array([want[k] for k in ks])):
            raise _fail(name, check, "event scores differ by more than 1e-9 relative")


def _driver_events(
    make: Factory, keys: tuple[str, ...], xs: F64
) -> tuple[dict[tuple[str, int], float], list[dict[str, F64]]]:
    runs = [_driver_run(make, xs[:, i]) for i in range(len(keys))]
    events = {
        (k, int(t)): float(r["score"][t])
        for k, r in zip(keys, runs, strict=True)
        for t in np.flatnonzero(r["event"])
    }
    return events, runs


def check_stacked_equals_reference(make: Factory, *, n: int = 1500, n_keys: int = 5) -> None:
    """Check (a): the stacked form (bulk passes and live ticks) = the reference Driver."""
    det = make()
    name = det.name
    keys = tuple(f"k{i}" for i in range(n_keys))
    for seed in (1, 2):
        xs = np.stack([series(seed * 100 + i, n) for i in range(n_keys)], axis=1)
        want, runs = _driver_events(make, keys, xs)
        if not supports(det, threshold(), False):  # the flow runs it per key: the Driver
            _same_events(
                name, "flow step = reference", _kernel_events(make, keys, xs, [], False), want
            )
            continue
        _same_events(
            name, "stacked passes = reference", _kernel_events(make, keys, xs, [], False), want
        )
        ticks = list(range(1, min(n, 400)))
        _same_events(
            name,
            "live ticks = reference",
            _kernel_events(make, keys, xs[:400], ticks, False),
            _driver_events(make, keys, xs[:400])[0],
        )
        parts = det.parts if isinstance(det, Ensemble) else [det]
        for j in range(len(parts)):
            _stacked_anomalies_equal(
                name, functools.partial(_part, make, j), xs, runs if len(parts) == 1 else None
            )


def _part(make: Factory, j: int) -> Detector:
    det = make()
    return det.parts[j] if isinstance(det, Ensemble) else det


def _stacked_anomalies_equal(
    name: str, make: Factory, xs: F64, runs: list[dict[str, F64]] | None
) -> None:
    """Every anomaly, its score and every point's expected range of one stacked detector
    equal the Driver's."""
    det = make()
    if runs is None:
        runs = [_driver_run(make, xs[:, i]) for i in range(xs.shape[1])]
    stacked = Stacked(Driver(det, threshold()))
    n, nk = xs.shape
    rows = stacked.rows_of([f"k{i}" for i in range(nk)])
    xmat = np.ascontiguousarray(xs.T)
    low, high = np.empty_like(xmat), np.empty_like(xmat)
    gi, ci, score, _, _, _ = run_stacked(
        stacked, rows, xmat, np.full(nk, n, np.int64), every_anomaly=True, ranges=(low, high)
    ).arrays()
    label = f"{name}/{det.name}"
    for i, r in enumerate(runs):
        at = np.sort(ci[gi == i])
        if not np.array_equal(at, np.flatnonzero(r["anomaly"])):
            raise _fail(label, "stacked anomalies = reference", f"key {i}: anomalies differ")
        order = np.argsort(ci[gi == i])
        if not _close(score[gi == i][order], r["score"][at]):
            raise _fail(label, "stacked scores = reference", f"key {i}: scores differ")
        if not (_close(low[i], r["low"]) and _close(high[i], r["high"])):
            raise _fail(label, "stacked expected range = reference", f"key {i}: ranges differ")


def check_batching(
    make: Factory, *, n: int = 1500, n_keys: int = 4, seed: int = 7, long_n: int = 24_000
) -> None:
    """Check (b): any batching, with a pickle round-trip of the state at every cut, equals
    the uninterrupted run: the Driver (every output) and the flow step (its events), on
    :func:`series` of ``n`` readings and on one key's :func:`realistic_series` of
    ``long_n`` readings (0: not run)."""
    name = make().name
    rng = np.random.default_rng(seed)
    x = series(seed, n)
    _driver_batching(make, name, x, np.unique(rng.integers(1, n, 40)).tolist())
    if long_n:
        long_x = realistic_series(seed, long_n)
        long_cuts = np.random.default_rng(seed + 1).integers(1, long_n, 40)
        _driver_batching(make, name, long_x, np.unique(long_cuts).tolist())
        whole = _kernel_events(make, ("k0",), long_x[:, None], [], False)
        for size in (999, 4096):  # a stacked pass per batch; a batch of its own in the Driver
            _same_events(
                name,
                f"batching (flow step, one long key, batches of {size}, snapshot at every cut)",
                _kernel_events(
                    make, ("k0",), long_x[:, None], list(range(size, long_n, size)), True
                ),
                whole,
            )
    keys = tuple(f"k{i}" for i in range(n_keys))
    xs = np.stack([series(seed * 10 + i, n) for i in range(n_keys)], axis=1)
    small = [*range(1, 6), *rng.integers(6, n, 30).tolist()]  # single ticks and bigger cuts
    cuts = np.unique(small).tolist()
    _same_events(
        name,
        "batching (flow step, snapshot at every cut)",
        _kernel_events(make, keys, xs, cuts, True),
        _kernel_events(make, keys, xs, [], False),
    )


def _driver_batching(make: Factory, name: str, x: F64, cuts: list[int]) -> None:
    """The Driver on ``x`` cut at ``cuts`` (a pickle round-trip at each) = uninterrupted."""
    whole, cut = _driver_run(make, x), _driver_run(make, x, cuts)
    for out in ("anomaly", "event"):
        if not np.array_equal(whole[out], cut[out]):
            at = int(np.flatnonzero(whole[out] != cut[out])[0])
            raise _fail(
                name,
                "batching (Driver)",
                f"{out} differs from reading {at} of {len(x)} when cut at {cuts[:8]}...",
            )
    for out in ("raw", "score", "low", "high"):
        if not _close(whole[out], cut[out]):
            raise _fail(
                name, "batching (Driver)", f"{out} differs when cut at {cuts[:8]}... ({len(x)})"
            )


def _state_size(make: Factory, n: int, stacked: bool) -> int:
    x = series(11, n)
    drv = Driver(make(), threshold())
    if stacked:
        st: Any = StackedEnsemble(drv) if isinstance(drv.detector, Ensemble) else Stacked(drv)
        rows = st.rows_of(["k0", "k1"])
        st.run(rows, np.stack([x, x[::-1].copy()]), np.full(2, n, np.int64))
    else:
        st = drv.init()
        drv.run(st, x)
    return len(pickle.dumps(st))


def check_bounded_state(make: Factory, *, margin: float = 0.1, slack: int = 512) -> None:
    """Check (c): the pickled state after 20,000 points is at most ``margin`` (relative) plus
    ``slack`` bytes larger than after 2,000 points (the Driver's, and the stacked form's)."""
    det = make()
    forms = [False, True] if supports(det, threshold(), False) else [False]
    for stacked in forms:
        small, big = _state_size(make, 2_000, stacked), _state_size(make, 20_000, stacked)
        if big > small * (1 + margin) + slack:
            form = "stacked" if stacked else "Driver"
            raise _fail(
                det.name, "bounded state", f"{form} state {small} B at 2k points, {big} B at 20k"
            )


def check_scores_rank(make: Factory, *, n: int = 4000, seed: int = 5) -> None:
    """Check (d): on a series with spikes of many sizes, scores are monotone in the raw
    statistic and distinct raw values give distinct scores (per part of an ensemble)."""
    det = make()
    parts = det.parts if isinstance(det, Ensemble) else [det]
    rng = np.random.default_rng(seed)
    x = series(seed, n)
    at = rng.choice(np.arange(n // 4, n), 60, replace=False)
    x[at] += rng.choice([-1.0, 1.0], 60) * np.geomspace(1.0, 1e4, 60)  # spikes of many sizes
    for j, part in enumerate(parts):
        out = _driver_run(functools.partial(_part, make, j), x)
        raw, score = out["raw"], out["score"]
        order = np.argsort(raw, kind="stable")
        r, s = raw[order], score[order]
        label = f"{det.name}/{part.name}" if len(parts) > 1 else det.name
        if (np.diff(s) < 0).any():
            raise _fail(label, "scores rank", "a higher raw statistic has a lower score")
        distinct = np.diff(r) > 0
        ties = int((distinct & (np.diff(s) == 0)).sum())
        if ties:
            top = float(r[1:][distinct & (np.diff(s) == 0)].min())
            raise _fail(
                label,
                "scores rank",
                f"{ties} distinct raw values share a score (from raw {top:.4g} on, score {float(s[-1])!r})",
            )


def check_detector(make: Factory, *, rank: bool = True) -> None:
    """Run every check on the detector ``make()`` builds (see the module docstring); raises
    AssertionError naming the detector and the check that failed. ``rank=False`` leaves out
    the scores-rank check (run it alone with :func:`check_scores_rank`)."""
    check_stacked_equals_reference(make)
    check_batching(make)
    check_bounded_state(make)
    if rank:
        check_scores_rank(make)
