"""Windows as the user builds them: ``window.tumbling('1s')``, hopping, session and count.

A :class:`WindowSpec` holds the arguments as given; ``problems()`` checks them (one line per
bad argument, see :mod:`edgeflow.ops.args`) and ``resolve()`` turns them into the
:class:`ResolvedWindow` (integer nanoseconds) the kernel runs. The kernel, and the windows'
semantics, are in :mod:`edgeflow.ops.window_kernel`; its classes are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeflow.ops.args import Arg, check, duration, points
from edgeflow.ops.window_kernel import I64_MAX as I64_MAX
from edgeflow.ops.window_kernel import I64_MIN as I64_MIN
from edgeflow.ops.window_kernel import StepOutput as StepOutput
from edgeflow.ops.window_kernel import WindowKernel as WindowKernel
from edgeflow.ops.window_kernel import WindowState as WindowState
from edgeflow.ops.window_kernel import group_exclusive_cummax as group_exclusive_cummax
from edgeflow.timeutil import Duration, parse_duration

KINDS = ("tumbling", "hopping", "session", "count")

#: the most windows a hopping window puts one reading in (size / slide)
MAX_HOPS = 1000
_TIME = Arg("time", "choice", choices=("event", "processing"))
_OFFSET = duration("offset", zero=True)
#: each window's arguments and their valid values (see :mod:`edgeflow.ops.args`)
ARGS: dict[str, tuple[Arg, ...]] = {
    "tumbling": (duration("size"), _OFFSET, _TIME),
    "hopping": (duration("size"), duration("slide"), _OFFSET, _TIME),
    "session": (duration("gap"), _TIME),
    "count": (points("n", 1, 1_000_000),),
}


@dataclass(frozen=True)
class WindowSpec:
    """What the user asked for; checked by :meth:`resolve` (the flow validator calls it)."""

    kind: str
    size: Duration | None = None
    slide: Duration | None = None
    gap: Duration | None = None
    count: int | None = None
    offset: Duration = 0
    time: str = "event"

    def problems(self) -> list[str]:
        """One line per bad argument (empty when valid); the flow's validation calls it."""
        if self.kind not in KINDS:
            return [f"unknown window kind {self.kind!r}; use one of {', '.join(KINDS)}"]
        label = f"window.{self.kind}"
        values = {"size": self.size, "slide": self.slide, "gap": self.gap, "n": self.count}
        values.update(offset=self.offset, time=self.time)
        out = check(label, ARGS[self.kind], values)
        if not out:
            try:
                r = self.resolve()
            except ValueError as exc:
                return [f"{label}: {exc}"]
            if r.kind == "hopping" and r.size > MAX_HOPS * r.slide:
                out.append(
                    f"{label}: size={self.size!r} with slide={self.slide!r} puts each reading "
                    f"in {-(-r.size // r.slide)} windows; give a slide of at least "
                    f"size/{MAX_HOPS}"
                )
        return out

    def resolve(self) -> ResolvedWindow:
        """Durations in ns; raises ValueError naming the bad argument and how to fix it."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown window kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.time not in ("event", "processing"):
            raise ValueError(f"time={self.time!r}: use 'event' or 'processing'")
        offset = parse_duration(self.offset, what="window offset")
        if self.kind == "count":
            if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
                raise ValueError(f"window.count({self.count!r}): n must be a whole number >= 1")
            return ResolvedWindow("count", 0, 0, 0, self.count, 0, self.time)
        if self.kind == "session":
            gap = parse_duration(
                self.gap if self.gap is not None else "", what="session gap", allow_zero=False
            )
            return ResolvedWindow("session", 0, 0, gap, 0, 0, self.time)
        size = parse_duration(
            self.size if self.size is not None else "",
            what=f"{self.kind} window size",
            allow_zero=False,
        )
        slide = size
        if self.kind == "hopping":
            slide = parse_duration(
                self.slide if self.slide is not None else "",
                what="hopping window slide",
                allow_zero=False,
            )
            if slide > size:
                raise ValueError(
                    f"hopping window slide {self.slide!r} is longer than its size {self.size!r}; "
                    "readings between windows would belong to none. Use slide <= size."
                )
        return ResolvedWindow(self.kind, size, slide, 0, 0, offset % slide, self.time)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "time": self.time}
        for k in ("size", "slide", "gap", "count"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v if isinstance(v, str | int | float) else str(v)
        if self.offset:
            d["offset"] = (
                self.offset if isinstance(self.offset, str | int | float) else str(self.offset)
            )
        return d


@dataclass(frozen=True)
class ResolvedWindow:
    kind: str
    size: int
    slide: int
    gap: int
    n: int
    offset: int
    time: str


def tumbling(size: Duration, *, offset: Duration = 0, time: str = "event") -> WindowSpec:
    """Back-to-back windows of ``size`` (``"1s"``, ``"5m"``); each reading in exactly one."""
    return WindowSpec("tumbling", size=size, offset=offset, time=time)


def hopping(
    size: Duration, slide: Duration, *, offset: Duration = 0, time: str = "event"
) -> WindowSpec:
    """Windows of ``size`` starting every ``slide`` (sliding windows); readings in several."""
    return WindowSpec("hopping", size=size, slide=slide, offset=offset, time=time)


sliding = hopping


def session(gap: Duration, *, time: str = "event") -> WindowSpec:
    """Bursts of readings separated by at least ``gap`` of silence."""
    return WindowSpec("session", gap=gap, time=time)


def count(n: int) -> WindowSpec:
    """Every ``n`` readings of a key, in arrival order."""
    return WindowSpec("count", count=n)
