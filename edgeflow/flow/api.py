"""The user API: :class:`Flow` and the streams whose methods add steps to it.

Building a flow runs nothing and checks nothing; ``flow.plan()`` validates it
(:mod:`edgeflow.flow.validation`) and returns the :class:`~edgeflow.flow.plan.Plan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeflow.connectors.base import SinkSpec, SourceSpec
from edgeflow.flow.plan import Plan
from edgeflow.flow.steps import Step
from edgeflow.flow.validation import validate
from edgeflow.ops.agg import Agg
from edgeflow.ops.detect import Decision, Detector
from edgeflow.ops.downsample import DownsampleSpec
from edgeflow.ops.enrich import UNMATCHED, EnrichSpec
from edgeflow.ops.kernel import OPERATORS
from edgeflow.ops.udf import UNROUTED, UdfSpec
from edgeflow.ops.window import WindowSpec
from edgeflow.timeutil import Duration


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

    def operator(self, kind: str, *, name: str | None = None, **arguments: Any) -> ReadingStream:
        """Add a step running the registered operator ``kind`` (an
        :class:`~edgeflow.ops.kernel.Operator` class under :func:`~edgeflow.ops.kernel.register`)
        on this stream; ``arguments`` go to its constructor, and are checked by validation.
        Returns its ``readings`` stream (another port: ``ReadingStream(s.flow, s.step, port)``).
        A stream method for an operator is one line calling this."""
        cls = OPERATORS.get(kind)
        if cls is None:
            known = ", ".join(sorted(OPERATORS)) or "none"
            raise ValueError(f"no operator {kind!r} is registered (registered: {known})")
        step = self.flow._add(kind, name, [(self.step.name, self.port)], dict(arguments))
        port = "readings" if "readings" in cls.outputs else cls.outputs[0]
        return ReadingStream(self.flow, step, port)

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
    dead_letters: RecordStream

    def as_readings(self, *, time: str = "window_end", name: str | None = None) -> ReadingStream:
        """Window summaries as readings, one per window and key, so that they can be
        detected on, downsampled or windowed again: the fields are the aggregation columns
        (``rms_accel``, ``count``, ...), the time is the window's ``time`` column
        (``window_end`` or ``window_start``). Only a window step's summaries can be turned
        into readings."""
        step = self.flow._add("features", name, [(self.step.name, self.port)], {"time": time})
        return ReadingStream(self.flow, step, "readings")

    def rollup(
        self,
        every: Duration,
        *,
        fields: Sequence[str] = (),
        group_by: str | None = None,
        group: str = "all",
        group_sep: str | None = None,
        time: str = "window_start",
        lateness: Duration = 0,
        idle: Duration | None = None,
        quantiles: Sequence[float] = (50.0, 95.0, 99.0),
        min_keys: int = 1,
        name: str | None = None,
    ) -> RecordStream:
        """Combine mergeable summaries (``agg.mergeable(field)`` columns, from a window step,
        another rollup or a records source such as ``kafka.source(pattern=..., records=True)``)
        into one record per group and ``every`` (tumbling, aligned to the epoch).

        Counts, sums, sums of squares, min and max combine exactly, first/last by their
        times, means weight by count, percentiles come from the merged quantile sketches
        (within the sketch's relative accuracy); the output has the same mergeable columns, so
        a rollup of rollups is exact. ``group_by`` names the record column that picks the
        group (``group_sep``: only the part before the first separator, e.g. ``"line1"`` of
        ``"line1/m3"``); without it every record goes to the one group ``group``. Records with
        an ``edgeflow_id`` already merged into an open window are skipped, so duplicates change
        nothing. ``min_keys`` emits only windows to which at least that many distinct keys
        contributed (with ``fields=()``: a cross-machine correlation of, say, anomalies).
        ``.late`` is the stream of records that came after their rollup window closed.
        """
        step = self.flow._add(
            "rollup", name, [(self.step.name, self.port)],
            {"every": every, "fields": fields, "group_by": group_by, "group": group,
             "group_sep": group_sep, "time": time, "lateness": lateness, "idle": idle,
             "quantiles": quantiles, "min_keys": min_keys},
        )  # fmt: skip
        out = RecordStream(self.flow, step, "rollups")
        out.late = RecordStream(self.flow, step, "late")
        return out


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
        batch_max: int = 131_072,
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

    def records(
        self,
        spec: SourceSpec,
        *,
        name: str | None = None,
        batch_max: int = 131_072,
        batch_budget: Duration = "1ms",
    ) -> RecordStream:
        """Read records (not readings) from ``spec``: a source made to yield them, such as
        ``kafka.source(pattern="edgeflow\\.summary\\..*", records=True)`` reading what node
        flows published. Each record keeps its columns (window summaries with their
        mergeable columns and sketches, anomaly events...) plus ``edgeflow_id``,
        ``edgeflow_flow``, ``topic`` and ``t`` (event time, ns). Roll them up with
        :meth:`RecordStream.rollup` or send them to a sink; ``.dead_letters`` are the
        messages that were not records."""
        step = self._add("record_source", name, [], {
            "spec": spec, "key": "key", "time": "t", "lateness": 0, "fields": None,
            "batch_max": batch_max, "batch_budget": batch_budget,
        })  # fmt: skip
        out = RecordStream(self, step, "records")
        out.dead_letters = RecordStream(self, step, "dead_letters")
        return out

    def sink(self, spec: SinkSpec, *, name: str | None = None) -> SinkStep:
        """Declare a sink; streams are connected to it with ``stream.to(...)``."""
        return SinkStep(self._add("sink", name, [], {"spec": spec}))

    def plan(self) -> Plan:
        """Validate and return the plan; raises FlowValidationError listing every problem."""
        return validate(self)

    def validate(self) -> Plan:
        return self.plan()
