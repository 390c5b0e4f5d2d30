"""User code in a flow: vectorised derive / filter / map / route and per-record apply.

Vectorised functions (the fast path) are called once per batch with ``c``, a mapping of
numpy columns: every field of the stream (float64), ``"t"`` (int64 ns) and ``"key"`` (an
object array of str, built only when the function reads it). They return:

* ``derive`` / ``map``: a numeric array with one value per reading (or a scalar, repeated);
  the values become float64 fields (``derive`` adds a field, ``map`` replaces one);
* ``filter`` / ``route``: a boolean mask with one value per reading (or a scalar bool).

Per-record functions (``apply``, the slow path: one Python call per reading) take a dict
``{"key": str, "t": int ns, <field>: float, ...}`` and return a dict, a list of dicts or
None (drop). Returned dicts may set ``key`` and ``t`` (default: the input's) and must give
every output field as a number.

Failures never stop a flow. A vectorised function that raises (or returns a wrong shape or
type) on a batch is retried record by record (each reading as a one-reading batch): exactly
the readings it fails on become dead letters (step, exception type and message, the
reading), every other reading's output is what the per-reading call gives (for element-wise
functions: what the batch call would have given). :func:`sample_problems` calls a function
once on a tiny synthetic batch when the flow is validated, so a missing field or a wrong
return is one error naming the step before anything runs.

This module is plain numpy (no engine import); the engine calls :meth:`UdfKernel.step_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from edgeflow.batch import Batch, RecordBatch, intern_keys
from edgeflow.ops.kernel import Emitted, StatelessKernel
from edgeflow.timeutil import now_ns

#: the vectorised step kinds and the per-record one
VECTOR_OPS = ("derive", "filter", "map", "route")
OPS = (*VECTOR_OPS, "apply")
#: the stream of readings that match no route
UNROUTED = "unrouted"
ERROR_LIMIT = 500

ColumnFn = Callable[[Mapping[str, Any]], Any]
RecordFn = Callable[[dict[str, Any]], Any]


class Columns(dict[str, Any]):
    """The columns of a batch for a user function: fields, ``t`` and (lazily) ``key``, as
    read-only arrays (other steps may read the same batch: compute new arrays, do not
    write into these)."""

    def __init__(self, b: Batch) -> None:
        super().__init__(zip(b.fields, map(_read_only, b.values), strict=True))
        self["t"] = _read_only(b.t)
        self._batch = b

    def __missing__(self, name: str) -> Any:
        if name == "key":
            keys = self._batch.key_array()
            self["key"] = keys
            return keys
        raise KeyError(name)


def _read_only(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A read-only view: a function cannot change the batch other steps also read."""
    v = a.view()
    v.flags.writeable = False
    return v


class ReturnError(Exception):
    """A user function returned something of the wrong shape or type."""


def _numeric(value: Any, n: int, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ReturnError(f"{what} returned {arr.dtype} values; return numbers (a numeric array)")
    if arr.ndim == 0:
        return np.full(n, float(arr), np.float64)
    if arr.shape != (n,):
        raise ReturnError(
            f"{what} returned shape {arr.shape} for {n} readings; return one value per reading"
        )
    return arr.astype(np.float64, copy=False)


def _mask(value: Any, n: int, what: str) -> npt.NDArray[np.bool_]:
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        raise ReturnError(
            f"{what} returned {arr.dtype} values; return a boolean mask, e.g. c['temp'] < 200"
        )
    if arr.ndim == 0:
        return np.full(n, bool(arr), np.bool_)
    if arr.shape != (n,):
        raise ReturnError(
            f"{what} returned shape {arr.shape} for {n} readings; return one bool per reading"
        )
    return arr


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 3] + "..."


@dataclass(frozen=True)
class UdfSpec:
    """One user-function step: ``op`` (derive, filter, map, route, apply) and its functions
    by name (the field made or replaced, the route, or ``"fn"`` for filter and apply).
    ``fields``: apply's output fields (None: the input's)."""

    op: str
    fns: tuple[tuple[str, Callable[..., Any]], ...]
    fields: tuple[str, ...] | None = None

    def out_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """The fields of the output readings given the input's."""
        if self.op == "derive":
            return fields + tuple(n for n, _ in self.fns if n not in fields)
        if self.op == "apply" and self.fields is not None:
            return self.fields
        return fields

    def ports(self) -> tuple[str, ...]:
        if self.op == "route":
            return (*(n for n, _ in self.fns), UNROUTED)
        return ("readings",)


class UdfKernel(StatelessKernel):
    """Runs a :class:`UdfSpec` on batches; stateless (nothing to snapshot)."""

    inputs: tuple[str, ...] = ("readings",)
    #: user code may read any field
    reads: tuple[str, ...] | None = None

    def __init__(self, step: str, spec: UdfSpec) -> None:
        self.step = step
        self.spec = spec
        self.op = spec.op
        self.outputs: tuple[str, ...] = (*spec.ports(), "dead_letters")

    # -- the kernel protocol (edgeflow/ops/kernel.py): stateless ----------------------
    def problems(self) -> list[str]:
        return (
            []
            if self.op in OPS
            else [f"unknown operation {self.op!r}; use one of {', '.join(OPS)}"]
        )

    def process(self, state: None, batch: Batch, now_ns: int) -> Emitted:
        out: Emitted = []
        outputs, dead = self.step_batch(batch)
        out.extend(outputs)
        if dead is not None:
            out.append(("dead_letters", dead))
        return out

    # -- one batch -------------------------------------------------------------------
    def _vector(self, b: Batch) -> list[tuple[str, Batch]]:
        """The batch's outputs by port; raises on any failure of a user function."""
        n = len(b)
        c = Columns(b)
        if self.op == "filter":
            ((name, fn),) = self.spec.fns
            return [("readings", take(b, _mask(fn(c), n, "the filter function")))]
        if self.op == "route":
            taken = np.zeros(n, np.bool_)
            masks = []
            for name, fn in self.spec.fns:
                m = _mask(fn(c), n, f"route {name!r}")
                masks.append((name, m))
                taken |= m
            out = [(name, take(b, m)) for name, m in masks]
            return [*out, (UNROUTED, take(b, ~taken))]
        made = [(name, _numeric(fn(c), n, f"{name}=")) for name, fn in self.spec.fns]
        fields = self.spec.out_fields(b.fields)
        values = np.empty((len(fields), n), np.float64)
        values[: len(b.fields)] = b.values
        for name, col in made:
            values[fields.index(name)] = col
        return [("readings", Batch(fields, b.keys, b.key_idx, b.t, values))]

    def step_batch(self, b: Batch) -> tuple[list[tuple[str, Batch]], RecordBatch | None]:
        """Outputs by port (only non-empty batches) and the dead letters (or None)."""
        if self.op == "apply":
            return self._apply(b)
        try:
            out = self._vector(b)
        except Exception:  # user code: isolate the readings it fails on
            return self._one_by_one(b)
        return [(p, x) for p, x in out if len(x)], None

    def _one_by_one(self, b: Batch) -> tuple[list[tuple[str, Batch]], RecordBatch | None]:
        parts: dict[str, list[Batch]] = {}
        bad: list[tuple[int, str]] = []
        for i in range(len(b)):
            one = b.select(np.array([i]))
            try:
                res = self._vector(one)
            except Exception as exc:  # this reading becomes a dead letter
                bad.append((i, _describe(exc)))
                continue
            for port, x in res:
                if len(x):
                    parts.setdefault(port, []).append(x)
        out = [(port, concat(xs)) for port, xs in parts.items()]
        return out, self._dead(b, bad) if bad else None

    # -- per record ------------------------------------------------------------------
    def _apply(self, b: Batch) -> tuple[list[tuple[str, Batch]], RecordBatch | None]:
        ((_, fn),) = self.spec.fns
        fields = self.spec.out_fields(b.fields)
        keys: list[str] = []
        times: list[int] = []
        rows: list[list[float]] = []
        bad: list[tuple[int, str]] = []
        names = b.key_array().tolist()
        ts = b.t.tolist()
        cols = b.values.T.tolist()
        for i in range(len(b)):
            rec: dict[str, Any] = dict(zip(b.fields, cols[i], strict=True))
            rec["key"] = names[i]
            rec["t"] = ts[i]
            try:
                res = fn(rec)
                outs = [] if res is None else [res] if isinstance(res, dict) else list(res)
                got = [self._record(o, names[i], ts[i], fields) for o in outs]
            except Exception as exc:  # this reading becomes a dead letter
                bad.append((i, _describe(exc)))
                continue
            for k, t, row in got:
                keys.append(k)
                times.append(t)
                rows.append(row)
        out: list[tuple[str, Batch]] = []
        if keys:
            knames, codes = intern_keys(keys)
            values = np.asarray(rows, np.float64).reshape(len(keys), len(fields)).T.copy()
            out.append(
                ("readings", Batch(fields, knames, codes, np.asarray(times, np.int64), values))
            )
        return out, self._dead(b, bad) if bad else None

    @staticmethod
    def _record(o: Any, key: str, t: int, fields: tuple[str, ...]) -> tuple[str, int, list[float]]:
        if not isinstance(o, dict):
            raise ReturnError(
                f"the function returned {type(o).__name__}; return a dict, a list of dicts or None"
            )
        extra = [f for f in o if f not in fields and f not in ("key", "t")]
        if extra:
            raise ReturnError(
                f"the function returned field {extra[0]!r} that is not an output field; "
                f"declare it with fields=[...]"
            )
        row: list[float] = []
        for f in fields:
            if f not in o:
                raise ReturnError(f"the function's result has no field {f!r}")
            v = o[f]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                raise ReturnError(f"field {f!r} is {v!r}, not a number")
            row.append(float(v))
        k = o.get("key", key)
        tt = o.get("t", t)
        if not isinstance(tt, (int, np.integer)) or isinstance(tt, bool):
            raise ReturnError(f"t={tt!r}: give the time as int ns")
        return str(k), int(tt), row

    # -- dead letters ----------------------------------------------------------------
    def _dead(self, b: Batch, bad: Sequence[tuple[int, str]]) -> RecordBatch:
        rows = np.asarray([i for i, _ in bad], np.intp)
        keys = b.key_array()[rows].tolist()
        raw = [
            orjson.dumps(
                {
                    f: (None if math.isnan(v) else v)
                    for f, v in zip(b.fields, b.values[:, i].tolist(), strict=True)
                }
            ).decode()
            for i in rows.tolist()
        ]
        cols: dict[str, Any] = {
            "key": keys,
            "t": b.t[rows],
            "step": [self.step] * len(bad),
            "exception": [e.split(":", 1)[0] for _, e in bad],
            "error": [e for _, e in bad],
            "raw": raw,
            "source": [f"{k}@{t}" for k, t in zip(keys, b.t[rows].tolist(), strict=True)],
            "received_at": np.full(len(bad), now_ns(), np.int64),
        }
        return RecordBatch("dead_letter", self.step, cols, len(bad), ("key", "t"))


def take(b: Batch, mask: npt.NDArray[np.bool_]) -> Batch:
    """The readings of ``b`` where ``mask`` is True (``b`` itself when all are)."""
    idx = np.flatnonzero(mask)
    if len(idx) == len(b):
        return b
    return Batch(b.fields, b.keys, b.key_idx[idx], b.t[idx], b.values.take(idx, axis=1))


def concat(parts: Sequence[Batch]) -> Batch:
    """One batch from batches with the same fields (key codes re-interned)."""
    if len(parts) == 1:
        return parts[0]
    keys = [k for p in parts for k in p.key_array().tolist()]
    names, codes = intern_keys(keys)
    return Batch(
        parts[0].fields,
        names,
        codes,
        np.concatenate([p.t for p in parts]),
        np.concatenate([p.values for p in parts], axis=1),
    )


def sample_batch(fields: Sequence[str]) -> Batch:
    """Three synthetic readings (two keys, increasing times, values 1, 2, 3) of ``fields``."""
    return Batch.from_columns(
        ["sample-a", "sample-b", "sample-a"],
        np.array([1_000_000_000, 2_000_000_000, 3_000_000_000], np.int64),
        {f: [1.0, 2.0, 3.0] for f in fields},
    )


def sample_problems(spec: UdfSpec, fields: tuple[str, ...]) -> list[str]:
    """Call the step's functions once on :func:`sample_batch` of ``fields``: a missing field
    (KeyError) or a wrong return is one problem each. Other exceptions may depend on the
    values, so they are left to run time (dead letters)."""
    b = sample_batch(fields)
    out: list[str] = []
    for name, fn in spec.fns:
        label = "the function" if spec.op in ("filter", "apply") else f"{name}="
        try:
            if spec.op == "apply":
                rec: dict[str, Any] = {f: 1.0 for f in fields}
                rec.update(key="sample-a", t=1_000_000_000)
                res = fn(rec)
                outs = [] if res is None else [res] if isinstance(res, dict) else list(res)
                for o in outs:
                    UdfKernel._record(o, "sample-a", 1_000_000_000, spec.out_fields(fields))
                continue
            value = fn(Columns(b))
            if spec.op in ("filter", "route"):
                _mask(value, len(b), label)
            else:
                _numeric(value, len(b), label)
        except KeyError as exc:
            out.append(
                f"{label} reads field {exc.args[0]!r} that the stream does not have; "
                f"the stream has: {', '.join(fields) or '(none)'} (and 't', 'key')"
            )
        except ReturnError as exc:
            out.append(f"{exc} (checked on a sample batch of {len(b)} readings)")
        except Exception:  # value-dependent failures become dead letters
            continue
    return out
