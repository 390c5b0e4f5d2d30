"""Validation: a flow's steps checked into a :class:`~edgeflow.flow.plan.Plan`.

Every problem is collected (not just the first): each names its step and what to change;
:func:`validate` raises :class:`~edgeflow.errors.FlowValidationError` listing them all.
Field checks follow the fields each step's output carries (derived and enriched fields
included); outputs nothing reads are either problems or listed as unrouted.

Every operator of every step (window, aggregation, reduction, detector, decision) is
checked through one method, ``problems()`` (:class:`~edgeflow.ops.args.Checked`): each bad
argument is one line naming the step, the argument, the value given and the valid range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeflow.connectors.base import SinkSpec, SourceSpec
from edgeflow.errors import FlowValidationError
from edgeflow.flow.plan import (
    DetectPlan,
    DownsamplePlan,
    EnrichPlan,
    FeaturesPlan,
    OperatorPlan,
    Plan,
    RollupPlan,
    SinkPlan,
    SourcePlan,
    UdfPlan,
    WindowPlan,
)
from edgeflow.flow.steps import NAME as _NAME
from edgeflow.flow.steps import OPTIONAL_PORTS, PORTS, Step, optional_port
from edgeflow.ops.agg import Agg
from edgeflow.ops.args import Arg, Checked
from edgeflow.ops.args import duration as duration_arg
from edgeflow.ops.detect import Decision, Detector, Limits
from edgeflow.ops.detect.base import parts_of
from edgeflow.ops.downsample import DownsampleSpec
from edgeflow.ops.enrich import MISSING, EnrichSpec, TableError, load_table
from edgeflow.ops.kernel import OPERATORS
from edgeflow.ops.udf import OPS as UDF_OPS
from edgeflow.ops.udf import UNROUTED, UdfSpec, sample_problems
from edgeflow.ops.window import WindowSpec
from edgeflow.timeutil import parse_duration

if TYPE_CHECKING:
    from edgeflow.flow.api import Flow


def validate(flow: Flow) -> Plan:
    """The plan of ``flow``; raises FlowValidationError listing every problem."""
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
    if not any(s.kind in ("source", "record_source") for s in flow.steps):
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
    operators: list[OperatorPlan] = []
    rollups: list[RollupPlan] = []
    origin: dict[str, str] = {}  # a user-function step's readings come from this step
    for s in flow.steps:
        if (s.kind in ("udf", "enrich") or s.kind in OPERATORS) and s.inputs:
            up = s.inputs[0][0]
            origin[s.name] = origin.get(up, up)
    for s in flow.steps:
        where = f"step {s.name!r} ({s.kind})"
        p = s.params
        if s.kind == "source":
            sources.append(_check_source(s, where, problems, fields_of))
        elif s.kind == "record_source":
            sources.append(_check_record_source(s, where, problems, fields_of))
        elif s.kind == "rollup":
            r = _check_rollup(s, where, problems, windows)
            if r is not None:
                rollups.append(r)
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
        elif s.kind in OPERATORS:
            o = _check_registered(s, where, problems, fields_of)
            if o is not None:
                operators.append(o)
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
            if optional_port(s.kind, port):
                unrouted.append(f"{s.name}.{port}")
            elif s.kind in OPERATORS:
                what = "its readings go" if port == "readings" else f"its {port!r} stream goes"
                problems.append(
                    f"step {s.name!r} ({s.kind}): {what} nowhere; add a .window(...) or .to(sink)"
                )
            elif s.kind in ("window", "downsample", "detect", "features", "rollup"):
                problems.append(
                    f"step {s.name!r} ({s.kind}): its records go nowhere; add .to(stdio.sink()) or another sink"
                )
            elif s.kind == "record_source" and port == "records":
                problems.append(
                    f"step {s.name!r} (records source): its records go nowhere; add a "
                    ".rollup(...) or .to(sink)"
                )
            elif s.kind == "source" and not any(i[0] == s.name for i in consumed):
                problems.append(
                    f"step {s.name!r} (source): its readings go nowhere; add a .window(...) or .to(sink)"
                )
    if problems:
        raise FlowValidationError(flow.name, problems)
    for src in sources:
        if src.records:
            continue
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
            inputs += [o.input[0] for o in operators]  # (steps after it may read any field)
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
        operators,
        rollups,
    )


def _check_registered(
    s: Step, where: str, problems: list[str], fields_of: dict[str, tuple[str, ...] | None]
) -> OperatorPlan | None:
    """A registered operator's step (edgeflow.ops.kernel.register): its kernel built from the
    step's arguments, the kernel's own ``problems()``, and every field it ``reads`` a field
    of the input stream (when the input's fields are known)."""
    ((up, port),) = s.inputs
    fields = fields_of.get(up)
    fields_of[s.name] = None
    try:
        kernel = OPERATORS[s.kind](s.name, **s.params)
    except Exception as exc:  # (a constructor should not raise; say what it raised)
        problems.append(f"{where}: the arguments were refused: {type(exc).__name__}: {exc}")
        return None
    bad = len(problems)
    problems.extend(f"{where}: {m}" for m in kernel.problems())
    for f in kernel.reads or ():
        _check_field(f, fields, where, problems)
    if len(problems) > bad:
        return None
    out = kernel.out_fields(fields)
    fields_of[s.name] = out
    return OperatorPlan(s.name, s.kind, (up, port), dict(s.params), kernel, out)


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
    return FeaturesPlan(
        s.name, (up, port), time, tuple(c for a in w.aggs for c in a.number_columns)
    )


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


def _check_record_source(
    s: Step, where: str, problems: list[str], fields_of: dict[str, tuple[str, ...] | None]
) -> SourcePlan:
    """``flow.records(spec)``: a source that yields records (``spec.yields_records``)."""
    p = s.params
    spec = p["spec"]
    fields_of[s.name] = None
    where = f"step {s.name!r} (records source)"
    if not isinstance(spec, SourceSpec) or not getattr(spec, "yields_records", False):
        problems.append(
            f"{where}: {spec!r} does not yield records; use e.g. "
            "flow.records(kafka.source(pattern='edgeflow\\.summary\\..*', records=True)), or "
            "flow.source(...) for readings"
        )
        return SourcePlan(s.name, spec, "key", "t", None, 0, 1, 0, records=True)
    problems.extend(f"{where}: {m}" for m in spec.problems())
    bmax, budget = _batching(p, where, problems)
    return SourcePlan(s.name, spec, "key", "t", None, 0, bmax, budget, records=True)


def _batching(p: dict[str, Any], where: str, problems: list[str]) -> tuple[int, int]:
    """A source's ``batch_max`` and ``batch_budget`` (ns), checked (1 and 0 when refused)."""
    budget = _duration(p["batch_budget"], "batch_budget", where, problems) or 0
    bmax = p["batch_max"]
    why = Arg("batch_max", "int", 1, 1 << 24).problem(bmax)
    if why is not None:
        problems.append(f"{where}: {why}")
        bmax = 1
    return bmax, budget


#: the streams a rollup may read: summaries (a window's), records (a records source's), rollups
_SUMMARY_PORTS = ("windows", "records", "rollups")


def _check_rollup(
    s: Step, where: str, problems: list[str], windows: list[WindowPlan]
) -> RollupPlan | None:
    """A rollup step: its arguments (the spec's ``problems()``), its input (summaries) and,
    reading a window step, that the window emits the mergeable columns of each field."""
    from edgeflow.ops.rollup import RollupSpec

    p = s.params
    ((up, port),) = s.inputs
    if port not in _SUMMARY_PORTS:
        problems.append(
            f"{where}: it reads {up}.{port}, which are not summaries; roll up a window step's "
            "records (with agg.mergeable(field)), another rollup, or flow.records(...)"
        )
        return None
    fields = p["fields"]
    if isinstance(fields, str):
        fields = (fields,)
    if not isinstance(fields, list | tuple) or not all(isinstance(f, str) for f in fields):
        problems.append(f"{where}: fields={fields!r}; give field names, e.g. fields=['accel']")
        return None
    quantiles = p["quantiles"]
    if not isinstance(quantiles, list | tuple):
        problems.append(f"{where}: quantiles={quantiles!r}; give percents, e.g. (50, 95, 99)")
        return None
    before = len(problems)
    every = _duration(p["every"], "every", where, problems) or 0
    every_refused = len(problems) > before  # (then the spec's own every= line is not repeated)
    lateness = _duration(p["lateness"], "lateness", where, problems) or 0
    idle = _duration(p["idle"], "idle", where, problems, allow_none=True)
    try:
        spec = RollupSpec(
            every_ns=every,
            fields=tuple(fields),
            group_by=p["group_by"],
            group=p["group"],
            group_sep=p["group_sep"],
            time=p["time"],
            lateness_ns=lateness,
            idle_ns=idle,
            quantiles=tuple(quantiles),
            min_keys=p["min_keys"],
        )
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return None
    problems.extend(
        f"{where}: {m}"
        for m in spec.problems()
        if not (every_refused and m.startswith("rollup: every="))
    )
    window = next((w for w in windows if w.name == up), None)
    if window is not None:
        have = {a.field for a in window.aggs if a.func == "mergeable"}
        for f in spec.fields:
            if f not in have:
                problems.append(
                    f"{where}: the window step {up!r} has no mergeable summary of {f!r}; add "
                    f"agg.mergeable({f!r}) to it"
                )
    return RollupPlan(s.name, (up, port), spec)


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
    if getattr(spec, "yields_records", False):
        problems.append(
            f"{where}: this source yields records, not readings; read it with "
            "flow.records(...) (and roll its summaries up with .rollup(...))"
        )
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
    bmax, budget = _batching(p, where, problems)
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
        for column in a.output_names:
            if column in names:
                problems.append(
                    f"{where}: two aggregations produce the column {column!r}; remove one"
                )
            names.add(column)
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
    for side in ("low", "high"):
        f = getattr(det, side)
        if isinstance(f, str) and fields is not None and f not in fields:
            problems.append(
                f"{where}: detect.limits {side}={f!r} names no field of the stream (it has: "
                f"{', '.join(fields) or '(none)'}); give a number, or add the field with "
                ".enrich(...) or .derive(...)"
            )
    if decision.kind != "threshold":
        problems.append(
            f"{where}: detect.limits with field-named limits takes a detect.threshold(...) "
            f"decision, not {decision.kind}"
        )
