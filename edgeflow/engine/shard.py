"""Split multi-key batches by shard, so each shard's keys meet the same window state.

A key's shard is ``crc32(key) % shards``: stable across processes, runs and workers.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edgeflow.batch import Batch, stable_argsort

#: keys whose shard is remembered (about 100 bytes each); past that the cache starts over,
#: so memory does not grow with every key ever seen (crc32 of a key costs ~0.2 us)
CACHE_KEYS = 1 << 18


class Sharder:
    """Splits batches by shard. Memory is bounded: a cache of at most :data:`CACHE_KEYS` keys
    and the layout of the last key tuple seen."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._cache: dict[str, int] = {}
        self._last_keys: tuple[str, ...] | None = None
        self._last_layout = _Layout(np.zeros(0, np.int32))

    def shard_of(self, key: str) -> int:
        s = self._cache.get(key)
        if s is None:
            if len(self._cache) >= CACHE_KEYS:  # bounded: no memory per key ever seen
                self._cache.clear()
            s = self._cache[key] = zlib.crc32(key.encode()) % self.shards
        return s

    def _shards_of(self, keys: Sequence[str]) -> npt.NDArray[np.int32]:
        """Each key's shard: known keys by one C-level pass over the cache."""
        cache = self._cache
        got: list[int | None] = list(map(cache.get, keys))
        if None in got:
            if len(cache) + len(keys) > CACHE_KEYS:
                cache.clear()
            shards = self.shards
            for i, s in enumerate(got):
                if s is None:
                    key = keys[i]
                    got[i] = cache[key] = zlib.crc32(key.encode()) % shards
        return np.array(got, np.int32) if got else np.zeros(0, np.int32)

    def _layout(self, keys: tuple[str, ...]) -> _Layout:
        """Each key's shard, and each shard's keys, for a key tuple; the last tuple's is
        kept, so a source that reuses its key tuple costs no Python per key per batch."""
        if keys is not self._last_keys or not isinstance(keys, tuple):
            self._last_keys, self._last_layout = keys, _Layout(self._shards_of(keys))
        return self._last_layout

    def split(self, batch: Batch) -> list[tuple[str, Batch]]:
        """(shard id, sub-batch) pairs; each sub-batch lists only the keys it holds."""
        if len(batch) == 0:
            return []
        layout = self._layout(batch.keys)
        lut = layout.lut
        if self.shards == 1 or layout.one_shard:
            return [(str(int(lut[0])), batch)]
        shard = lut[batch.key_idx]
        order = stable_argsort(shard, self.shards)
        s_sorted = shard[order]
        bounds = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1], True])
        present = np.bincount(batch.key_idx, minlength=len(batch.keys)) > 0
        every_key = bool(present.all())
        out = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            rows = order[a:b]
            idx = batch.key_idx.take(rows)
            sid = int(s_sorted[a])
            if every_key:  # the shard holds all of its keys: the kept tuple and codes
                keys, remap = layout.of_shard(sid, batch.keys)
                sub = Batch(
                    batch.fields,
                    keys,
                    remap.take(idx),
                    batch.t.take(rows),
                    batch.values.take(rows, axis=1),
                )
                out.append((str(sid), sub))
                continue
            used = np.zeros(len(batch.keys), bool)
            used[idx] = True
            remap = (np.cumsum(used) - 1).astype(np.int32)
            keys = tuple(k for k, u in zip(batch.keys, used.tolist(), strict=True) if u)
            sub = Batch(batch.fields, keys, remap[idx], batch.t[rows], batch.values[:, rows])
            out.append((str(int(s_sorted[a])), sub))
        return out


class _Layout:
    """Shards of one key tuple: each key's shard, and per shard its keys and codes."""

    def __init__(self, lut: npt.NDArray[np.int32]) -> None:
        self.lut = lut
        self.one_shard = bool(len(lut) == 0 or (lut == lut[0]).all())
        self._shards: dict[int, tuple[tuple[str, ...], npt.NDArray[np.int32]]] = {}

    def of_shard(
        self, sid: int, keys: tuple[str, ...]
    ) -> tuple[tuple[str, ...], npt.NDArray[np.int32]]:
        """The shard's keys (in tuple order) and each tuple index's code among them."""
        got = self._shards.get(sid)
        if got is None:
            mine = self.lut == sid
            remap = (np.cumsum(mine) - 1).astype(np.int32)
            got = self._shards[sid] = (
                tuple(k for k, m in zip(keys, mine.tolist(), strict=True) if m),
                remap,
            )
        return got
