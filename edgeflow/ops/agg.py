"""Aggregations over window groups, computed for all groups at once with numpy.

Build aggregation specs with the functions here (``agg.mean("accel")``); a window step
takes several. Output columns are named ``<func>_<field>`` (``mean_accel``,
``p95_accel``), and ``count`` for :func:`count` without a field.

Missing values (NaN) are skipped: ``mean_accel`` is the mean of the readings that have
an ``accel`` value; a window with none gets ``null``. ``std``/``var`` are population
statistics (ddof=0). Percentiles use linear interpolation between closest ranks (numpy's
default). ``first``/``last`` are by event time (ties: arrival order).

:func:`mergeable` is one spec that emits several columns (see :attr:`Agg.output_names`):
the summaries of a field that a later tier combines exactly (:mod:`edgeflow.ops.rollup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeflow.batch import F64, I64
from edgeflow.ops.args import Arg, check

FUNCS = (
    "count", "sum", "mean", "min", "max", "std", "var", "rms",
    "first", "last", "median", "percentile", "ptp", "kurtosis", "crest_factor", "band_energy",
    "heart_rate", "rr_irregularity", "mergeable",
)  # fmt: skip

#: the columns :func:`mergeable` emits for a field ``f``: ``<prefix>_<f>``
MERGEABLE_COLUMNS = (
    "count", "sum", "sumsq", "min", "max", "first", "first_t", "last", "last_t", "sketch",
)  # fmt: skip

_FS = Arg("fs", "number", 0, 1e9, low_open=True, hint="the sample rate in Hz, e.g. fs=250")
#: the arguments of the aggregations that take more than a field (see :mod:`edgeflow.ops.args`)
ARGS: dict[str, tuple[Arg, ...]] = {
    "percentile": (Arg("q", "number", 0, 100),),
    "band_energy": (Arg("low_hz", "number", 0, 1e9), Arg("high_hz", "number", 0, 1e9), _FS),
    "heart_rate": (_FS,),
    "rr_irregularity": (_FS,),
    "mergeable": (
        Arg(
            "relative_accuracy",
            "number",
            0.0001,
            0.5,
            hint="the sketch's relative error, e.g. 0.01",
        ),
    ),
}


@dataclass(frozen=True)
class Agg:
    """One aggregation: ``func`` over ``field`` (``q`` in [0, 100] for percentiles)."""

    func: str
    field: str | None = None
    q: float | None = None
    band: tuple[float, float, float] | None = None  # band_energy: (low Hz, high Hz, sample rate Hz)
    fs: float | None = None  # heart_rate, rr_irregularity: sample rate Hz
    alpha: float | None = None  # mergeable: the quantile sketch's relative accuracy

    @property
    def output_names(self) -> tuple[str, ...]:
        """Every column this aggregation adds to a window record (one, but for
        :func:`mergeable`: ``count_<f>``, ``sum_<f>``, ... ``sketch_<f>``)."""
        if self.func == "mergeable":
            return tuple(f"{c}_{self.field}" for c in MERGEABLE_COLUMNS)
        return (self.output_name,)

    @property
    def number_columns(self) -> tuple[str, ...]:
        """The columns of :attr:`output_names` that hold numbers (all but a sketch): what a
        window's summaries offer as reading fields."""
        return tuple(c for c in self.output_names if not c.startswith("sketch_"))

    @property
    def output_name(self) -> str:
        if self.func == "count":
            return "count" if self.field is None else f"count_{self.field}"
        if self.func == "percentile":
            q = self.q if isinstance(self.q, int | float) else 0.0
            label = f"p{q:g}".replace(".", "_")
            return f"{label}_{self.field}"
        if self.func == "band_energy" and self.band is not None:
            lo, hi, _ = (v if isinstance(v, int | float) else 0.0 for v in self.band)
            return f"band_{lo:g}_{hi:g}hz_{self.field}".replace(".", "_")
        if self.func == "mergeable":
            return f"sketch_{self.field}"  # the column only it makes (all: output_names)
        return f"{self.func}_{self.field}"

    def problems(self) -> list[str]:
        """What is wrong with this spec's arguments (empty when valid)."""
        out: list[str] = []
        if self.func not in FUNCS:
            out.append(f"unknown aggregation {self.func!r}; use one of {', '.join(FUNCS)}")
        if self.field is not None and not isinstance(self.field, str):
            out.append(
                f"agg.{self.func}: field={self.field!r} is not a field name; give a string, "
                f"e.g. agg.{self.func}('accel')"
            )
        elif self.func != "count" and not self.field:
            out.append(f"agg.{self.func}() needs a field name, e.g. agg.{self.func}('accel')")
        label = f"agg.{self.func}({self.field!r})"
        band = self.band if self.band is not None else (None, None, None)
        values = {
            "q": self.q, "low_hz": band[0], "high_hz": band[1], "fs": self.fs,
            "relative_accuracy": self.alpha,
        }  # fmt: skip
        if self.func == "band_energy":
            values["fs"] = band[2]
        bad = check(label, ARGS.get(self.func, ()), values)
        out += bad
        if self.func == "band_energy" and not bad:
            lo, hi, fs = (float(v) for v in self.band or ())
            if not (lo < hi <= fs / 2):
                out.append(
                    f"{label}: need low_hz < high_hz <= fs/2 (Nyquist); got {lo}, {hi}, fs={fs}"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"func": self.func, "field": self.field, "output": self.output_name}
        if self.q is not None:
            d["q"] = self.q
        if self.func == "mergeable":
            d["relative_accuracy"] = self.alpha
            d["outputs"] = list(self.output_names)
        return d


def count(field: str | None = None) -> Agg:
    """Readings in the window (or, with a field, readings that have that field)."""
    return Agg("count", field)


def sum(field: str) -> Agg:
    return Agg("sum", field)


def mean(field: str) -> Agg:
    return Agg("mean", field)


def min(field: str) -> Agg:
    return Agg("min", field)


def max(field: str) -> Agg:
    return Agg("max", field)


def std(field: str) -> Agg:
    return Agg("std", field)


def var(field: str) -> Agg:
    return Agg("var", field)


def rms(field: str) -> Agg:
    """Root mean square, sqrt(mean(x**2)): the energy of a vibration signal."""
    return Agg("rms", field)


def first(field: str) -> Agg:
    return Agg("first", field)


def last(field: str) -> Agg:
    return Agg("last", field)


def median(field: str) -> Agg:
    return Agg("median", field)


def percentile(field: str, q: float) -> Agg:
    """The q-th percentile, q in [0, 100], e.g. ``percentile("accel", 99.9)`` -> ``p99_9_accel``."""
    return Agg("percentile", field, q)


def p50(field: str) -> Agg:
    return Agg("percentile", field, 50)


def p90(field: str) -> Agg:
    return Agg("percentile", field, 90)


def p95(field: str) -> Agg:
    return Agg("percentile", field, 95)


def p99(field: str) -> Agg:
    return Agg("percentile", field, 99)


def kurtosis(field: str) -> Agg:
    """Excess kurtosis (Fisher, population): 0 for Gaussian noise, large for impacts in vibration."""
    return Agg("kurtosis", field)


def crest_factor(field: str) -> Agg:
    """Peak over RMS, max|x| / rms: grows with bearing impacts before the RMS does."""
    return Agg("crest_factor", field)


def band_energy(field: str, low_hz: float, high_hz: float, *, fs: float) -> Agg:
    """Mean-square power of the window's signal in [low_hz, high_hz) (one-sided spectrum,
    FFT), for readings sampled at ``fs`` Hz; all bands together sum to mean(x**2)."""
    return Agg("band_energy", field, band=(_real(low_hz), _real(high_hz), _real(fs)))


def heart_rate(field: str, *, fs: float) -> Agg:
    """Beats per minute from the R-peaks of an ECG sampled at ``fs`` Hz: 60 / the mean
    interval between consecutive peaks in the window (scipy.signal.find_peaks; peaks at
    least 0.25 s apart, above 60 % of the window's R amplitude and standing out by half of
    it). NaN with
    fewer than two peaks."""
    return Agg("heart_rate", field, fs=_real(fs))


def rr_irregularity(field: str, *, fs: float) -> Agg:
    """Irregularity of the heart rhythm: the coefficient of variation (std / mean) of the
    R-R intervals in the window. About 0.02-0.08 in sinus rhythm, above 0.15 in atrial
    fibrillation. NaN with fewer than three peaks."""
    return Agg("rr_irregularity", field, fs=_real(fs))


def _real(v: Any) -> Any:
    """A number as a float; anything else as given, for ``problems()`` to refuse."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def r_peaks(x: F64, fs: float) -> npt.NDArray[np.intp]:
    """Indices of the R-peaks of an ECG segment (the detector behind :func:`heart_rate`)."""
    from scipy.signal import find_peaks

    if len(x) < 3:
        return np.empty(0, np.intp)
    base = float(np.median(x))
    top = float(np.percentile(x, 99.5))
    if not top > base:
        return np.empty(0, np.intp)
    span = top - base  # the R amplitude: T waves reach well under 60 % of it
    peaks, _ = find_peaks(
        x, height=base + 0.6 * span, distance=int(np.maximum(1, 0.25 * fs)), prominence=0.5 * span
    )
    return np.asarray(peaks, dtype=np.intp)


def mergeable(field: str, relative_accuracy: float = 0.01) -> Agg:
    """The summaries of ``field`` a later tier combines exactly (``RecordStream.rollup``):
    ``count_<f>`` (values that are not NaN), ``sum_<f>``, ``sumsq_<f>`` (sum of squares),
    ``min_<f>``, ``max_<f>``, ``first_<f>``/``first_t_<f>`` and ``last_<f>``/``last_t_<f>``
    (the value and its event time in int ns; ties: arrival order) and ``sketch_<f>``, a
    quantile sketch with relative accuracy ``relative_accuracy`` as a JSON object (layout and
    error guarantee: :mod:`edgeflow.ops.sketch`). A window without a value of the field has
    ``count_<f>`` 0, null for the others and a sketch with no buckets."""
    return Agg("mergeable", field, alpha=_real(relative_accuracy))


def ptp(field: str) -> Agg:
    """Peak to peak: max - min."""
    return Agg("ptp", field)


def compute(
    aggs: Sequence[Agg],
    fields: Sequence[str],
    gid: npt.NDArray[np.int64],
    values: F64,
    n_groups: int,
    t: I64 | None = None,
) -> dict[str, Any]:
    """Compute every aggregation for ``n_groups`` groups.

    ``gid`` is the group of each row, ascending (rows sorted by group, then event time);
    ``values`` has one row per field in ``fields``; ``t`` each row's event time (needed by
    :func:`mergeable` only). Returns one array (or list) per output column.
    """
    return compute_groups(aggs, fields, np.bincount(gid, minlength=n_groups), values, t)


def compute_groups(
    aggs: Sequence[Agg],
    fields: Sequence[str],
    counts: npt.NDArray[np.intp],
    values: F64,
    t: I64 | None = None,
) -> dict[str, Any]:
    """:func:`compute` for rows already laid out group after group: group ``i`` is the
    next ``counts[i]`` rows of ``values`` (in event-time order where first/last need it).

    Each field is read once into one grouped view, and the aggregations share its pieces:
    the per-group sums (count, sum, mean, rms), the deviations from the mean (var, std,
    kurtosis), min and max, and one partial sort per field for every percentile together
    (``np.partition`` at the ranks they need, not a full sort of each window).
    ``t`` (laid out like the values) is read by :func:`mergeable` only.
    """
    out: dict[str, Any] = {}
    per_field: dict[str, _FieldGroups] = {}
    # linear in the number of aggregations and fields (a flow with 100,000 of them)
    column: dict[str, int] = {}
    for j, f in enumerate(fields):
        column.setdefault(f, j)
    qs_of: dict[str, list[float]] = {}
    for b in aggs:
        if b.field is not None and b.func in ("median", "percentile"):
            qs_of.setdefault(b.field, []).append(_q(b))
    for a in aggs:
        if a.func == "count" and a.field is None:
            out[a.output_name] = counts.astype(np.int64)
            continue
        assert a.field is not None
        fg = per_field.get(a.field)
        if fg is None:
            qs = qs_of.get(a.field, [])
            fg = per_field[a.field] = _FieldGroups(counts, values[column[a.field]], qs, t)
        if a.func == "mergeable":
            out.update(fg.mergeable(a))
        else:
            out[a.output_name] = fg.compute(a)
    return out


def _q(a: Agg) -> float:
    return 50.0 if a.func == "median" else float(a.q if a.q is not None else 0.0)


#: at most this many distinct ranks are picked with one np.partition per row; more sort rows
_MAX_KTH = 32
#: windows at least this long take np.partition at the ranks; shorter ones a row sort
#: (measured: a 100-wide row sorts as fast as it partitions at two ranks; 1,000+ wide
#: rows partition 1.5-3x faster)
_PARTITION_FROM = 256


class _FieldGroups:
    """One field's valid values, group after group, with lazily computed shared pieces."""

    def __init__(
        self, counts_all: npt.NDArray[np.intp], x: F64, qs: Sequence[float], t: I64 | None = None
    ) -> None:
        n_groups = len(counts_all)
        valid = np.isfinite(x)
        self.t = t  # each value's event time (given for mergeable summaries only)
        if valid.all():
            self.x, self.counts = x, counts_all
        else:
            self.x = x[valid]
            self.t = None if t is None else t[valid]
            rows_gid = np.repeat(np.arange(n_groups), counts_all)
            self.counts = np.bincount(rows_gid[valid], minlength=n_groups)
        self.n_groups = n_groups
        self.nonempty = self.counts > 0
        self.all_nonempty = bool(self.nonempty.all())
        ends = np.cumsum(self.counts)
        self.starts = ends - self.counts
        self.ends = ends
        self.qs = sorted(set(qs))
        self._g: I64 | None = None
        self._sum: F64 | None = None
        self._dev: F64 | None = None
        self._var: F64 | None = None
        self._minmax: tuple[F64, F64] | None = None
        self._ranked: dict[float, tuple[F64, F64]] | None = None
        self._rank_of: dict[float, tuple[I64, I64, F64]] = {}
        c = self.counts[self.nonempty] if not self.all_nonempty else self.counts
        self.widest = int(c.max()) if len(c) else 0
        #: every non-empty group equally long (regular sampling): ranks are scalars
        self.regular = bool(len(c)) and int(c.min()) == self.widest

    @property
    def g(self) -> I64:
        """The group of each valid value."""
        if self._g is None:
            self._g = np.repeat(np.arange(self.n_groups), self.counts)
        return self._g

    def _nan(self) -> F64:
        return np.full(self.n_groups, np.nan)

    def _per_group(self, ufunc: np.ufunc, x: F64, empty: float) -> F64:
        """``ufunc`` reduced over each group of ``x`` (laid out like the values)."""
        if self.all_nonempty:
            return np.asarray(ufunc.reduceat(x, self.starts), np.float64)
        out = np.full(self.n_groups, empty)
        if x.size:
            out[self.nonempty] = ufunc.reduceat(x, self.starts[self.nonempty])
        return out

    def _ratio(self, num: F64) -> F64:
        """num / count per group (NaN for empty groups)."""
        if self.all_nonempty:
            out: F64 = num / self.counts
            return out
        with np.errstate(invalid="ignore", divide="ignore"):
            r: F64 = num / self.counts
        return r

    def sums(self) -> F64:
        if self._sum is None:
            self._sum = self._per_group(np.add, self.x, 0.0)
        return self._sum

    def mean(self) -> F64:
        return self._ratio(self.sums())

    def dev(self) -> F64:
        """Each value minus its group's mean (the two-pass variance's first pass)."""
        if self._dev is None:
            m = self.mean()
            self._dev = self.x - (np.repeat(m[self.nonempty], self.counts[self.nonempty]))
        return self._dev

    def var(self) -> F64:
        if self._var is None:
            d = self.dev()
            self._var = self._ratio(self._per_group(np.add, d * d, 0.0))
        return self._var

    def minmax(self) -> tuple[F64, F64]:
        if self._minmax is None:
            self._minmax = (
                self._per_group(np.minimum, self.x, np.nan),
                self._per_group(np.maximum, self.x, np.nan),
            )
        return self._minmax

    def sorted_values(self) -> F64:
        """Values sorted within each group (groups stay in order)."""
        return self.x[np.lexsort((self.x, self.g))]

    def _ranks(self, q: float) -> tuple[I64, I64, F64]:
        """For each non-empty group: the two ranks a q-th percentile interpolates between."""
        got = self._rank_of.get(q)
        if got is None:
            c = self.counts[self.nonempty] if not self.all_nonempty else self.counts
            h = (c - 1) * (q / 100.0)
            lo = np.floor(h).astype(np.int64)
            got = self._rank_of[q] = (lo, np.minimum(lo + 1, c - 1), h - lo)
        return got

    def _rank_values(self) -> dict[float, tuple[F64, F64]]:
        """For every requested q: the values at its two ranks in each non-empty group,
        from one partial sort of a (groups x widest) view of the values."""
        if self._ranked is not None:
            return self._ranked
        c = self.counts[self.nonempty] if not self.all_nonempty else self.counts
        widest = self.widest
        n_ne = len(c)
        ranks = {q: self._ranks(q) for q in self.qs}
        if self.regular:  # every window equally long: the values are the matrix
            kth = np.array(sorted({int(r[i][0]) for r in ranks.values() for i in (0, 1)}))
            m = self.x.reshape(n_ne, widest).copy()
        elif widest * n_ne <= 2 * self.x.size + 4096:  # padded with +inf after each row
            kth = np.unique(np.concatenate([np.concatenate(r[:2]) for r in ranks.values()]))
            m = np.full((n_ne, widest), np.inf)
            g_ne = np.repeat(np.arange(n_ne), c)
            m[g_ne, np.arange(self.x.size) - np.repeat(self.starts[self.nonempty], c)] = self.x
        else:  # a few very long windows among many short: sort within groups instead
            s = self.sorted_values()
            st = self.starts[self.nonempty]
            self._ranked = {q: (s[st + lo], s[st + hi]) for q, (lo, hi, _) in ranks.items()}
            return self._ranked
        if widest >= _PARTITION_FROM and len(kth) <= _MAX_KTH:
            m.partition(kth, axis=1)  # O(width) per window
        else:  # short windows: numpy's vectorised row sort is as fast as selecting
            m.sort(axis=1)
        rows = np.arange(n_ne)
        self._ranked = {q: (m[rows, lo], m[rows, hi]) for q, (lo, hi, _) in ranks.items()}
        return self._ranked

    def percentile(self, q: float) -> F64:
        out = self._nan()
        if not self.x.size:
            return out
        if q not in self.qs:
            self.qs = sorted({*self.qs, q})
            self._ranked = None
        a, b = self._rank_values()[q]
        _, _, frac = self._ranks(q)
        out[self.nonempty] = a + frac * (b - a)
        return out

    def band_energy(self, lo: float, hi: float, fs: float) -> F64:
        from scipy import fft as scipy_fft

        out = self._nan()
        for g in np.flatnonzero(self.nonempty).tolist():  # one FFT per window (of any length)
            x = self.x[self.starts[g] : self.ends[g]]
            n = len(x)
            power = np.abs(scipy_fft.rfft(x)) ** 2 / (n * n)
            power[1 : (n + 1) // 2] *= 2  # one-sided: the negative frequencies, except DC/Nyquist
            freqs = scipy_fft.rfftfreq(n, 1.0 / fs)
            top = freqs <= hi if hi >= fs / 2 else freqs < hi  # the top band includes Nyquist
            out[g] = float(power[(freqs >= lo) & top].sum())
        return out

    def rhythm(self, what: str, fs: float) -> F64:
        out = self._nan()
        for g in np.flatnonzero(self.nonempty).tolist():  # one peak search per window
            rr = np.diff(r_peaks(self.x[self.starts[g] : self.ends[g]], fs)) / fs
            if what == "heart_rate" and len(rr) >= 1:
                out[g] = 60.0 / float(rr.mean())
            elif what == "rr_irregularity" and len(rr) >= 2:
                out[g] = float(rr.std() / rr.mean())
        return out

    def mergeable(self, a: Agg) -> dict[str, Any]:
        """The columns of :func:`mergeable` (see there), the sketches from one pass."""
        from edgeflow.ops.sketch import sketches_by_group

        if self.t is None:
            raise ValueError("agg.mergeable needs the readings' event times")
        f = a.field
        ne = self.nonempty
        lo, hi = self.minmax()
        sums = self.sums().copy()
        sumsq = self._per_group(np.add, self.x * self.x, 0.0)
        if not self.all_nonempty:
            sums[~ne] = np.nan
            sumsq[~ne] = np.nan
        out: dict[str, Any] = {
            f"count_{f}": self.counts.astype(np.int64),
            f"sum_{f}": sums,
            f"sumsq_{f}": sumsq,
            f"min_{f}": lo,
            f"max_{f}": hi,
        }
        for end, pos in (("first", self.starts), ("last", self.ends - 1)):
            vals = self._nan()
            if self.x.size:
                vals[ne] = self.x[pos[ne]]
            out[f"{end}_{f}"] = vals
            if self.all_nonempty:
                out[f"{end}_t_{f}"] = self.t[pos] if self.x.size else np.empty(0, np.int64)
            else:
                times: list[int | None] = [None] * self.n_groups
                rows = np.flatnonzero(ne)
                for g, v in zip(rows.tolist(), self.t[pos[rows]].tolist(), strict=True):
                    times[g] = v
                out[f"{end}_t_{f}"] = times
        alpha = float(a.alpha) if a.alpha is not None else 0.01
        out[f"sketch_{f}"] = sketches_by_group(self.g, self.x, self.n_groups, alpha)
        return out

    def compute(self, a: Agg) -> npt.NDArray[Any]:
        f = a.func
        if f == "count":
            return self.counts.astype(np.int64)
        if f == "sum":
            s = self.sums().copy()
            s[~self.nonempty] = np.nan
            return s
        if f == "mean":
            return self.mean()
        if f == "var":
            return self.var()
        if f == "std":
            return np.sqrt(self.var())
        if f == "rms":
            return np.sqrt(self._ratio(self._per_group(np.add, self.x * self.x, 0.0)))
        if f in ("min", "max", "ptp"):
            lo, hi = self.minmax()
            return lo if f == "min" else hi if f == "max" else hi - lo
        if f in ("first", "last"):
            out = self._nan()
            if self.x.size:
                pos = self.starts if f == "first" else self.ends - 1
                out[self.nonempty] = self.x[pos[self.nonempty]]
            return out
        if f == "kurtosis":
            d2 = self.dev() * self.dev()
            m2 = self._per_group(np.add, d2, 0.0)
            m4 = self._per_group(np.add, d2 * d2, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                k: F64 = (m4 / self.counts) / (m2 / self.counts) ** 2 - 3.0
            return k
        if f == "crest_factor":
            peak = self._per_group(np.maximum, np.abs(self.x), np.nan)
            ss = self._per_group(np.add, self.x * self.x, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                crest: F64 = peak / np.sqrt(ss / self.counts)
            return crest
        if f == "band_energy":
            assert a.band is not None
            return self.band_energy(*a.band)
        if f in ("heart_rate", "rr_irregularity"):
            assert a.fs is not None
            return self.rhythm(f, a.fs)
        if f in ("median", "percentile"):
            return self.percentile(_q(a))
        raise ValueError(f"unknown aggregation {f!r}")
