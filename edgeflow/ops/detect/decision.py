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
from edgeflow.ops.detect.base import AT_LEVEL, calibrate, raw_at
from edgeflow.ops.detect.spread import floored, resolution, resolution_rows

#: points since the last event of a key that never raised one
NO_EVENT_YET = 1 << 30

#: anomalies in a row after which a key adapts to a lasting change (learns its points until
#: the first normal one): a level shift is one event, then it is the new normal
ADAPT_AFTER = 16

#: a warm-up reading further than this many robust sigmas from the warm-up block's median is
#: left out of the model's first fit (see :func:`warm_up_inliers`)
WARM_UP_OUTLIER = 5.0
#: ... unless more than this share of the block is that far out: then it is a second level
#: of the signal (a duty cycle), not a few glitches, and the whole block is learnt
WARM_UP_MINORITY = 0.2


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
        self.raw_thr = raw_thr = raw_at(thr, level)
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


def event_scores(raw: F64, level: float) -> F64:
    """:func:`~edgeflow.ops.detect.base.calibrate` of a live tick's few events' raw values,
    to the bit. Above the alarm level (where an event's raw value almost always is) the score
    is calibrate's tail ``1 - (1 - AT_LEVEL) / r``, here the same IEEE operations on Python
    floats instead of a dozen array operations; any other value goes through calibrate."""
    r = [max(v, 0.0) / level for v in raw.tolist()]
    if len(r) > 8 or not all(v > 1.0 for v in r):  # (NaN compares False: calibrate's)
        return calibrate(raw, level)
    return np.array([1.0 - (1.0 - AT_LEVEL) / v for v in r])


def starts_episode(gap: Any, cooldown: Any) -> Any:
    """Whether an anomaly ``gap`` points after the key's last event (1: the next point)
    raises an event: only when no event was raised within ``cooldown`` points. Scalars or
    arrays."""
    return gap > cooldown


def episode_starts(at: list[int], since: int, cooldown: int | list[int]) -> tuple[list[bool], int]:
    """For one key's anomalies at positions ``at`` (increasing) of a segment, where the key's
    last event was ``since`` points before the segment's first point (counting that point
    as 1 when the event was on the point just before): which raise an event, and the
    position of the last event in the segment (-1: none). ``cooldown``: one for all, or
    each anomaly's own."""
    out: list[bool] = []
    last = -1
    cools = cooldown if isinstance(cooldown, list) else [cooldown] * len(at)
    for i, cool in zip(at, cools, strict=True):
        ev = bool(starts_episode(i - last if last >= 0 else since + i + 1, cool))
        out.append(ev)
        if ev:
            last = i
    return out, last


def streak_after(streak: Any, normal: Any, anomalous: Any) -> Any:
    """Anomalies in a row after ``normal`` normal points (any normal point resets the count)
    followed by an anomaly where ``anomalous``. Scalars or arrays."""
    return np.where(normal > 0, 0, streak) + anomalous


def streak_after_tick(streak: np.ndarray, anomalous: np.ndarray) -> None:
    """:func:`streak_after` of one point per key, in place: ``streak`` (int array) becomes
    ``streak + 1`` where ``anomalous`` and 0 elsewhere (two array operations: a live tick)."""
    np.add(streak, 1, out=streak)
    np.multiply(streak, anomalous, out=streak)


def warm_up_inliers(block: F64) -> np.ndarray:
    """Which readings of a key's warm-up block the model learns first: all but those further
    than :data:`WARM_UP_OUTLIER` robust sigmas from the block's median. The robust sigma is
    1.4826 MAD (it holds with up to half the block contaminated), else 1.2533 x the mean
    absolute deviation, floored by the block's resolution (see
    :mod:`edgeflow.ops.detect.spread`) - so a few early outliers (a sensor reading 0 at
    power-on) do not poison the model, and a quantised block keeps every reading. When more
    than :data:`WARM_UP_MINORITY` of the block is that far out, the far readings are a level
    the signal spends real time at (a two-level duty cycle) and every reading is kept."""
    if len(block) < 5:
        return np.ones(len(block), bool)
    med = float(np.median(block))
    dev = np.abs(block - med)
    scale = 1.4826 * float(np.median(dev))
    if scale <= 0:
        scale = 1.2533 * float(dev.mean())
    res, _ = resolution(math.inf, None, block)
    scale = float(floored(scale, res, med))
    out: np.ndarray = dev <= WARM_UP_OUTLIER * scale
    if (~out).sum() > WARM_UP_MINORITY * len(block):
        out[:] = True  # a level the signal spends real time at (a square wave): not outliers
    return out


def warm_up_inliers_rows(blocks: F64) -> np.ndarray:
    """:func:`warm_up_inliers` of each row of ``blocks`` (keys' whole warm-up blocks of one
    length), in array operations: the same readings, row by row."""
    k, n = blocks.shape
    if n < 5:
        return np.ones((k, n), bool)
    med = np.median(blocks, axis=1)
    dev = np.abs(blocks - med[:, None])
    scale = 1.4826 * np.median(dev, axis=1)
    flat = ~(scale > 0)
    if flat.any():
        scale[flat] = 1.2533 * np.array([float(d.mean()) for d in dev[flat]])
    res, _ = resolution_rows(np.full(k, math.inf), np.full(k, np.nan), blocks, np.full(k, n))
    scale = floored(scale, res, med)
    out: np.ndarray = dev <= WARM_UP_OUTLIER * scale[:, None]
    out[(~out).sum(axis=1) > WARM_UP_MINORITY * n] = True  # a level it spends time at
    return out


def is_adapting(streak: Any, adapt_after: int | None) -> Any:
    """Whether a key with ``streak`` anomalies in a row adapts: learns its points, anomalous
    or not, until the first normal one (``adapt_after`` None: never). Scalars or arrays."""
    if adapt_after is None:
        return np.zeros(np.shape(streak), bool) if np.ndim(streak) else False
    return streak >= adapt_after
