"""Compile a :class:`~edgeflow.flow.plan.Plan` into a bytewax dataflow and run it.

This module is the only one in edgeflow that imports bytewax. Mapping:

* each source step -> ``op.input`` over a ``FixedPartitionedSource`` (one bytewax partition
  per connector partition, resumed from its snapshot), then a branch into readings and
  dead letters; readings are split by key shard into ``(shard, Batch)`` items;
* each window step -> ``op.stateful_batch`` keyed by shard, running the numpy
  :class:`~edgeflow.ops.window_kernel.WindowKernel`; every kernel implements
  :class:`~edgeflow.ops.kernel.Kernel`, and snapshots are the kernel's own (``kernel.snapshot``);
* each downsample or detect step -> ``op.stateful_batch`` keyed by shard; except a detect
  step that reads a source whose partitions each own their keys (simulators, one-partition
  sources): it runs inside that source's partitions, its state part of the source's
  snapshot, so an alert leaves the source step with the reading that raised it;
* each user-function step (derive, filter, map, route, apply) -> a stateless
  ``op.flat_map_value`` running :class:`~edgeflow.ops.udf.UdfKernel` on each shard's batch,
  then one ``op.filter_map_value`` per output stream (readings or routes, dead letters);
* each enrich step -> a stateless ``op.flat_map_value`` running
  :class:`~edgeflow.ops.enrich.EnrichKernel` (the table file watched and reloaded in the
  background), then one ``op.filter_map_value`` per output stream (readings, unmatched);
* each registered operator's step (:func:`edgeflow.ops.kernel.register`) -> ``op.stateful_batch``
  keyed by shard running its kernel (built from the registry: ``process``, ``finish`` at the
  end of input, ``snapshot``/``restore``), then one ``op.filter_map_value`` per output port;
* each sink step -> ``op.output`` over a ``FixedPartitionedSink`` (stateful sinks, resumed
  from their position) or a ``DynamicSink`` (stateless ones).

Recovery uses bytewax's SQLite partitions in ``<state_dir>/recovery``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from edgeflow.batch import Batch, RecordBatch, window_readings
from edgeflow.connectors.base import (
    SinkContext,
    SinkPartition,
    SinkSpec,
    SourceContext,
    SourcePartition,
)
from edgeflow.connectors.connection_state import CONNECTIONS
from edgeflow.engine.counters import COUNTERS
from edgeflow.engine.engine_output import closing_part, in_step
from edgeflow.engine.options import RunOptions
from edgeflow.engine.shard import Sharder
from edgeflow.flow.plan import (
    DetectPlan,
    EnrichPlan,
    FeaturesPlan,
    OperatorPlan,
    Plan,
    RollupPlan,
    SourcePlan,
    UdfPlan,
    WindowPlan,
)
from edgeflow.ops.detect.kernel import DetectKernel
from edgeflow.ops.detect.limits import FieldLimitsKernel, Limits
from edgeflow.ops.downsample import DownsampleKernel
from edgeflow.ops.enrich import EnrichKernel, TableWatcher
from edgeflow.ops.kernel import OPERATORS, Emitted, Operator
from edgeflow.ops.udf import UNROUTED, UdfKernel
from edgeflow.ops.window_kernel import StepOutput, WindowKernel
from edgeflow.timeutil import now_ns


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


_ACTIVE: list[_Control] = []


def request_stop() -> None:
    """Stop the running flow(s) of this process gracefully: sources end, state is snapshotted."""
    for control in _ACTIVE:
        control.deadline_ns = now_ns()


class _Control:
    """Shared by all workers of a run: the stop deadline and whether to flush at the end."""

    def __init__(self, deadline_ns: int | None, resumable: bool) -> None:
        self.deadline_ns = deadline_ns
        self.resumable = resumable
        self.stopped_by_deadline = threading.Event()

    def flush_on_eof(self) -> bool:
        # Stopping a resumable run keeps open windows in the snapshot for the next run;
        # end of input (or a run that cannot resume) closes them.
        return not (self.stopped_by_deadline.is_set() and self.resumable)


class _SourcePart(StatefulSourcePartition[Any, Any]):
    """A connector partition. Detect steps fused into the source (see :func:`fusable`) run
    here, on each batch as it is read, and their state is part of the source's snapshot."""

    def __init__(
        self,
        part: SourcePartition,
        control: _Control,
        step: str,
        fused: list[tuple[AnyDetectKernel, dict[str, Any]]],
    ) -> None:
        self.part = part
        self.control = control
        self.step = step
        self.fused = fused

    def next_batch(self) -> list[Any]:
        dl = self.control.deadline_ns
        if dl is not None and now_ns() >= dl:
            self.control.stopped_by_deadline.set()
            raise StopIteration
        before = self.part.bytes_read
        with in_step(self.step):
            items = self.part.next_batch()
        COUNTERS.add("bytes_in", self.part.bytes_read - before)
        alerts: list[Any] = []
        for it in items:
            if isinstance(it, Batch):
                COUNTERS.add("readings_in", len(it))
                for kernel, state in self.fused:
                    COUNTERS.add("anomalies_in", len(it))
                    rb = kernel.step_batch(state, it)
                    if rb is not None:
                        COUNTERS.add("anomalies", rb.n)
                        alerts.append(rb)
            elif _is_source_dead_letter(it):
                COUNTERS.add("dead_letters", it.n)
            else:  # a records source's records
                COUNTERS.add("records_in", it.n)
        return items + alerts if alerts else items

    def next_awake(self) -> datetime | None:
        ns = self.part.next_awake()
        if ns is None:
            return None  # "as soon as possible": the deadline only bounds a later wake-up
        dl = self.control.deadline_ns
        return _dt(ns if dl is None else min(ns, dl))

    def snapshot(self) -> Any:
        if not self.fused:
            return self.part.snapshot()
        states = [kernel.snapshot(st) for kernel, st in self.fused]
        return {"source": self.part.snapshot(), "detect": states}

    def close(self) -> None:
        with closing_part():
            self.part.close()


def fusable(plan: Plan) -> dict[str, list[DetectPlan]]:
    """Detect steps that read a source's readings directly, when the source keeps each key in
    one partition: they run inside the source step (per partition), so an alert leaves the
    source with the reading that raised it instead of crossing to a separate stateful step
    (bytewax activates each stateful step at most once a millisecond)."""
    out: dict[str, list[DetectPlan]] = {}
    for src in plan.sources:
        if src.spec.keys_partitioned():
            out[src.name] = [a for a in plan.detects if a.input == (src.name, "readings")]
    return out


class _Source(FixedPartitionedSource[Any, Any]):
    def __init__(
        self, plan: Plan, src: SourcePlan, control: _Control, fused: list[DetectPlan]
    ) -> None:
        self.src = src
        self.control = control
        self.fused = fused
        self.ctx = SourceContext(
            plan.name,
            src.name,
            src.key,
            src.time,
            src.read_fields,
            src.batch_max,
            src.batch_budget_ns,
            declared=src.fields,
        )

    def list_parts(self) -> list[str]:
        return self.src.spec.partitions()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _SourcePart:
        kernels = [_detect_kernel(a) for a in self.fused]
        if self.fused:
            resume = None if resume_state is None else resume_state["source"]
            states = (
                [k.init() for k in kernels]
                if resume_state is None
                else [
                    k.restore(b, now_ns())
                    for k, b in zip(kernels, resume_state["detect"], strict=True)
                ]
            )
        else:
            resume, states = resume_state, []
        return _SourcePart(
            self.src.spec.open(for_part, resume, self.ctx),
            self.control,
            self.src.name,
            list(zip(kernels, states, strict=True)),
        )


AnyDetectKernel = DetectKernel | FieldLimitsKernel

#: the counter a reducing kernel's records add to, by its output port
_COUNTER_OF = {"trend": "trend_points", "anomalies": "anomalies"}


def _detect_kernel(a: DetectPlan) -> AnyDetectKernel:
    if isinstance(a.detector, Limits) and a.detector.limit_fields():  # per-reading limits
        return FieldLimitsKernel(a.name, a.field, a.detector, a.decision)
    return DetectKernel(a.name, a.field, a.detector, a.decision, a.learn_anomalies)


class _WindowLogic(StatefulBatchLogic[Batch, tuple[str, RecordBatch], bytes]):
    def __init__(self, kernel: WindowKernel, resume: bytes | None, control: _Control) -> None:
        self.kernel = kernel
        self.control = control
        self.state = kernel.init() if resume is None else kernel.restore(resume, now_ns())

    @staticmethod
    def _emit(res: StepOutput, out: list[tuple[str, RecordBatch]]) -> None:
        if res.windows is not None:
            COUNTERS.add("windows_out", res.windows.n)
            out.append(("windows", res.windows))
        if res.late is not None:
            COUNTERS.add("late", res.late.n)
            out.append(("late", res.late))

    def on_batch(self, values: list[Batch]) -> tuple[list[tuple[str, RecordBatch]], bool]:
        out: list[tuple[str, RecordBatch]] = []
        now = now_ns()
        for b in values:
            self._emit(self.kernel.step_batch(self.state, b, now), out)
        wm = self.kernel.newest_watermark(self.state, now)
        if wm is not None:
            COUNTERS.raise_to(f"watermark.{self.kernel.step}", wm)
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[tuple[str, RecordBatch]], bool]:
        out: list[tuple[str, RecordBatch]] = []
        self._emit(self.kernel.on_time(self.state, now_ns()), out)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, RecordBatch]], bool]:
        out: list[tuple[str, RecordBatch]] = []
        if self.control.flush_on_eof():
            self._emit(self.kernel.flush(self.state), out)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        ns = self.kernel.next_wakeup(self.state)
        return None if ns is None else _dt(ns)

    def snapshot(self) -> bytes:
        return self.kernel.snapshot(self.state)


class _ReduceLogic(StatefulBatchLogic[Batch, RecordBatch, bytes]):
    """Downsampling and detection kernels: per-shard state, records out as they come."""

    def __init__(
        self, kernel: DownsampleKernel | AnyDetectKernel, resume: bytes | None, control: _Control
    ) -> None:
        self.kernel = kernel
        self.control = control
        self.state = kernel.init() if resume is None else kernel.restore(resume, now_ns())
        self.counter = _COUNTER_OF[kernel.outputs[0]]

    def _out(self, rb: RecordBatch | None) -> list[RecordBatch]:
        if rb is None:
            return []
        COUNTERS.add(self.counter, rb.n)
        return [rb]

    def on_batch(self, values: list[Batch]) -> tuple[list[RecordBatch], bool]:
        out: list[RecordBatch] = []
        for b in values:
            COUNTERS.add(f"{self.counter}_in", len(b))
            out.extend(self._out(self.kernel.step_batch(self.state, b)))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[RecordBatch], bool]:
        if self.control.flush_on_eof():
            return self._out(self.kernel.flush(self.state)), StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self.kernel.snapshot(self.state)


class _OperatorLogic(StatefulBatchLogic[Batch, tuple[str, Any], bytes]):
    """A registered operator's kernel on one shard: ``(port, batch)`` items out."""

    def __init__(self, kernel: Operator[Any], resume: bytes | None, control: _Control) -> None:
        self.kernel = kernel
        self.control = control
        with in_step(kernel.step):
            self.state = kernel.init() if resume is None else kernel.restore(resume, now_ns())

    def on_batch(self, values: list[Batch]) -> tuple[list[tuple[str, Any]], bool]:
        out: Emitted = []
        now = now_ns()
        with in_step(self.kernel.step):
            for b in values:
                out.extend(self.kernel.process(self.state, b, now))
        return self._counted(out), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, Any]], bool]:
        if not self.control.flush_on_eof():
            return [], StatefulBatchLogic.RETAIN
        with in_step(self.kernel.step):
            out = self.kernel.finish(self.state)
        return self._counted(out), StatefulBatchLogic.RETAIN

    def _counted(self, out: Emitted) -> list[tuple[str, Any]]:
        """``out``, its other ports' items counted (``<port>.<step>``, as enrich's unmatched):
        an optional port nobody reads is counted, then dropped."""
        for port, x in out:
            if port != "readings":
                COUNTERS.add(f"{port}.{self.kernel.step}", len(x) if isinstance(x, Batch) else x.n)
        return list(out)

    def snapshot(self) -> bytes:
        with in_step(self.kernel.step):
            return self.kernel.snapshot(self.state)


def _operator(
    o: OperatorPlan, up: Stream[Any], control: _Control
) -> dict[tuple[str, str], Stream[Any]]:
    kernel = OPERATORS[o.kind](o.name, **o.arguments)

    def build(resume: bytes | None) -> _OperatorLogic:
        return _OperatorLogic(kernel, resume, control)

    tagged = op.stateful_batch(o.name, up, build)
    return {
        (o.name, port): op.filter_map_value(f"{o.name}__{port}", tagged, _port_of(port))
        for port in kernel.outputs
    }


def _any_as_records(step: str) -> Callable[[Batch | RecordBatch], RecordBatch]:
    def convert(b: Batch | RecordBatch) -> RecordBatch:
        return _readings_as_records(step, b) if isinstance(b, Batch) else b

    return convert


def _reduce_builder(
    kernel: DownsampleKernel | AnyDetectKernel, control: _Control
) -> Callable[[bytes | None], _ReduceLogic]:
    def build(resume: bytes | None) -> _ReduceLogic:
        return _ReduceLogic(kernel, resume, control)

    return build


class _StatefulSinkPart(StatefulSinkPartition[RecordBatch, Any]):
    def __init__(self, part: SinkPartition, name: str) -> None:
        self.part = part
        self.name = name

    def write_batch(self, values: list[RecordBatch]) -> None:
        before = self.part.bytes_written
        with in_step(self.name):
            self.part.write(values)
        COUNTERS.add(f"records_to.{self.name}", sum(v.n for v in values))
        COUNTERS.add(f"bytes_to.{self.name}", self.part.bytes_written - before)

    def snapshot(self) -> Any:
        with in_step(self.name):
            return self.part.snapshot()

    def close(self) -> None:
        with closing_part():
            self.part.close()


class _StatefulSink(FixedPartitionedSink[RecordBatch, Any]):
    def __init__(self, spec: SinkSpec, ctx: SinkContext) -> None:
        self.spec = spec
        self.ctx = ctx

    def list_parts(self) -> list[str]:
        return self.spec.partitions()

    def part_fn(self, item_key: str) -> int:
        return 0 if len(self.spec.partitions()) == 1 else super().part_fn(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StatefulSinkPart:
        with in_step(self.ctx.step):
            part = self.spec.open(for_part, resume_state, self.ctx)
        return _StatefulSinkPart(part, self.ctx.step)


class _StatelessSinkPart(StatelessSinkPartition[tuple[str, RecordBatch]]):
    def __init__(self, part: SinkPartition, name: str) -> None:
        self.part = part
        self.name = name

    def write_batch(self, items: list[tuple[str, RecordBatch]]) -> None:
        values = [v for _, v in items]
        before = self.part.bytes_written
        with in_step(self.name):
            self.part.write(values)
        COUNTERS.add(f"records_to.{self.name}", sum(v.n for v in values))
        COUNTERS.add(f"bytes_to.{self.name}", self.part.bytes_written - before)

    def close(self) -> None:
        with closing_part():
            self.part.close()


class _StatelessSink(DynamicSink[tuple[str, RecordBatch]]):
    def __init__(self, spec: SinkSpec, ctx: SinkContext) -> None:
        self.spec = spec
        self.ctx = ctx

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StatelessSinkPart:
        return _StatelessSinkPart(self.spec.open(str(worker_index), None, self.ctx), self.ctx.step)


def _readings_as_records(step: str, b: Batch) -> RecordBatch:
    cols: dict[str, Any] = {"key": b.key_array().tolist(), "t": b.t}
    for j, f in enumerate(b.fields):
        cols[f] = b.values[j]
    return RecordBatch("reading", step, cols, len(b), ("key", "t"))


def _as_records(step: str) -> Callable[[Batch], RecordBatch]:
    def convert(b: Batch) -> RecordBatch:
        return _readings_as_records(step, b)

    return convert


def _features(f: FeaturesPlan) -> Callable[[RecordBatch], Batch]:
    def convert(rb: RecordBatch) -> Batch:
        return window_readings(rb, f.time, f.fields)

    return convert


def _of_step(step: str) -> Callable[[RecordBatch], bool]:
    def test(rb: RecordBatch) -> bool:
        return rb.step == step

    return test


def _constant(key: str) -> Callable[[Any], str]:
    def const(_: Any) -> str:
        return key

    return const


def build_dataflow(plan: Plan, control: _Control, state_dir: Path | None = None) -> Dataflow:
    flow = Dataflow(plan.name)
    streams: dict[tuple[str, str], Stream[Any]] = {}
    fused = fusable(plan)
    for src in plan.sources:
        if src.records:
            streams.update(_record_source(plan, src, flow, control))
            continue
        mine = fused.get(src.name, [])
        raw = op.input(src.name, flow, _Source(plan, src, control, mine))
        if mine:  # alerts of the detect steps fused into this source leave here
            kinds = op.branch(
                f"{src.name}__split_alerts",
                raw,
                lambda x: not (isinstance(x, RecordBatch) and x.kind == "anomaly"),
            )
            raw = kinds.trues
            for a in mine:
                mine_only = op.filter(f"{a.name}__fused", kinds.falses, _of_step(a.name))
                streams[(a.name, "anomalies")] = op.key_on(
                    f"{a.name}__key", mine_only, _constant(a.name)
                )
        parts = op.branch(f"{src.name}__split_kinds", raw, lambda x: isinstance(x, Batch))
        readers = [w.input for w in plan.windows] + [d.input for d in plan.downsamples]
        readers += [a.input for a in plan.detects if a not in mine]
        readers += [i for k in plan.sinks for i in k.inputs] + [u.input for u in plan.udfs]
        readers += [e.input for e in plan.enrichments] + [o.input for o in plan.operators]
        if (src.name, "readings") in readers:  # (all detection fused: nothing to shard)
            sharder = Sharder(plan.shards)
            streams[(src.name, "readings")] = op.flat_map(
                f"{src.name}__shard", parts.trues, sharder.split
            )
        streams[(src.name, "dead_letters")] = op.key_on(
            f"{src.name}__dl_key", parts.falses, lambda _: "dead_letters"
        )
    # steps in declaration order: a window may read the readings a features step makes
    by_name: dict[str, WindowPlan | FeaturesPlan | UdfPlan | EnrichPlan | OperatorPlan | RollupPlan]
    by_name = {w.name: w for w in plan.windows}
    by_name |= {f.name: f for f in plan.features} | {u.name: u for u in plan.udfs}
    by_name |= {e.name: e for e in plan.enrichments} | {o.name: o for o in plan.operators}
    by_name |= {r.name: r for r in plan.rollups}
    for name in plan.order:
        w = by_name.get(name)
        if isinstance(w, RollupPlan):
            streams.update(_rollup(w, streams[w.input], control, plan.shards))
        elif isinstance(w, OperatorPlan):
            streams.update(_operator(w, streams[w.input], control))
        elif isinstance(w, EnrichPlan):
            streams.update(_enrich(w, streams[w.input]))
        elif isinstance(w, UdfPlan):
            streams.update(_udf(w, streams[w.input], plan.unrouted, plan.shards))
        elif isinstance(w, WindowPlan):
            streams.update(_window(w, streams[w.input], control))
        elif isinstance(w, FeaturesPlan):
            streams[(w.name, "readings")] = op.map_value(
                f"{w.name}__as_readings", streams[w.input], _features(w)
            )
    for d in plan.downsamples:
        ds_kernel = DownsampleKernel(d.name, d.spec)
        streams[(d.name, "trend")] = op.stateful_batch(
            d.name, streams[d.input], _reduce_builder(ds_kernel, control)
        )
    for a in plan.detects:
        if (a.name, "anomalies") in streams:
            continue  # fused into its source
        streams[(a.name, "anomalies")] = op.stateful_batch(
            a.name, streams[a.input], _reduce_builder(_detect_kernel(a), control)
        )
    udf_readings = {(u.name, p) for u in plan.udfs for p in u.spec.ports()}
    udf_readings |= {(e.name, p) for e in plan.enrichments for p in e.spec.ports()}
    operator_ports = {(o.name, p) for o in plan.operators for p in o.kernel.outputs}
    for k in plan.sinks:
        ups = []
        for i, (up_step, up_port) in enumerate(k.inputs):
            s = streams[(up_step, up_port)]
            if (up_step, up_port) in operator_ports:  # readings or records, by item
                s = op.map_value(f"{k.name}__as_records_{i}", s, _any_as_records(up_step))
            elif up_port == "readings" or (up_step, up_port) in udf_readings:
                s = op.map_value(f"{k.name}__as_records_{i}", s, _as_records(up_step))
            ups.append(s)
        merged = ups[0] if len(ups) == 1 else op.merge(f"{k.name}__merge", *ups)
        ctx = SinkContext(plan.name, k.name, plan.version, state_dir)
        if k.spec.stateful:
            op.output(k.name, merged, _StatefulSink(k.spec, ctx))
        else:
            op.output(k.name, merged, _StatelessSink(k.spec, ctx))
    for ref in plan.unrouted:  # counted in the kernels/sources; drained here
        step, port = ref.split(".", 1)
        unrouted = streams.get((step, port))
        if unrouted is not None:
            op.inspect(f"{step}__{port}__unrouted", unrouted, lambda *_: None)
    return flow


def _run_udf(kernel: UdfKernel, tagged: bool) -> Callable[[Batch], list[Any]]:
    """The kernel on one batch: ``(port, batch)`` items (``tagged``) or, for a one-output
    step whose dead letters nobody reads, just the output batches (dead letters counted)."""
    errors = f"udf_errors.{kernel.step}"

    def run(b: Batch) -> list[Any]:
        with in_step(kernel.step):
            batches, dead = kernel.step_batch(b)
        out: list[Any] = list(batches) if tagged else [x for _, x in batches]
        for port, x in batches:
            if port == UNROUTED:
                COUNTERS.add(f"unrouted.{kernel.step}", len(x))
        if dead is not None:
            COUNTERS.add("dead_letters", dead.n)
            COUNTERS.add(errors, dead.n)
            if tagged:
                out.append(("dead_letters", dead))
        return out

    return run


def _port_of(port: str) -> Callable[[tuple[str, Any]], Any]:
    def pick(item: tuple[str, Any]) -> Any:
        return item[1] if item[0] == port else None

    return pick


def _reshard(sharder: Sharder) -> Callable[[tuple[str, Batch]], list[tuple[str, Batch]]]:
    def split(item: tuple[str, Batch]) -> list[tuple[str, Batch]]:
        return sharder.split(item[1])

    return split


def _udf(
    u: UdfPlan, up: Stream[Any], unrouted: list[str], shards: int
) -> dict[tuple[str, str], Stream[Any]]:
    kernel = UdfKernel(u.name, u.spec)
    if u.spec.ports() == ("readings",) and f"{u.name}.dead_letters" in unrouted:
        out = {(u.name, "readings"): op.flat_map_value(u.name, up, _run_udf(kernel, False))}
    else:
        tagged = op.flat_map_value(u.name, up, _run_udf(kernel, True))
        out = {
            (u.name, port): op.filter_map_value(f"{u.name}__{port}", tagged, _port_of(port))
            for port in (*u.spec.ports(), "dead_letters")
        }
    if u.spec.op == "apply":  # a per-record function may change keys: shard them again
        readings = out[(u.name, "readings")]
        out[(u.name, "readings")] = op.flat_map(
            f"{u.name}__reshard", readings, _reshard(Sharder(shards))
        )
    return out


def _run_enrich(kernel: EnrichKernel) -> Callable[[Batch], list[tuple[str, Batch]]]:
    """The join on one batch: ``(port, batch)`` items. A table file that became unusable
    is one error line on stderr per broken version (the last good table stays in use)."""

    def run(b: Batch) -> list[tuple[str, Batch]]:
        with in_step(kernel.step):
            out = kernel.step_batch(b)
        for why in kernel.watcher.take_errors():
            COUNTERS.add(f"enrich_table_errors.{kernel.step}", 1)
            print(
                f"step {kernel.step!r} (enrich): table {kernel.spec.path}: {why}; "
                f"still using the last good table ({len(kernel.watcher.table)} keys) - fix the file",
                file=sys.stderr,
                flush=True,
            )
        for port, x in out:
            if port != "readings":
                COUNTERS.add(f"{port}.{kernel.step}", len(x))
        return out

    return run


def _enrich(e: EnrichPlan, up: Stream[Any]) -> dict[tuple[str, str], Stream[Any]]:
    # the table read by validation; the first batch checks the file again
    watcher = TableWatcher(Path(e.spec.path), e.spec.key, e.added, e.check_every_ns, e.table)
    kernel = EnrichKernel(e.name, e.spec, e.added, watcher)
    tagged = op.flat_map_value(e.name, up, _run_enrich(kernel))
    return {
        (e.name, port): op.filter_map_value(f"{e.name}__{port}", tagged, _port_of(port))
        for port in e.spec.ports()
    }


def _window(
    w: WindowPlan, up: Stream[Any], control: _Control
) -> dict[tuple[str, str], Stream[Any]]:
    kernel = WindowKernel(
        w.name,
        w.window,
        w.aggs,
        w.fields,
        lateness_ns=w.lateness_ns,
        idle_ns=w.idle_ns,
        key_ttl_ns=w.key_ttl_ns,
    )
    out = op.stateful_batch(w.name, up, lambda resume: _WindowLogic(kernel, resume, control))
    parts = op.branch(f"{w.name}__split", out, lambda kv: kv[1][0] == "windows")
    return {
        (w.name, "windows"): op.map_value(f"{w.name}__windows_out", parts.trues, lambda v: v[1]),
        (w.name, "late"): op.map_value(f"{w.name}__late_out", parts.falses, lambda v: v[1]),
    }


def _is_source_dead_letter(x: Any) -> bool:
    """A records source's own dead letters (messages that were not records), as opposed to
    the records it read (which all carry an ``edgeflow_id``)."""
    return isinstance(x, RecordBatch) and x.kind == "dead_letter" and "edgeflow_id" not in x.columns


def _record_source(
    plan: Plan, src: SourcePlan, flow: Dataflow, control: _Control
) -> dict[tuple[str, str], Stream[Any]]:
    """A records source (``flow.records``): its RecordBatch items on ``records``, its dead
    letters on ``dead_letters``; both keyed by a constant (sinks and rollups re-key)."""
    raw = op.input(src.name, flow, _Source(plan, src, control, []))
    parts = op.branch(f"{src.name}__split_kinds", raw, _is_source_dead_letter)
    return {
        (src.name, "records"): op.key_on(
            f"{src.name}__records_key", parts.falses, _constant("records")
        ),
        (src.name, "dead_letters"): op.key_on(
            f"{src.name}__dl_key", parts.trues, _constant("dead_letters")
        ),
    }


class _RollupLogic(StatefulBatchLogic[RecordBatch, tuple[str, RecordBatch], bytes]):
    """A rollup kernel on one shard of groups: ``("rollups" | "late", records)`` out."""

    def __init__(self, kernel: Any, resume: bytes | None, control: _Control) -> None:
        self.kernel = kernel
        self.control = control
        with in_step(kernel.step):
            self.state = kernel.init() if resume is None else kernel.restore(resume, now_ns())

    @staticmethod
    def _emit(
        rollups: RecordBatch | None, late: RecordBatch | None, out: list[tuple[str, RecordBatch]]
    ) -> None:
        if rollups is not None and rollups.n:
            COUNTERS.add("rollups_out", rollups.n)
            out.append(("rollups", rollups))
        if late is not None and late.n:
            COUNTERS.add("late", late.n)
            out.append(("late", late))

    def on_batch(self, values: list[RecordBatch]) -> tuple[list[tuple[str, RecordBatch]], bool]:
        out: list[tuple[str, RecordBatch]] = []
        now = now_ns()
        before = self.kernel.duplicates(self.state)
        with in_step(self.kernel.step):
            for rb in values:
                COUNTERS.add("rollup_records_in", rb.n)
                rollups, late = self.kernel.step_records(self.state, rb, now)
                self._emit(rollups, late, out)
        dups = self.kernel.duplicates(self.state) - before
        if dups:
            COUNTERS.add(f"duplicates.{self.kernel.step}", dups)
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[tuple[str, RecordBatch]], bool]:
        out: list[tuple[str, RecordBatch]] = []
        with in_step(self.kernel.step):
            self._emit(self.kernel.on_time(self.state, now_ns()), None, out)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, RecordBatch]], bool]:
        out: list[tuple[str, RecordBatch]] = []
        if self.control.flush_on_eof():
            with in_step(self.kernel.step):
                self._emit(self.kernel.flush(self.state), None, out)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        ns = self.kernel.next_wakeup(self.state)
        return None if ns is None else _dt(ns)

    def snapshot(self) -> bytes:
        return bytes(self.kernel.snapshot(self.state))


def _by_group(spec: Any, shards: int) -> Callable[[tuple[str, RecordBatch]], list[Any]]:
    from edgeflow.ops.rollup import split_by_group

    def split(item: tuple[str, RecordBatch]) -> list[Any]:
        return split_by_group(spec, item[1], shards)

    return split


def _rollup(
    r: RollupPlan, up: Stream[Any], control: _Control, shards: int
) -> dict[tuple[str, str], Stream[Any]]:
    from edgeflow.ops.rollup import RollupKernel

    kernel = RollupKernel(r.name, r.spec)
    grouped = op.flat_map(f"{r.name}__by_group", up, _by_group(r.spec, shards))
    out = op.stateful_batch(r.name, grouped, lambda resume: _RollupLogic(kernel, resume, control))
    parts = op.branch(f"{r.name}__split", out, lambda kv: kv[1][0] == "rollups")
    return {
        (r.name, "rollups"): op.map_value(f"{r.name}__rollups_out", parts.trues, lambda v: v[1]),
        (r.name, "late"): op.map_value(f"{r.name}__late_out", parts.falses, lambda v: v[1]),
    }


def execute(plan: Plan, opts: RunOptions) -> None:
    deadline = None if opts.run_for_ns is None else now_ns() + opts.run_for_ns
    control = _Control(deadline, resumable=opts.state_dir is not None)
    flow = build_dataflow(plan, control, opts.state_dir)
    recovery = None
    if opts.state_dir is not None:
        db = init_recovery(opts.state_dir, opts.processes * opts.workers if opts.addresses else 1)
        recovery = RecoveryConfig(str(db))  # type: ignore[no-untyped-call]
    _ACTIVE.append(control)
    if CONNECTIONS.stop_requested():  # a stop (SIGTERM) that came while the flow was built
        control.deadline_ns = now_ns()
    cluster: dict[str, Any] = {}
    if opts.addresses:  # one member of a bytewax cluster (its own cluster mode)
        cluster = {"process_id": opts.process_id, "addresses": list(opts.addresses)}
    try:
        cli_main(  # type: ignore[no-untyped-call]
            flow,
            workers_per_process=opts.workers,
            epoch_interval=timedelta(microseconds=opts.snapshot_every_ns // 1000),
            recovery_config=recovery,
            **cluster,
        )
    finally:
        _ACTIVE.remove(control)


def init_recovery(state_dir: Path, partitions: int) -> Path:
    """``<state_dir>/recovery``, made with ``partitions`` snapshot partitions (bytewax's
    SQLite recovery partitions) when it does not exist yet: 1 for a run on its own, as
    before; one per worker of the whole cluster for a cluster (``--processes``,
    ``--addresses``), so every worker writes a share of the snapshots. The count is fixed
    once made; a later run with another cluster size resumes from them (bytewax routes the
    loaded snapshots to the workers that now own their keys: see docs/clusters.md)."""
    db = state_dir / "recovery"
    if not db.exists():
        db.mkdir(parents=True)
        init_db_dir(db, partitions)  # type: ignore[no-untyped-call]
    return db
