"""The health check of a new version during its grace period (over-the-air updates).

A new version passes when, for the whole grace period, its worker

* does not crash: no non-zero exit (three exits end the check at once: a crash loop);
* writes its figures (``stats.json``; a slow start gets :data:`STARTUP_ALLOWANCE_S` more) and,
  when the version it replaced read input, reads input too (``readings_in`` grows; judged
  once it has written figures for :data:`INPUT_ALLOWANCE_S`);
* keeps dead letters under ``max_error_rate`` of the readings it read.

A worker that exits 0 within the grace period (its input ended) passes. The verdict is one of
``checking``, ``passed`` or ``failed``, with the reason in one line for ``edgeflow status``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: this many non-zero exits within the grace period fail the update at once
GRACE_MAX_EXITS = 3
#: dead letters above this share of the readings fail the update
MAX_ERROR_RATE = 0.2
#: the error rate is judged once this many readings were read
MIN_READINGS_FOR_RATE = 20
#: figures older than this (seconds) at the end of the grace period: the worker is stuck
STALE_STATS_S = 10.0
#: a worker that has written no figures yet at the end of the grace period (a slow start on a
#: busy node) gets this much longer before it counts as stuck
STARTUP_ALLOWANCE_S = 30.0
#: "no input" is judged only once the worker has written figures for this long
INPUT_ALLOWANCE_S = 5.0


@dataclass
class GraceCheck:
    """Judges one new version; ``started`` and ``now`` are monotonic seconds."""

    grace_s: float
    started: float
    need_input: bool = True
    max_error_rate: float = MAX_ERROR_RATE
    exits: list[tuple[float, int, str | None]] = field(default_factory=list)
    figures_since: float | None = None

    def worker_exited(self, now: float, code: int, error: str | None) -> None:
        if code != 0:
            self.exits.append((now, code, error))

    def _crash_reason(self) -> str:
        at, code, error = self.exits[-1]
        if error and error.lower().startswith("error:"):
            error = error[len("error:") :].strip()
        n = len(self.exits)
        times = "once" if n == 1 else f"{n} times"
        return (
            f"worker exited {code} {times} in {at - self.started:.0f} s: {error or 'no error line'}"
        )

    def verdict(
        self, now: float, running: bool, stats: dict[str, Any], wall_now: float
    ) -> tuple[str, str | None]:
        """(``checking`` | ``passed`` | ``failed``, the reason when failed)."""
        if len(self.exits) >= GRACE_MAX_EXITS:
            return "failed", self._crash_reason()
        if stats and running and self.figures_since is None:
            self.figures_since = now
        counters = stats.get("counters", {}) if stats else {}
        readings = int(counters.get("readings_in", 0))
        dead = int(counters.get("dead_letters", 0))
        if readings >= MIN_READINGS_FOR_RATE and dead > self.max_error_rate * readings:
            return "failed", (
                f"{dead} dead letters of {readings} readings ({100 * dead / readings:.0f}%), "
                f"over the limit of {100 * self.max_error_rate:.0f}%"
            )
        if now < self.started + self.grace_s:
            return "checking", None
        if self.exits:
            return "failed", self._crash_reason()
        if not running:  # exited 0 within the grace period: its input ended
            return "passed", None
        if not stats and now < self.started + self.grace_s + STARTUP_ALLOWANCE_S:
            return "checking", None  # still starting
        if not stats or wall_now - float(stats.get("at", 0)) > STALE_STATS_S:
            return "failed", (
                f"the worker wrote no figures for {STALE_STATS_S:.0f} s at the end of the "
                f"{self.grace_s:.0f} s grace period (stuck?)"
            )
        if self.need_input and readings == 0:
            since = self.figures_since if self.figures_since is not None else now
            if now - since < INPUT_ALLOWANCE_S:
                return "checking", None
            return "failed", (
                f"no input read in the {self.grace_s:.0f} s grace period (the previous version "
                "read input)"
            )
        return "passed", None
