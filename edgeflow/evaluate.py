"""Evaluate detectors on a seeded corpus of labelled streams.

The corpus mixes base signals (seasonal sine, random walk, flat) and noise (Gaussian,
heavy-tailed Laplace, red AR(1)) with one kind of anomaly per stream: spikes, dips, level
shifts, trend changes, variance changes, frequency changes, broken seasonality, and
nuisance gaps of missing data. Each anomaly has a labelled window.

Scoring, per stream (windowed early detection, in the spirit of the NAB benchmark):

* a labelled window with a detection earns 1 - 0.5 p, where p in [0, 1] is where the
  first detection falls in the window (early earns most); a missed window costs 1;
* a detection outside every window (and its grace period) costs 0.11;
* the corpus total is normalised so that "never alarm" = 0 and perfect = 100.

Precision counts detected windows against detected windows + false alarms; recall is
detected windows / windows; delay is the mean points from window start to first detection.
Defaults were chosen on this generated corpus only, not on public benchmark corpora.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeflow.batch import F64
from edgeflow.ops.detect import Detector, Driver

KINDS = ("spike", "dip", "level_shift", "trend", "variance", "frequency", "seasonality")
FP_COST = 0.11
GRACE = 50


@dataclass
class Stream:
    kind: str
    x: F64
    windows: list[tuple[int, int]]


def _base(rng: np.random.Generator, n: int) -> tuple[F64, F64, float]:
    """(signal, phase argument of the seasonal part, noise scale)."""
    t = np.arange(n)
    period = rng.uniform(50, 400)
    phase = 2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)
    kind = rng.integers(3)
    if kind == 0:
        base = rng.uniform(1, 5) * np.sin(phase)
    elif kind == 1:
        base = np.cumsum(rng.normal(0, 0.02, n))
    else:
        base = np.zeros(n)
    sigma = rng.uniform(0.1, 1.0)
    noise_kind = rng.integers(3)
    if noise_kind == 0:
        noise = rng.normal(0, sigma, n)
    elif noise_kind == 1:
        noise = rng.laplace(0, sigma / np.sqrt(2), n)
    else:
        e = rng.normal(0, sigma * np.sqrt(1 - 0.8**2), n)
        noise = np.empty(n)
        acc = 0.0
        for i in range(n):  # AR(1) red noise
            acc = 0.8 * acc + e[i]
            noise[i] = acc
    signal: F64 = np.asarray(base + rng.uniform(-10, 10) + noise, dtype=np.float64)
    return signal, np.asarray(phase, dtype=np.float64), float(sigma)


def generate(seed: int = 7, per_kind: int = 12, n: int = 3000) -> list[Stream]:
    rng = np.random.default_rng(seed)
    out: list[Stream] = []
    for kind in KINDS:
        for _ in range(per_kind):
            x, phase, sigma = _base(rng, n)
            windows: list[tuple[int, int]] = []
            starts = sorted(
                rng.choice(
                    np.arange(800, n - 400, 400), size=rng.integers(1, 4), replace=False
                ).tolist()
            )
            for s in starts:
                if kind in ("spike", "dip"):
                    x[s] += (1 if kind == "spike" else -1) * rng.uniform(6, 12) * sigma
                    windows.append((s, s + 10))
                elif kind == "level_shift":
                    x[s:] += rng.choice([-1, 1]) * rng.uniform(3, 6) * sigma
                    windows.append((s, s + 100))
                elif kind == "trend":
                    ramp = np.arange(n - s) * rng.uniform(0.01, 0.03) * sigma * rng.choice([-1, 1])
                    x[s:] += ramp
                    windows.append((s, s + 200))
                elif kind == "variance":
                    e = min(n, s + 300)
                    x[s:e] += rng.normal(0, sigma * rng.uniform(3, 5), e - s)
                    windows.append((s, s + 150))
                elif kind == "frequency":
                    e = min(n, s + 300)
                    x[s:e] += rng.uniform(2, 4) * sigma * np.sin(phase[s:e] * rng.uniform(8, 15))
                    windows.append((s, s + 150))
                else:  # broken seasonality: the cycle stops at its current value
                    e = min(n, s + 250)
                    x[s:e] = (
                        x[s] + rng.normal(0, sigma * 0.2, e - s) + 3 * sigma * rng.choice([-1, 1])
                    )
                    windows.append((s, s + 150))
            if rng.random() < 0.3:  # missing data: a gap the detector must step over
                g = int(rng.integers(300, 700))
                x[g : g + 20] = np.nan
            out.append(Stream(kind, x, windows))
    return out


@dataclass
class Result:
    name: str
    score: float = 0.0
    precision: float = 0.0
    recall: float = 0.0
    delay: float = 0.0
    false_alarms: int = 0
    per_kind: dict[str, float] = field(default_factory=dict)


def detections(driver: Driver, x: F64) -> np.ndarray:
    """Indices (in x) of anomaly events; missing values are skipped, as in a flow."""
    ok = np.flatnonzero(np.isfinite(x))
    out = driver.run(driver.init(), x[ok])
    found: np.ndarray = ok[out.event]
    return found


def _score_stream(
    det_idx: np.ndarray, windows: list[tuple[int, int]]
) -> tuple[float, int, int, int, list[int]]:
    """(raw score, detected windows, windows, false alarms, delays)."""
    raw = 0.0
    found = 0
    delays = []
    covered = np.zeros(0, bool)
    for s, e in windows:
        inside = det_idx[(det_idx >= s) & (det_idx <= e)]
        if len(inside):
            p = (inside[0] - s) / max(1, e - s)
            raw += 1.0 - 0.5 * p
            found += 1
            delays.append(int(inside[0] - s))
        else:
            raw -= 1.0
    covered = np.zeros(len(det_idx), bool)
    for s, e in windows:
        covered |= (det_idx >= s) & (det_idx <= e + GRACE)
    fp = int((~covered).sum())
    raw -= FP_COST * fp
    return raw, found, len(windows), fp, delays


def evaluate(name: str, make: Callable[[], Driver], corpus: list[Stream]) -> Result:
    raw_total, n_windows, found_total, fp_total = 0.0, 0, 0, 0
    delays: list[int] = []
    per_kind_raw: dict[str, list[float]] = {}
    for st in corpus:
        raw, found, nw, fp, d = _score_stream(detections(make(), st.x), st.windows)
        raw_total += raw
        n_windows += nw
        found_total += found
        fp_total += fp
        delays += d
        per_kind_raw.setdefault(st.kind, []).append(100 * (raw + nw) / (2 * nw))
    return Result(
        name,
        score=100 * (raw_total + n_windows) / (2 * n_windows),
        precision=found_total / max(1, found_total + fp_total),
        recall=found_total / max(1, n_windows),
        delay=float(np.mean(delays)) if delays else float("nan"),
        false_alarms=fp_total,
        per_kind={k: float(np.mean(v)) for k, v in per_kind_raw.items()},
    )


def table(results: list[Result]) -> str:
    kinds = list(results[0].per_kind)
    head = (
        "| detector | score | precision | recall | delay (points) | false alarms | "
        + " | ".join(kinds)
        + " |"
    )
    sep = "|---" * (6 + len(kinds)) + "|"
    rows = [
        f"| {r.name} | {r.score:.1f} | {r.precision:.2f} | {r.recall:.2f} | {r.delay:.1f} | {r.false_alarms} | "
        + " | ".join(f"{r.per_kind[k]:.0f}" for k in kinds)
        + " |"
        for r in results
    ]
    return "\n".join([head, sep, *rows])


def standard_suite() -> list[tuple[str, Callable[[], Driver]]]:
    from edgeflow.ops import detect

    def drv(det: Callable[[], Detector]) -> Callable[[], Driver]:
        return lambda: Driver(det())

    return [
        ("zscore 3-sigma (baseline)", drv(lambda: detect.zscore())),
        ("ewma", drv(lambda: detect.ewma())),
        ("mad", drv(lambda: detect.mad())),
        ("cusum", drv(lambda: detect.cusum())),
        ("seasonal", drv(lambda: detect.seasonal())),
        ("auto", drv(lambda: detect.auto())),
    ]


@dataclass
class Delivery:
    """How a flow's alerts cover a simulator's injected anomalies."""

    injected: int
    delivered: int  # injected anomalies with at least one alert for their key inside them
    false_alerts: int  # alerts inside no injected anomaly (nor its grace period)
    missed: list[tuple[str, int, int, str]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.delivered / self.injected if self.injected else 1.0


def delivery(
    injected: list[tuple[str, int, int, str]],
    alerts: list[tuple[str, int]],
    grace_ns: int,
    min_ns: int = 0,
) -> Delivery:
    """Match alerts (key, event time ns) to injected anomalies (key, start ns, end ns, kind):
    an anomaly is delivered when an alert of its key falls in [start, end + grace].
    Anomalies lasting less than ``min_ns`` (cut short by the end of the stream: shorter
    than one window, so no window summary can show them) are not counted."""
    injected = [a for a in injected if a[2] - a[1] >= min_ns]
    by_key: dict[str, list[int]] = {}
    for key, t in alerts:
        by_key.setdefault(key, []).append(t)
    times = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in by_key.items()}
    used: dict[str, np.ndarray] = {k: np.zeros(len(v), bool) for k, v in times.items()}
    delivered, missed = 0, []
    for key, start, end, kind in injected:
        at = times.get(key, np.empty(0, np.int64))
        inside = (at >= start) & (at <= end + grace_ns)
        if inside.any():
            delivered += 1
            used[key] |= inside
        else:
            missed.append((key, start, end, kind))
    false = sum(int((~u).sum()) for u in used.values())
    return Delivery(len(injected), delivered, false, missed)
