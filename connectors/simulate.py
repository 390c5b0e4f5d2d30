"""Simulated sensors: deterministic, many devices, real time or as fast as possible.

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

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeflow.batch import Batch
from edgeflow.connectors.base import Item, SourceContext, SourcePartition, SourceSpec
from edgeflow.timeutil import Duration, now_ns, parse_duration, parse_iso_ns

COLUMNS = ("device", "ts", "accel", "temp")
FIELDS = ("accel", "temp")
BLOCK_TICKS = 256
DEFAULT_START = "2026-01-01T00:00:00Z"


class SimulatedSensors(SourceSpec):
    kind = "simulate"
    default_key = "device"
    default_time = "ts"

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
        self.devices = devices
        self.rate_hz = rate_hz
        self.seed = seed
        self.speed = speed
        self.duration = duration
        self.start = start
        self.n_parts = partitions if partitions is not None else max(1, min(4, devices))
        self.jitter = jitter
        self.spike_prob = spike_prob
        self.shift_prob = shift_prob
        self.prefix = prefix

    def columns(self) -> Sequence[str]:
        return COLUMNS

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
        for name in ("duration", "jitter"):
            v = getattr(self, name)
            if v is not None:
                try:
                    parse_duration(v, what=name)
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

    def _start_ns(self) -> int:
        if isinstance(self.start, int):
            return self.start
        if self.start is not None:
            return parse_iso_ns(self.start)
        if self.speed is None:
            return parse_iso_ns(DEFAULT_START)
        return now_ns() // 1_000_000_000 * 1_000_000_000

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        if resume is None:
            tick, start = 0, self._start_ns()
        else:
            tick, start = int(resume["tick"]), int(resume["start"])
        return _SimPartition(self, int(partition), tick, start, ctx)


class _SimPartition(SourcePartition):
    def __init__(
        self, spec: SimulatedSensors, part: int, tick: int, start_ns: int, ctx: SourceContext
    ) -> None:
        self.spec = spec
        self.part = part
        self.tick = tick
        self.start_ns = start_ns
        self.period_ns = round(1e9 / spec.rate_hz)
        self.dev_ids = np.arange(part, spec.devices, spec.n_parts)
        self.names = tuple(f"{spec.prefix}{i}" for i in self.dev_ids.tolist())
        self.end_tick = (
            None if spec.duration is None else parse_duration(spec.duration) // self.period_ns
        )
        self.jitter_ns = parse_duration(spec.jitter)
        self.batch_ticks = max(1, ctx.batch_max // max(1, len(self.dev_ids)))
        self.fields = tuple(f for f in FIELDS if ctx.fields is None or f in ctx.fields)
        # pacing: tick i is due at anchor_wall + (i - anchor_tick) * period / speed. Live
        # sensors (real time, no fixed start) are due at their own timestamps.
        if spec.start is None and spec.speed == 1.0:
            self.wall0, self.tick0 = start_ns, 0
        else:
            self.wall0, self.tick0 = now_ns(), tick
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
        """Random draws for ticks [b*BLOCK_TICKS, (b+1)*BLOCK_TICKS): a pure function of (seed, partition, b)."""
        if b != self._block_idx:
            s = self.spec
            r = np.random.default_rng([s.seed, 2, self.part, b])
            shape = (BLOCK_TICKS, len(self.dev_ids))
            noise = r.standard_normal(shape, dtype=np.float32).astype(np.float64)
            # one uniform draw per reading decides spike, sign and size: u < 1 is a spike
            u = r.random(shape, dtype=np.float32) / np.float32(max(s.spike_prob, 1e-30))
            spike = np.where(u < 1.0, np.where(u < 0.5, -1.0, 1.0) * (5.0 + 5.0 * u), 0.0)
            shift = np.where(r.random(len(self.dev_ids)) < s.shift_prob, 3.0, 0.0)
            jitter = r.integers(0, self.jitter_ns, shape) if self.jitter_ns else None
            # accel disturbance (noise, spikes, level shift) scaled by each device's amplitude
            self._block = {
                "accel": self.amp * (0.1 * noise + spike + shift),
                "temp": 0.05 * np.roll(noise, 1, axis=1),
                "jitter": jitter,
            }
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
            if "accel" in cols:
                cols["accel"][out] = (
                    self.amp * np.sin(self.omega * secs + self.phase) + data["accel"][sl]
                )
            if "temp" in cols:
                cols["temp"][out] = (
                    22.0 + 2.5 * np.sin(secs * (2 * np.pi / 600.0) + self.phase) + data["temp"][sl]
                )
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
        batch = self.generate(self.tick, hi)
        self.tick = hi
        return [batch]

    def next_awake(self) -> int | None:
        if self.spec.speed is None:
            return None
        due = self.wall0 + int((self.tick - self.tick0) * self.period_ns / self.spec.speed)
        return max(due, now_ns())

    def snapshot(self) -> Any:
        return {"tick": self.tick, "start": self.start_ns}


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
) -> SimulatedSensors:
    """Simulated vibration/temperature sensors.

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
    )  # fmt: skip
