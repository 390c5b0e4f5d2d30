"""Alarm limits: :class:`Limits` (reference only: it learns nothing, so it has no stacked
form), the :func:`limits` constructor, and :class:`FieldLimitsKernel`, the flow step for
per-key limits read from fields of each reading (``detect.limits(low="low_limit")``, e.g.
fields added by ``enrich`` from a device table).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from edgeflow.batch import F64, Batch, RecordBatch
from edgeflow.ops.args import Arg, check
from edgeflow.ops.detect.base import Detector, Scores, calibrate
from edgeflow.ops.detect.decision import NO_EVENT_YET, Decision, episode_starts, is_anomalous
from edgeflow.ops.kernel import RecordKernel

_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

Limit = float | str | None


class Limits(Detector):
    """Alarm limits (clinical or engineering ranges): anomalous outside [low, high].

    ``raw`` is 0 inside the range and 1 + the distance outside it relative to the limit's
    size, so any value outside scores at least 0.999 (the default threshold). It learns
    nothing, so it needs no warm-up; use it for rules the physics or the standard gives.

    A limit is a number (the same for every key) or the name of a field of the readings
    (per reading, e.g. each device's limit from a table joined with ``enrich``): a flow's
    detect step then runs :class:`FieldLimitsKernel`. A NaN limit field means no limit on
    that side for that reading."""

    name = "limits"
    level = 1.0
    warmup = 0
    ARGS = (Arg("low", "number", optional=True), Arg("high", "number", optional=True))

    def __init__(self, low: Limit = None, high: Limit = None) -> None:
        self.low, self.high = low, high
        if low is None and high is None:
            raise ValueError("detect.limits: give low=, high= or both")
        if (
            not self.problems()
            and isinstance(low, (int, float))
            and isinstance(high, (int, float))
            and not low < high
        ):
            raise ValueError(f"detect.limits: low={low} must be below high={high}")

    def limit_fields(self) -> tuple[str, ...]:
        """The fields named as limits (empty: numeric limits only)."""
        return tuple(v for v in (self.low, self.high) if isinstance(v, str))

    def problems(self) -> list[str]:
        numeric = {k: v for k, v in self.arguments().items() if not isinstance(v, str)}
        out = check(f"detect.{self.name}", [a for a in self.ARGS if a.name in numeric], numeric)
        for name, v in self.arguments().items():
            if isinstance(v, str) and not _FIELD.match(v):
                out.append(
                    f"detect.limits: {name}={v!r} is neither a number nor a field name; "
                    f"give e.g. {name}=10.0 or {name}='{name}_limit'"
                )
        return out

    def init(self) -> dict[str, Any]:
        return {"n": 0}

    def score(self, st: dict[str, Any], x: F64) -> Scores:
        if self.limit_fields():
            raise ValueError(
                "detect.limits with field-named limits scores readings in a flow's detect "
                "step only (the limits come from each reading's fields)"
            )
        n = len(x)
        lo = np.full(n, -np.inf if self.low is None else float(self.low))
        hi = np.full(n, np.inf if self.high is None else float(self.high))
        return limit_scores(x, lo, hi, self.level)

    def learn(self, st: dict[str, Any], x: F64) -> None:
        st["n"] += len(x)

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


def limit_scores(x: F64, lo: F64, hi: F64, level: float) -> Scores:
    """Scores of ``x`` against per-point limits (``-inf``/``inf``: none on that side)."""
    with np.errstate(invalid="ignore"):
        below = np.where(np.isfinite(lo), np.maximum(lo - x, 0.0) / (np.abs(lo) + 1e-12), 0.0)
        above = np.where(np.isfinite(hi), np.maximum(x - hi, 0.0) / (np.abs(hi) + 1e-12), 0.0)
        outside = (x < lo) | (x > hi)
    raw = np.where(outside, 1.0 + np.maximum(below, above), 0.0)
    return Scores(raw, calibrate(raw, level), lo, hi)


def limits(*, low: Limit = None, high: Limit = None) -> Limits:
    """Alarm limits: anomalous below ``low`` or above ``high`` (see :class:`Limits`). Each is
    a number or the name of a field holding each reading's limit (per-key limits)."""
    return Limits(low, high)


class FieldLimitsKernel(RecordKernel):
    """A flow's detect step for :class:`Limits` with field-named limits: each reading is
    compared with the limits in its own fields (vectorised over the batch), the decision's
    threshold and cooldown applied per key exactly as for numeric limits (one event per
    episode). Readings whose value is not finite are skipped, as by every detector; a NaN
    limit is no limit on that side. State: per key, readings since its last event."""

    port = "anomalies"

    inputs: tuple[str, ...] = ("readings",)
    outputs: tuple[str, ...] = ("anomalies",)

    def __init__(self, step: str, field: str, detector: Limits, decision: Decision) -> None:
        self.step = step
        self.field = field
        self.reads: tuple[str, ...] | None = (field, *detector.limit_fields())
        self.detector = detector
        self.decision = decision

    # -- the kernel protocol (edgeflow/ops/kernel.py) ------------------------------------
    def problems(self) -> list[str]:
        return [*self.detector.problems(), *self.decision.problems()]

    def init(self) -> dict[str, Any]:
        return {"keys": {}, "in": 0, "anomalies": 0}

    def _limit(self, b: Batch, v: Limit, missing: float) -> F64:
        if v is None:
            return np.full(len(b), missing)
        if isinstance(v, str):
            col = b.values[b.fields.index(v)]
            return np.where(np.isnan(col), missing, col)
        return np.full(len(b), float(v))

    def step_batch(self, state: dict[str, Any], b: Batch) -> RecordBatch | None:
        if not len(b):
            return None
        state["in"] += len(b)
        x = b.values[b.fields.index(self.field)]
        ok = np.isfinite(x)
        rows = np.flatnonzero(ok)
        if not len(rows):
            return None
        lo = self._limit(b, self.detector.low, -np.inf)[rows]
        hi = self._limit(b, self.detector.high, np.inf)[rows]
        s = limit_scores(x[rows], lo, hi, self.detector.level)
        thr = self.decision.value
        flagged = is_anomalous(s.score, thr)
        codes = b.key_idx[rows]
        order = np.argsort(codes, kind="stable")
        c = codes[order]
        bounds = np.flatnonzero(np.r_[True, c[1:] != c[:-1], True])
        event = np.zeros(len(rows), bool)
        keys_state: dict[str, int] = state["keys"]
        for a, e in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            mine = order[a:e]  # this key's readings, in arrival order
            key = b.keys[int(c[a])]
            since = keys_state.get(key, NO_EVENT_YET)
            at = np.flatnonzero(flagged[mine])
            starts, last = episode_starts(at.tolist(), since, self.decision.cooldown)
            event[mine[at]] = starts
            n = len(mine)
            keys_state[key] = (n - 1 - last) if last >= 0 else since + n
        hit = np.flatnonzero(event)
        if not len(hit):
            return None
        src = rows[hit]
        n = len(hit)
        state["anomalies"] += n
        keys = b.key_array()[src].tolist()
        data: dict[str, Any] = {"key": keys, "t": b.t[src], "field": [self.field] * n}
        data["detector"] = [self.detector.name] * n
        data["value"] = x[src]
        data["score"] = s.score[hit]
        data["raw"] = s.raw[hit]
        data["threshold"] = np.full(n, thr)
        data["expected_low"] = s.low[hit]
        data["expected_high"] = s.high[hit]
        return RecordBatch("anomaly", self.step, data, n, ("key", "t", "field"))

    def flush(self, state: dict[str, Any]) -> RecordBatch | None:
        return None  # emits as it goes
