"""Split multi-key batches by shard, so each shard's keys meet the same window state.

A key's shard is ``crc32(key) % shards``: stable across processes, runs and workers.
"""

from __future__ import annotations

import zlib

import numpy as np

from edgeflow.batch import Batch, stable_argsort


class Sharder:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._cache: dict[str, int] = {}

    def shard_of(self, key: str) -> int:
        s = self._cache.get(key)
        if s is None:
            if len(self._cache) > 1_000_000:
                self._cache.clear()
            s = self._cache[key] = zlib.crc32(key.encode()) % self.shards
        return s

    def split(self, batch: Batch) -> list[tuple[str, Batch]]:
        """(shard id, sub-batch) pairs; each sub-batch lists only the keys it holds."""
        if len(batch) == 0:
            return []
        lut = np.fromiter((self.shard_of(k) for k in batch.keys), np.int32, len(batch.keys))
        if self.shards == 1 or (lut == lut[0]).all():
            return [(str(int(lut[0])), batch)]
        shard = lut[batch.key_idx]
        order = stable_argsort(shard, self.shards)
        s_sorted = shard[order]
        bounds = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1], True])
        out = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            rows = order[a:b]
            idx = batch.key_idx[rows]
            used = np.zeros(len(batch.keys), bool)
            used[idx] = True
            remap = (np.cumsum(used) - 1).astype(np.int32)
            keys = tuple(k for k, u in zip(batch.keys, used.tolist(), strict=True) if u)
            sub = Batch(batch.fields, keys, remap[idx], batch.t[rows], batch.values[:, rows])
            out.append((str(int(s_sorted[a])), sub))
        return out
