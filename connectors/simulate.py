"""Simulated sensors: deterministic, many devices, real time or as fast as possible.

``simulate.sensors`` (below) is the general-purpose profile; the example flows' profiles
are ``simulate.vibration`` (machines at 1 kHz), ``simulate.traffic`` (loop detectors),
``simulate.ecg`` (portable ECG) and ``simulate.pos`` (store tills), each in its own module.

Each device samples at ``rate_hz``. ``accel`` is a sine wave (per-device amplitude,
frequency and phase) plus Gaussian noise, with occasional injected spikes and level
shifts; ``temp`` drifts slowly around 20-25 °C. The same ``seed`` gives the same
readings however the stream is cut into batches, however many workers run it, and
after a resume: values are a pure function of (seed, partition, tick).

Columns: ``device`` (key), ``ts`` (event time, ns), ``accel``, ``temp``.

Delivery guarantee: exactly-once replay; the snapshot is the next tick, so a resumed
run regenerates exactly the readings after the snapshot.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeflow.batch import Batch
from edgeflow.connectors.sim_base import TickSimulation, from_env
from edgeflow.connectors.sim_ecg import ecg
from edgeflow.connectors.sim_machines import vibration
from edgeflow.connectors.sim_retail import pos
from edgeflow.connectors.sim_traffic import traffic
from edgeflow.timeutil import Duration, parse_duration

COLUMNS = ("device", "ts", "accel", "temp")
FIELDS = ("accel", "temp")
BLOCK_TICKS = 256

__all__ = ["ecg", "from_env", "pos", "sensors", "traffic", "vibration"]


class SimulatedSensors(TickSimulation):
    default_key = "device"
    fields = FIELDS

    def __init__(
        self,
        devices: int = 50,
        rate_hz: float = 100.0,
        seed: int = 0,
        *,
        speed: float | None = 1.0,
        duration: Duration | None = None,
        start: str | int | None = None,
        partitions: int | None = None,
        jitter: Duration = 0,
        spike_prob: float = 0.001,
        shift_prob: float = 0.01,
        prefix: str = "dev-",
    ) -> None:
        super().__init__(
            devices, rate_hz, seed, speed=speed, duration=duration, start=start,
            partitions=partitions,
        )  # fmt: skip
        self.jitter = jitter
        self.spike_prob = spike_prob
        self.shift_prob = shift_prob
        self.prefix = prefix

    def problems(self) -> list[str]:
        out = super().problems()
        try:
            parse_duration(self.jitter, what="jitter")
        except ValueError as exc:
            out.append(str(exc))
        if not isinstance(self.prefix, str):
            out.append(
                f"prefix={self.prefix!r}: give the device names' prefix as text, e.g. 'line1/m'"
            )
        return out

    def generator(
        self, part: int, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> _SensorSignals:
        return _SensorSignals(self, part, dev_ids, start_ns, fields)


class _SensorSignals:
    def __init__(
        self,
        spec: SimulatedSensors,
        part: int,
        dev_ids: np.ndarray,
        start_ns: int,
        fields: tuple[str, ...],
    ) -> None:
        self.spec = spec
        self.part = part
        self.start_ns = start_ns
        self.period_ns = round(1e9 / spec.rate_hz)
        self.dev_ids = dev_ids
        self.names = tuple(spec.key_name(i) for i in dev_ids.tolist())
        self.jitter_ns = parse_duration(spec.jitter)
        self.fields = fields
        # per-device parameters depend only on (seed, device)
        amp = np.empty(len(self.dev_ids))
        freq = np.empty(len(self.dev_ids))
        phase = np.empty(len(self.dev_ids))
        for j, d in enumerate(self.dev_ids.tolist()):
            r = np.random.default_rng([spec.seed, 1, d])
            amp[j], freq[j], phase[j] = (
                r.uniform(0.5, 2.0),
                r.uniform(0.05, 2.0),
                r.uniform(0, 2 * np.pi),
            )
        self.amp, self.freq, self.phase = amp, freq, phase
        self.omega = 2 * np.pi * freq
        self._block_idx = -1
        self._block: dict[str, Any] = {}

    def _gen_block(self, b: int) -> dict[str, Any]:
        """Random draws for ticks [b*BLOCK_TICKS, (b+1)*BLOCK_TICKS): a pure function of (seed, partition, b).

        Only the requested fields' disturbances are computed; the draws are the same
        whichever fields are requested (same order, same generator), so a field's values do
        not depend on which others are read."""
        if b != self._block_idx:
            s = self.spec
            r = np.random.default_rng([s.seed, 2, self.part, b])
            shape = (BLOCK_TICKS, len(self.dev_ids))
            noise32 = r.standard_normal(shape, dtype=np.float32)
            # one uniform draw per reading decides spike, sign and size: u < 1 is a spike
            u = r.random(shape, dtype=np.float32) / np.float32(max(s.spike_prob, 1e-30))
            shift = np.where(r.random(len(self.dev_ids)) < s.shift_prob, 3.0, 0.0)
            jitter = r.integers(0, self.jitter_ns, shape) if self.jitter_ns else None
            block: dict[str, Any] = {"jitter": jitter}
            noise = noise32.astype(np.float64)
            if "accel" in self.fields:
                # accel disturbance (noise, spikes, level shift) scaled by each device's
                # amplitude: amp * (0.1 * noise + spike + shift), adding only the non-zero
                # spikes and shifts (adding 0.0 changes nothing)
                accel = 0.1 * noise
                hits = np.flatnonzero(u < 1.0)
                if len(hits):
                    uh = u.reshape(-1)[hits]
                    flat = accel.reshape(-1)
                    flat[hits] += np.where(uh < 0.5, -1.0, 1.0) * (5.0 + 5.0 * uh)
                if shift.any():
                    accel += shift
                accel *= self.amp
                block["accel"] = accel
            if "temp" in self.fields:
                block["temp"] = 0.05 * np.roll(noise, 1, axis=1)
            self._block = block
            self._block_idx = b
        return self._block

    def generate(self, a: int, b: int) -> Batch:
        """Readings for ticks [a, b) of this partition, tick-major."""
        nd = len(self.dev_ids)
        n = (b - a) * nd
        t = np.empty((b - a, nd), np.int64)
        values = np.empty((len(self.fields), b - a, nd))
        cols = dict(zip(self.fields, values, strict=True))
        lo = a
        while lo < b:
            blk = lo // BLOCK_TICKS
            hi = min(b, (blk + 1) * BLOCK_TICKS)
            data = self._gen_block(blk)
            sl = slice(lo - blk * BLOCK_TICKS, hi - blk * BLOCK_TICKS)
            out = slice(lo - a, hi - a)
            rel = np.arange(lo, hi) * self.period_ns
            secs = (rel / 1e9)[:, None]
            # in place, operation for operation as written in the comments
            if "accel" in cols:  # amp * sin(omega * secs + phase) + disturbance
                acc = cols["accel"][out]
                np.multiply(self.omega, secs, out=acc)
                acc += self.phase
                np.sin(acc, out=acc)
                acc *= self.amp
                acc += data["accel"][sl]
            if "temp" in cols:  # 22 + 2.5 * sin(secs * 2 pi / 600 + phase) + disturbance
                tmp = cols["temp"][out]
                np.add(secs * (2 * np.pi / 600.0), self.phase, out=tmp)
                np.sin(tmp, out=tmp)
                tmp *= 2.5
                tmp += 22.0
                tmp += data["temp"][sl]
            t[out] = (self.start_ns + rel)[:, None]
            if data["jitter"] is not None:
                t[out] -= data["jitter"][sl]
            lo = hi
        return Batch(
            self.fields,
            self.names,
            np.tile(np.arange(nd, dtype=np.int32), b - a),
            t.reshape(-1),
            values.reshape(len(self.fields), n),
        )


def sensors(
    devices: int = 50,
    rate_hz: float = 100.0,
    seed: int = 0,
    *,
    speed: float | None = 1.0,
    realtime: bool | None = None,
    duration: Duration | None = None,
    start: str | int | None = None,
    partitions: int | None = None,
    jitter: Duration = 0,
    spike_prob: float = 0.001,
    shift_prob: float = 0.01,
    prefix: str = "dev-",
) -> SimulatedSensors:
    """Simulated vibration/temperature sensors.

    Devices are named ``<prefix><number>`` (``dev-0``, ``dev-1``...); give each node its own
    ``prefix`` (``"line1/m"``) when several nodes' records meet at a fog tier.

    ``speed=1.0`` runs in real time, ``speed=10`` ten times faster, ``speed=None`` (or
    ``realtime=False``) as fast as possible. ``duration`` ends the stream after that much
    simulated time. ``jitter`` delays each reading's timestamp by up to that much, so
    readings arrive out of order. ``start`` (ISO-8601 with offset, or ns) fixes the first
    timestamp; by default it is now (real time) or 2026-01-01T00:00:00Z (fast).
    """
    if realtime is False:
        speed = None
    return SimulatedSensors(
        devices, rate_hz, seed, speed=speed, duration=duration, start=start,
        partitions=partitions, jitter=jitter, spike_prob=spike_prob, shift_prob=shift_prob,
        prefix=prefix,
    )  # fmt: skip
