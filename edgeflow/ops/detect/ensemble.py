"""Ensembles: :class:`Ensemble` (several detectors on one field), :func:`Auto` (the
default ensemble) and :class:`StackedEnsemble` (an ensemble's stacked form).

An ensemble's parts each decide and learn on their own; a point is anomalous when any part
says so, its score and raw statistic are those of the part that scores it highest (the first
of equals), its expected range is the first part's, and the ensemble's cooldown turns
anomalies into events. :class:`~edgeflow.ops.detect.driver.Driver` runs an ensemble part by
part; :class:`StackedEnsemble` runs each part stacked (one
:class:`~edgeflow.ops.detect.stacked.Stacked` per part) with the same results.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect.base import Detector, Scores
from edgeflow.ops.detect.cusum import CUSUM
from edgeflow.ops.detect.decision import NO_EVENT_YET, episode_starts, starts_episode
from edgeflow.ops.detect.driver import Driver
from edgeflow.ops.detect.mad import MAD
from edgeflow.ops.detect.seasonal import Seasonal
from edgeflow.ops.detect.stacked import Events, Rows, Stacked, run_stacked
from edgeflow.ops.detect.variance import VarianceChange


class Ensemble(Detector):
    """Several detectors on the same field, each deciding and learning on its own; the score
    is the highest of theirs and a point is anomalous when any of them says so."""

    name = "ensemble"

    def __init__(self, parts: list[Detector], name: str = "ensemble") -> None:
        self.parts = parts
        self.name = name

    # An ensemble is run by Driver part by part; these are never called directly.
    def init(self) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        raise NotImplementedError

    def learn(self, st: dict[str, Any], x: F64) -> None:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {"parts": [{"name": p.name, **p.params()} for p in self.parts]}

    def problems(self) -> list[str]:
        if not self.parts or not all(isinstance(p, Detector) for p in self.parts):
            return [f"detect.{self.name}: parts={self.parts!r} must be a list of detectors"]
        return [m for p in self.parts for m in p.problems()]


def Auto() -> Ensemble:  # noqa: N802 - reads as a class at call sites
    """The default: spikes/dips/steps (robust z of changes), sustained shifts and drifts
    (CUSUM), variance and frequency changes (fast/slow variance of changes)."""
    return Ensemble(
        [
            MAD(window=128, level=6.0, stride=16, diff=True, warmup=32),
            CUSUM(k=1.5, h=10.0, alpha=0.005, warmup=64),
            VarianceChange(level=3.0),
            Seasonal(level=6.0),
        ],
        name="auto",
    )


class StackedEnsemble:
    """An ensemble's detection state for every key of a shard: one :class:`Stacked` per part
    (the keys get the same row in each) and the ensemble's own cooldown counter."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.parts = [Stacked(p) for p in driver.parts]
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
        low, high = np.empty_like(xmat), np.empty_like(xmat)
        found = []
        for i, part in enumerate(self.parts):
            ranges = (low, high) if i == 0 else None
            gi, ci, score, raw, _, _ = run_stacked(
                part, rows, xmat, lens, every_anomaly=True, ranges=ranges
            ).arrays()
            found.append((gi, ci, score, raw, np.full(len(gi), i)))
        gi, ci, score, raw, part_of = (np.concatenate(c) for c in zip(*found, strict=True))
        out = Events()
        if not len(gi):
            self.since[rows] += lens
            return out
        # one anomaly per point: the part scoring it highest (the first of equals)
        order = np.lexsort((part_of, -score, ci, gi))
        gi, ci, score, raw = gi[order], ci[order], score[order], raw[order]
        first = np.r_[True, (gi[1:] != gi[:-1]) | (ci[1:] != ci[:-1])]
        gi, ci, score, raw = gi[first], ci[first], score[first], raw[first]
        ev = self._events(rows, lens, gi, ci)
        gi, ci = gi[ev], ci[ev]
        out.add(gi, ci, score[ev], raw[ev], low[gi, ci], high[gi, ci])
        return out

    def _events(self, rows: Rows, lens: Rows, gi: Rows, ci: Rows) -> Rows:
        """Which anomalies (sorted by grid row, then column) raise an event: none within
        ``cooldown`` points of the key's last event (the ensemble's counter moves on)."""
        cooldown = self.driver.decision.cooldown
        since = self.since
        start = np.r_[True, gi[1:] != gi[:-1]]
        gap = np.where(start, since[rows[gi]] + ci + 1, np.diff(ci, prepend=0))
        event: Rows = starts_episode(gap, cooldown)
        for g in np.unique(gi[~event]).tolist():  # keys with close anomalies: in order
            at = np.flatnonzero(gi == g)
            event[at], _ = episode_starts(ci[at].tolist(), int(since[rows[g]]), cooldown)
        since[rows] += lens  # keys without events
        at_event = np.flatnonzero(event)
        g_last = gi[at_event]
        last_col = np.full(len(rows), -1, np.int64)
        np.maximum.at(last_col, g_last, ci[at_event])
        hit = last_col >= 0
        since[rows[hit]] = lens[hit] - 1 - last_col[hit]
        return event


def auto() -> Ensemble:
    """A sensible default needing no tuning: spikes/dips, level shifts/drifts, variance changes."""
    return Auto()
