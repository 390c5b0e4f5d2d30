"""The reference runner: :class:`Driver` runs a detector and a decision on one key's points
exactly as a one-at-a-time loop would (results do not depend on how points are batched).

It scores the rest of the segment in one vectorised pass, takes the points up to the first
anomaly as final, learns them, skips the anomaly (the detector forgets it), and repeats from
there. The decision rules (threshold, cooldown, streak/adapt) are those of
:mod:`edgeflow.ops.detect.decision`. An ensemble is run part by part, each part deciding and
learning on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect.base import Detector, Scores, parts_of
from edgeflow.ops.detect.decision import (
    NO_EVENT_YET,
    Decision,
    episode_starts,
    is_adapting,
    is_anomalous,
    streak_after,
)


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
    adapt_after: int | None = 256

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
        return {"det": self.detector.init(), "dec": self.decision.init(), "streak": 0}

    def run(self, st: dict[str, Any], x: F64) -> DriverOut:
        out = self._combined(st, x)
        out.event = self._events(st, out.anomaly)
        return out

    def _events(self, st: dict[str, Any], anomaly: np.ndarray) -> np.ndarray:
        """An anomaly raises an event unless one was raised within ``cooldown`` points."""
        event = np.zeros(len(anomaly), bool)
        since = st.setdefault("since_event", NO_EVENT_YET)
        at = np.flatnonzero(anomaly)
        starts, last = episode_starts(at.tolist(), since, self.decision.cooldown)
        event[at] = starts
        st["since_event"] = (len(anomaly) - 1 - last) if last >= 0 else since + len(anomaly)
        return event

    def _combined(self, st: dict[str, Any], x: F64) -> DriverOut:
        if self.parts:
            outs = [p.run(s, x) for p, s in zip(self.parts, st["parts"], strict=True)]
            best = np.argmax(np.stack([o.score for o in outs]), axis=0)
            pick = np.arange(len(x))

            def sel(name: str) -> F64:
                arr: F64 = np.stack([getattr(o, name) for o in outs])[best, pick]
                return arr

            return DriverOut(
                sel("raw"),
                sel("score"),
                np.any([o.anomaly for o in outs], axis=0),
                outs[0].low,
                outs[0].high,
                sel("threshold"),
            )
        return self._run(st, x)

    def _run(self, st: dict[str, Any], x: F64) -> DriverOut:
        n = len(x)
        raw, score, low, high, thr_out = (np.empty(n) for _ in range(5))
        anomaly = np.zeros(n, bool)
        dec, det = st["dec"], st["det"]
        i = 0
        span = self.max_pass  # shrinks after an anomaly (they cluster), doubles after clean passes
        while i < n:
            # never let one pass cross a decision (quantile) or model refresh boundary
            stop = (
                n
                if self.decision.kind == "threshold"
                else min(n, i + self.decision.every - dec["since"])
            )
            every = getattr(
                self.detector, "refresh", 0
            )  # a model re-estimated every N learnt points
            if every:
                stop = min(stop, i + every - det["n"] % every)
            stop = min(stop, i + span)
            s = self.detector.score(det, x[i:stop])
            flagged = is_anomalous(s.score, dec["thr"])
            adapting = is_adapting(st["streak"], self.adapt_after)
            if self.learn_anomalies or adapting:
                # everything is learnt; adapting lasts until the first normal point
                normal = np.flatnonzero(~flagged)
                end = stop if self.learn_anomalies or not len(normal) else i + int(normal[0]) + 1
                k = end - i
                self._emit(
                    s, k, slice(i, end), (raw, score, low, high, thr_out, anomaly), dec["thr"]
                )
                self.detector.learn(det, x[i:end])
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
            self.detector.learn(det, x[i:j])
            self.decision.observe(dec, s.score[: j - i])
            if j < stop:  # the anomaly at j: not learnt
                self.detector.forget(det, float(x[j]))
                self.decision.observe(dec, np.empty(0), count=1)
                i = j + 1
                span = self.min_pass
            else:
                i = stop
                span = min(self.max_pass, span * 2)
        return DriverOut(raw, score, anomaly, low, high, thr_out)

    @staticmethod
    def _emit(
        s: Scores, k: int, seg: slice, outs: tuple[F64, F64, F64, F64, F64, np.ndarray], thr: float
    ) -> None:
        raw, score, low, high, thr_out, anomaly = outs
        raw[seg], score[seg], low[seg], high[seg] = s.raw[:k], s.score[:k], s.low[:k], s.high[:k]
        thr_out[seg] = thr
        anomaly[seg] = is_anomalous(s.score[:k], thr)
