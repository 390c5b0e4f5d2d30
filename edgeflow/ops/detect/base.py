"""The detector contract (:class:`Detector`), its :class:`Scores`, the score calibration and
the warm-up rule every detector shares.

Contract (every detector):

* ``init()`` -> per-key state (a small dict, bounded in size whatever the stream's length);
  ``learn(state, x)`` absorbs normal points; ``score(state, x)`` scores points *as if each
  were seen right after the ones before it* (a vectorised "prefix" pass that does not change
  the state); ``forget(state, x)`` is called for an anomalous point, which is never learnt
  (unless the driver learns anomalies or is adapting to a lasting change).
* A score is in [0, 1), higher = more anomalous, calibrated so that **0.999 is each
  detector's classic alarm level** (3 sigma for z-scores, h=5 for CUSUM, ...): score =
  1 - 10^(-3 * raw / level), where ``raw`` is the detector's own statistic (reported too).
* A detector gives no verdict while it warms up: raw is 0 for its first ``warmup`` points
  learnt (see :func:`warm_up_mask`).
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


def calibrate(raw: F64, level: float) -> F64:
    """1 - 10^(-3 raw/level): 0 for raw <= 0, 0.999 at the classic alarm level."""
    out: F64 = np.asarray(-np.expm1(-3.0 * LN10 * np.maximum(raw, 0.0) / level), dtype=np.float64)
    return out


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
    """1.0 for points scored after warm-up, else 0.0 (no verdict while learning)."""
    seen = int(st["n"]) + np.arange(n)
    out: F64 = (seen >= warmup).astype(np.float64)
    return out


def warm_up_rows(learnt: np.ndarray, span: int, warmup: int) -> np.ndarray:
    """The stacked form of :func:`warm_up_mask`: for rows that have learnt ``learnt`` points,
    whether each of the next ``span`` points is scored after warm-up, as a (rows, span)
    boolean matrix."""
    out: np.ndarray = (learnt[:, None] + np.arange(span)) >= warmup
    return out
