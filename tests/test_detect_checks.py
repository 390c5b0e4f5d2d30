"""check_detector on every detector: its stacked and tick forms equal the reference Driver,
any batching with a snapshot at every cut equals the uninterrupted run, its state stays
bounded, and its scores rank; and the checks themselves catch a detector that breaks them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgeflow.batch import F64
from edgeflow.ops import detect
from edgeflow.ops.detect import checks
from edgeflow.ops.detect.base import Detector, Scores
from edgeflow.ops.detect.zscore import ZScore, ZScoreStacked

DETECTORS: dict[str, Callable[[], Detector]] = {
    "zscore": lambda: detect.zscore(window=64),
    "ewma": lambda: detect.ewma(alpha=0.1),
    "mad": lambda: detect.mad(window=32, stride=4),
    "mad_diff": lambda: detect.MAD(window=32, stride=4, diff=True),
    "cusum": lambda: detect.cusum(),
    "seasonal": lambda: detect.seasonal(window=128, refresh=32, warmup=32),
    "variance": lambda: detect.VarianceChange(level=3.0),
    "limits": lambda: detect.limits(low=-6.0, high=6.0),
    "auto": lambda: detect.auto(),
}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_passes_check_detector(name: str) -> None:
    """Stacked = reference, batching with snapshots = uninterrupted, bounded state."""
    detect.check_detector(DETECTORS[name], rank=False)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_scores_rank(name: str) -> None:
    """Spikes of many sizes: scores monotone in raw, distinct raw values, distinct scores."""
    checks.check_scores_rank(DETECTORS[name])


# -- the checks catch broken detectors ---------------------------------------------------------
class StackedDisagrees(ZScore):
    """A stacked form that is not the reference's: the reference alarms at 2 sigma."""

    name = "stacked_disagrees"

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        s = super().score(st, x)
        raw = s.raw * 1.5
        return Scores(raw, detect.calibrate(raw, self.level), s.low, s.high)

    def stacked_model(self, states: list[dict[str, Any]]) -> ZScoreStacked:
        return ZScoreStacked(self, states)


class BatchingMatters(ZScore):
    """Learns only the last point of each batch it is given."""

    name = "batching_matters"

    def learn(self, st: dict[str, Any], x: F64) -> None:
        super().learn(st, x[-1:])


class GrowingState(ZScore):
    """Keeps every point it ever learnt."""

    name = "growing_state"

    def init(self) -> dict[str, Any]:
        return {**super().init(), "all": np.empty(0)}

    def learn(self, st: dict[str, Any], x: F64) -> None:
        super().learn(st, x)
        st["all"] = np.concatenate([st["all"], x])


class ScoresTie(ZScore):
    """Every score above the alarm level is the same."""

    name = "scores_tie"

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        s = super().score(st, x)
        return Scores(s.raw, np.minimum(s.score, 0.999), s.low, s.high)


@pytest.mark.parametrize(
    ("make", "check", "message"),
    [
        (StackedDisagrees, checks.check_stacked_equals_reference, "stacked_disagrees"),
        (BatchingMatters, checks.check_batching, "batching_matters): batching"),
        (GrowingState, checks.check_bounded_state, "growing_state): bounded state"),
        (ScoresTie, checks.check_scores_rank, "scores_tie): scores rank"),
    ],
)
def test_check_detector_names_the_detector_and_the_check_that_fails(
    make: Callable[[], Detector], check: Callable[[Callable[[], Detector]], None], message: str
) -> None:
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(make)
    with pytest.raises(AssertionError, match="check_detector"):
        detect.check_detector(make)
