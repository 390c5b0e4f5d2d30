"""Simulated traffic loop detectors: one reading per intersection per second.

Vehicles arrive as a Poisson process whose rate follows the time of day (quiet at night,
peaks at 8:00 and 17:30) and each intersection's size; free-flow speeds are 40-55 km/h.
Congestion episodes are injected on a per-intersection schedule
(:meth:`TrafficSensors.injected` lists them): vehicles crawl at ~12 km/h, half as many get
through, and the detector loop is occupied most of the time.

Columns: ``intersection`` (key), ``ts`` (event time, ns), ``vehicles`` (count in that
second), ``speed_kmh`` (their mean speed; missing when none passed), ``occupancy`` (share
of the second the loop was occupied, 0-1).
Delivery guarantee: exactly-once replay (see :mod:`edgeflow.connectors.sim_base`).
"""

from __future__ import annotations

import numpy as np

from edgeflow.batch import Batch
from edgeflow.connectors.sim_base import Episodes, TickSimulation, poisson_quantile, tick_major
from edgeflow.timeutil import Duration

BLOCK = 600  # ticks (seconds) per block of random draws


class TrafficSensors(TickSimulation):
    """Loop detectors at ``intersections`` intersections, one reading a second, with injected
    congestion (first after ``first_jam`` s, then every ``jam_gap`` s, each lasting
    ``jam_length`` s). Pacing as for :func:`~edgeflow.connectors.simulate.sensors`."""

    default_key = "intersection"
    fields = ("vehicles", "speed_kmh", "occupancy")
    prefix = "x-"
    episodes: Episodes

    def __init__(
        self,
        intersections: int = 12,
        seed: int = 0,
        *,
        speed: float | None = 1.0,
        duration: Duration | None = None,
        start: str | int | None = None,
        partitions: int | None = None,
        first_jam: float = 1800.0,
        jam_gap: tuple[float, float] = (3600.0, 7200.0),
        jam_length: tuple[float, float] = (600.0, 1200.0),
    ) -> None:
        super().__init__(
            intersections, 1.0, seed, speed=speed, duration=duration, start=start,
            partitions=partitions,
        )  # fmt: skip
        self.episodes = Episodes(
            seed, 12, ("congestion",), first_s=first_jam, gap_s=jam_gap, length_s=jam_length
        )

    def generator(
        self, part: int, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> _Traffic:
        return _Traffic(self, dev_ids, start_ns, fields)


def day_profile(hour: np.ndarray) -> np.ndarray:
    """Relative traffic by hour of day: 0.15 at night, ~1 at the 8:00 and 17:30 peaks."""
    morning = np.exp(-0.5 * ((hour - 8.0) / 1.5) ** 2)
    evening = np.exp(-0.5 * ((hour - 17.5) / 2.0) ** 2)
    day = np.exp(-0.5 * ((hour - 13.0) / 4.0) ** 2)
    peak: np.ndarray = np.maximum(np.maximum(morning, evening), 0.6 * day)
    return 0.15 + 0.85 * peak


class _Traffic:
    def __init__(
        self, spec: TrafficSensors, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> None:
        self.spec = spec
        self.dev_ids = dev_ids.tolist()
        self.names = tuple(spec.key_name(d) for d in self.dev_ids)
        self.start_ns = start_ns
        self.fields = fields
        sizes = [np.random.default_rng([spec.seed, 13, d]) for d in self.dev_ids]
        self.peak_rate = np.array([r.uniform(0.3, 0.8) for r in sizes])  # vehicles/s at peak
        self.free_speed = np.array([r.uniform(40, 55) for r in sizes])

    def _draws(self, dev: int, blk: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng([self.spec.seed, 14, dev, blk])
        return {
            "u": r.random(BLOCK),
            "speed": r.standard_normal(BLOCK),
            "occ": r.standard_normal(BLOCK),
        }

    def generate(self, a: int, b: int) -> Batch:
        nd = len(self.dev_ids)
        ticks = np.arange(a, b)
        t = self.start_ns + ticks * 1_000_000_000
        hour = (t // 1_000_000_000 % 86_400) / 3600.0
        profile = day_profile(hour)
        out = {f: np.empty((b - a, nd)) for f in self.spec.fields}
        for j, dev in enumerate(self.dev_ids):
            u, zs, zo = (np.empty(b - a) for _ in range(3))
            lo = a
            while lo < b:
                blk = lo // BLOCK
                hi = min(b, (blk + 1) * BLOCK)
                d = self._draws(dev, blk)
                sl = slice(lo - blk * BLOCK, hi - blk * BLOCK)
                u[lo - a : hi - a], zs[lo - a : hi - a], zo[lo - a : hi - a] = (
                    d["u"][sl], d["speed"][sl], d["occ"][sl],
                )  # fmt: skip
                lo = hi
            jam = self.spec.episodes.kind_at(dev, ticks.astype(np.float64)) == "congestion"
            rate = self.peak_rate[j] * profile * np.where(jam, 0.5, 1.0)
            vehicles = poisson_quantile(u, rate)
            mean_speed = np.where(jam, 12.0, self.free_speed[j])
            spread = np.where(jam, 3.0, 6.0) / np.sqrt(np.maximum(vehicles, 1))
            speed = np.where(vehicles > 0, np.maximum(mean_speed + spread * zs, 3.0), np.nan)
            occ_mean = np.where(jam, 0.75, 0.12 * vehicles)
            occupancy = np.clip(occ_mean + 0.05 * zo, 0.0, 1.0)
            out["vehicles"][:, j] = vehicles
            out["speed_kmh"][:, j] = speed
            out["occupancy"][:, j] = occupancy
        return tick_major(self.fields, self.names, t, np.stack([out[f] for f in self.fields]))


traffic = TrafficSensors  # simulate.traffic(...): the flow-facing name
