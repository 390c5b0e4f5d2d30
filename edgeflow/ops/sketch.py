"""A mergeable quantile sketch with relative accuracy (DDSketch-style log buckets), pure numpy.

A window step emits one sketch per window (``agg.mergeable``); a later tier merges the
sketches of many windows and nodes exactly and reads percentiles from the merged sketch.

**Buckets.** With ``gamma = (1 + alpha) / (1 - alpha)``, a finite value ``x != 0`` goes to
bucket ``i = ceil(log(|x|) / log(gamma))`` of its sign's side, which holds the magnitudes in
``(gamma**(i-1), gamma**i]``; ``0.0`` and ``-0.0`` count in ``zero``. NaN and +-inf are
skipped (like the window aggregations skip them). A bucket is represented by
``2 * gamma**i / (gamma + 1)``, which is within relative error ``alpha`` of every magnitude
in the bucket.

**Bounded.** Each side keeps at most :data:`MAX_BUCKETS` (2048) buckets, contiguous from its
largest index ``hi`` down: a value whose index is below ``hi - 2047`` is counted in bucket
``hi - 2047`` (the smallest magnitudes of that side are collapsed). At ``alpha = 0.01``
2048 buckets span magnitudes in a ratio of ``gamma**2047`` ~ 6e17 per side (1e-6..1e6 fits
with room to spare), so nothing collapses in practice; where it does, only the collapsed
(smallest) magnitudes lose the guarantee, and they are over-estimated in magnitude.

**Merging is exact.** Merging adds counts bucket by bucket and collapses by the same rule,
so ``merge(sketch(A), sketch(B))`` is the same sketch as ``sketch(A + B)`` (equal JSON,
collapsed or not), and merging is associative and commutative. Sketches merge only with
the same ``alpha``.

**Error guarantee.** For ``n`` values and ``q`` in [0, 1], ``quantile(q)`` returns the
representative of the bucket holding the value of rank ``k = floor(q * (n - 1))`` (0-based,
ascending: ``sorted(values)[k]``, numpy's ``method="lower"``), so
``|quantile(q) - sorted(values)[k]| <= alpha * |sorted(values)[k]|`` (plus float rounding,
below 1e-12 relative), exact for zero, for every value not collapsed. Empty: NaN.

**JSON layout** (:meth:`QuantileSketch.to_json`; orjson-serialisable, deterministic)::

    {"alpha": 0.01, "zero": 3, "pos": [offset, [c0, c1, ...]], "neg": [offset, [c0, ...]]}

``pos`` holds the buckets of positive values from bucket ``offset`` up: each token is either
the count of the next bucket (an int > 0) or ``-k``, a run of ``k`` empty buckets (so a
sketch of a few values spread over a wide range stays small); ``neg`` likewise for the
magnitudes of negative values. The first and last token of a side are counts; an empty side
is ``[0, []]``. Reading also takes plain dense counts (``0`` for an empty bucket). E.g. the
values 1, 1, 1.5 and -2 at ``alpha = 0.01``::

    {"alpha": 0.01, "zero": 0, "pos": [0, [2, -20, 1]], "neg": [35, [1]]}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeflow.batch import F64, I64

#: the most buckets a sketch keeps per side (positive, negative)
MAX_BUCKETS = 2048
#: the relative accuracies a sketch accepts
ALPHA_RANGE = (0.0001, 0.5)
#: bucket indices a sketch from JSON may hold (every finite float64 fits far inside)
_MAX_INDEX = 1 << 40

_I64_MIN = np.iinfo(np.int64).min
_I64_MAX = np.iinfo(np.int64).max

_EMPTY: I64 = np.zeros(0, np.int64)


def check_alpha(alpha: Any) -> str | None:
    """Why ``alpha`` is not a relative accuracy a sketch takes (None: it is)."""
    lo, hi = ALPHA_RANGE
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not lo <= alpha <= hi:
        return f"relative accuracy {alpha!r} is not a number in [{lo}, {hi}]"
    return None


def _ln_gamma(alpha: float) -> float:
    return math.log1p(2.0 * alpha / (1.0 - alpha))


def _indices(magnitudes: F64, ln_gamma: float) -> I64:
    """The bucket index of each magnitude (all > 0, finite)."""
    return np.ceil(np.log(magnitudes) / ln_gamma).astype(np.int64)


def _grouped_side(
    g: npt.NDArray[np.intp], idx: I64, n_groups: int
) -> tuple[list[int], list[int], list[int]]:
    """One side's buckets for every group: (offsets, widths, all counts back to back).

    ``g`` is each value's group, ``idx`` its bucket index; a group's indices below its
    largest minus MAX_BUCKETS - 1 are collapsed into that lowest kept bucket."""
    if not len(idx):
        zeros = [0] * n_groups
        return zeros, zeros, []
    hi = np.full(n_groups, _I64_MIN, np.int64)
    np.maximum.at(hi, g, idx)
    idx = np.maximum(idx, (hi - (MAX_BUCKETS - 1))[g])
    lo = np.full(n_groups, _I64_MAX, np.int64)
    np.minimum.at(lo, g, idx)
    has = hi != _I64_MIN
    width = np.where(has, hi - lo + 1, 0)
    base = np.cumsum(width) - width
    dense = np.bincount(base[g] + (idx - lo[g]), minlength=int(width.sum()))
    tokens, n_tokens = _encode_runs(dense, base, width)
    return np.where(has, lo, 0).tolist(), n_tokens.tolist(), tokens.tolist()


def _encode_runs(dense: I64, base: I64, width: I64) -> tuple[I64, I64]:
    """Dense bucket counts of groups laid back to back (group ``i`` at ``base[i]``, ``width[i]``
    long, its first and last bucket non-zero) as the JSON tokens: each run of ``k`` empty
    buckets inside a group becomes ``-k``. Returns (all tokens, tokens per group)."""
    nz = np.flatnonzero(dense)
    if not len(nz):
        return np.zeros(0, np.int64), np.zeros(len(width), np.int64)
    grp = np.searchsorted(base + width, nz, side="right")  # the group of each bucket
    gap = np.zeros(len(nz), np.int64)
    same = grp[1:] == grp[:-1]
    gap[1:] = np.where(same, nz[1:] - nz[:-1] - 1, 0)
    has_gap = gap > 0
    at = np.arange(len(nz)) + np.cumsum(has_gap)  # where each count goes
    tokens = np.empty(len(nz) + int(has_gap.sum()), np.int64)
    tokens[at] = dense[nz]
    tokens[at[has_gap] - 1] = -gap[has_gap]
    per_group = np.bincount(grp, minlength=len(width)) + np.bincount(
        grp[has_gap], minlength=len(width)
    )
    return tokens, per_group


def _decode_runs(tokens: I64) -> I64:
    """Dense counts from JSON tokens (``-k``: ``k`` empty buckets; ``0``: one)."""
    if not bool((tokens < 0).any()):
        return tokens
    runs = tokens < 0
    return np.repeat(np.where(runs, 0, tokens), np.where(runs, -tokens, 1))


def sketches_by_group(
    group_codes: npt.NDArray[np.integer[Any]], values: F64, n_groups: int, alpha: float = 0.01
) -> list[dict[str, Any]]:
    """The JSON sketch (see the module docstring) of each group's values, groups
    ``0..n_groups-1``, from one vectorised pass over all values (any order). Non-finite
    values are skipped; a group without values gets a sketch with no buckets."""
    bad = check_alpha(alpha)
    if bad is not None:
        raise ValueError(bad)
    x = np.asarray(values, np.float64)
    g = np.asarray(group_codes).astype(np.intp, copy=False)
    if x.shape != g.shape:
        raise ValueError(f"{len(g)} group codes for {len(x)} values")
    ok = np.isfinite(x)
    if not ok.all():
        x, g = x[ok], g[ok]
    lg = _ln_gamma(alpha)
    pos, neg = x > 0, x < 0
    zero = np.bincount(g[x == 0], minlength=n_groups).tolist()
    p_lo, p_w, p_c = _grouped_side(g[pos], _indices(x[pos], lg), n_groups)
    n_lo, n_w, n_c = _grouped_side(g[neg], _indices(-x[neg], lg), n_groups)
    out: list[dict[str, Any]] = []
    pb = nb = 0
    for i in range(n_groups):
        pw, nw = p_w[i], n_w[i]
        out.append(
            {
                "alpha": alpha,
                "zero": zero[i],
                "pos": [p_lo[i], p_c[pb : pb + pw]],
                "neg": [n_lo[i], n_c[nb : nb + nw]],
            }
        )
        pb += pw
        nb += nw
    return out


def _collapse(offset: int, counts: I64) -> tuple[int, I64]:
    """A side's buckets bounded (lowest collapsed, see the module docstring) and trimmed of
    zero buckets at both ends (the canonical form)."""
    if not len(counts):
        return 0, _EMPTY
    if len(counts) > MAX_BUCKETS:
        cut = len(counts) - MAX_BUCKETS
        kept = counts[cut:].copy()
        kept[0] += counts[:cut].sum()
        offset, counts = offset + cut, kept
    if counts[0] and counts[-1]:  # already canonical (the usual case)
        return offset, counts
    nz = np.flatnonzero(counts)
    if not len(nz):
        return 0, _EMPTY
    a, b = int(nz[0]), int(nz[-1]) + 1
    return offset + a, counts[a:b]


def merge_sides(parts: list[tuple[int, I64]]) -> tuple[int, I64]:
    """One side of the merge of many sketches (``(offset, counts)`` each, canonical): counts
    added bucket by bucket, then bounded and trimmed like :func:`sketches_by_group` does, so
    the result equals the sketch of all the values at once. Never wider than MAX_BUCKETS
    while merging (parts far below the kept range add to its lowest bucket)."""
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return 0, _EMPTY
    if len(parts) == 1:
        return parts[0]
    hi = max(o + len(c) for o, c in parts) - 1
    floor = hi - (MAX_BUCKETS - 1)
    lo = max(min(o for o, _ in parts), floor)
    out = np.zeros(hi - lo + 1, np.int64)
    for o, c in parts:
        if o < lo:  # only when collapsing: the part's buckets below the kept range
            cut = min(lo - o, len(c))
            out[0] += c[:cut].sum()
            o, c = lo, c[cut:]
        out[o - lo : o - lo + len(c)] += c
    return _collapse(lo, out)


def _side_from_json(name: str, v: Any) -> tuple[int, I64]:
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise ValueError(f"sketch {name!r} is {v!r:.60}, not [offset, [counts...]]")
    offset, counts = v
    if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > _MAX_INDEX:
        raise ValueError(f"sketch {name!r} offset {offset!r:.40} is not a bucket index")
    if not isinstance(counts, list | tuple):
        raise ValueError(f"sketch {name!r} counts are {counts!r:.60}, not a list")
    if len(counts) > MAX_BUCKETS:
        raise ValueError(f"sketch {name!r} has {len(counts)} buckets, more than {MAX_BUCKETS}")
    if not len(counts):
        return 0, _EMPTY
    try:
        arr = np.asarray(counts)
    except (ValueError, TypeError, OverflowError):
        arr = np.asarray([], object)
    if (
        arr.ndim != 1
        or arr.dtype.kind not in "iu"
        or arr.min() < -MAX_BUCKETS
        or arr.max() >= 1 << 62
    ):
        raise ValueError(
            f"sketch {name!r} counts are not all whole numbers (a count >= 0, or -k for k "
            "empty buckets)"
        )
    arr = arr.astype(np.int64, copy=False)
    width = int(np.where(arr < 0, -arr, 1).sum())
    if width > MAX_BUCKETS:
        raise ValueError(f"sketch {name!r} spans {width} buckets, more than {MAX_BUCKETS}")
    return _collapse(offset, _decode_runs(arr))


def _encode_one(counts: I64) -> list[int]:
    """One side's canonical dense counts as JSON tokens (see the module docstring)."""
    if not len(counts):
        return []
    tokens, _ = _encode_runs(counts, np.zeros(1, np.int64), np.array([len(counts)], np.int64))
    out: list[int] = tokens.tolist()
    return out


class QuantileSketch:
    """A quantile sketch with relative accuracy ``alpha`` (see the module docstring for the
    buckets, the bound on their number, the exact-merge property and the error guarantee)."""

    __slots__ = ("alpha", "neg", "neg_offset", "pos", "pos_offset", "zero")

    def __init__(self, alpha: float, zero: int, pos: tuple[int, I64], neg: tuple[int, I64]) -> None:
        self.alpha = alpha
        self.zero = zero
        self.pos_offset, self.pos = pos
        self.neg_offset, self.neg = neg

    @staticmethod
    def from_values(x: F64, alpha: float = 0.01) -> QuantileSketch:
        """The sketch of the finite values of ``x`` (vectorised)."""
        x = np.asarray(x, np.float64).reshape(-1)
        (d,) = sketches_by_group(np.zeros(len(x), np.intp), x, 1, alpha)
        return QuantileSketch.from_json(d)

    @staticmethod
    def empty(alpha: float = 0.01) -> QuantileSketch:
        return QuantileSketch.from_values(np.empty(0), alpha)

    @property
    def count(self) -> int:
        """How many values the sketch holds."""
        return int(self.zero + self.pos.sum() + self.neg.sum())

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """The sketch of both sketches' values (exact; ValueError for another alpha)."""
        if other.alpha != self.alpha:
            raise ValueError(
                f"cannot merge sketches of relative accuracy {self.alpha} and {other.alpha}"
            )
        return QuantileSketch(
            self.alpha,
            self.zero + other.zero,
            merge_sides([(self.pos_offset, self.pos), (other.pos_offset, other.pos)]),
            merge_sides([(self.neg_offset, self.neg), (other.neg_offset, other.neg)]),
        )

    def _value(self, index: int) -> float:
        """The representative magnitude of bucket ``index``."""
        lg = _ln_gamma(self.alpha)
        gamma = math.exp(lg)
        with np.errstate(over="ignore"):
            v = float(np.exp(index * lg) * (2.0 / (gamma + 1.0)))
        return v if math.isfinite(v) else float(np.finfo(np.float64).max)

    def quantile(self, q: float) -> float:
        """The value of rank ``floor(q * (count - 1))`` within relative error ``alpha``
        (NaN when empty). ``q`` in [0, 1], else ValueError."""
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q={q!r} is not a number in [0, 1]")
        n = self.count
        if n == 0:
            return math.nan
        k = math.floor(q * (n - 1))
        n_neg = int(self.neg.sum())
        if k < n_neg:  # negatives, largest magnitude first
            rev = self.neg[::-1]
            j = int(np.searchsorted(np.cumsum(rev), k, side="right"))
            return -self._value(self.neg_offset + len(rev) - 1 - j)
        k -= n_neg
        if k < self.zero:
            return 0.0
        k -= self.zero
        j = int(np.searchsorted(np.cumsum(self.pos), k, side="right"))
        return self._value(self.pos_offset + j)

    def to_json(self) -> dict[str, Any]:
        """The JSON layout of the module docstring (a new dict of plain ints and lists)."""
        return {
            "alpha": self.alpha,
            "zero": self.zero,
            "pos": [self.pos_offset, _encode_one(self.pos)],
            "neg": [self.neg_offset, _encode_one(self.neg)],
        }

    @staticmethod
    def from_json(d: Any) -> QuantileSketch:
        """A sketch from :meth:`to_json`'s layout, checked: anything else raises ValueError
        with a one-line reason. Zero buckets at either end of a side are dropped."""
        if not isinstance(d, dict):
            raise ValueError(f"a sketch is a JSON object, not {type(d).__name__}")
        want = {"alpha", "zero", "pos", "neg"}
        if set(d) != want:
            missing, extra = sorted(want - set(d)), sorted(map(str, set(d) - want))
            raise ValueError(f"sketch keys: missing {missing}, unexpected {extra}")
        alpha, zero = d["alpha"], d["zero"]
        bad = check_alpha(alpha)
        if bad is not None:
            raise ValueError(f"sketch {bad}")
        if type(zero) is not int or not 0 <= zero < 1 << 62:
            raise ValueError(f"sketch 'zero' is {zero!r:.40}, not a non-negative whole number")
        return QuantileSketch(
            float(alpha), zero, _side_from_json("pos", d["pos"]), _side_from_json("neg", d["neg"])
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantileSketch) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash((self.alpha, self.zero, self.pos_offset, self.neg_offset, self.count))

    def __repr__(self) -> str:
        return f"QuantileSketch(alpha={self.alpha}, count={self.count})"
