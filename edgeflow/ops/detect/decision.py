"""Deciding: scores -> anomalies -> events, the one implementation every path uses.

* :class:`Decision` (made by :func:`threshold` or :func:`quantile`): the threshold a score is
  compared with, fixed or the q-quantile of the key's recent normal scores
  (:meth:`Decision.observe` keeps that up to date).
* The threshold compare: :func:`is_anomalous` on scores, :class:`RawThreshold` on raw
  statistics (the same verdicts, for the vectorised paths).
* Cooldown, one event per episode: :func:`starts_episode` (vectorised) and
  :func:`episode_starts` (anomalies of one key in order). An anomaly raises an event unless
  an event was raised within ``cooldown`` points before it.
* Streak and adapting: :func:`streak_after` counts anomalies in a row (a normal point
  resets it); :func:`is_adapting` says when a key has seen ``adapt_after`` of them in a row -
  a lasting change, not a glitch - and so learns its points, anomalous or not, until the
  first normal one.

:class:`~edgeflow.ops.detect.driver.Driver` (one key, one point at a time), the stacked runner
(:func:`~edgeflow.ops.detect.stacked.run_stacked`), its live ticks and the stacked ensemble
all call these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.args import Arg, check, counter, points, rate
from edgeflow.ops.detect.base import calibrate

#: points since the last event of a key that never raised one
NO_EVENT_YET = 1 << 30


@dataclass(frozen=True)
class Decision:
    """Turns scores into anomaly verdicts. ``kind`` is ``threshold`` or ``quantile``."""

    kind: str = "threshold"
    value: float = 0.999
    every: int = 256
    floor: float = 0.99
    cooldown: int = 64  # after an event, anomalous points within this many points raise no new one

    def init(self) -> dict[str, Any]:
        return {
            "thr": self.value if self.kind == "threshold" else 1.0,
            "scores": np.empty(0),
            "since": 0,
        }

    def observe(self, dec: dict[str, Any], normal_scores: F64, count: int = 0) -> None:
        """The key decided ``normal_scores`` (normal points, in order) and ``count``
        anomalies: a quantile decision keeps the scores and refreshes its threshold every
        ``every`` points (never below ``floor``); a fixed threshold keeps nothing."""
        if self.kind != "quantile":
            return
        dec["scores"] = np.concatenate([dec["scores"], normal_scores])[-8 * self.every :]
        dec["since"] += len(normal_scores) + count
        if dec["since"] >= self.every:
            dec["since"] = 0
            if len(dec["scores"]):
                dec["thr"] = max(self.floor, float(np.quantile(dec["scores"], self.value)))

    def problems(self) -> list[str]:
        """One line per bad argument (empty when valid); the flow's validation calls it."""
        rules: tuple[Arg, ...]
        if self.kind == "threshold":
            rules = (rate("score"), counter("cooldown"))
            values = {"score": self.value, "cooldown": self.cooldown}
        elif self.kind == "quantile":
            rules = (
                rate("q"),
                points("every", 1),
                Arg("floor", "number", 0, 1),
                counter("cooldown"),
            )
            values = {"q": self.value, "every": self.every, "floor": self.floor}
            values["cooldown"] = self.cooldown
        else:
            return [
                f"decision kind={self.kind!r}: use detect.threshold(...) or detect.quantile(...)"
            ]
        return check(f"detect.{self.kind}", rules, values)


def threshold(score: float = 0.999, *, cooldown: int = 64) -> Decision:
    """Anomalous when the score reaches ``score`` (0.999 = the detector's classic alarm level).
    One event per episode: anomalous points within ``cooldown`` points of the last event are
    still kept out of the model but raise no new event."""
    return Decision("threshold", score, cooldown=cooldown)


def quantile(
    q: float = 0.999, *, every: int = 256, floor: float = 0.99, cooldown: int = 64
) -> Decision:
    """Adaptive: anomalous above the q-quantile of the key's recent normal scores (refreshed
    every ``every`` points, never below ``floor``; 1.0 = nothing flagged until the first refresh)."""
    return Decision("quantile", q, every, floor, cooldown)


def is_anomalous(score: F64, thr: float) -> np.ndarray:
    """The threshold compare: a point is anomalous when its score reaches the threshold."""
    out: np.ndarray = score >= thr
    return out


class RawThreshold:
    """:func:`is_anomalous` on raw statistics, for a fixed threshold: score >= thr where
    score is ``calibrate(raw, level)``, an increasing function, so raw is compared with the
    threshold's raw value and calibrate() runs only within rounding of it (almost never)."""

    def __init__(self, level: float, thr: float) -> None:
        self.level, self.thr = level, thr
        raw_thr = -level / 3.0 * math.log10(1.0 - thr) if thr < 1 else math.inf
        self.near, self.sure = raw_thr * (1 - 1e-9), raw_thr * (1 + 1e-9)

    def flags(self, raw: F64, inside: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """(anomalous points, whether there is any)."""
        flagged = raw >= self.near
        if inside is not None:
            flagged &= inside
        if not flagged.any():
            return flagged, False
        edge = np.flatnonzero(flagged & (raw < self.sure))
        if len(edge):
            flagged.flat[edge] = is_anomalous(calibrate(raw.flat[edge], self.level), self.thr)
        return flagged, True


def starts_episode(gap: Any, cooldown: int) -> Any:
    """Whether an anomaly ``gap`` points after the key's last event (1: the next point)
    raises an event: only when no event was raised within ``cooldown`` points. Scalars or
    arrays."""
    return gap > cooldown


def episode_starts(at: list[int], since: int, cooldown: int) -> tuple[list[bool], int]:
    """For one key's anomalies at positions ``at`` (increasing) of a segment, where the key's
    last event was ``since`` points before the segment's first point (counting that point
    as 1 when the event was on the point just before): which raise an event, and the
    position of the last event in the segment (-1: none)."""
    out: list[bool] = []
    last = -1
    for i in at:
        ev = bool(starts_episode(i - last if last >= 0 else since + i + 1, cooldown))
        out.append(ev)
        if ev:
            last = i
    return out, last


def streak_after(streak: Any, normal: Any, anomalous: Any) -> Any:
    """Anomalies in a row after ``normal`` normal points (any normal point resets the count)
    followed by an anomaly where ``anomalous``. Scalars or arrays."""
    return np.where(normal > 0, 0, streak) + anomalous


def is_adapting(streak: Any, adapt_after: int | None) -> Any:
    """Whether a key with ``streak`` anomalies in a row adapts: learns its points, anomalous
    or not, until the first normal one (``adapt_after`` None: never). Scalars or arrays."""
    if adapt_after is None:
        return np.zeros(np.shape(streak), bool) if np.ndim(streak) else False
    return streak >= adapt_after
