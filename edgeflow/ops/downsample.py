"""Data reduction kernels: keep the shape of a signal with far fewer points.

Each kernel works per key on readings in arrival order (sensors send in time order) and
keeps explicit state, so a resumed run continues exactly. Every kernel counts points in
and out (``ratio``); the error-bounded ones guarantee their bound:

* ``deadband`` - report a value when it moves more than ``band`` (absolute) or ``percent``
  from the last reported one, or after ``max_interval`` (heartbeat). Holding the last
  reported value reconstructs every reading within the band.
* ``swinging_door`` - piecewise-linear compression with ``deviation`` as the maximum error:
  linear interpolation between reported points is within ``deviation`` of every reading.
  Reported points lie on the door's line, so a value may differ from the raw reading by up
  to ``deviation`` (this is what makes the bound hold; classic swinging door does not
  guarantee it).
* ``changes`` - report only when the value changes (lossless under hold-last-value).
* ``decimate`` - anti-aliasing FIR low-pass (scipy.signal.firwin) then every q-th sample;
  the filter state carries across batches, so the stream equals filtering the whole
  signal offline (``lfilter``) and taking every q-th output.
* ``lttb`` / ``m4`` / ``minmax`` - per tumbling time window ``every``, keep ``points`` points
  chosen by tsdownsample (Rust implementations of LTTB, M4 and min-max). ``m4`` with
  ``points=4`` and ``minmax`` with ``points=2`` (one bin), and a window whose readings all
  share one time, keep the first, minimum, maximum and last reading (m4) or the minimum and
  maximum (minmax), in time order.

Time order, per key: the readings of a batch are taken sorted by time (equal times in
arrival order). A reading older than the newest one already taken for its key (late, from
an earlier batch's time range) is skipped and counted (``state["skipped"]``): reported
points never go back in time. Equal times: swinging door takes the first reading at a time
and skips the others (a line cannot pass through two values at one time, so its bound holds
for every reading it takes); the other reductions take them all, so two reported points
may share a time. Arguments are checked when the flow is built (``problems()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeflow.batch import F64, I64, Batch, RecordBatch
from edgeflow.ops.args import Arg, check, duration, points
from edgeflow.ops.door_segments import close_door, lockstep_fits, run_rows, run_segments
from edgeflow.ops.kernel import RecordKernel
from edgeflow.timeutil import Duration, parse_duration

KINDS = ("deadband", "swinging_door", "changes", "decimate", "lttb", "m4", "minmax")

_HEARTBEAT = duration("max_interval", optional=True)
#: each reduction's arguments and their valid values (see :mod:`edgeflow.ops.args`).
#: tsdownsample's LTTB needs 3 points or more; m4 takes 4 per bin and minmax 2 per bin, and
#: a single bin (m4 points=4, minmax points=2) is reduced here (tsdownsample needs 2 bins)
ARGS: dict[str, tuple[Arg, ...]] = {
    "deadband": (
        Arg("band", "number", 0, optional=True),
        Arg("percent", "number", 0, optional=True),
        _HEARTBEAT,
    ),
    "swinging_door": (Arg("deviation", "number", 0, low_open=True), _HEARTBEAT),
    "changes": (_HEARTBEAT,),
    "decimate": (Arg("q", "int", 2, 10_000), Arg("numtaps", "int", 1, 100_001, optional=True)),
    "lttb": (duration("every"), points("points", 3)),
    "m4": (duration("every"), points("points", 4, multiple_of=4)),
    "minmax": (duration("every"), points("points", 2, multiple_of=2)),
}


@dataclass(frozen=True)
class DownsampleSpec:
    kind: str
    field: str
    params: dict[str, Any] = dc_field(default_factory=dict)

    def problems(self) -> list[str]:
        """One line per bad argument (empty when valid); the flow's validation calls it."""
        p = self.params
        label = f"downsample.{self.kind}"
        if self.kind not in ARGS:
            return [f"unknown reduction {self.kind!r}; use one of {', '.join(KINDS)}"]
        out = []
        if not isinstance(self.field, str) or not self.field:
            out.append(f"{label}: give the field to reduce, e.g. {label}('temp', ...)")
        out += check(label, ARGS[self.kind], p)
        if self.kind == "deadband" and (p.get("band") is None) == (p.get("percent") is None):
            out.append(f"{label}: give exactly one of band= (absolute) or percent=")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "field": self.field,
            **{k: v for k, v in self.params.items() if v is not None},
        }


def deadband(
    field: str,
    *,
    band: float | None = None,
    percent: float | None = None,
    max_interval: Duration | None = None,
) -> DownsampleSpec:
    return DownsampleSpec(
        "deadband", field, {"band": band, "percent": percent, "max_interval": max_interval}
    )


def swinging_door(
    field: str, *, deviation: float, max_interval: Duration | None = None
) -> DownsampleSpec:
    return DownsampleSpec(
        "swinging_door", field, {"deviation": deviation, "max_interval": max_interval}
    )


def changes(field: str, *, max_interval: Duration | None = None) -> DownsampleSpec:
    return DownsampleSpec("changes", field, {"max_interval": max_interval})


def decimate(field: str, q: int, *, numtaps: int | None = None) -> DownsampleSpec:
    return DownsampleSpec("decimate", field, {"q": q, "numtaps": numtaps})


def lttb(field: str, *, every: Duration, points: int) -> DownsampleSpec:
    return DownsampleSpec("lttb", field, {"every": every, "points": points})


def m4(field: str, *, every: Duration, points: int) -> DownsampleSpec:
    return DownsampleSpec("m4", field, {"every": every, "points": points})


def minmax(field: str, *, every: Duration, points: int) -> DownsampleSpec:
    return DownsampleSpec("minmax", field, {"every": every, "points": points})


# -- per-key sequential cores (plain loops over one key's points) -------------------------------
class _Hold:
    """deadband / changes: report when the value leaves the band around the last report."""

    def __init__(self, band: float, percent: float, max_interval: int | None) -> None:
        self.band, self.percent, self.max_interval = band, percent, max_interval

    def run(self, st: dict[str, Any], t: I64, x: F64) -> npt.NDArray[np.bool_]:
        keep = np.zeros(len(x), bool)
        last_v, last_t = st.get("v"), st.get("t")
        band, pct, mi = self.band, self.percent, self.max_interval
        for i, (ti, xi) in enumerate(zip(t.tolist(), x.tolist(), strict=True)):
            if (
                last_v is None
                or abs(xi - last_v) > (band if pct == 0 else pct / 100.0 * abs(last_v))
                or (mi is not None and ti - last_t >= mi)
            ):
                keep[i] = True
                last_v, last_t = xi, ti
        st["v"], st["t"] = last_v, last_t
        return keep


class _Door:
    """Swinging door with a guaranteed bound: emits (t, value on the door line)."""

    def __init__(self, dev: float, max_interval: int | None) -> None:
        self.dev, self.max_interval = dev, max_interval

    def run(self, st: dict[str, Any], t: I64, x: F64) -> tuple[list[int], list[float]]:
        out_t: list[int] = []
        out_v: list[float] = []
        e, mi = self.dev, self.max_interval
        a = st.get("a")  # (ta, va): the last reported point
        lo, hi = st.get("lo", -np.inf), st.get("hi", np.inf)
        prev = st.get("prev")  # (t, v) of the last reading seen
        tl, xl = t.tolist(), x.tolist()
        i, n = 0, len(tl)
        if a is None and n:
            a = (tl[0], xl[0])
            out_t.append(tl[0])
            out_v.append(xl[0])
            lo, hi, prev = -np.inf, np.inf, None
            i = 1
        if a is None:
            st["a"], st["lo"], st["hi"], st["prev"] = a, lo, hi, prev
            return out_t, out_v
        ta, va = a
        # ``s if s > lo else lo`` is what ``max(lo, s)`` returns and ``s if s < hi else hi``
        # what ``min(hi, s)`` returns (NaN included); the builtins cost more per reading
        while i < n:
            ti = tl[i]
            dt = ti - ta
            if dt <= 0:  # not after the last report (the kernel takes readings in time order)
                i += 1
                continue
            xi = xl[i]
            s = (xi - e - va) / dt
            nlo = s if s > lo else lo
            s = (xi + e - va) / dt
            nhi = s if s < hi else hi
            if nlo > nhi or (mi is not None and dt > mi):
                a, lo, hi, prev = close_door(a, prev, lo, hi, ti, xi, e, mi, out_t, out_v)
                ta, va = a
                i += 1
                continue
            lo, hi = nlo, nhi
            prev = (ti, xi)
            i += 1
        st["a"], st["lo"], st["hi"], st["prev"] = a, lo, hi, prev
        return out_t, out_v

    def flush(self, st: dict[str, Any]) -> tuple[list[int], list[float]]:
        """End of input: report the last reading's point on the door, closing the last segment."""
        a, prev = st.get("a"), st.get("prev")
        if a is None or prev is None:
            return [], []
        ta, va = a
        tp, vp = prev
        if tp == ta:
            return [], []
        s = min(max((vp - va) / (tp - ta), st["lo"]), st["hi"])
        st["a"], st["prev"], st["lo"], st["hi"] = (tp, va + s * (tp - ta)), None, -np.inf, np.inf
        return [tp], [va + s * (tp - ta)]


class DownsampleKernel(RecordKernel):
    """Per-key streaming reduction of one field; records of kind ``trend`` (key, t, <field>)."""

    port = "trend"

    inputs: tuple[str, ...] = ("readings",)
    outputs: tuple[str, ...] = ("trend",)

    def __init__(self, step: str, spec: DownsampleSpec) -> None:
        self.step = step
        self.spec = spec
        self.reads: tuple[str, ...] | None = (spec.field,)
        p = spec.params
        mi = parse_duration(p["max_interval"]) if p.get("max_interval") is not None else None
        self.hold: _Hold | None = None
        self.door: _Door | None = None
        if spec.kind == "deadband":
            self.hold = _Hold(float(p["band"] or 0.0), float(p["percent"] or 0.0), mi)
        elif spec.kind == "changes":
            self.hold = _Hold(0.0, 0.0, mi)
        elif spec.kind == "swinging_door":
            self.door = _Door(float(p["deviation"]), mi)
        elif spec.kind == "decimate":
            from scipy.signal import firwin

            q = int(p["q"])
            self.q = q
            self.taps = firwin(p.get("numtaps") or 8 * q + 1, 1.0 / q)
        elif spec.kind in ("lttb", "m4", "minmax"):
            self.every = parse_duration(p["every"])
            self.points = int(p["points"])

    # -- the kernel protocol (edgeflow/ops/kernel.py) ------------------------------------
    def problems(self) -> list[str]:
        return self.spec.problems()

    def init(self) -> dict[str, Any]:
        return {"keys": {}, "in": 0, "out": 0}

    def step_batch(self, state: dict[str, Any], batch: Batch) -> RecordBatch | None:
        """Reduce a batch; returns the points to report (or None)."""
        if not len(batch):
            return None
        x_all = batch.values[batch.fields.index(self.spec.field)]
        state["in"] += len(batch)
        if self.door is not None:
            taken, records = self._door_batch(state, batch, x_all)
            if taken:
                return records
        keys_out: list[str] = []
        t_out: list[Any] = []
        v_out: list[Any] = []
        for code, rows in _by_key(batch.key_idx):
            key = batch.keys[code]
            st = state["keys"].setdefault(key, {})
            t, x = batch.t[rows], x_all[rows]
            ok = np.isfinite(x)
            if not ok.all():
                t, x = t[ok], x[ok]
            t, x = self._in_time_order(state, st, t, x)
            if not len(t):
                continue
            ts, vs = self._one_key(st, t, x)
            keys_out.extend([key] * len(ts))
            t_out.append(ts)
            v_out.append(vs)
        return self._records(state, keys_out, t_out, v_out)

    def flush(self, state: dict[str, Any]) -> RecordBatch | None:
        keys_out: list[str] = []
        t_out: list[Any] = []
        v_out: list[Any] = []
        for key, st in state["keys"].items():
            ts: Any
            vs: Any
            if self.door is not None:
                ts, vs = self.door.flush(st)
            elif (
                self.spec.kind in ("lttb", "m4", "minmax")
                and st.get("t") is not None
                and len(st["t"])
            ):
                ts, vs = self._select(st["t"], st["x"])
                st["t"], st["x"] = np.empty(0, np.int64), np.empty(0)
            else:
                continue
            keys_out.extend([key] * len(ts))
            t_out.append(np.asarray(ts, np.int64))
            v_out.append(np.asarray(vs, np.float64))
        return self._records(state, keys_out, t_out, v_out)

    def _records(
        self, state: dict[str, Any], keys: list[str], ts: list[Any], vs: list[Any]
    ) -> RecordBatch | None:
        if not keys:
            return None
        t = np.concatenate([np.asarray(a, np.int64) for a in ts])
        v = np.concatenate([np.asarray(a, np.float64) for a in vs])
        state["out"] += len(t)
        return RecordBatch(
            "trend", self.step, {"key": keys, "t": t, self.spec.field: v}, len(t), ("key", "t")
        )

    def _door_batch(
        self, state: dict[str, Any], batch: Batch, x_all: F64
    ) -> tuple[bool, RecordBatch | None]:
        """Swinging door for all the keys of a batch at once (:func:`run_rows`): the same
        points and state as taking the keys one by one (:meth:`_in_time_order`, then
        :func:`run_segments`), with the time ordering, grouping and late/repeated-time
        filtering done for the whole batch. Returns (False, None), having changed nothing,
        when the batch needs the per-key form (values too large for it), else (True, the
        points to report or None)."""
        assert self.door is not None
        key_idx = batch.key_idx
        present = np.flatnonzero(np.bincount(key_idx, minlength=len(batch.keys)))
        ok = np.isfinite(x_all)
        if not ok.all():
            rows = np.flatnonzero(ok)
            k, t, x = key_idx[rows], batch.t[rows], x_all[rows]
        else:
            k, t, x = key_idx, batch.t, x_all
        if not lockstep_fits(x):
            return False, None
        keys = state["keys"]
        names = batch.keys
        by_code: dict[int, dict[str, Any]] = {
            code: keys.setdefault(names[code], {}) for code in present.tolist()
        }
        if not len(t):
            return True, None
        # each key's readings together, in time order (equal times in arrival order)
        # a stable sort of 8- or 16-bit codes is a radix sort
        small = np.uint8 if len(names) <= 256 else np.uint16 if len(names) <= 65536 else None
        order = np.argsort(k if small is None else k.astype(small), kind="stable")
        ks, ts = k[order], t[order]
        same = ks[1:] == ks[:-1]
        if bool((same & (ts[1:] < ts[:-1])).any()):
            by_time = np.argsort(t, kind="stable")
            order = by_time[np.argsort(k[by_time], kind="stable")]
            ks, ts = k[order], t[order]
            same = ks[1:] == ks[:-1]
        xs = x[order]
        starts = np.flatnonzero(np.r_[True, ~same])
        # one reading per time (the first), none at or before the key's newest taken one
        skip = np.r_[False, same & (ts[1:] == ts[:-1])]
        row_newest = [by_code[c].get("newest") for c in ks[starts].tolist()]
        firsts = ts[starts].tolist()
        if any(n is not None and f <= n for f, n in zip(firsts, row_newest, strict=True)):
            lengths = np.diff(np.r_[starts, len(ts)])
            limit = np.array(
                [f - 1 if n is None else n for f, n in zip(firsts, row_newest, strict=True)]
            )
            skip |= ts <= np.repeat(limit, lengths)
        if skip.any():
            state["skipped"] = state.get("skipped", 0) + int(skip.sum())
            keep = ~skip
            ks, ts, xs = ks[keep], ts[keep], xs[keep]
            if not len(ts):
                return True, None
            starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        ends = np.r_[starts[1:], len(ts)]
        row_codes = ks[starts].tolist()
        sts = [by_code[c] for c in row_codes]
        for st, tn in zip(sts, ts[ends - 1].tolist(), strict=True):
            st["newest"] = tn
        d = self.door
        out_t, out_v = run_rows(d.dev, d.max_interval, sts, ts, xs, starts, ends, d.run)
        keys_out: list[str] = []
        t_out: list[Any] = []
        v_out: list[Any] = []
        for c, lt, lv in zip(row_codes, out_t, out_v, strict=True):
            if lt:
                keys_out.extend([names[c]] * len(lt))
                t_out.append(lt)
                v_out.append(lv)
        return True, self._records(state, keys_out, t_out, v_out)

    def _in_time_order(
        self, state: dict[str, Any], st: dict[str, Any], t: I64, x: F64
    ) -> tuple[I64, F64]:
        """The readings of one key the step takes from a batch, in time order.

        They are sorted by time (equal times keep their arrival order). A reading older than
        the newest one already taken for the key is late: it is skipped and counted in
        ``state["skipped"]``, so reported points never go back in time. Swinging door takes
        one reading per timestamp, the first to arrive (a line cannot pass through two
        values at one time); the others take every reading."""
        if len(t) > 1 and bool((t[1:] < t[:-1]).any()):
            order = np.argsort(t, kind="stable")
            t, x = t[order], x[order]
        newest = st.get("newest")
        door = self.door is not None
        keep: npt.NDArray[np.bool_] | None = None
        if door and len(t) > 1:
            keep = np.r_[True, t[1:] != t[:-1]]
        if newest is not None and len(t) and t[0] <= newest:
            late = t <= newest if door else t < newest
            keep = ~late if keep is None else keep & ~late
        if keep is not None and not keep.all():
            state["skipped"] = state.get("skipped", 0) + int(len(t) - keep.sum())
            t, x = t[keep], x[keep]
        if len(t):
            st["newest"] = int(t[-1])
        return t, x

    def _one_key(self, st: dict[str, Any], t: I64, x: F64) -> tuple[Any, Any]:
        if self.hold is not None:
            keep = self.hold.run(st, t, x)
            return t[keep], x[keep]
        if self.door is not None:
            d = self.door
            return run_segments(d.dev, d.max_interval, st, t, x, d.run)
        if self.spec.kind == "decimate":
            return self._decimate(st, t, x)
        return self._windowed(st, t, x)

    def _decimate(self, st: dict[str, Any], t: I64, x: F64) -> tuple[I64, F64]:
        from scipy.signal import lfilter

        if "zi" not in st:
            st["zi"] = np.zeros(len(self.taps) - 1)  # the filter starts at rest
            st["n"] = 0
        y, st["zi"] = lfilter(self.taps, 1.0, x, zi=st["zi"])
        # keep samples whose index in the whole stream is q-1, 2q-1, ...
        first = (self.q - 1 - st["n"]) % self.q
        st["n"] += len(x)
        return t[first :: self.q], y[first :: self.q]

    def _windowed(self, st: dict[str, Any], t: I64, x: F64) -> tuple[Any, Any]:
        """Buffer a key's points per tumbling window; a window is reduced when a later one starts."""
        buf_t = np.concatenate([st.get("t", np.empty(0, np.int64)), t])
        buf_x = np.concatenate([st.get("x", np.empty(0)), x])
        w = buf_t // self.every
        done = w < w[-1] if len(w) else w
        out_t: list[Any] = []
        out_v: list[Any] = []
        if len(w) and done.any():
            cut = int(np.flatnonzero(~done)[0])
            bounds = (
                np.flatnonzero(np.r_[True, w[1:cut] != w[: cut - 1]]) if cut else np.empty(0, int)
            )
            for a, b in zip(bounds, [*bounds[1:].tolist(), cut], strict=True):
                ts, vs = self._select(buf_t[a:b], buf_x[a:b])
                out_t.append(ts)
                out_v.append(vs)
            buf_t, buf_x = buf_t[cut:], buf_x[cut:]
        st["t"], st["x"] = buf_t, buf_x
        if not out_t:
            return np.empty(0, np.int64), np.empty(0)
        return np.concatenate(out_t), np.concatenate(out_v)

    def _select(self, t: I64, x: F64) -> tuple[I64, F64]:
        if len(t) <= self.points:
            return t, x
        if self.spec.kind in ("m4", "minmax") and (
            self.points == (4 if self.spec.kind == "m4" else 2) or t[0] == t[-1]
        ):
            # one bin: tsdownsample needs two (and keeps nothing of a window with no time span)
            ends = [0, len(x) - 1] if self.spec.kind == "m4" else []
            one = np.sort(np.array([*ends, int(np.argmin(x)), int(np.argmax(x))], np.intp))
            return t[one], x[one]
        from tsdownsample import LTTBDownsampler, M4Downsampler, MinMaxDownsampler

        if self.spec.kind == "lttb":
            idx = LTTBDownsampler().downsample(t, x, n_out=self.points)  # type: ignore[no-untyped-call]
        elif self.spec.kind == "m4":
            idx = M4Downsampler().downsample(t, x, n_out=self.points)  # type: ignore[no-untyped-call]
        else:
            idx = MinMaxDownsampler().downsample(t, x, n_out=self.points)  # type: ignore[no-untyped-call]
        return t[idx], x[idx]

    @staticmethod
    def ratio(state: dict[str, Any]) -> float:
        return state["in"] / state["out"] if state["out"] else float("inf")


def _by_key(key_idx: npt.NDArray[np.int32]) -> list[tuple[int, npt.NDArray[np.intp]]]:
    """(key code, row indices in arrival order) for each key in a batch."""
    order = np.argsort(key_idx, kind="stable")
    k = key_idx[order]
    bounds = np.flatnonzero(np.r_[True, k[1:] != k[:-1], True])
    return [(int(k[a]), order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
