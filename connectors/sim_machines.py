"""Simulated machine vibration for predictive maintenance: one accelerometer per machine.

Each machine's shaft turns at its own speed (20-40 Hz); the signal is the shaft tone (1x),
its second harmonic (2x) and sensor noise. Faults are injected on a per-machine schedule
(:meth:`MachineVibration.injected` lists them):

* ``bearing``: an outer-race defect: an impact every 1 / (3.57 x shaft speed) that rings a
  structural resonance at 380 Hz and decays in ~3 ms: kurtosis, crest factor and the
  300-500 Hz band energy rise long before the RMS does;
* ``imbalance``: the 1x amplitude grows 2.5-fold: RMS and the 0-100 Hz band rise.

Columns: ``machine`` (key), ``ts`` (event time, ns), ``accel`` (g).
Delivery guarantee: exactly-once replay (see :mod:`edgeflow.connectors.sim_base`).
"""

from __future__ import annotations

import numpy as np

from edgeflow.batch import Batch
from edgeflow.connectors.sim_base import Episodes, TickSimulation, tick_major
from edgeflow.timeutil import Duration

BPFO_RATIO = 3.57  # impacts per shaft turn of a typical outer-race defect
RESONANCE_HZ = 380.0
RING_S = 0.003
FAULTS = ("bearing", "imbalance")


class MachineVibration(TickSimulation):
    """Vibration of ``machines`` rotating machines sampled at ``rate_hz``, with injected
    bearing and imbalance faults (first after ``first_fault`` s, then every ``fault_gap``
    s, each lasting ``fault_length`` s). Pacing as for :func:`~edgeflow.connectors.simulate.sensors`."""

    default_key = "machine"
    fields = ("accel",)
    prefix = "m-"
    episodes: Episodes

    def __init__(
        self,
        machines: int = 8,
        rate_hz: float = 1000.0,
        seed: int = 0,
        *,
        speed: float | None = 1.0,
        duration: Duration | None = None,
        start: str | int | None = None,
        partitions: int | None = None,
        first_fault: float = 60.0,
        fault_gap: tuple[float, float] = (60.0, 150.0),
        fault_length: tuple[float, float] = (8.0, 15.0),
    ) -> None:
        super().__init__(
            machines, rate_hz, seed, speed=speed, duration=duration, start=start,
            partitions=partitions,
        )  # fmt: skip
        self.episodes = Episodes(
            seed, 5, FAULTS, first_s=first_fault, gap_s=fault_gap, length_s=fault_length
        )

    def generator(
        self, part: int, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> _Vibration:
        return _Vibration(self, part, dev_ids, start_ns)

    def machine(self, dev: int) -> tuple[float, float, float, float]:
        """(shaft Hz, 1x amplitude, 1x phase, 2x phase) of a machine: fixed by (seed, machine)."""
        r = np.random.default_rng([self.seed, 4, dev])
        return (
            float(r.uniform(20, 40)),
            float(r.uniform(0.8, 1.2)),
            float(r.uniform(0, 2 * np.pi)),
            float(r.uniform(0, 2 * np.pi)),
        )


class _Vibration:
    def __init__(self, spec: MachineVibration, part: int, dev_ids: np.ndarray, start_ns: int):
        self.spec = spec
        self.part = part
        self.dev_ids = dev_ids.tolist()
        self.names = tuple(spec.key_name(d) for d in self.dev_ids)
        self.start_ns = start_ns
        self.fs = float(spec.rate_hz)
        self.period_ns = round(1e9 / spec.rate_hz)
        self.params = [spec.machine(d) for d in self.dev_ids]
        self._blocks: dict[int, tuple[int, np.ndarray]] = {}

    def _noise(self, dev: int, a: int, b: int) -> np.ndarray:
        """Standard normal noise for ticks [a, b) of one machine: a pure function of
        (seed, machine, tick), whatever the cut."""
        parts = []
        lo = a
        while lo < b:
            blk = lo // NOISE_BLOCK
            hi = min(b, (blk + 1) * NOISE_BLOCK)
            cached = self._blocks.get(dev)
            if cached is None or cached[0] != blk:
                z = np.random.default_rng([self.spec.seed, 6, dev, blk]).standard_normal(
                    NOISE_BLOCK
                )
                cached = self._blocks[dev] = (blk, z)
            parts.append(cached[1][lo - blk * NOISE_BLOCK : hi - blk * NOISE_BLOCK])
            lo = hi
        return np.concatenate(parts) if parts else np.empty(0)

    def generate(self, a: int, b: int) -> Batch:
        nd = len(self.dev_ids)
        ticks = np.arange(a, b)
        secs = ticks / self.fs
        vals = np.empty((b - a, nd))
        for j, dev in enumerate(self.dev_ids):
            f0, amp, ph1, ph2 = self.params[j]
            # noise: a pure function of (seed, machine, tick)
            noise = self._noise(dev, a, b)
            kind = self.spec.episodes.kind_at(dev, secs)
            gain = np.where(kind == "imbalance", 2.5, 1.0)
            x = gain * amp * np.sin(2 * np.pi * f0 * secs + ph1)
            x += 0.3 * amp * np.sin(2 * np.pi * 2 * f0 * secs + ph2) + 0.05 * noise
            bearing = kind == "bearing"
            if bearing.any():
                tau = np.mod(secs, 1.0 / (BPFO_RATIO * f0))
                ring = np.exp(-tau / RING_S) * np.sin(2 * np.pi * RESONANCE_HZ * tau)
                x += np.where(bearing, 1.5 * ring, 0.0)
            vals[:, j] = x
        return tick_major(("accel",), self.names, self.start_ns + ticks * self.period_ns, vals)


NOISE_BLOCK = 4096


vibration = MachineVibration  # simulate.vibration(...): the flow-facing name
