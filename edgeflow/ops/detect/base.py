"""The detector contract (:class:`Detector`), its :class:`Scores`, the score calibration and
the warm-up rule every detector shares.

Contract (every detector):

* ``init()`` -> per-key state (a small dict, bounded in size whatever the stream's length);
  ``learn(state, x)`` absorbs normal points; ``score(state, x)`` scores points *as if each
  were seen right after the ones before it* (a vectorised "prefix" pass that does not change
  the state); ``forget(state, x)`` is called for an anomalous point, which is never learnt
  (unless the driver learns anomalies or is adapting to a lasting change).
* A score is in [0, 1), higher = more anomalous, calibrated so that **0.999 is each
  detector's classic alarm level** (3 sigma for z-scores, h=5 for CUSUM, ...); ``raw`` is the
  detector's own statistic (reported too) and the score a strictly increasing map of it
  (:func:`calibrate`), so scores rank points exactly as raw does and never reach 1.0.
* A detector gives no verdict while it warms up: raw is 0 for its first ``warmup`` points
  learnt (see :func:`warm_up_mask`).
* Every scale a detector divides by is floored by the key's resolution (see
  :mod:`edgeflow.ops.detect.spread`): the runners keep ``st["res"]`` (reference form) and
  :meth:`~edgeflow.ops.detect.stacked.StackedModel.resolution` (stacked form) up to date.
* ``adapt(st, recent)`` is called while a key adapts to a lasting change (see
  :mod:`edgeflow.ops.detect.decision`); most detectors need nothing there.
* A detector with a stacked form (every key of a shard as rows of arrays, see
  :mod:`edgeflow.ops.detect.stacked`) defines ``stacked_model(states)``, which lays out the
  per-key ``states`` (as ``init()`` makes them) as the rows of its stacked model; that form
  gives the same verdicts as the reference one, as :func:`~edgeflow.ops.detect.check_detector`
  checks.
* An ensemble (:class:`~edgeflow.ops.detect.ensemble.Ensemble`) has ``parts`` (see
  :func:`parts_of`), each run on its own.
* Deciding is separate (:mod:`edgeflow.ops.detect.decision`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg, check

LN10 = math.log(10.0)


#: the score at a detector's classic alarm level (raw == level)
AT_LEVEL = 0.999


def calibrate(raw: F64, level: float) -> F64:
    """The score of a raw statistic: strictly increasing, 0 at raw <= 0, in [0, 1).

    * up to the alarm level: ``1 - 10^(-3 raw/level)`` (0.99 at 2/3 of the level, 0.999 at it);
    * above it: ``1 - 0.001 * level / raw`` (0.9999 at 10x the level, 0.99999 at 100x, ...),
      a tail that falls slowly enough that distinct raw values keep distinct float64 scores
      (at a million times the level the score is still 1 - 1e-9, resolving raw to about
      1e-7 relative) instead of rounding to exactly 1.0.

    So a score of 0.99 means "two thirds of the way to this detector's classic alarm" and each
    further 9 after 0.999 means ten times the alarm level - on every signal, because each
    detector's raw statistic is in units of the key's own spread (floored, see
    :mod:`edgeflow.ops.detect.spread`)."""
    r = np.maximum(np.asarray(raw, dtype=np.float64), 0.0) / level
    below = -np.expm1(-3.0 * LN10 * np.minimum(r, 1.0))
    above = 1.0 - (1.0 - AT_LEVEL) / np.maximum(r, 1.0)
    out: F64 = np.where(r <= 1.0, below, above)
    return out


def raw_at(score: float, level: float) -> float:
    """The inverse of :func:`calibrate`: the raw statistic whose score is ``score``
    (inf for a score of 1 or more)."""
    if score >= 1.0:
        return math.inf
    if score <= AT_LEVEL:
        return -level / 3.0 * math.log10(1.0 - score) if score > 0 else 0.0
    return level * (1.0 - AT_LEVEL) / (1.0 - score)


@dataclass
class Scores:
    raw: F64
    score: F64
    low: F64  # the expected range: values outside it are unusual
    high: F64


class Detector(ABC):
    name: str = "detector"
    level: float = 3.0
    warmup: int = 16
    #: the constructor's arguments and their valid values (see :mod:`edgeflow.ops.args`)
    ARGS: ClassVar[tuple[Arg, ...]] = ()

    @abstractmethod
    def init(self) -> dict[str, Any]: ...

    @abstractmethod
    def score(self, st: dict[str, Any], x: F64) -> Scores: ...

    @abstractmethod
    def learn(self, st: dict[str, Any], x: F64) -> None: ...

    def forget(self, st: dict[str, Any], x: float) -> None:
        """An anomalous point was seen (not learnt). CUSUM restarts here."""
        return None

    def adapt(self, st: dict[str, Any], recent: F64) -> None:
        """The key is adapting to a lasting change (``adapt_after`` anomalies in a row): called
        on every pass while it adapts, before its points are learnt. ``recent``: the streak's
        anomalous values the reference runner saw (may be empty - keep what you need from
        :meth:`forget`). Most detectors need nothing: learning the new points re-bases them."""
        return None

    def params(self) -> dict[str, Any]:
        return {}

    def arguments(self) -> dict[str, Any]:
        """The arguments this detector was built with, by the names of :attr:`ARGS`."""
        return {a.name: getattr(self, a.name, None) for a in self.ARGS}

    def problems(self) -> list[str]:
        """One line per bad argument (empty when valid); the flow's validation calls it."""
        return check(f"detect.{self.name}", self.ARGS, self.arguments())


def parts_of(det: Detector) -> list[Detector] | None:
    """The parts of an ensemble, None for a single detector."""
    parts = getattr(det, "parts", None)
    return parts if isinstance(parts, list) else None


def warm_up_mask(st: dict[str, Any], n: int, warmup: int) -> F64:
    """1.0 for points scored after warm-up, else 0.0 (no verdict while learning).

    The runners hold a key's first ``warmup`` readings back and let the detector learn them
    as one block (see :mod:`edgeflow.ops.detect.driver`), so a detector that scores has
    learnt its warm-up: this is 1.0 once anything was learnt (the block may be a few
    readings short of ``warmup`` when it had outliers)."""
    out: F64 = np.full(n, 1.0 if int(st["n"]) > 0 or warmup <= 0 else 0.0)
    return out


def warm_up_rows(learnt: np.ndarray, span: int, warmup: int) -> np.ndarray:
    """The stacked form of :func:`warm_up_mask`: for rows that have learnt ``learnt`` points,
    whether each of the next ``span`` points is scored after warm-up, as a (rows, span)
    boolean matrix."""
    out: np.ndarray = np.broadcast_to(((learnt > 0) | (warmup <= 0))[:, None], (len(learnt), span))
    return out
