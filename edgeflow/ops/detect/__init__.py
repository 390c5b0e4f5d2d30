"""Streaming anomaly detectors: one contract, a separate decision step, no engine code.

The public API (``from edgeflow.ops import detect``): the constructors users call
(:func:`zscore`, :func:`ewma`, :func:`mad`, :func:`cusum`, :func:`seasonal`, :func:`limits`,
:func:`auto`), the detector classes, the contract (:class:`Detector`, :class:`Scores`,
:func:`calibrate`), the decisions (:func:`threshold`, :func:`quantile`, :class:`Decision`),
the reference runner (:class:`Driver`), :func:`make` / :data:`DETECTORS` (detectors by name)
and :func:`check_detector` (the checks every detector passes).

Layout, one job per module:

* ``base``: the detector contract, scores, calibration, the warm-up rule.
* ``decision``: threshold, cooldown (one event per episode), streak/adapt - the one
  implementation every path uses.
* one file per detector (``zscore``, ``ewma``, ``mad``, ``cusum``, ``seasonal``,
  ``variance``, ``limits``): its reference (one-at-a-time / prefix) form, its stacked form
  (every key as rows of arrays) and its live tick form, side by side; ``filters``: the
  exponential filters the EWMA-based ones share.
* ``driver``: the reference one-key runner; ``stacked``: the stacked machinery (passes
  across keys, live ticks); ``ensemble``: ensembles and ``auto``; ``kernel``: the flow's
  detect step (:class:`~edgeflow.ops.detect.kernel.DetectKernel`); ``checks``:
  :func:`check_detector`.

(The constructors share their names with the detector modules: ``detect.zscore`` is the
constructor; import a module's contents with ``from edgeflow.ops.detect.zscore import ...``.)
"""

from __future__ import annotations

from typing import Any

from edgeflow.ops.detect.base import Detector, Scores, calibrate
from edgeflow.ops.detect.checks import check_detector
from edgeflow.ops.detect.cusum import CUSUM, cusum
from edgeflow.ops.detect.decision import Decision, quantile, threshold
from edgeflow.ops.detect.driver import Driver, DriverOut
from edgeflow.ops.detect.ensemble import Auto, Ensemble, auto
from edgeflow.ops.detect.ewma import EWMA, ewma
from edgeflow.ops.detect.limits import Limits, limits
from edgeflow.ops.detect.mad import MAD, mad
from edgeflow.ops.detect.seasonal import Seasonal, seasonal
from edgeflow.ops.detect.variance import VarianceChange
from edgeflow.ops.detect.zscore import ZScore, zscore

__all__ = [
    "CUSUM", "DETECTORS", "EWMA", "MAD", "Auto", "Decision", "Detector", "Driver", "DriverOut",
    "Ensemble", "Limits", "Scores", "Seasonal", "VarianceChange", "ZScore", "auto", "calibrate",
    "check_detector", "cusum", "ewma", "limits", "mad", "make", "quantile", "seasonal",
    "threshold", "zscore",
]  # fmt: skip

#: the detectors ``make`` (and ``edgeflow score``) build by name, besides ``auto``
DETECTORS: dict[str, Any] = {
    "zscore": ZScore, "ewma": EWMA, "mad": MAD, "cusum": CUSUM, "seasonal": Seasonal,
    "limits": Limits,
}  # fmt: skip


def make(name: str, **params: Any) -> Detector:
    """The detector called ``name`` (a key of :data:`DETECTORS`, or ``auto``) built with
    ``params``; ValueError naming the detector for an unknown name or argument."""
    if name == "auto":
        return Auto()
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)}")
    try:
        det: Detector = DETECTORS[name](**params)
        return det
    except TypeError as exc:
        raise ValueError(f"detector {name!r}: {exc}") from None
