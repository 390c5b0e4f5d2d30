"""Operator arguments, checked when a flow is built: one rule per argument, one line per problem.

Every operator spec - windows, aggregations, reductions, detectors, decisions - follows the
:class:`Checked` protocol: ``problems()`` returns one line per bad argument, each naming the
operator, the argument, the value given and the valid range, e.g.
``detect.zscore: window=-5 is out of range; give a whole number in [2, 100000]``. The flow's
validation (:mod:`edgeflow.flow.plan`) calls it for every step, so ``edgeflow validate``
refuses a bad argument before anything runs. An operator declares its arguments as a tuple
of :class:`Arg` and implements ``problems()`` as ``check(label, ARGS, values)`` plus any
rule that ties two arguments together.

The rules: a whole number is an ``int`` (not a bool, not a float such as ``5.0``); a number
is an ``int`` or ``float`` that is finite (not NaN, not inf, not a bool); a duration is what
:func:`~edgeflow.timeutil.parse_duration` reads, at most :data:`MAX_DURATION` (so that
times plus durations stay inside int64 nanoseconds).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgeflow.timeutil import parse_duration

#: the longest duration an operator takes: ten years
MAX_DURATION = "3650d"
MAX_DURATION_NS = 3650 * 86_400 * 10**9
#: the most points an operator keeps per key (windows of detectors, points per window)
MAX_POINTS = 100_000
#: the largest count of points used as a counter (warm-up, cooldown)
MAX_COUNT = 1_000_000_000


class Checked(Protocol):
    """An operator spec whose arguments can be checked before anything runs."""

    def problems(self) -> list[str]:
        """One line per bad argument (empty when every argument is valid)."""
        ...


@dataclass(frozen=True)
class Arg:
    """One argument of an operator and its valid values.

    ``kind`` is ``int`` (a whole number), ``number`` (a finite int or float), ``bool``,
    ``duration`` or ``choice`` (one of ``choices``). ``low``/``high`` bound numbers and
    whole numbers (``low_open``/``high_open``: the bound itself is excluded); durations are
    always within [0, :data:`MAX_DURATION`], and above 0 unless ``low`` is 0 and closed.
    ``optional``: None (not given) is allowed. ``hint`` is said after the valid values.
    """

    name: str
    kind: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    multiple_of: int = 1
    choices: tuple[str, ...] = ()
    #: what the argument means, said after the valid values (e.g. "the sample rate in Hz")
    hint: str = ""

    def valid(self) -> str:
        """The valid values, as the error message says them."""
        if self.kind == "bool":
            text = "True or False"
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "duration":
            least = "0 or more" if self.low == 0 and not self.low_open else "above 0"
            text = f"a duration such as '10s', {least} and at most {MAX_DURATION}"
        else:
            what = "a whole number" if self.kind == "int" else "a finite number"
            if self.multiple_of > 1:
                what += f" that is a multiple of {self.multiple_of}"
            text = what + _range(self)
        if self.hint:
            text += f" ({self.hint})"
        return text + (" (or None)" if self.optional else "")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid for this argument (None when it is)."""
        if value is None:
            if self.optional:
                return None
            example = f"e.g. {self.name}='10s', " if self.kind == "duration" else ""
            return f"{self.name} is missing; give {example}{self.valid()}"
        bad = f"{self.name}={value!r}"
        if self.kind == "bool":
            return (
                None if isinstance(value, bool) else f"{bad} is not a boolean; give True or False"
            )
        if self.kind == "choice":
            ok = isinstance(value, str) and value in self.choices
            return None if ok else f"{bad} is not valid; give {self.valid()}"
        if self.kind == "duration":
            return self._duration(value, bad)
        if isinstance(value, bool):
            return f"{bad} is a boolean; give {self.valid()}"
        if not isinstance(value, numbers.Real):
            return f"{bad} is not a number; give {self.valid()}"
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return f"{bad} is not a whole number; give {self.valid()}"
        if not math.isfinite(float(value)):
            return f"{bad} is not a finite number; give {self.valid()}"
        if not self._inside(float(value)):
            return f"{bad} is out of range; give {self.valid()}"
        if self.multiple_of > 1 and int(float(value)) % self.multiple_of:
            return f"{bad} is not a multiple of {self.multiple_of}; give {self.valid()}"
        return None

    def _inside(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def _duration(self, value: Any, bad: str) -> str | None:
        try:
            ns = parse_duration(value, what=self.name)
        except (ValueError, OverflowError):
            return f"{bad} is not a duration; give {self.valid()}"
        if ns > MAX_DURATION_NS:
            return f"{bad} is too long; give {self.valid()}"
        if ns == 0 and not (self.low == 0 and not self.low_open):
            return f"{bad} is zero; give {self.valid()}"
        return None


def _range(a: Arg) -> str:
    lo, hi = _num(a.low), _num(a.high)
    if a.low == -math.inf and a.high == math.inf:
        return ""
    if a.high == math.inf:
        return f" {'>' if a.low_open else '>='} {lo}"
    if a.low == -math.inf:
        return f" {'<' if a.high_open else '<='} {hi}"
    if a.low_open and a.high_open:
        return f" strictly between {lo} and {hi}"
    return f" in {'(' if a.low_open else '['}{lo}, {hi}{')' if a.high_open else ']'}"


def _num(v: float) -> str:
    return str(int(v)) if math.isfinite(v) and v == int(v) else repr(v)


def check(label: str, args: Sequence[Arg], values: Mapping[str, Any]) -> list[str]:
    """One line per argument of ``values`` that its rule in ``args`` refuses, each
    starting with the operator's ``label`` (e.g. ``detect.zscore``)."""
    out: list[str] = []
    for a in args:
        why = a.problem(values.get(a.name))
        if why is not None:
            out.append(f"{label}: {why}")
    return out


# the rules operators share
def points(name: str, low: int, high: int = MAX_POINTS, *, multiple_of: int = 1) -> Arg:
    """A count of points an operator keeps (a window length, points per window)."""
    return Arg(name, "int", low, high, multiple_of=multiple_of)


def counter(name: str) -> Arg:
    """A count of points to wait (warm-up, cooldown): 0 or more."""
    return Arg(name, "int", 0, MAX_COUNT)


def level(name: str = "level") -> Arg:
    """An alarm level in the detector's own unit (stds, CUSUM h): above 0, at most 1000."""
    return Arg(name, "number", 0, 1000, low_open=True)


def rate(name: str) -> Arg:
    """A smoothing factor strictly between 0 and 1."""
    return Arg(name, "number", 0, 1, low_open=True, high_open=True)


def duration(name: str, *, optional: bool = False, zero: bool = False) -> Arg:
    """A duration above 0 (or 0 and above with ``zero=True``), at most :data:`MAX_DURATION`."""
    return Arg(name, "duration", 0, low_open=not zero, optional=optional)
