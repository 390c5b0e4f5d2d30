"""Process-wide counters of a run: readings in, records out, late readings, dead letters.

Names: ``readings_in``, ``bytes_in``, ``windows_out``, ``late``, ``dead_letters``,
``anomalies``, ``anomalies_in``, ``trend_points``, ``trend_points_in``,
``records_to.<sink>``, ``bytes_to.<sink>`` (counters) and ``watermark.<window step>``
(a gauge: the newest watermark of the step, event time ns).
"""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._c[name] += n

    def raise_to(self, name: str, value: int) -> None:
        """A gauge that only grows (a watermark): keep the largest value reported."""
        with self._lock:
            if value > self._c.get(name, value - 1):
                self._c[name] = value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)

    def reset(self) -> None:
        with self._lock:
            self._c.clear()


COUNTERS = Counters()
