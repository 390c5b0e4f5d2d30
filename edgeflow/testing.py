"""A test kit for flows and connectors (no bytewax knowledge needed).

**Run a flow on readings in memory** and get every stream it produces::

    from edgeflow import testing

    out = testing.run(flow, [{"device": "d1", "ts": 0, "temp": 21.5}, ...])
    out["hot"]                   # what the sink step named "hot" would have received
    out["filter.readings"]       # any step's output stream: "<step>.<port>"
    out["source.dead_letters"]   # readings that could not be read, with the reason

The readings replace the flow's source (a dict ``{source step name: readings}`` when the
flow has several); the sinks are replaced by collectors, so nothing is written anywhere.
Readings are read exactly as a JSON-lines file would be (the same parser, the same
dead-letter rules): times as int ns (or s/ms/us by magnitude), timezone-aware datetimes or
ISO-8601 strings with an offset.

**Check a connector against the contract** of :mod:`edgeflow.connectors.base`, in the
spirit of River's ``check_estimator``: :func:`check_source` (cut anywhere and crash
anywhere, then resume: the output equals an uninterrupted run's, as the source's stated
guarantee allows) and :func:`check_sink` (a crash between a write and the snapshot after
it: every record id is delivered at least once; exactly once when the sink says so). Each
raises ``AssertionError`` naming the connector and the check that failed.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time as _time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from edgeflow.batch import Batch, RecordBatch
from edgeflow.connectors.base import (
    GUARANTEES,
    Item,
    SinkContext,
    SinkPartition,
    SinkSpec,
    SourceContext,
    SourcePartition,
    SourceSpec,
)
from edgeflow.connectors.parse import BatchBuilder
from edgeflow.connectors.payloads import Decoder, Limits, PayloadError, Schema
from edgeflow.flow.plan import PORTS, Flow, Step
from edgeflow.timeutil import now_ns

__all__ = ["MemorySource", "check_sink", "check_source", "run"]

Reading = Mapping[str, Any]
Record = dict[str, Any]


# -- running a flow in memory ---------------------------------------------------------------
class MemorySource(SourceSpec):
    """Readings given as dicts, read like JSON lines (one partition, ``batch_size`` readings
    per batch). Delivery guarantee: exactly-once replay (the snapshot is the index of the
    next reading)."""

    kind = "memory"

    def __init__(
        self,
        readings: Iterable[Reading],
        *,
        batch_size: int = 1000,
        key: str | None = None,
        time: str | None = None,
        time_unit: str = "auto",
    ) -> None:
        self.payloads = [_payload(r, i) for i, r in enumerate(readings)]
        self.names = list(dict.fromkeys(k for r in self.payloads for k in orjson.loads(r)))
        self.batch_size = max(1, int(batch_size))
        self.default_key = key
        self.default_time = time
        self.time_unit = time_unit

    def columns(self) -> Sequence[str] | None:
        return self.names or None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "readings": len(self.payloads), "batch_size": self.batch_size}

    def partitions(self) -> list[str]:
        return ["0"]

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        return _MemoryPartition(self, 0 if resume is None else int(resume), ctx)


def _payload(reading: Reading, i: int) -> bytes:
    if not isinstance(reading, Mapping):
        raise TypeError(f"reading {i} is a {type(reading).__name__}, not a dict: {reading!r}")
    try:
        return orjson.dumps(dict(reading), option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise TypeError(f"reading {i} cannot be read as JSON ({exc}): {reading!r}") from None


class _MemoryPartition(SourcePartition):
    def __init__(self, spec: MemorySource, position: int, ctx: SourceContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.position = position
        found = tuple(c for c in spec.names if c not in (ctx.key, ctx.time))
        self.fields = ctx.fields if ctx.fields is not None else found
        checked = ctx.declared if ctx.declared is not None else ()
        schema = Schema(
            ctx.key, ctx.time, tuple(self.fields), {},
            {f: math.nan for f in (*self.fields, *checked)}, spec.time_unit, checked=tuple(checked),
        )  # fmt: skip
        self.decoder = Decoder("json", schema, Limits.of(1 << 20, 8, 10_000, None, None))

    def next_batch(self) -> list[Item]:
        if self.position >= len(self.spec.payloads):
            raise StopIteration
        out = BatchBuilder(self.fields, self.ctx.step)
        received = now_ns()
        end = min(len(self.spec.payloads), self.position + self.spec.batch_size)
        for i in range(self.position, end):
            raw = self.spec.payloads[i]
            self.bytes_read += len(raw)
            try:
                out.add_all(self.decoder.decode(raw, "", received))
            except PayloadError as exc:
                out.fail(f"reading {i}", raw, str(exc))
        self.position = end
        return out.items()

    def snapshot(self) -> Any:
        return self.position


class _Collector(SinkSpec):
    """Keeps every record it is given, as dicts, in ``records`` (shared by all workers)."""

    kind = "collector"

    def __init__(self, records: list[Record], lock: threading.Lock) -> None:
        self.records = records
        self.lock = lock

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        return _CollectorPartition(self)


class _CollectorPartition(SinkPartition):
    def __init__(self, spec: _Collector) -> None:
        self.spec = spec

    def write(self, batches: list[RecordBatch]) -> None:
        rows = [r for b in batches for r in b.rows()]
        with self.spec.lock:
            self.spec.records.extend(rows)


def _ports(step: Step) -> tuple[str, ...]:
    if step.kind == "udf":
        return (*step.params["spec"].ports(), "dead_letters")
    return PORTS.get(step.kind, ())


def run(
    flow: Flow | Callable[[], Flow],
    readings: Sequence[Reading] | Mapping[str, Sequence[Reading]] | None = None,
    *,
    batch_size: int = 1000,
    workers: int = 1,
    time_unit: str | None = None,
) -> dict[str, list[Record]]:
    """Run ``flow`` (a :class:`~edgeflow.Flow`, or a function that builds one) on readings in
    memory, to the end of the readings; return every stream's records.

    ``readings``: a list of dicts for the flow's only source, or ``{source step: list}``;
    a source given none keeps its own connector (a simulator, say). ``batch_size``: readings
    per batch (results must not depend on it). ``time_unit``: how numeric times are read
    (``s``, ``ms``, ``us``, ``ns``; default: the replaced source's, else by magnitude). The result maps each sink step's name to what
    that sink would have received, and ``"<step>.<port>"`` to each stream of each step
    (``source.readings``, ``source.dead_letters``, ``window.windows``, ``window.late``,
    ``filter.readings``, ``route.hot``, ``detect.anomalies``, ...), every one present, empty
    or not. Records are dicts as a JSON-lines sink writes them (times in int ns, no value
    as None), in arrival order (sort before comparing when ``workers`` > 1). The user's flow
    is not changed. An invalid flow raises :class:`~edgeflow.errors.FlowValidationError`.
    """
    from edgeflow.engine.runner import RunOptions
    from edgeflow.engine.runner import run as run_plan

    original = flow if isinstance(flow, Flow) else flow()
    if not isinstance(original, Flow):
        raise TypeError(f"testing.run needs a Flow or a function returning one, got {original!r}")
    sources = [s for s in original.steps if s.kind == "source"]
    if readings is None:
        given: Mapping[str, Sequence[Reading]] = {}
    elif isinstance(readings, Mapping):
        given = readings
        unknown = sorted(set(given) - {s.name for s in sources})
        if unknown:
            raise ValueError(
                f"readings for {', '.join(unknown)}: the flow's sources are "
                f"{', '.join(s.name for s in sources)}"
            )
    else:
        if len(sources) != 1:
            raise ValueError(
                f"the flow has {len(sources)} sources ({', '.join(s.name for s in sources)}): "
                "give readings as {source step name: [readings]}"
            )
        given = {sources[0].name: readings}

    copy = Flow(original.name, version=original.version, shards=original.shards)
    lock = threading.Lock()
    out: dict[str, list[Record]] = {}
    for step in original.steps:
        params = dict(step.params)
        if step.kind == "source" and step.name in given:
            spec: SourceSpec = params["spec"]
            params["spec"] = MemorySource(
                given[step.name], batch_size=batch_size, key=spec.default_key,
                time=spec.default_time, time_unit=time_unit or str(getattr(spec, "time_unit", "auto")),
            )  # fmt: skip
        elif step.kind == "sink":
            out[step.name] = []
            params["spec"] = _Collector(out[step.name], lock)
        copy.steps.append(Step(step.name, step.kind, list(step.inputs), params, step.user_named))
    for step in original.steps:
        for port in _ports(step):
            name = f"{step.name}.{port}"
            out[name] = []
            copy.steps.append(
                Step(
                    f"testing__{step.name}__{port}",
                    "sink",
                    [(step.name, port)],
                    {"spec": _Collector(out[name], lock)},
                )
            )
    run_plan(copy.plan(), RunOptions(workers=workers))
    return out


# -- connector contract checks --------------------------------------------------------------
@dataclass
class SourceCheck:
    """What :func:`check_source` saw: records per partition of the uninterrupted run and how
    many interrupted runs (cuts and crashes) matched it."""

    connector: str
    guarantee: str
    reference: dict[str, list[tuple[Any, ...]]]
    runs: int
    cuts: int
    crashes: int


def _rows(items: list[Item]) -> list[tuple[Any, ...]]:
    """Items as comparable rows: readings as (key, t, fields...), dead letters as their raw
    input and reason (without their receive time, and without ``source``, the position id,
    which a live source may number per run: a fresh topic, a new session)."""
    out: list[tuple[Any, ...]] = []
    for it in items:
        if isinstance(it, Batch):
            keys = it.key_array().tolist()
            vals = it.values.T.tolist()
            for k, t, v in zip(keys, it.t.tolist(), vals, strict=True):
                out.append(("reading", k, t, *zip(it.fields, v, strict=True)))
        else:
            for r in it.rows():
                r.pop("received_at", None)
                r.pop("source", None)
                out.append((it.kind, *sorted(r.items())))
    return out


def _name(spec: SourceSpec | SinkSpec, name: str | None) -> str:
    return name or f"{type(spec).__name__} ({spec.describe().get('kind', '?')})"


@dataclass
class _Plan:
    """One interrupted run's schedule: after batch i (counted per partition), ``events[i]``
    is "snapshot", "cut" (snapshot, close, open again from it) or "crash" (drop the
    partition without closing it; open again from the last snapshot)."""

    events: dict[int, str]
    #: the events that happened (a run may end before its later events)
    done: list[str] = field(default_factory=list)


def _schedules(runs: int, seed: int) -> list[_Plan]:
    plans = [
        _Plan({0: "cut"}),  # cut before anything is read
        _Plan({1: "cut"}),
        _Plan({1: "crash"}),
        _Plan({1: "snapshot", 2: "crash"}),
        _Plan({1: "snapshot", 3: "crash", 4: "crash"}),
    ]
    rng = random.Random(seed)
    while len(plans) < runs:
        events = {}
        for i in range(rng.randint(1, 4), 400, rng.randint(1, 4)):
            events[i] = rng.choice(("snapshot", "snapshot", "cut", "crash"))
        plans.append(_Plan(events))
    return plans[:runs]


def check_source(
    make_source: Callable[[], SourceSpec],
    *,
    key: str,
    time: str,
    fields: Sequence[str] | None = None,
    expected: int | None = None,
    feed: Callable[[SourceSpec, SourceContext], None] | None = None,
    crash: Callable[[SourcePartition], None] | None = None,
    runs: int = 12,
    seed: int = 0,
    timeout: float = 60.0,
    idle: float = 0.0,
    guarantee: str | None = None,
    name: str | None = None,
    batch_max: int = 131_072,
) -> SourceCheck:
    """Check a source against the contract: snapshots taken after any batch, and closing
    ("cut") or crashing at any point then resuming from the last snapshot, give exactly the
    uninterrupted run's records, per partition and in order (``exactly-once``); every record
    at least once with extra copies only of records read after the last snapshot
    (``at-least-once``); or nothing but records of the uninterrupted run, each at most once
    (``at-most-once``). The guarantee is the source's :meth:`SourceSpec.guarantee` unless
    ``guarantee`` says otherwise.

    ``make_source()`` makes a fresh spec for each run (the uninterrupted one, then ``runs``
    interrupted ones): a live source gives it a fresh topic, client id or fake device, and
    ``feed(spec, ctx)`` (called before the run's first open) sends it the input. A source that
    never ends (``next_batch`` never raises ``StopIteration``) needs ``expected``: the number
    of records a run reads (readings plus dead letters); a run then ends when it has them and
    ``idle`` seconds more bring nothing new. ``crash(partition)`` makes a partition die as in
    ``kill -9`` (default: it is dropped without ``close()``). ``batch_max`` is the context's
    cap on a batch (small values give more batches, so more places to cut). Raises ``AssertionError``
    naming the connector, the check and the first difference.
    """
    probe = make_source()
    who = _name(probe, name)
    stated = guarantee or probe.guarantee()
    if stated not in GUARANTEES:
        raise AssertionError(
            f"{who}: check_source: guarantee {stated!r} is not one of {GUARANTEES}"
        )
    ctx = SourceContext(
        "check", "source", key, time, None if fields is None else tuple(fields),
        declared=None if fields is None else tuple(fields), batch_max=batch_max,
    )  # fmt: skip
    reference = _source_run(probe, ctx, _Plan({}), expected, feed, crash, timeout, idle, who)
    total = sum(len(v) for v in reference.values())
    if expected is not None and total != expected:
        raise AssertionError(
            f"{who}: check_source (uninterrupted run): read {total} records, expected {expected}"
        )
    cuts = crashes = 0
    for i, plan in enumerate(_schedules(runs, seed)):
        got = _source_run(make_source(), ctx, plan, expected, feed, crash, timeout, idle, who)
        what = f"run {i + 1} (after batch: {_describe(plan)})"
        for part, ref in reference.items():
            _compare(who, what, part, stated, ref, got.get(part, []))
        cuts += plan.done.count("cut")
        crashes += plan.done.count("crash")
    return SourceCheck(who, stated, reference, runs, cuts, crashes)


def _describe(plan: _Plan) -> str:
    shown = [f"{i}:{e}" for i, e in sorted(plan.events.items())[:8]]
    return ", ".join(shown) + (" ..." if len(plan.events) > 8 else "")


def _compare(
    who: str,
    what: str,
    part: str,
    guarantee: str,
    ref: list[tuple[Any, ...]],
    got: list[tuple[Any, ...]],
) -> None:
    where = f"{who}: check_source, partition {part!r}, {what}"
    if guarantee == "exactly-once":
        # readings and dead letters each in order (a batch carries its readings first)
        ref = [r for r in ref if r[0] == "reading"] + [r for r in ref if r[0] != "reading"]
        got = [r for r in got if r[0] == "reading"] + [r for r in got if r[0] != "reading"]
        if got != ref:
            i = next((j for j, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), None)
            i = min(len(ref), len(got)) if i is None else i
            raise AssertionError(
                f"{where}: {len(got)} records after resuming, {len(ref)} uninterrupted; first "
                f"difference at record {i}: {got[i] if i < len(got) else 'none'} instead of "
                f"{ref[i] if i < len(ref) else 'none'} (an exactly-once source must resume "
                "after the last record its snapshot covers: nothing twice, nothing skipped)"
            )
        return
    want, have = Counter(ref), Counter(got)
    if guarantee == "at-least-once":
        missing = want - have
        extra = [r for r in have if r not in want]
        if missing or extra:
            raise AssertionError(
                f"{where}: {sum(missing.values())} records lost (e.g. {next(iter(missing), None)}), "
                f"{len(extra)} never read uninterrupted (e.g. {next(iter(extra), None)}); an "
                "at-least-once source may repeat records, never lose or invent them"
            )
    else:  # at-most-once
        over = have - want
        if over:
            raise AssertionError(
                f"{where}: {sum(over.values())} records more than uninterrupted "
                f"(e.g. {next(iter(over))}); an at-most-once source never repeats or invents"
            )


def _source_run(
    spec: SourceSpec,
    ctx: SourceContext,
    plan: _Plan,
    expected: int | None,
    feed: Callable[[SourceSpec, SourceContext], None] | None,
    crash: Callable[[SourcePartition], None] | None,
    timeout: float,
    idle: float,
    who: str,
) -> dict[str, list[tuple[Any, ...]]]:
    """Read every partition to its end (or ``expected`` records in all) following ``plan``;
    the records a crash loses (read after the last snapshot) are not kept, as the engine
    would lose them; the source is expected to give them again."""
    problems = spec.problems() + spec.check_context(ctx.key, ctx.time)
    if problems:
        raise AssertionError(f"{who}: check_source: the spec is not valid: {'; '.join(problems)}")
    if feed is not None:
        feed(spec, ctx)
    deadline = _time.monotonic() + timeout
    out: dict[str, list[tuple[Any, ...]]] = {}
    parts = spec.partitions()
    kept: dict[str, list[tuple[Any, ...]]] = {p: [] for p in parts}
    pending: dict[str, list[tuple[Any, ...]]] = {p: [] for p in parts}
    saved: dict[str, Any] = {p: None for p in parts}
    open_parts = {p: spec.open(p, None, ctx) for p in parts}
    counts = dict.fromkeys(parts, 0)
    done: set[str] = set()
    crashed: list[SourcePartition] = []
    quiet_since: float | None = None
    try:
        while len(done) < len(parts):
            progressed = False
            for p in parts:
                if p in done:
                    continue
                part = open_parts[p]
                try:
                    items = part.next_batch()
                except StopIteration:
                    kept[p] += pending[p]
                    pending[p] = []
                    done.add(p)
                    continue
                if not items:
                    continue
                progressed = True
                pending[p] += _rows(items)
                counts[p] += 1
                event = plan.events.get(counts[p])
                if event is not None:
                    plan.done.append(event)
                if event in ("snapshot", "cut"):
                    saved[p] = part.snapshot()
                    kept[p] += pending[p]
                    pending[p] = []
                    if event == "cut":
                        part.close()
                        open_parts[p] = spec.open(p, _roundtrip(saved[p], who), ctx)
                elif event == "crash":
                    (crash or (lambda _p: None))(part)
                    crashed.append(part)  # closed at the end, as the process exit would
                    pending[p] = []
                    open_parts[p] = spec.open(p, _roundtrip(saved[p], who), ctx)
            have = sum(len(kept[p]) + len(pending[p]) for p in parts)
            now = _time.monotonic()
            if expected is not None and have >= expected:
                if progressed or quiet_since is None:
                    quiet_since = now
                if now - quiet_since >= idle:
                    break
            if now > deadline:
                raise AssertionError(
                    f"{who}: check_source: {have} records after {timeout:.0f} s, expected "
                    f"{expected if expected is not None else 'the end of the input'} "
                    f"(schedule {_describe(plan)})"
                )
            if not progressed:
                _wait(open_parts.values())
    finally:
        for part in [*open_parts.values(), *crashed]:
            with contextlib.suppress(Exception):
                part.close()
    for p in parts:
        out[p] = kept[p] + pending[p]
    return out


def _wait(parts: Iterable[SourcePartition]) -> None:
    """Sleep until the earliest ``next_awake`` (at most 50 ms), as the engine would."""
    awake = [a for a in (p.next_awake() for p in parts) if a is not None]
    pause = 0.001 if not awake else max(0.0, min(0.05, (min(awake) - now_ns()) / 1e9))
    _time.sleep(pause)


def _roundtrip(snapshot: Any, who: str) -> Any:
    """A snapshot as the engine keeps it (pickled into the recovery store)."""
    import pickle

    try:
        return pickle.loads(pickle.dumps(snapshot))
    except Exception as exc:
        raise AssertionError(
            f"{who}: check_source: snapshot {snapshot!r} cannot be saved: {exc}"
        ) from None


# -- sinks ----------------------------------------------------------------------------------
@dataclass
class SinkCheck:
    connector: str
    guarantee: str
    records: int
    delivered: int
    duplicates: int


def id_records(start: int, n: int, step: str = "check") -> RecordBatch:
    """``n`` reading records with ids ``start`` .. ``start + n - 1`` in column ``id`` (and
    ``key``, ``t``, ``value``), as a flow's readings reach a sink."""
    ids = np.arange(start, start + n, dtype=np.int64)
    cols: dict[str, Any] = {
        "key": [f"d{i % 3}" for i in range(start, start + n)],
        "t": ids * 1_000_000_000,
        "id": ids,
        "value": ids.astype(np.float64) / 2,
    }
    return RecordBatch("reading", step, cols, n, ("key", "t"))


def check_sink(
    make_sink: Callable[[], SinkSpec],
    read_back: Callable[[SinkSpec], list[Mapping[str, Any]]],
    *,
    records: int = 200,
    batch: int = 10,
    ctx: SinkContext | None = None,
    crash: Callable[[SinkPartition], None] | None = None,
    finish: Callable[[SinkSpec, SinkContext], None] | None = None,
    seed: int = 0,
    guarantee: str | None = None,
    name: str | None = None,
) -> SinkCheck:
    """Check a sink against the contract under crashes: records with ids are written in
    batches of ``batch`` (column ``id``, see :func:`id_records`), a snapshot is taken now and
    then, and the partition crashes between a write and the snapshot after it (``crash``,
    default: dropped without ``close()``); the sink is opened again from the last snapshot and
    the records written since it are written again, as a replaying source makes the engine
    do. Then ``finish(spec, ctx)`` (e.g. wait for a forwarder) and ``read_back(spec)`` (the
    records the sink delivered, as dicts with ``id``). Every id must be delivered at least
    once; with the ``exactly-once`` guarantee (:meth:`SinkSpec.guarantee`), exactly once.
    Raises ``AssertionError`` naming the connector and the check."""
    spec = make_sink()
    who = _name(spec, name)
    stated = guarantee or spec.guarantee()
    sctx = ctx or SinkContext("check", "sink")
    problems = spec.problems()
    if problems:
        raise AssertionError(f"{who}: check_sink: the spec is not valid: {'; '.join(problems)}")
    rng = random.Random(seed)
    part = spec.open("0", None, sctx)
    saved: Any = None
    since = 0  # first id written after the last snapshot
    written = 0
    crashes = 0
    while written < records:
        n = min(batch, records - written)
        part.write([id_records(written, n)])
        written += n
        roll = rng.random()
        if roll < 0.3 or written >= records:
            saved = _roundtrip(part.snapshot(), who)
            since = written
        elif roll < 0.5:  # crash after the write, before any snapshot covers it
            (crash or (lambda _p: None))(part)
            crashes += 1
            part = spec.open("0", saved, sctx)
            if since < written:
                part.write([id_records(since, written - since)])
    part.close()
    if finish is not None:
        finish(spec, sctx)
    got = [int(r["id"]) for r in read_back(spec) if r.get("id") is not None]
    seen = Counter(got)
    missing = [i for i in range(records) if seen[i] == 0]
    if missing:
        raise AssertionError(
            f"{who}: check_sink (at-least-once under {crashes} crashes): {len(missing)} of "
            f"{records} record ids never delivered, e.g. {missing[:5]}"
        )
    dups = sum(c - 1 for c in seen.values() if c > 1)
    if stated == "exactly-once" and dups:
        raise AssertionError(
            f"{who}: check_sink (exactly-once under {crashes} crashes): {dups} duplicate "
            f"deliveries, e.g. ids {[i for i, c in seen.items() if c > 1][:5]}"
        )
    return SinkCheck(who, stated, records, len(got), dups)
