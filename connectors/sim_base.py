"""What every simulator shares: devices sampled on a tick clock, pacing, snapshots, and a
deterministic schedule of injected anomalies (the ground truth benches and tests score
alerts against).

A simulator is a :class:`TickSimulation` whose :meth:`~TickSimulation.generator` returns an
object with ``generate(a, b) -> Batch``: the readings of ticks ``[a, b)`` of one partition,
a pure function of (seed, partition, tick), so a resumed run regenerates exactly the
readings after its snapshot, and the stream does not depend on how it is cut into batches.

Delivery guarantee: exactly-once replay; the snapshot is the next tick.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgeflow.batch import Batch
from edgeflow.connectors.base import Item, SourceContext, SourcePartition, SourceSpec
from edgeflow.timeutil import Duration, now_ns, parse_duration, parse_iso_ns

DEFAULT_START = "2026-01-01T00:00:00Z"


class TickGenerator(Protocol):
    def generate(self, a: int, b: int) -> Batch: ...


@dataclass(frozen=True)
class Injected:
    """One injected anomaly: ``key`` misbehaves from ``start_ns`` to ``end_ns`` (event time)."""

    key: str
    start_ns: int
    end_ns: int
    kind: str


class Episodes:
    """A per-device schedule of anomaly episodes, a pure function of (seed, tag, device).

    The first starts ``first_s`` (+ up to one gap) after the stream's start; each lasts
    ``length_s`` (a (low, high) range) and is followed by a quiet gap of ``gap_s``.
    Times are seconds from the stream's start.
    """

    def __init__(
        self,
        seed: int,
        tag: int,
        kinds: Sequence[str],
        *,
        first_s: float,
        gap_s: tuple[float, float],
        length_s: tuple[float, float],
    ) -> None:
        self.seed, self.tag, self.kinds = seed, tag, tuple(kinds)
        self.first_s, self.gap_s, self.length_s = first_s, gap_s, length_s
        self._cache: dict[int, list[tuple[float, float, str]]] = {}

    def upto(self, dev: int, until_s: float) -> list[tuple[float, float, str]]:
        """Episodes of ``dev`` that start before ``until_s``: (start, end, kind)."""
        eps = self._cache.setdefault(dev, [])
        if not eps or eps[-1][0] < until_s:
            t = eps[-1][1] if eps else self.first_s
            while t < until_s + self.gap_s[1]:
                r = np.random.default_rng([self.seed, self.tag, dev, len(eps)])
                start = t + float(r.uniform(*self.gap_s))
                end = start + float(r.uniform(*self.length_s))
                eps.append((start, end, self.kinds[int(r.integers(len(self.kinds)))]))
                t = end
        return [e for e in eps if e[0] < until_s]

    def kind_at(self, dev: int, secs: np.ndarray) -> np.ndarray:
        """The episode kind active at each time (``""`` when none): an object array."""
        out = np.full(secs.shape, "", dtype=object)
        if not len(secs):
            return out
        for start, end, kind in self.upto(dev, float(secs.max()) + 1e-9):
            if end > secs.min():
                out[(secs >= start) & (secs < end)] = kind
        return out


class TickSimulation(SourceSpec):
    """Base of the simulators: ``devices`` keys sampled at ``rate_hz`` on one clock."""

    kind = "simulate"
    default_time = "ts"
    default_key = "device"
    fields: tuple[str, ...] = ()
    prefix = "dev-"
    #: the schedule of injected anomalies, if the simulator injects any
    episodes: Episodes | None = None

    def __init__(
        self,
        devices: int,
        rate_hz: float,
        seed: int,
        *,
        speed: float | None = 1.0,
        duration: Duration | None = None,
        start: str | int | None = None,
        partitions: int | None = None,
    ) -> None:
        self.devices = devices
        self.rate_hz = rate_hz
        self.seed = seed
        self.speed = speed
        self.duration = duration
        self.start = start
        self.n_parts = partitions if partitions is not None else max(1, min(4, devices))

    # -- what a simulator provides ---------------------------------------------------------
    def generator(
        self, part: int, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> TickGenerator:
        raise NotImplementedError

    def injected(self, duration: Duration, start: str | int | None = None) -> list[Injected]:
        """The anomalies this simulator injects in the first ``duration`` of its stream
        (an anomaly still going on at the end is cut there)."""
        if self.episodes is None:
            return []
        t0 = self.start_ns(start)
        horizon = parse_duration(duration) / 1e9
        return [
            Injected(self.key_name(d), t0 + int(a * 1e9), t0 + int(min(b, horizon) * 1e9), kind)
            for d in range(self.devices)
            for a, b, kind in self.episodes.upto(d, horizon)
        ]

    # -- the source contract -----------------------------------------------------------------
    def columns(self) -> Sequence[str]:
        return (self.default_key, self.default_time, *self.fields)

    def key_name(self, dev: int) -> str:
        return f"{self.prefix}{dev}"

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.devices, int) or self.devices < 1:
            out.append(f"devices={self.devices!r}: give a whole number >= 1")
        if not isinstance(self.rate_hz, int | float) or not 0 < self.rate_hz <= 1e6:
            out.append(f"rate_hz={self.rate_hz!r}: give a rate in (0, 1e6] samples per second")
        if self.speed is not None and (not isinstance(self.speed, int | float) or self.speed <= 0):
            out.append(
                f"speed={self.speed!r}: give a positive factor (1.0 = real time) or None for as fast as possible"
            )
        if not isinstance(self.n_parts, int) or self.n_parts < 1:
            out.append(f"partitions={self.n_parts!r}: give a whole number >= 1")
        if self.duration is not None:
            try:
                parse_duration(self.duration, what="duration")
            except ValueError as exc:
                out.append(str(exc))
        if self.start is not None and not isinstance(self.start, int):
            try:
                parse_iso_ns(str(self.start))
            except ValueError as exc:
                out.append(f"start: {exc}")
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "devices": self.devices, "rate_hz": self.rate_hz, "seed": self.seed,
            "speed": self.speed, "duration": self.duration, "partitions": self.n_parts,
        }  # fmt: skip

    def partitions(self) -> list[str]:
        return [str(p) for p in range(self.n_parts)]

    def keys_partitioned(self) -> bool:
        return True  # device d is always in partition d % partitions

    def start_ns(self, start: str | int | None = None) -> int:
        start = self.start if start is None else start
        if isinstance(start, int):
            return start
        if start is not None:
            return parse_iso_ns(start)
        if self.speed is None:
            return parse_iso_ns(DEFAULT_START)
        return now_ns() // 1_000_000_000 * 1_000_000_000

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        if resume is None:
            tick, start = 0, self.start_ns()
        else:
            tick, start = int(resume["tick"]), int(resume["start"])
        return TickPartition(self, int(partition), tick, start, ctx)


class TickPartition(SourcePartition):
    """Paces one partition of a simulator: real time, a speed factor, or as fast as possible."""

    def __init__(
        self, spec: TickSimulation, part: int, tick: int, start_ns: int, ctx: SourceContext
    ) -> None:
        self.spec = spec
        self.tick = tick
        self.start_ns = start_ns
        self.period_ns = round(1e9 / spec.rate_hz)
        dev_ids = np.arange(part, spec.devices, spec.n_parts)
        self.end_tick = (
            None if spec.duration is None else parse_duration(spec.duration) // self.period_ns
        )
        self.batch_ticks = max(1, ctx.batch_max // max(1, len(dev_ids)))
        fields = tuple(f for f in spec.fields if ctx.fields is None or f in ctx.fields)
        self.gen = spec.generator(part, dev_ids, start_ns, fields)
        # tick i is due at wall0 + (i - tick0) * period / speed. Live sensors (real time, no
        # fixed start) are due at their own timestamps.
        if spec.start is None and spec.speed == 1.0:
            self.wall0, self.tick0 = start_ns, 0
        else:
            self.wall0, self.tick0 = now_ns(), tick

    def _ready_tick(self) -> int:
        """The first tick not yet due (real time) or the batch limit (as fast as possible)."""
        if self.spec.speed is None:
            hi = self.tick + self.batch_ticks
        else:
            elapsed = (now_ns() - self.wall0) * self.spec.speed
            hi = min(self.tick0 + int(elapsed // self.period_ns) + 1, self.tick + self.batch_ticks)
        if self.end_tick is not None:
            hi = min(hi, self.end_tick)
        return int(hi)

    def next_batch(self) -> list[Item]:
        if self.end_tick is not None and self.tick >= self.end_tick:
            raise StopIteration
        hi = self._ready_tick()
        if hi <= self.tick:
            return []
        batch = self.gen.generate(self.tick, hi)
        self.tick = hi
        self.bytes_read += self._json_size(batch)
        return [batch]

    def _json_size(self, b: Batch) -> int:
        """About the bytes of the readings as JSON objects, as a device would send them:
        ``{"<key>":"<name>","ts":<19 digits>,"<field>":<~18 chars>,...}``."""
        if not len(b):
            return 0
        names = np.fromiter((len(k) for k in b.keys), np.int64, len(b.keys))
        per = 2 + (len(self.spec.default_key) + 5) + 6 + 19
        per += sum(len(f) + 4 + 18 for f in b.fields)
        return int(per * len(b) + names[b.key_idx].sum())

    def next_awake(self) -> int | None:
        if self.spec.speed is None:
            return None
        due = self.wall0 + int((self.tick - self.tick0) * self.period_ns / self.spec.speed)
        return max(due, now_ns())

    def snapshot(self) -> Any:
        return {"tick": self.tick, "start": self.start_ns}


def tick_major(
    fields: tuple[str, ...], names: tuple[str, ...], t: np.ndarray, values: np.ndarray
) -> Batch:
    """The readings of every device at each tick, tick by tick: ``t`` has one time per tick,
    ``values`` is (fields, ticks, devices)."""
    nd = len(names)
    return Batch(
        fields,
        names,
        np.tile(np.arange(nd, dtype=np.int32), len(t)),
        np.repeat(np.asarray(t, np.int64), nd),
        values.reshape(len(fields), len(t) * nd),
    )


def poisson_quantile(u: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Poisson(lam) draws by inversion of uniforms ``u`` (a pure function of u and lam)."""
    k = np.zeros(len(u))
    p = np.exp(-lam)
    cdf = p.copy()
    for i in range(1, 30):
        more = u > cdf
        if not more.any():
            break
        k += more
        p = p * lam / i
        cdf += p
    return k


def from_env() -> dict[str, Any]:
    """Pacing for example flows from the environment, so tests and benches can run them
    fast: ``EDGEFLOW_SIM_SPEED`` (a factor, or ``max`` for as fast as possible; default
    real time) and ``EDGEFLOW_SIM_DURATION`` (e.g. ``10m``; default endless)."""
    speed_s = os.environ.get("EDGEFLOW_SIM_SPEED", "1")
    try:
        speed = None if speed_s in ("max", "none", "") else float(speed_s)
    except ValueError:
        raise ValueError(
            f"EDGEFLOW_SIM_SPEED={speed_s!r}: give a factor such as 10, or 'max'"
        ) from None
    out: dict[str, Any] = {"speed": speed}
    if os.environ.get("EDGEFLOW_SIM_DURATION"):
        out["duration"] = os.environ["EDGEFLOW_SIM_DURATION"]
    return out
