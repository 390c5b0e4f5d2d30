"""The reference runner: :class:`Driver` runs a detector and a decision on one key's points
exactly as a one-at-a-time loop would (results do not depend on how points are batched).

It scores the rest of the segment in one vectorised pass, takes the points up to the first
anomaly as final, learns them, skips the anomaly (the detector forgets it), and repeats from
there.

Three rules of every runner live here in their reference form (the stacked runner hands a
key to the Driver while either of the first two applies):

* **Warm-up**: a key's first ``detector.warmup`` readings get no verdict (score 0); they are
  collected and learnt as one block once complete, without the block's robust outliers
  (:func:`~edgeflow.ops.detect.decision.warm_up_inliers`).
* **Adapting**: after ``adapt_after`` anomalies in a row the detector's ``adapt`` is called
  and every point is learnt until the first normal one.
* **Resolution**: the smallest non-zero step between consecutive learnt readings, kept in
  the detector's state as ``st["res"]`` for its spread floor
  (:mod:`edgeflow.ops.detect.spread`). The decision rules (threshold, cooldown, streak/adapt) are those of
:mod:`edgeflow.ops.detect.decision`. An ensemble is run part by part, each part deciding and
learning on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect.base import Detector, Scores, parts_of
from edgeflow.ops.detect.decision import (
    ADAPT_AFTER,
    NO_EVENT_YET,
    Decision,
    episode_starts,
    is_adapting,
    is_anomalous,
    streak_after,
    warm_up_inliers,
)
from edgeflow.ops.detect.spread import resolution


@dataclass
class DriverOut:
    raw: F64
    score: F64
    anomaly: np.ndarray
    low: F64
    high: F64
    threshold: F64
    event: np.ndarray = field(
        default_factory=lambda: np.zeros(0, bool)
    )  # anomalies that raise an event
    #: per point, the cooldown an anomaly there needs (None: the decision's; an ensemble's
    #: broken seasonal pattern is one event per period)
    cooldown: np.ndarray | None = None


@dataclass
class Driver:
    """Runs a detector and a decision on one key's points with one-at-a-time semantics.

    ``adapt_after``: after that many anomalies in a row (a lasting change of level, not a
    glitch), the detector learns them, so it settles on the new normal."""

    detector: Detector
    decision: Decision = field(default_factory=Decision)
    learn_anomalies: bool = False
    max_pass: int = 4096
    min_pass: int = 32
    adapt_after: int | None = ADAPT_AFTER

    def __post_init__(self) -> None:
        self.parts = [
            Driver(
                p,
                self.decision,
                self.learn_anomalies,
                self.max_pass,
                self.min_pass,
                self.adapt_after,
            )
            for p in parts_of(self.detector) or ()
        ]

    def init(self) -> dict[str, Any]:
        if self.parts:
            return {"parts": [p.init() for p in self.parts]}
        warm: list[float] | None = [] if self.detector.warmup > 0 else None
        return {
            "det": self.detector.init(),
            "dec": self.decision.init(),
            "streak": 0,
            "warm": warm,
            "recent": [],
        }

    def run(self, st: dict[str, Any], x: F64) -> DriverOut:
        out = self._combined(st, x)
        out.event = self._events(st, out.anomaly, out.cooldown)
        return out

    def _events(
        self, st: dict[str, Any], anomaly: np.ndarray, cooldown: np.ndarray | None = None
    ) -> np.ndarray:
        """An anomaly raises an event unless one was raised within ``cooldown`` points (the
        decision's, or per point where given)."""
        event = np.zeros(len(anomaly), bool)
        since = st.setdefault("since_event", NO_EVENT_YET)
        at = np.flatnonzero(anomaly)
        cool = self.decision.cooldown if cooldown is None else cooldown[at].tolist()
        starts, last = episode_starts(at.tolist(), since, cool)
        event[at] = starts
        st["since_event"] = (len(anomaly) - 1 - last) if last >= 0 else since + len(anomaly)
        return event

    def _combined(self, st: dict[str, Any], x: F64) -> DriverOut:
        if self.parts:
            from edgeflow.ops.detect.ensemble import combine  # (ensemble imports this module)

            outs = [p.run(s, x) for p, s in zip(self.parts, st["parts"], strict=True)]
            return combine(self.detector, outs, x, self.decision.cooldown, st["parts"])
        return self._run(st, x)

    def _run(self, st: dict[str, Any], x: F64) -> DriverOut:
        n = len(x)
        raw, score, low, high, thr_out = (np.empty(n) for _ in range(5))
        anomaly = np.zeros(n, bool)
        dec, det = st["dec"], st["det"]
        i = self._warm_up(st, x, (raw, score, low, high, thr_out))
        recent: list[float] = st.setdefault("recent", [])
        # points per pass: after an anomaly, about twice the gap since the one before it
        # (anomalies that cluster get short passes, rare ones one pass to the next); doubles
        # after a clean pass. Spans change how much is scored at once, never the results.
        span = self.max_pass
        last_hit = -1
        while i < n:
            adapting = is_adapting(st["streak"], self.adapt_after)
            if adapting:  # before scoring: the pass is scored by the adapted model
                self.detector.adapt(det, np.asarray(recent, dtype=np.float64))
                recent.clear()
            # never let one pass cross a decision (quantile) or model refresh boundary
            stop = (
                n
                if self.decision.kind == "threshold"
                else min(n, i + self.decision.every - dec["since"])
            )
            every = getattr(
                self.detector, "refresh", 0
            )  # a model re-estimated every N learnt points
            to_refresh = getattr(self.detector, "points_to_refresh", None)
            if to_refresh is not None:  # a model with its own re-estimate schedule
                stop = min(stop, i + int(to_refresh(det)))
            elif every:
                stop = min(stop, i + every - det["n"] % every)
            stop = min(stop, i + span)
            s = self.detector.score(det, x[i:stop])
            flagged = is_anomalous(s.score, dec["thr"])
            if self.learn_anomalies or adapting:
                # everything is learnt; adapting lasts until the first normal point
                normal = np.flatnonzero(~flagged)
                end = stop if self.learn_anomalies or not len(normal) else i + int(normal[0]) + 1
                k = end - i
                self._emit(
                    s, k, slice(i, end), (raw, score, low, high, thr_out, anomaly), dec["thr"]
                )
                self._learn(det, x[i:end])
                self.decision.observe(dec, s.score[:k][~flagged[:k]], count=int(flagged[:k].sum()))
                # k - 1 anomalies, then the last point: normal (the streak ends) or not
                last_normal = int(not flagged[k - 1])
                streak = streak_after(st["streak"] + k - 1, last_normal, 1 - last_normal)
                st["streak"] = int(streak)
                i = end
                continue
            hit = np.flatnonzero(flagged)
            j = i + int(hit[0]) if len(hit) else stop  # the first anomaly, or none in this pass
            end = j + 1 if j < stop else stop
            self._emit(
                s, end - i, slice(i, end), (raw, score, low, high, thr_out, anomaly), dec["thr"]
            )
            st["streak"] = int(streak_after(st["streak"], j - i, int(j < stop)))
            self._learn(det, x[i:j])
            self.decision.observe(dec, s.score[: j - i])
            if j > i:
                recent.clear()
            if j < stop:  # the anomaly at j: not learnt
                self.detector.forget(det, float(x[j]))
                if self.adapt_after is not None:
                    recent.append(float(x[j]))
                    del recent[: -self.adapt_after]
                self.decision.observe(dec, np.empty(0), count=1)
                gap = j - last_hit if last_hit >= 0 else self.min_pass
                span = min(self.max_pass, max(self.min_pass, 2 * gap))
                last_hit = j
                i = j + 1
            else:
                i = stop
                span = min(self.max_pass, span * 2)
        return DriverOut(raw, score, anomaly, low, high, thr_out)

    def _learn(self, det: dict[str, Any], seg: F64) -> None:
        """The detector learns ``seg``; the key's resolution moves on with it."""
        if not len(seg):
            return
        self.detector.learn(det, seg)
        det["res"], det["res_last"] = resolution(det.get("res", math.inf), det.get("res_last"), seg)

    def _warm_up(self, st: dict[str, Any], x: F64, outs: tuple[F64, F64, F64, F64, F64]) -> int:
        """Collects a warming key's readings from the front of ``x`` (no verdict: score 0)
        and, once ``warmup`` are in, learns them as one block without its robust outliers.
        Returns how many readings of ``x`` it took."""
        buf = st.get("warm")
        if buf is None:
            return 0
        take = min(len(x), self.detector.warmup - len(buf))
        buf.extend(x[:take].tolist())
        raw, score, low, high, thr_out = outs
        raw[:take] = score[:take] = 0.0
        low[:take] = high[:take] = np.nan
        thr_out[:take] = st["dec"]["thr"]
        self.decision.observe(st["dec"], np.zeros(take))
        if len(buf) >= self.detector.warmup:
            block = np.asarray(buf, dtype=np.float64)
            if getattr(self.detector, "warm_up_in_order", False):  # no gaps (seasonal)
                self._learn(st["det"], block)
            else:
                self._learn(st["det"], block[warm_up_inliers(block)])
            st["warm"] = None
        return take

    @staticmethod
    def _emit(
        s: Scores, k: int, seg: slice, outs: tuple[F64, F64, F64, F64, F64, np.ndarray], thr: float
    ) -> None:
        raw, score, low, high, thr_out, anomaly = outs
        raw[seg], score[seg], low[seg], high[seg] = s.raw[:k], s.score[:k], s.low[:k], s.high[:k]
        thr_out[seg] = thr
        anomaly[seg] = is_anomalous(s.score[:k], thr)
