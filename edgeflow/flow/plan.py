"""The validated plan a flow compiles to: one dataclass per step kind, ``to_dict`` and ``describe``.

Build a flow (:mod:`edgeflow.flow.api`), then ``flow.plan()`` checks it
(:mod:`edgeflow.flow.validation`) and returns a :class:`Plan` (or raises
:class:`~edgeflow.errors.FlowValidationError` listing every problem, each naming its
step and what to change). The plan prints, serialises to JSON and is what the engine
compiles; building it runs nothing.

The user API is importable from here too (``from edgeflow.flow.plan import Flow``), as before
the split; it is loaded on first use because it imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeflow.connectors.base import SinkSpec, SourceSpec
from edgeflow.flow.steps import OPTIONAL_PORTS as OPTIONAL_PORTS
from edgeflow.flow.steps import PORTS as PORTS
from edgeflow.flow.steps import Step as Step
from edgeflow.ops.agg import Agg
from edgeflow.ops.detect import Decision, Detector
from edgeflow.ops.downsample import DownsampleSpec
from edgeflow.ops.enrich import EnrichSpec, Table
from edgeflow.ops.kernel import Operator
from edgeflow.ops.udf import UdfSpec
from edgeflow.ops.window import ResolvedWindow, WindowSpec
from edgeflow.timeutil import format_duration

if TYPE_CHECKING:
    from edgeflow.flow.api import EnrichedStream as EnrichedStream
    from edgeflow.flow.api import Flow as Flow
    from edgeflow.flow.api import ReadingStream as ReadingStream
    from edgeflow.flow.api import RecordStream as RecordStream
    from edgeflow.flow.api import Routes as Routes
    from edgeflow.flow.api import SinkStep as SinkStep

_API = ("EnrichedStream", "Flow", "ReadingStream", "RecordStream", "Routes", "SinkStep")


def __getattr__(name: str) -> Any:
    """``Flow`` and the stream classes, from :mod:`edgeflow.flow.api` (the old import path)."""
    if name in _API:
        from edgeflow.flow import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    #: a records source (``flow.records``): it yields RecordBatch items on its ``records``
    #: port instead of readings
    records: bool = False


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
class OperatorPlan:
    """A registered operator's step (:class:`~edgeflow.ops.kernel.Operator`): its kind, the
    stream method's arguments (the engine builds its kernel from them) and the kernel
    validation built and checked."""

    name: str
    kind: str
    input: tuple[str, str]
    arguments: dict[str, Any]
    kernel: Operator[Any] = field(repr=False, compare=False)
    #: the output readings' fields (None: known only from the data)
    fields: tuple[str, ...] | None = None


@dataclass
class RollupPlan:
    """A rollup step (see edgeflow/ops/rollup.py): mergeable summaries combined per group
    and tumbling window. ``spec`` is the kernel's :class:`~edgeflow.ops.rollup.RollupSpec`."""

    name: str
    input: tuple[str, str]
    spec: Any


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
    #: registered operators' steps (edgeflow.ops.kernel.register)
    operators: list[OperatorPlan] = field(default_factory=list)
    #: rollup steps (mergeable summaries combined per group)
    rollups: list[RollupPlan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        for s in self.sources:
            if s.records:
                steps.append({
                    "name": s.name, "kind": "record_source", "connector": s.spec.describe(),
                    "outputs": [f"{s.name}.records", f"{s.name}.dead_letters"],
                })  # fmt: skip
                continue
            steps.append({
                "name": s.name, "kind": "source", "connector": s.spec.describe(), "key": s.key,
                "time": s.time, "fields": list(s.fields) if s.fields is not None else None,
                "lateness": format_duration(s.lateness_ns),
                "outputs": [f"{s.name}.readings", f"{s.name}.dead_letters"],
            })  # fmt: skip
        for r in self.rollups:
            steps.append({
                "name": r.name, "kind": "rollup", "input": ".".join(r.input),
                "rollup": r.spec.to_dict(), "outputs": [f"{r.name}.rollups", f"{r.name}.late"],
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
        for o in self.operators:
            steps.append({
                "name": o.name, "kind": o.kind, "input": ".".join(o.input),
                "arguments": o.kernel.describe(),
                "fields": list(o.fields) if o.fields is not None else None,
                "outputs": [f"{o.name}.{p}" for p in o.kernel.outputs],
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
            if s.records:
                lines.append(f"  source {s.name}: {s.spec.describe()['kind']} records")
                continue
            fields = ", ".join(s.fields) if s.fields is not None else "(from the data)"
            lines.append(
                f"  source {s.name}: {s.spec.describe()['kind']} key={s.key} time={s.time} fields={fields} lateness={format_duration(s.lateness_ns)}"
            )
        for w in self.windows:
            aggs = ", ".join(a.output_name for a in w.aggs)
            lines.append(
                f"  window {w.name}: {w.spec.kind} {w.spec.to_dict()} <- {'.'.join(w.input)} -> [{aggs}]"
            )
        for r in self.rollups:
            what = ", ".join(r.spec.fields) or "records"
            by = r.spec.group_by or repr(r.spec.group)
            lines.append(
                f"  rollup {r.name}: {what} per {by} every {format_duration(r.spec.every_ns)} "
                f"<- {'.'.join(r.input)}"
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
        for o in self.operators:
            args = ", ".join(f"{k}={v!r}" for k, v in o.kernel.describe().items())
            fields = ", ".join(o.fields) if o.fields is not None else "(from the data)"
            lines.append(
                f"  {o.kind:<6} {o.name}: {args} <- {'.'.join(o.input)} -> fields {fields}"
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
