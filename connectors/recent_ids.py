"""A bounded memory of the last record ids seen, to drop re-delivered messages.

:class:`RecentIds` remembers at most ``limit`` distinct ids; when full, the oldest is
forgotten first (first in, first out). It keeps a 16-byte BLAKE2b digest of each id, not the
id: about 100 bytes of memory per remembered id whatever its length (100,000 ids: ~10 MB),
and a snapshot of 16 bytes per id (:meth:`RecentIds.dump`, the digests oldest first: 1.6 MB
and 1-8 ms for 100,000) that :meth:`RecentIds.load` turns back into the same memory (~25 ms
for 100,000), so a resumed run still knows the last ``limit`` ids. Two different ids share a
digest with probability about 2**-128 per pair: a new record is never taken for a duplicate
in practice. Membership and insertion are O(1) (~1 us).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable

#: bytes of digest kept per id
DIGEST = 16


def digest(rid: str) -> bytes:
    """The id's 16-byte BLAKE2b digest (the same in every process and run)."""
    return hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=DIGEST).digest()


class RecentIds:
    """The last ``limit`` (>= 1) distinct ids seen, oldest forgotten first."""

    def __init__(self, limit: int, ids: Iterable[str] = ()) -> None:
        if limit < 1:
            raise ValueError(f"RecentIds needs a limit of at least 1, got {limit}")
        self.limit = limit
        self._order: deque[bytes] = deque()
        self._known: set[bytes] = set()
        #: grows with each change; :meth:`dump` is cached for an unchanged memory
        self.version = 0
        self._dumped: tuple[int, bytes] | None = None
        for rid in ids:
            self.seen(rid)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, rid: object) -> bool:
        return isinstance(rid, str) and digest(rid) in self._known

    def seen(self, rid: str) -> bool:
        """True when ``rid`` is remembered (a duplicate); else remember it and say False."""
        d = digest(rid)
        if d in self._known:
            return True
        self._remember(d)
        return False

    def _remember(self, d: bytes) -> None:
        if len(self._order) >= self.limit:
            self._known.discard(self._order.popleft())
        self._order.append(d)
        self._known.add(d)
        self.version += 1

    def dump(self) -> bytes:
        """The remembered ids' digests, oldest first, for a snapshot."""
        if self._dumped is None or self._dumped[0] != self.version:
            self._dumped = (self.version, b"".join(self._order))
        return self._dumped[1]

    @staticmethod
    def load(blob: bytes, limit: int) -> RecentIds:
        """The memory :meth:`dump` saved, keeping its newest ``limit`` ids. ValueError when
        ``blob`` is not such a dump."""
        if not isinstance(blob, bytes) or len(blob) % DIGEST:
            raise ValueError(f"not a saved id memory: expected a multiple of {DIGEST} bytes")
        out = RecentIds(limit)
        start = max(0, len(blob) // DIGEST - limit) * DIGEST
        for i in range(start, len(blob), DIGEST):
            out._remember(blob[i : i + DIGEST])
        out._dumped = (out.version, blob[start:])
        return out
