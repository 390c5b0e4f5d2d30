"""Simulated single-lead ECG for a portable monitor: one signal per patient.

Each beat is a sum of Gaussian waves (P, Q, R, S, T) placed at the beat time, on a
breathing baseline wander with sensor noise. Beat-to-beat (R-R) intervals follow each
patient's resting rate (58-80 bpm) with respiratory variation. Arrhythmia episodes are
injected on a per-patient schedule (:meth:`ECGMonitor.injected` lists them):

* ``tachycardia``: 150 bpm; ``bradycardia``: 38 bpm;
* ``afib`` (atrial fibrillation): irregular R-R intervals (0.35-1.0 s) and no P wave.

Columns: ``patient`` (key), ``ts`` (event time, ns), ``ecg`` (mV).
Delivery guarantee: exactly-once replay (see :mod:`edgeflow.connectors.sim_base`).
"""

from __future__ import annotations

import numpy as np

from edgeflow.batch import Batch
from edgeflow.connectors.sim_base import Episodes, TickSimulation, tick_major
from edgeflow.timeutil import Duration

RHYTHMS = ("tachycardia", "bradycardia", "afib")
# (offset s from the R peak, amplitude mV, width s) of the P, Q, R, S, T waves
WAVES = np.array(
    [
        [-0.16, 0.12, 0.02],
        [-0.03, -0.1, 0.008],
        [0.0, 1.0, 0.01],
        [0.03, -0.2, 0.01],
        [0.25, 0.3, 0.04],
    ]
)
BEAT_CHUNK = 64
HALF_BEAT_S = 0.6  # the waves of a beat lie within this of its R peak


class ECGMonitor(TickSimulation):
    """ECG of ``patients`` patients sampled at ``rate_hz``, with injected tachycardia,
    bradycardia and atrial-fibrillation episodes. Pacing as for
    :func:`~edgeflow.connectors.simulate.sensors`."""

    default_key = "patient"
    fields = ("ecg",)
    prefix = "patient-"
    episodes: Episodes

    def __init__(
        self,
        patients: int = 4,
        rate_hz: float = 250.0,
        seed: int = 0,
        *,
        speed: float | None = 1.0,
        duration: Duration | None = None,
        start: str | int | None = None,
        partitions: int | None = None,
        first_episode: float = 60.0,
        episode_gap: tuple[float, float] = (120.0, 240.0),
        episode_length: tuple[float, float] = (40.0, 90.0),
    ) -> None:
        super().__init__(
            patients, rate_hz, seed, speed=speed, duration=duration, start=start,
            partitions=partitions,
        )  # fmt: skip
        self.episodes = Episodes(
            seed, 8, RHYTHMS, first_s=first_episode, gap_s=episode_gap, length_s=episode_length
        )
        self._beats: dict[int, list[np.ndarray]] = {}

    def generator(
        self, part: int, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> _ECG:
        return _ECG(self, dev_ids, start_ns)

    def beats(self, dev: int, until_s: float) -> np.ndarray:
        """R-peak times (s from the start) of a patient up to ``until_s`` (and a little
        beyond): a pure function of (seed, patient), generated in chunks of beats."""
        chunks = self._beats.setdefault(dev, [])
        rest = 60.0 / float(np.random.default_rng([self.seed, 9, dev]).uniform(58, 80))
        while not chunks or chunks[-1][-1] < until_s + 2.0:
            k = len(chunks)
            r = np.random.default_rng([self.seed, 10, dev, k])
            t = 0.3 if not chunks else float(chunks[-1][-1])
            out = np.empty(BEAT_CHUNK)
            for i in range(BEAT_CHUNK):
                kind = self.episodes.kind_at(dev, np.array([t]))[0]
                if kind == "tachycardia":
                    rr = 0.4 * (1 + 0.02 * r.standard_normal())
                elif kind == "bradycardia":
                    rr = 60.0 / 38.0 * (1 + 0.02 * r.standard_normal())
                elif kind == "afib":
                    rr = float(r.uniform(0.35, 1.0))
                else:
                    breath = np.sin(2 * np.pi * (k * BEAT_CHUNK + i) / 4.5)
                    rr = rest * (1 + 0.03 * breath + 0.01 * r.standard_normal())
                t += rr
                out[i] = t
            chunks.append(out)
        return np.concatenate(chunks)


class _ECG:
    def __init__(self, spec: ECGMonitor, dev_ids: np.ndarray, start_ns: int) -> None:
        self.spec = spec
        self.dev_ids = dev_ids.tolist()
        self.names = tuple(spec.key_name(d) for d in self.dev_ids)
        self.start_ns = start_ns
        self.fs = float(spec.rate_hz)
        self.period_ns = round(1e9 / spec.rate_hz)

    def generate(self, a: int, b: int) -> Batch:
        nd = len(self.dev_ids)
        ticks = np.arange(a, b)
        secs = ticks / self.fs
        vals = np.empty((b - a, nd))
        for j, dev in enumerate(self.dev_ids):
            beats = self.spec.beats(dev, float(secs[-1]))
            near = beats[(beats > secs[0] - HALF_BEAT_S) & (beats < secs[-1] + HALF_BEAT_S)]
            # each beat's waves over the samples within HALF_BEAT_S of its R peak
            reach = int(HALF_BEAT_S * self.fs)
            first = np.round(near * self.fs).astype(np.int64) - reach  # absolute tick
            idx = first[:, None] + np.arange(2 * reach + 1)[None, :]
            dt = idx / self.fs - near[:, None]  # (beats, samples around each)
            wave = np.zeros(dt.shape)
            no_p = self.spec.episodes.kind_at(dev, near) == "afib"
            for w, (off, amp, width) in enumerate(WAVES):
                g = amp * np.exp(-0.5 * ((dt - off) / width) ** 2)
                if w == 0:
                    g[no_p] = 0.0
                wave += g
            inside = (idx >= a) & (idx < b)
            x: np.ndarray = np.bincount(idx[inside] - a, weights=wave[inside], minlength=b - a)
            phase = np.random.default_rng([self.spec.seed, 11, dev]).uniform(0, 2 * np.pi)
            x += 0.1 * np.sin(2 * np.pi * 0.25 * secs + phase)
            # noise: a pure function of (seed, patient, tick)
            x += 0.02 * np.sin(ticks * 12.9898 + dev * 78.233) * np.cos(ticks * 4.1414 + dev)
            vals[:, j] = x
        return tick_major(("ecg",), self.names, self.start_ns + ticks * self.period_ns, vals)


ecg = ECGMonitor  # simulate.ecg(...): the flow-facing name
