"""Simulated point-of-sale terminals: one reading per sale, per store.

Each store sells at its own rate (0.05-0.4 sales a second at its busiest), following the
time of day (closed 22:00-07:00, busiest around noon and 18:00). A sale has an ``amount``
(log-normal, about 25 on average) and a number of ``items``; its timestamp falls anywhere
within its second, so readings are not on a regular grid.

Columns: ``store`` (key), ``ts`` (event time, ns), ``amount``, ``items``.
Delivery guarantee: exactly-once replay (see :mod:`edgeflow.connectors.sim_base`).
"""

from __future__ import annotations

import numpy as np

from edgeflow.batch import Batch
from edgeflow.connectors.sim_base import TickSimulation, poisson_quantile
from edgeflow.timeutil import Duration

BLOCK = 600


def store_hours(hour: np.ndarray) -> np.ndarray:
    """Relative sales by hour of day: 0 when closed, 1 at the busiest."""
    open_ = (hour >= 7.0) & (hour < 22.0)
    noon = np.exp(-0.5 * ((hour - 12.5) / 1.5) ** 2)
    evening = np.exp(-0.5 * ((hour - 18.0) / 1.5) ** 2)
    return np.where(open_, 0.25 + 0.75 * np.maximum(noon, evening), 0.0)


class PointOfSale(TickSimulation):
    """Sales at ``stores`` stores, one reading per sale. Pacing as for
    :func:`~edgeflow.connectors.simulate.sensors` (one tick = one second)."""

    default_key = "store"
    fields = ("amount", "items")
    prefix = "store-"

    def __init__(
        self,
        stores: int = 20,
        seed: int = 0,
        *,
        speed: float | None = 1.0,
        duration: Duration | None = None,
        start: str | int | None = None,
        partitions: int | None = None,
    ) -> None:
        super().__init__(
            stores, 1.0, seed, speed=speed, duration=duration, start=start, partitions=partitions
        )

    def generator(
        self, part: int, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> _Sales:
        return _Sales(self, dev_ids, start_ns, fields)


class _Sales:
    def __init__(
        self, spec: PointOfSale, dev_ids: np.ndarray, start_ns: int, fields: tuple[str, ...]
    ) -> None:
        self.spec = spec
        self.dev_ids = dev_ids.tolist()
        self.names = tuple(spec.key_name(d) for d in self.dev_ids)
        self.start_ns = start_ns
        self.fields = fields
        self.peak = np.array(
            [np.random.default_rng([spec.seed, 20, d]).uniform(0.05, 0.4) for d in self.dev_ids]
        )

    def _sales(self, j: int, blk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sales of store j in ticks [blk*BLOCK, (blk+1)*BLOCK): (ns from start, amount, items)."""
        r = np.random.default_rng([self.spec.seed, 21, self.dev_ids[j], blk])
        ticks = np.arange(blk * BLOCK, (blk + 1) * BLOCK)
        t = self.start_ns + ticks * 1_000_000_000
        hour = (t // 1_000_000_000 % 86_400) / 3600.0
        n = poisson_quantile(r.random(BLOCK), self.peak[j] * store_hours(hour)).astype(np.int64)
        total = int(n.sum())
        at = np.repeat(ticks, n) * 1_000_000_000 + r.integers(0, 1_000_000_000, total)
        amount = np.round(np.exp(r.normal(3.0, 0.6, total)), 2)
        items = 1.0 + r.poisson(2.0, total)
        order = np.argsort(at, kind="stable")
        return at[order], amount[order], items[order]

    def generate(self, a: int, b: int) -> Batch:
        codes, ts, amount, items = [], [], [], []
        for j in range(len(self.dev_ids)):
            lo = a
            while lo < b:
                blk = lo // BLOCK
                hi = min(b, (blk + 1) * BLOCK)
                at, am, it = self._sales(j, blk)
                sel = (at >= lo * 1_000_000_000) & (at < hi * 1_000_000_000)
                codes.append(np.full(int(sel.sum()), j, np.int32))
                ts.append(self.start_ns + at[sel])
                amount.append(am[sel])
                items.append(it[sel])
                lo = hi
        t = np.concatenate(ts) if ts else np.empty(0, np.int64)
        order = np.argsort(t, kind="stable")
        cols = {"amount": np.concatenate(amount), "items": np.concatenate(items)}
        return Batch(
            self.fields,
            self.names,
            np.concatenate(codes)[order] if codes else np.empty(0, np.int32),
            t[order].astype(np.int64),
            np.stack([cols[f][order] for f in self.fields])
            if self.fields
            else np.empty((0, len(t))),
        )


pos = PointOfSale  # simulate.pos(...): the flow-facing name
