"""Flows, streams and steps, and the validated plan they compile to.

Build a flow, then ``flow.plan()`` checks it and returns a :class:`Plan` (or raises
:class:`~edgeflow.errors.FlowValidationError` listing every problem, each naming its
step and what to change). The plan prints, serialises to JSON and is what the engine
compiles; building it runs nothing.

Every operator of every step (window, aggregation, reduction, detector, decision) is
checked through one method, ``problems()`` (:class:`~edgeflow.ops.args.Checked`): each bad
argument is one line naming the step, the argument, the value given and the valid range.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeflow.connectors.base import SinkSpec, SourceSpec
from edgeflow.errors import FlowValidationError
from edgeflow.ops.agg import Agg
from edgeflow.ops.args import Arg, Checked
from edgeflow.ops.args import duration as duration_arg
from edgeflow.ops.detect import Decision, Detector, Limits
from edgeflow.ops.detect.base import parts_of
from edgeflow.ops.downsample import DownsampleSpec
from edgeflow.ops.enrich import MISSING, UNMATCHED, EnrichSpec, Table, TableError, load_table
from edgeflow.ops.udf import OPS as UDF_OPS
from edgeflow.ops.udf import UNROUTED, UdfSpec, sample_problems
from edgeflow.ops.window import ResolvedWindow, WindowSpec
from edgeflow.timeutil import Duration, format_duration, parse_duration

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

#: Streams a step produces: a source gives readings and dead letters, a window gives
#: window records and late readings.
PORTS = {
    "source": ("readings", "dead_letters"),
    "window": ("windows", "late"),
    "downsample": ("trend",),
    "detect": ("anomalies",),
    "features": ("readings",),
    "sink": (),
}
OPTIONAL_PORTS = {"dead_letters", "late", UNROUTED, UNMATCHED}


@dataclass
class Step:
    """One node of the flow graph."""

    name: str
    kind: str
    inputs: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    user_named: bool = False

    def ref(self, port: str) -> str:
        return f"{self.name}.{port}"


class _StreamBase:
    def __init__(self, flow: Flow, step: Step, port: str) -> None:
        self.flow = flow
        self.step = step
        self.port = port

    def to(self, sink: SinkSpec | SinkStep, *, name: str | None = None) -> _StreamBase:
        """Send this stream to a sink (a sink spec, or a step from ``flow.sink``). Chainable."""
        target = sink if isinstance(sink, SinkStep) else self.flow.sink(sink, name=name)
        target.step.inputs.append((self.step.name, self.port))
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.step.name}.{self.port}>"


class ReadingStream(_StreamBase):
    """Readings from a source, keyed by device."""

    def window(
        self,
        spec: WindowSpec,
        *aggs: Agg,
        name: str | None = None,
        lateness: Duration | None = None,
        idle: Duration | None = None,
        key_ttl: Duration | None = "1h",
    ) -> RecordStream:
        """Group readings per key into windows and aggregate them.

        Returns the stream of window records; its ``.late`` attribute is the stream of
        readings that arrived after their window closed. ``idle`` closes a key's open
        windows after that much wall-clock time without a reading from it. ``lateness``
        overrides the source's allowed lateness.
        """
        step = self.flow._add(
            "window", name, [(self.step.name, self.port)],
            {"spec": spec, "aggs": list(aggs), "lateness": lateness, "idle": idle, "key_ttl": key_ttl},
        )  # fmt: skip
        out = RecordStream(self.flow, step, "windows")
        out.late = RecordStream(self.flow, step, "late")
        return out

    def downsample(self, spec: DownsampleSpec, *, name: str | None = None) -> RecordStream:
        """Reduce one field per key (deadband, swinging door, LTTB, ...): a stream of trend points."""
        step = self.flow._add("downsample", name, [(self.step.name, self.port)], {"spec": spec})
        return RecordStream(self.flow, step, "trend")

    def detect(
        self,
        detector: Detector,
        field: str,
        *,
        decision: Decision | None = None,
        learn_anomalies: bool = False,
        name: str | None = None,
    ) -> RecordStream:
        """Score ``field`` per key with ``detector``; a stream of anomaly events.

        ``decision`` turns scores into verdicts (default ``detect.threshold(0.999)``, each
        detector's classic alarm level). Anomalies are not learnt as normal unless
        ``learn_anomalies=True``.
        """
        step = self.flow._add(
            "detect", name, [(self.step.name, self.port)],
            {"detector": detector, "field": field, "decision": decision or Decision(), "learn": learn_anomalies},
        )  # fmt: skip
        return RecordStream(self.flow, step, "anomalies")

    @property
    def dead_letters(self) -> RecordStream:
        """Input the step could not read or process, with the reason (route it to a sink to
        keep it; otherwise counted and dropped). On a source: unreadable input; on a
        ``derive``/``filter``/``map``/``route``/``apply`` step: the readings the user function
        raised on (or returned a wrong value for), with the step, exception type and message."""
        return RecordStream(self.flow, self.step, "dead_letters")

    # -- your own code (edgeflow/ops/udf.py) -----------------------------------------
    def _udf(
        self, op: str, fns: dict[str, Any], name: str | None, fields: Sequence[str] | None = None
    ) -> Step:
        spec = UdfSpec(op, tuple(fns.items()), None if fields is None else tuple(fields))
        step = self.flow._add(op, name, [(self.step.name, self.port)], {"spec": spec})
        step.kind = "udf"  # (named after the operation: derive, derive_2, filter, ...)
        return step

    def derive(self, *, name: str | None = None, **fns: Any) -> ReadingStream:
        """Add fields computed from a batch's columns (vectorised, the fast path):
        ``r.derive(power=lambda c: c["volts"] * c["amps"])``. ``c`` maps each field to a
        float64 numpy array, ``"t"`` to int64 ns and ``"key"`` to the keys (str objects);
        return one number per reading (or a scalar). The new fields are ordinary fields
        downstream (windows, detect, downsample, sinks). Every function sees the input
        columns (chain a second ``derive`` to use a derived field). A function that raises
        turns only the readings it fails on into dead letters (see :attr:`dead_letters`)."""
        return ReadingStream(self.flow, self._udf("derive", fns, name), "readings")

    def map(self, *, name: str | None = None, **fns: Any) -> ReadingStream:
        """Replace existing fields with values computed from the batch's columns
        (vectorised): ``r.map(temp=lambda c: (c["temp"] - 32) / 1.8)``. Every function sees
        the input columns (not each other's results)."""
        return ReadingStream(self.flow, self._udf("map", fns, name), "readings")

    def filter(self, fn: Any, *, name: str | None = None) -> ReadingStream:
        """Keep the readings where ``fn(c)`` is True (a boolean mask, vectorised):
        ``r.filter(lambda c: c["temp"] < 200)``."""
        return ReadingStream(self.flow, self._udf("filter", {"fn": fn}, name), "readings")

    def route(self, *, name: str | None = None, **predicates: Any) -> Routes:
        """Split readings into named streams by boolean masks (vectorised):
        ``routes = r.route(hot=lambda c: c["temp"] > 80, cold=lambda c: c["temp"] < 5)``,
        then ``routes.hot`` / ``routes["cold"]`` are reading streams. A reading goes to every
        route whose predicate is True for it. Readings matching no route go to
        ``routes.unrouted``: use it like any reading stream, or ignore it (they are then
        dropped; the flow still validates). Every named route must go somewhere."""
        step = self._udf("route", predicates, name)
        return Routes(self.flow, step, tuple(predicates))

    def apply(
        self, fn: Any, *, fields: Sequence[str] | None = None, name: str | None = None
    ) -> ReadingStream:
        """Per-record function (the SLOW path, one Python call per reading: about 0.35 M
        readings/s on one core in bench/udf.py, against ~7 M for derive/filter; prefer
        those): ``fn`` gets ``{"key": str, "t": int ns, <field>: float, ...}`` and returns a
        dict, a list of dicts or None (drop). ``fields``: the output fields (default: the
        input's); every returned dict gives each as a number and may set ``key`` and ``t``.
        Readings are sharded again by their new key; readings of several old keys merged
        into one are in time order per old key only, so give a later window a lateness.
        A call that raises or returns something else makes that reading a dead letter."""
        return ReadingStream(self.flow, self._udf("apply", {"fn": fn}, name, fields), "readings")

    def enrich(
        self,
        table: str | Path,
        *,
        key: str,
        fields: Sequence[str] | None = None,
        missing: str = "route",
        defaults: Mapping[str, float] | None = None,
        check_every: Duration = "1s",
        name: str | None = None,
    ) -> EnrichedStream:
        """Join each reading by its key with a table of device metadata (a CSV file with a
        header row, or JSON: a list of objects or an object of objects by key); ``key``
        names the table's key column. The table's numeric columns (or those in ``fields``)
        become fields of the readings, usable downstream like any field (windows, detect,
        ``detect.limits(low="low_limit")`` for per-device limits, derive, sinks); text
        columns are not carried. The file is checked for changes at most every
        ``check_every`` and reloaded in the background; a broken new file keeps the last good
        table (one error line, counted). Readings of keys not in the table: ``missing="route"``
        sends them to ``.unmatched`` (route it to a sink or ignore it: counted, then dropped);
        ``missing="default"`` gives them ``defaults`` (a number for every added field)."""
        spec = EnrichSpec(
            str(table),
            key,
            None if fields is None else tuple(fields),
            missing,
            tuple((defaults or {}).items()),
        )
        step = self.flow._add(
            "enrich",
            name,
            [(self.step.name, self.port)],
            {"spec": spec, "check_every": check_every},
        )
        return EnrichedStream(self.flow, step, "readings")


class EnrichedStream(ReadingStream):
    """The readings of an ``enrich`` step; :attr:`unmatched` are the readings whose key is
    not in the table (with ``missing="route"``)."""

    @property
    def unmatched(self) -> ReadingStream:
        return ReadingStream(self.flow, self.step, UNMATCHED)


class Routes:
    """The named streams of a ``route`` step: ``routes.hot`` or ``routes["hot"]``, plus
    ``unrouted`` (readings matching no route) and ``dead_letters``."""

    def __init__(self, flow: Flow, step: Step, names: tuple[str, ...]) -> None:
        self._flow = flow
        self._step = step
        self._names = names

    def __getitem__(self, route: str) -> ReadingStream:
        if route not in self._names and route != UNROUTED:
            raise KeyError(f"no route {route!r}; the routes are: {', '.join(self._names)}")
        return ReadingStream(self._flow, self._step, route)

    def __getattr__(self, route: str) -> ReadingStream:
        if route.startswith("_"):
            raise AttributeError(route)
        try:
            return self[route]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    @property
    def unrouted(self) -> ReadingStream:
        return ReadingStream(self._flow, self._step, UNROUTED)

    @property
    def dead_letters(self) -> RecordStream:
        return RecordStream(self._flow, self._step, "dead_letters")


class RecordStream(_StreamBase):
    """Result records: window summaries, late readings or dead letters."""

    late: RecordStream

    def as_readings(self, *, time: str = "window_end", name: str | None = None) -> ReadingStream:
        """Window summaries as readings, one per window and key, so that they can be
        detected on, downsampled or windowed again: the fields are the aggregation columns
        (``rms_accel``, ``count``, ...), the time is the window's ``time`` column
        (``window_end`` or ``window_start``). Only a window step's summaries can be turned
        into readings."""
        step = self.flow._add("features", name, [(self.step.name, self.port)], {"time": time})
        return ReadingStream(self.flow, step, "readings")


class SinkStep:
    """A declared sink; connect streams to it with ``stream.to(sink_step)``."""

    def __init__(self, step: Step) -> None:
        self.step = step


class Flow:
    """A named dataflow graph. Add sources with :meth:`source`, then chain operators."""

    def __init__(self, name: str, *, version: str = "0", shards: int = 8) -> None:
        self.name = name
        self.version = version
        self.shards = shards
        self.steps: list[Step] = []
        self._counts: dict[str, int] = {}

    def _add(
        self, kind: str, name: str | None, inputs: list[tuple[str, str]], params: dict[str, Any]
    ) -> Step:
        if name is None:
            n = self._counts.get(kind, 0) + 1
            self._counts[kind] = n
            name = kind if n == 1 else f"{kind}_{n}"
            while any(s.name == name for s in self.steps):
                n += 1
                self._counts[kind] = n
                name = f"{kind}_{n}"
            step = Step(name, kind, inputs, params)
        else:
            step = Step(name, kind, inputs, params, user_named=True)
        self.steps.append(step)
        return step

    def source(
        self,
        spec: SourceSpec,
        *,
        key: str | None = None,
        time: str | None = None,
        lateness: Duration = 0,
        fields: Sequence[str] | None = None,
        name: str | None = None,
        batch_max: int = 65_536,
        batch_budget: Duration = "1ms",
    ) -> ReadingStream:
        """Read readings from ``spec``. ``key`` names the device column, ``time`` the event time.

        ``lateness`` is how long to wait for out-of-order readings before a window closes.
        ``fields`` limits the numeric fields kept (default: all but key and time).
        Batches are cut at ``batch_max`` readings or ``batch_budget`` of waiting.
        """
        step = self._add("source", name, [], {
            "spec": spec, "key": key, "time": time, "lateness": lateness, "fields": fields,
            "batch_max": batch_max, "batch_budget": batch_budget,
        })  # fmt: skip
        return ReadingStream(self, step, "readings")

    def sink(self, spec: SinkSpec, *, name: str | None = None) -> SinkStep:
        """Declare a sink; streams are connected to it with ``stream.to(...)``."""
        return SinkStep(self._add("sink", name, [], {"spec": spec}))

    def plan(self) -> Plan:
        """Validate and return the plan; raises FlowValidationError listing every problem."""
        return _validate(self)

    def validate(self) -> Plan:
        return self.plan()


@dataclass
class SourcePlan:
    name: str
    spec: SourceSpec
    key: str
    time: str
    fields: tuple[str, ...] | None
    lateness_ns: int
    batch_max: int
    batch_budget_ns: int
    #: the fields the flow uses (windows' fields; all when raw readings go to a sink):
    #: sources parse or generate only these
    read_fields: tuple[str, ...] | None = None


@dataclass
class WindowPlan:
    name: str
    input: tuple[str, str]
    window: ResolvedWindow
    spec: WindowSpec
    aggs: list[Agg]
    fields: tuple[str, ...]
    lateness_ns: int
    idle_ns: int | None
    key_ttl_ns: int | None


@dataclass
class DownsamplePlan:
    name: str
    input: tuple[str, str]
    spec: DownsampleSpec


@dataclass
class DetectPlan:
    name: str
    input: tuple[str, str]
    field: str
    detector: Detector
    decision: Decision
    learn_anomalies: bool


@dataclass
class FeaturesPlan:
    name: str
    input: tuple[str, str]
    time: str
    fields: tuple[str, ...]


@dataclass
class UdfPlan:
    """A user-function step (derive, filter, map, route or apply; see edgeflow/ops/udf.py)."""

    name: str
    input: tuple[str, str]
    spec: UdfSpec
    #: the output readings' fields (None: known only from the data)
    fields: tuple[str, ...] | None


@dataclass
class EnrichPlan:
    """An enrich step (see edgeflow/ops/enrich.py): the table's ``added`` fields are
    appended to the input's; ``fields`` are the output readings' (None: from the data)."""

    name: str
    input: tuple[str, str]
    spec: EnrichSpec
    added: tuple[str, ...]
    fields: tuple[str, ...] | None
    check_every_ns: int
    #: the table as read when the flow was validated (the run starts with it)
    table: Table = field(repr=False, compare=False, default_factory=lambda: Table({}, {}, ()))


@dataclass
class SinkPlan:
    name: str
    spec: SinkSpec
    inputs: list[tuple[str, str]]


@dataclass
class Plan:
    """A validated flow: what the engine compiles."""

    name: str
    version: str
    shards: int
    sources: list[SourcePlan]
    windows: list[WindowPlan]
    sinks: list[SinkPlan]
    unrouted: list[str]
    downsamples: list[DownsamplePlan] = field(default_factory=list)
    detects: list[DetectPlan] = field(default_factory=list)
    features: list[FeaturesPlan] = field(default_factory=list)
    #: step names in declaration order (a step comes after the steps it reads)
    order: list[str] = field(default_factory=list)
    #: user-function steps (derive, filter, map, route, apply)
    udfs: list[UdfPlan] = field(default_factory=list)
    #: enrich steps (joins with a device table)
    enrichments: list[EnrichPlan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        for s in self.sources:
            steps.append({
                "name": s.name, "kind": "source", "connector": s.spec.describe(), "key": s.key,
                "time": s.time, "fields": list(s.fields) if s.fields is not None else None,
                "lateness": format_duration(s.lateness_ns),
                "outputs": [f"{s.name}.readings", f"{s.name}.dead_letters"],
            })  # fmt: skip
        for w in self.windows:
            steps.append({
                "name": w.name, "kind": "window", "input": ".".join(w.input), "window": w.spec.to_dict(),
                "aggs": [a.to_dict() for a in w.aggs], "lateness": format_duration(w.lateness_ns),
                "idle": format_duration(w.idle_ns) if w.idle_ns is not None else None,
                "outputs": [f"{w.name}.windows", f"{w.name}.late"],
            })  # fmt: skip
        for f in self.features:
            steps.append({
                "name": f.name, "kind": "features", "input": ".".join(f.input), "time": f.time,
                "fields": list(f.fields), "outputs": [f"{f.name}.readings"],
            })  # fmt: skip
        for u in self.udfs:
            steps.append({
                "name": u.name, "kind": u.spec.op, "input": ".".join(u.input),
                "functions": [n for n, _ in u.spec.fns] if u.spec.op in ("derive", "map", "route") else [],
                "fields": list(u.fields) if u.fields is not None else None,
                "outputs": [f"{u.name}.{p}" for p in (*u.spec.ports(), "dead_letters")],
            })  # fmt: skip
        for e in self.enrichments:
            steps.append({
                "name": e.name, "kind": "enrich", "input": ".".join(e.input), "table": e.spec.path,
                "key": e.spec.key, "added": list(e.added), "missing": e.spec.missing,
                "defaults": dict(e.spec.defaults), "check_every": format_duration(e.check_every_ns),
                "outputs": [f"{e.name}.{p}" for p in e.spec.ports()],
            })  # fmt: skip
        for d in self.downsamples:
            steps.append(
                {
                    "name": d.name,
                    "kind": "downsample",
                    "input": ".".join(d.input),
                    "reduce": d.spec.to_dict(),
                    "outputs": [f"{d.name}.trend"],
                }
            )
        for a in self.detects:
            steps.append({
                "name": a.name, "kind": "detect", "input": ".".join(a.input), "field": a.field,
                "detector": {"name": a.detector.name, **a.detector.params()},
                "decision": {"kind": a.decision.kind, "value": a.decision.value}, "outputs": [f"{a.name}.anomalies"],
            })  # fmt: skip
        for k in self.sinks:
            steps.append(
                {
                    "name": k.name,
                    "kind": "sink",
                    "connector": k.spec.describe(),
                    "inputs": [".".join(i) for i in k.inputs],
                }
            )
        return {
            "flow": self.name,
            "version": self.version,
            "shards": self.shards,
            "steps": steps,
            "unrouted": self.unrouted,
        }

    def describe(self) -> str:
        """A human-readable listing of steps, streams and sinks."""
        lines = [f"flow {self.name!r} (version {self.version}, {self.shards} shards)"]
        for s in self.sources:
            fields = ", ".join(s.fields) if s.fields is not None else "(from the data)"
            lines.append(
                f"  source {s.name}: {s.spec.describe()['kind']} key={s.key} time={s.time} fields={fields} lateness={format_duration(s.lateness_ns)}"
            )
        for w in self.windows:
            aggs = ", ".join(a.output_name for a in w.aggs)
            lines.append(
                f"  window {w.name}: {w.spec.kind} {w.spec.to_dict()} <- {'.'.join(w.input)} -> [{aggs}]"
            )
        for f in self.features:
            lines.append(
                f"  readings {f.name}: {', '.join(f.fields)} at {f.time} <- {'.'.join(f.input)}"
            )
        for u in self.udfs:
            fields = ", ".join(u.fields) if u.fields is not None else "(from the data)"
            what = ", ".join(n for n, _ in u.spec.fns) if u.spec.op != "filter" else "mask"
            if u.spec.op == "apply":
                what = "per record"
            lines.append(
                f"  {u.spec.op:<6} {u.name}: {what} <- {'.'.join(u.input)} -> fields {fields}"
            )
        for e in self.enrichments:
            lines.append(
                f"  enrich {e.name}: {e.spec.path} by {e.spec.key} -> +[{', '.join(e.added)}] "
                f"(missing: {e.spec.missing}) <- {'.'.join(e.input)}"
            )
        for d in self.downsamples:
            lines.append(f"  reduce {d.name}: {d.spec.to_dict()} <- {'.'.join(d.input)}")
        for a in self.detects:
            lines.append(
                f"  detect {a.name}: {a.detector.name} on {a.field} ({a.decision.kind} {a.decision.value}) <- {'.'.join(a.input)}"
            )
        for k in self.sinks:
            ins = ", ".join(".".join(i) for i in k.inputs)
            lines.append(f"  sink   {k.name}: {k.spec.describe()['kind']} <- {ins}")
        if self.unrouted:
            lines.append(f"  unrouted (counted, not kept): {', '.join(self.unrouted)}")
        return "\n".join(lines)


def _validate(flow: Flow) -> Plan:
    problems: list[str] = []
    if not isinstance(flow.name, str) or not _NAME.match(flow.name):
        problems.append(f"flow name {flow.name!r}: use letters, digits, '_' or '-'")
    if (
        not isinstance(flow.shards, int)
        or isinstance(flow.shards, bool)
        or not 1 <= flow.shards <= 4096
    ):
        problems.append(f"flow shards={flow.shards!r}: give a whole number in [1, 4096]")
    seen: dict[str, Step] = {}
    for s in flow.steps:
        if s.name in seen:
            problems.append(
                f"step {s.name!r}: the name is used by two steps; give each step a unique name="
            )
        elif not _NAME.match(s.name):
            problems.append(f"step {s.name!r}: names may use letters, digits, '_' and '-'")
        seen[s.name] = s
    if not any(s.kind == "source" for s in flow.steps):
        problems.append("the flow has no source; add one with flow.source(...)")

    consumed: set[tuple[str, str]] = set()
    for s in flow.steps:
        consumed.update(s.inputs)
    fields_of: dict[str, tuple[str, ...] | None] = {}
    sources: list[SourcePlan] = []
    windows: list[WindowPlan] = []
    sinks: list[SinkPlan] = []
    downsamples: list[DownsamplePlan] = []
    detects: list[DetectPlan] = []
    features: list[FeaturesPlan] = []
    udfs: list[UdfPlan] = []
    enrichments: list[EnrichPlan] = []
    origin: dict[str, str] = {}  # a user-function step's readings come from this step
    for s in flow.steps:
        if s.kind in ("udf", "enrich") and s.inputs:
            up = s.inputs[0][0]
            origin[s.name] = origin.get(up, up)
    for s in flow.steps:
        where = f"step {s.name!r} ({s.kind})"
        p = s.params
        if s.kind == "source":
            sources.append(_check_source(s, where, problems, fields_of))
        elif s.kind == "window":
            w = _check_window(s, where, problems, fields_of, sources, origin)
            if w is not None:
                windows.append(w)
        elif s.kind == "features":
            f = _check_features(s, where, problems, windows)
            fields_of[s.name] = f.fields if f is not None else None
            if f is not None:
                features.append(f)
        elif s.kind == "udf":
            u = _check_udf(s, problems, fields_of)
            if u is not None:
                udfs.append(u)
        elif s.kind == "enrich":
            e = _check_enrich(s, where, problems, fields_of)
            if e is not None:
                enrichments.append(e)
        elif s.kind == "downsample":
            ((up, port),) = s.inputs
            spec = p["spec"]
            if not isinstance(spec, DownsampleSpec):
                problems.append(
                    f"{where}: {spec!r} is not a reduction; use e.g. downsample.deadband('temp', band=0.5)"
                )
                continue
            _check_operator(spec, where, problems)
            _check_field(spec.field, fields_of.get(up), where, problems)
            downsamples.append(DownsamplePlan(s.name, (up, port), spec))
        elif s.kind == "detect":
            ((up, port),) = s.inputs
            det, dec = p["detector"], p["decision"]
            if not isinstance(det, Detector):
                problems.append(
                    f"{where}: {det!r} is not a detector; use e.g. detect.auto() or detect.zscore()"
                )
                continue
            if not isinstance(dec, Decision):
                problems.append(
                    f"{where}: decision={dec!r}; use detect.threshold(0.999) or detect.quantile(0.999)"
                )
                continue
            _check_operator(det, where, problems)
            _check_operator(dec, where, problems)
            if not isinstance(p["learn"], bool):
                problems.append(
                    f"{where}: learn_anomalies={p['learn']!r} is not a boolean; give True or False"
                )
            if not isinstance(p["field"], str):
                problems.append(f"{where}: field {p['field']!r} must be a field name, e.g. 'accel'")
                continue
            _check_field(p["field"], fields_of.get(up), where, problems)
            _check_limit_fields(det, fields_of.get(up), dec, where, problems)
            detects.append(DetectPlan(s.name, (up, port), p["field"], det, dec, bool(p["learn"])))
        elif s.kind == "sink":
            spec = p["spec"]
            if not isinstance(spec, SinkSpec):
                problems.append(
                    f"{where}: {spec!r} is not a sink; use e.g. stdio.sink() or files.sink('out.jsonl')"
                )
                continue
            problems.extend(f"{where}: {m}" for m in spec.problems())
            if not s.inputs:
                problems.append(
                    f"{where}: no stream is connected to this sink; connect one with stream.to(...) or remove the sink"
                )
            sinks.append(SinkPlan(s.name, spec, list(s.inputs)))
    unrouted: list[str] = []
    for s in flow.steps:
        if s.kind == "udf":
            _check_udf_outputs(s, consumed, problems, unrouted)
        if s.kind == "enrich":
            _check_enrich_outputs(s, consumed, problems, unrouted)
        for port in PORTS.get(s.kind, ()):
            if (s.name, port) in consumed:
                continue
            if port in OPTIONAL_PORTS:
                unrouted.append(f"{s.name}.{port}")
            elif s.kind in ("window", "downsample", "detect", "features"):
                problems.append(
                    f"step {s.name!r} ({s.kind}): its records go nowhere; add .to(stdio.sink()) or another sink"
                )
            elif s.kind == "source" and not any(i[0] == s.name for i in consumed):
                problems.append(
                    f"step {s.name!r} (source): its readings go nowhere; add a .window(...) or .to(sink)"
                )
    if problems:
        raise FlowValidationError(flow.name, problems)
    for src in sources:
        raw_to_sink = any((src.name, "readings") in k.inputs for k in sinks)
        if raw_to_sink:
            src.read_fields = src.fields
        else:
            used = [f for w in windows if w.input[0] == src.name for f in w.fields]
            used += [d.spec.field for d in downsamples if d.input[0] == src.name]
            for a in detects:
                if a.input[0] == src.name:
                    lims = a.detector.limit_fields() if isinstance(a.detector, Limits) else ()
                    used += [a.field, *lims]
            src.read_fields = tuple(dict.fromkeys(used))
            inputs = [u.input[0] for u in udfs] + [e.input[0] for e in enrichments]
            if src.name in inputs:  # user code may read any field; a join keeps them all
                src.read_fields = src.fields
    return Plan(
        flow.name,
        flow.version,
        flow.shards,
        sources,
        windows,
        sinks,
        unrouted,
        downsamples,
        detects,
        features,
        [s.name for s in flow.steps],
        udfs,
        enrichments,
    )


def _check_features(
    s: Step, where: str, problems: list[str], windows: list[WindowPlan]
) -> FeaturesPlan | None:
    ((up, port),) = s.inputs
    w = next((x for x in windows if x.name == up), None)
    if w is None or port != "windows":
        problems.append(
            f"{where}: only window summaries can be turned into readings; call .as_readings() "
            f"on the stream a .window(...) step returns, not on {up}.{port}"
        )
        return None
    time = s.params["time"]
    if time not in ("window_end", "window_start"):
        problems.append(f"{where}: time={time!r}; use 'window_end' or 'window_start'")
        return None
    return FeaturesPlan(s.name, (up, port), time, tuple(a.output_name for a in w.aggs))


def _check_operator(op: Checked, where: str, problems: list[str]) -> None:
    """The operator's own argument check (one line per bad argument), naming the step."""
    problems.extend(f"{where}: {m}" for m in op.problems())


def _check_field(
    name: str, fields: tuple[str, ...] | None, where: str, problems: list[str]
) -> None:
    if fields is not None and name not in fields:
        problems.append(
            f"{where}: unknown field {name!r}; the stream has: {', '.join(fields) or '(none)'}"
        )


def _duration(
    value: Any, what: str, where: str, problems: list[str], *, allow_none: bool = False
) -> int | None:
    """A step's duration argument (0 allowed, at most ten years) in ns; 0 when refused."""
    if value is None and allow_none:
        return None
    why = duration_arg(what, zero=True).problem(value)
    if why is not None:
        problems.append(f"{where}: {why}")
        return 0
    return parse_duration(value, what=what)


def _check_source(
    s: Step, where: str, problems: list[str], fields_of: dict[str, tuple[str, ...] | None]
) -> SourcePlan:
    p = s.params
    spec = p["spec"]
    if not isinstance(spec, SourceSpec):
        problems.append(
            f"{where}: {spec!r} is not a source; use e.g. simulate.sensors() or files.source('in.csv')"
        )
        fields_of[s.name] = None
        return SourcePlan(s.name, spec, "", "", None, 0, 1, 0)
    problems.extend(f"{where}: {m}" for m in spec.problems())
    key = p["key"] if p["key"] is not None else spec.default_key
    time = p["time"] if p["time"] is not None else spec.default_time
    if not key:
        problems.append(
            f"{where}: say which column is the device key, e.g. flow.source(..., key='device')"
        )
    if not time:
        problems.append(
            f"{where}: say which column is the event time, e.g. flow.source(..., time='ts')"
        )
    if key and time:
        problems.extend(f"{where}: {m}" for m in spec.check_context(key, time))
    fields = spec.numeric_fields(key or "", time or "")
    if p["fields"] is not None:
        wanted = tuple(p["fields"])
        if fields is not None:
            known = frozenset(fields)  # (a set: 100,000 fields are checked in linear time)
            for f in wanted:
                if f not in known:
                    problems.append(
                        f"{where}: unknown field {f!r} in fields=; the source has: {', '.join(fields)}"
                    )
        fields = wanted
    fields_of[s.name] = fields
    lateness = _duration(p["lateness"], "lateness", where, problems) or 0
    budget = _duration(p["batch_budget"], "batch_budget", where, problems) or 0
    bmax = p["batch_max"]
    why = Arg("batch_max", "int", 1, 1 << 24).problem(bmax)
    if why is not None:
        problems.append(f"{where}: {why}")
        bmax = 1
    return SourcePlan(s.name, spec, key or "", time or "", fields, lateness, bmax, budget)


def _check_window(
    s: Step,
    where: str,
    problems: list[str],
    fields_of: dict[str, tuple[str, ...] | None],
    sources: list[SourcePlan],
    origin: dict[str, str],
) -> WindowPlan | None:
    p = s.params
    ((up, port),) = s.inputs
    spec = p["spec"]
    if not isinstance(spec, WindowSpec):
        problems.append(
            f"{where}: the first argument must be a window such as window.tumbling('1s'), got {spec!r}"
        )
        return None
    bad = spec.problems()
    problems.extend(f"{where}: {m}" for m in bad)
    resolved = None if bad else spec.resolve()
    aggs = p["aggs"]
    if not aggs:
        problems.append(
            f"{where}: give at least one aggregation, e.g. .window(window.tumbling('1s'), agg.count())"
        )
    fields = fields_of.get(up)
    known = None if fields is None else frozenset(fields)  # linear in 100,000 aggregations
    names: set[str] = set()
    for a in aggs:
        if not isinstance(a, Agg):
            problems.append(f"{where}: {a!r} is not an aggregation; use e.g. agg.mean('accel')")
            continue
        _check_operator(a, where, problems)
        if (
            a.field is not None
            and known is not None
            and isinstance(a.field, str)
            and a.field not in known
        ):
            problems.append(
                f"{where}: agg.{a.func}({a.field!r}): unknown field {a.field!r}; the stream has: {', '.join(fields or ()) or '(none)'}"
            )
        if a.output_name in names:
            problems.append(
                f"{where}: two aggregations produce the column {a.output_name!r}; remove one"
            )
        names.add(a.output_name)
    src = next((x for x in sources if x.name == origin.get(up, up)), None)
    lateness = _duration(p["lateness"], "lateness", where, problems, allow_none=True)
    if lateness is None:
        lateness = src.lateness_ns if src else 0
    idle = _duration(p["idle"], "idle", where, problems, allow_none=True)
    ttl = _duration(p["key_ttl"], "key_ttl", where, problems, allow_none=True)
    if resolved is None:
        return None
    used = tuple(
        dict.fromkeys(a.field for a in aggs if isinstance(a, Agg) and isinstance(a.field, str))
    )
    return WindowPlan(
        s.name,
        (up, port),
        resolved,
        spec,
        [a for a in aggs if isinstance(a, Agg)],
        used,
        lateness,
        idle or None,
        ttl,
    )


def _check_udf(
    s: Step, problems: list[str], fields_of: dict[str, tuple[str, ...] | None]
) -> UdfPlan | None:
    """A derive / filter / map / route / apply step: names, callables, and one sample call
    per function on a tiny synthetic batch of the input's fields (when they are known)."""
    spec: UdfSpec = s.params["spec"]
    where = f"step {s.name!r} ({spec.op})"
    ((up, port),) = s.inputs
    fields = fields_of.get(up)
    fields_of[s.name] = None
    bad = len(problems)
    if spec.op not in UDF_OPS:
        problems.append(f"{where}: unknown operation; use one of {', '.join(UDF_OPS)}")
        return None
    if not spec.fns:
        example = {
            "derive": "power=lambda c: c['volts'] * c['amps']",
            "map": "temp=lambda c: (c['temp'] - 32) / 1.8",
            "route": "hot=lambda c: c['temp'] > 80",
        }.get(spec.op, "")
        problems.append(f"{where}: give at least one function, e.g. .{spec.op}({example})")
    for n, fn in spec.fns:
        label = "the function" if spec.op in ("filter", "apply") else f"{n}="
        if not callable(fn):
            problems.append(
                f"{where}: {label} {fn!r} is not a function; give e.g. lambda c: c['temp'] * 2"
            )
        if spec.op in ("filter", "apply"):
            continue
        if not _NAME.match(n) or n in ("t", "key"):
            problems.append(
                f"{where}: {n!r} cannot be a field or route name; use letters, digits, '_'"
            )
        elif spec.op == "route" and n in (UNROUTED, "dead_letters"):
            problems.append(
                f"{where}: {n!r} is a reserved stream name; call the route something else"
            )
        elif spec.op == "derive" and fields is not None and n in fields:
            problems.append(
                f"{where}: {n!r} is already a field of the stream; use .map({n}=...) to replace it"
            )
        elif spec.op == "map" and fields is not None and n not in fields:
            problems.append(
                f"{where}: {n}= replaces a field the stream does not have; the stream has: "
                f"{', '.join(fields) or '(none)'} (use .derive({n}=...) to add a field)"
            )
    if spec.fields is not None:
        for f in spec.fields:
            if not isinstance(f, str) or not _NAME.match(f) or f in ("t", "key"):
                problems.append(f"{where}: fields= {f!r} is not a field name")
    if len(problems) > bad:
        return None
    if fields is not None:
        problems.extend(f"{where}: {m}" for m in sample_problems(spec, fields))
        out: tuple[str, ...] | None = spec.out_fields(fields)
    else:
        out = spec.fields if spec.op == "apply" else None
    fields_of[s.name] = out
    return UdfPlan(s.name, (up, port), spec, out)


def _check_udf_outputs(
    s: Step, consumed: set[tuple[str, str]], problems: list[str], unrouted: list[str]
) -> None:
    """A user-function step's main outputs must go somewhere; dead letters and unrouted
    readings are optional (counted, then dropped, when nothing reads them)."""
    spec: UdfSpec = s.params["spec"]
    if spec.op not in UDF_OPS:
        return
    where = f"step {s.name!r} ({spec.op})"
    for port in (*spec.ports(), "dead_letters"):
        if (s.name, port) in consumed:
            continue
        if port in OPTIONAL_PORTS:
            unrouted.append(f"{s.name}.{port}")
            continue
        what = "its readings go" if port == "readings" else f"route {port!r} goes"
        problems.append(f"{where}: {what} nowhere; add a .window(...) or .to(sink)")


def _check_enrich(
    s: Step, where: str, problems: list[str], fields_of: dict[str, tuple[str, ...] | None]
) -> EnrichPlan | None:
    """An enrich step: its arguments, and the table file read once now (it must exist and
    hold every requested field as a numeric column, none already a field of the stream)."""
    spec: EnrichSpec = s.params["spec"]
    ((up, port),) = s.inputs
    fields = fields_of.get(up)
    fields_of[s.name] = None
    bad = len(problems)
    problems.extend(f"{where}: {m}" for m in spec.problems())
    every = _duration(s.params["check_every"], "check_every", where, problems) or 0
    if spec.fields is not None:
        for f in spec.fields:
            if not isinstance(f, str) or not _NAME.match(f) or f in ("t", "key"):
                problems.append(f"{where}: fields= {f!r} is not a field name")
    if len(problems) > bad:
        return None
    try:
        table = load_table(spec.path, spec.key, spec.fields or ())
    except TableError as exc:
        problems.append(
            f"{where}: table {spec.path}: {exc}; fix the file or the step's key=/fields="
        )
        return None
    added = spec.fields if spec.fields is not None else tuple(table.columns)
    if not added:
        problems.append(
            f"{where}: table {spec.path} has no numeric column besides {spec.key!r}; "
            f"its text columns ({', '.join(table.text) or 'none'}) cannot be fields"
        )
    clash = [f for f in added if fields is not None and f in fields]
    if clash:
        problems.append(
            f"{where}: {', '.join(map(repr, clash))} already a field of the stream; "
            f"give fields=[...] without it or rename the table column"
        )
    if spec.missing == "default":
        given = dict(spec.defaults)
        lacking = [f for f in added if f not in given]
        extra = [f for f in given if f not in added]
        if lacking:
            problems.append(
                f"{where}: missing='default' needs a default for every added field; "
                f"add defaults for: {', '.join(lacking)}"
            )
        if extra:
            problems.append(f"{where}: defaults for {', '.join(extra)}: not an added field")
    if len(problems) > bad:
        return None
    out = None if fields is None else fields + tuple(added)
    fields_of[s.name] = out
    return EnrichPlan(s.name, (up, port), spec, tuple(added), out, every, table)


def _check_enrich_outputs(
    s: Step, consumed: set[tuple[str, str]], problems: list[str], unrouted: list[str]
) -> None:
    """An enrich step's readings must go somewhere; ``unmatched`` is optional."""
    spec: EnrichSpec = s.params["spec"]
    if spec.missing not in MISSING:
        return
    for port in spec.ports():
        if (s.name, port) in consumed:
            continue
        if port in OPTIONAL_PORTS:
            unrouted.append(f"{s.name}.{port}")
        else:
            problems.append(
                f"step {s.name!r} (enrich): its readings go nowhere; add a .window(...) or .to(sink)"
            )


def _check_limit_fields(
    det: Detector,
    fields: tuple[str, ...] | None,
    decision: Decision,
    where: str,
    problems: list[str],
) -> None:
    """``detect.limits`` naming fields as limits: they must be fields of the stream (e.g.
    added by ``enrich``), the detector the step's own (not an ensemble part) and the
    decision a threshold."""
    for part in parts_of(det) or ():
        if isinstance(part, Limits) and part.limit_fields():
            problems.append(
                f"{where}: detect.limits with field-named limits cannot be part of an "
                f"ensemble; give it its own detect step"
            )
    if not isinstance(det, Limits) or not det.limit_fields():
        return
    for f in det.limit_fields():
        if fields is not None and f not in fields:
            problems.append(
                f"{where}: detect.limits names field {f!r} as a limit; the stream has: "
                f"{', '.join(fields) or '(none)'} (add it with .enrich(...) or .derive(...))"
            )
    if decision.kind != "threshold":
        problems.append(
            f"{where}: detect.limits with field-named limits takes a detect.threshold(...) "
            f"decision, not {decision.kind}"
        )
