"""One kernel contract: every step kernel implements :class:`edgeflow.ops.kernel.Kernel`.

Each kernel class subclasses the protocol and implements every member itself; a kernel
built from a validated plan declares exactly the step's streams (its ``outputs`` are the
plan's), reports no problems, ``process`` gives what its fast entry ``step_batch`` gives,
and a state restored from ``snapshot`` continues exactly as the original."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeflow.ops
from edgeflow import Flow, agg, detect, downsample, window
from edgeflow.batch import Batch, RecordBatch
from edgeflow.connectors import files
from edgeflow.flow.plan import Plan
from edgeflow.ops.detect.kernel import DetectKernel
from edgeflow.ops.detect.limits import FieldLimitsKernel, Limits
from edgeflow.ops.downsample import DownsampleKernel
from edgeflow.ops.enrich import EnrichKernel, TableWatcher
from edgeflow.ops.kernel import Kernel
from edgeflow.ops.rollup import RollupKernel
from edgeflow.ops.udf import UdfKernel
from edgeflow.ops.window_kernel import WindowKernel

KERNELS = (
    WindowKernel, DownsampleKernel, DetectKernel, FieldLimitsKernel, UdfKernel, EnrichKernel,
    RollupKernel,
)  # fmt: skip
MEMBERS = ("problems", "init", "process", "finish", "snapshot", "restore")
DECLARED = ("step", "inputs", "outputs", "reads")


def _kernel_classes() -> set[type]:
    """Every class named ``...Kernel`` defined in an ``edgeflow.ops`` module (but the
    protocol's own module: ``Kernel``, ``RecordKernel``)."""
    found: set[type] = set()
    for info in pkgutil.walk_packages(edgeflow.ops.__path__, "edgeflow.ops."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and name.endswith("Kernel")
                and obj.__module__ == module.__name__
                and module.__name__ != "edgeflow.ops.kernel"  # the protocol and its bases
            ):
                found.add(obj)
    return found


def test_every_kernel_class_in_ops_is_one_of_the_checked_kernels() -> None:
    """A new kernel cannot skip the contract: it must be listed here (and so checked)."""
    assert _kernel_classes() == set(KERNELS)


@pytest.mark.parametrize("cls", KERNELS, ids=lambda c: c.__name__)
def test_each_kernel_class_implements_every_member_itself(cls: type) -> None:
    assert Kernel in cls.__mro__  # declared, so mypy checks it against the protocol
    for name in MEMBERS:
        assert getattr(cls, name) is not getattr(Kernel, name), f"{cls.__name__}.{name}"


# -- kernels built from a validated plan -------------------------------------------------
def _flow(tmp_path: Path) -> Plan:
    (tmp_path / "in.csv").write_text(
        "device,ts,volts,amps\n"
        + "".join(
            f"d{i % 3},2024-01-01T00:00:{i:02d}Z,{220 + i % 7},{1 + i % 5}\n" for i in range(40)
        )
    )
    (tmp_path / "devices.csv").write_text("device,limit_high\nd0,1000\nd1,5\n")
    flow = Flow("kernels")
    r = flow.source(files.source(str(tmp_path / "in.csv")), key="device", time="ts")
    power = r.derive(power=lambda c: c["volts"] * c["amps"], name="power")
    routes = power.route(big=lambda c: c["power"] > 900, name="split")
    routes.big.to(files.sink(str(tmp_path / "big.jsonl")))
    rich = routes.unrouted.enrich(tmp_path / "devices.csv", key="device", name="rich")
    rich.window(window.tumbling("5s"), agg.mean("power"), agg.count(), name="win").to(
        files.sink(str(tmp_path / "w.jsonl"))
    )
    rich.downsample(downsample.deadband("power", band=10.0), name="trend").to(
        files.sink(str(tmp_path / "t.jsonl"))
    )
    rich.detect(detect.zscore(warmup=4), "power", name="z").to(
        files.sink(str(tmp_path / "z.jsonl"))
    )
    rich.detect(detect.limits(high="limit_high"), "power", name="lim").to(
        files.sink(str(tmp_path / "l.jsonl"))
    )
    return flow.plan()


def _kernels(plan: Plan) -> dict[str, Kernel[Any]]:
    out: dict[str, Kernel[Any]] = {}
    for w in plan.windows:
        out[w.name] = WindowKernel(
            w.name, w.window, w.aggs, w.fields, lateness_ns=w.lateness_ns, idle_ns=w.idle_ns
        )
    for d in plan.downsamples:
        out[d.name] = DownsampleKernel(d.name, d.spec)
    for a in plan.detects:
        if isinstance(a.detector, Limits) and a.detector.limit_fields():
            out[a.name] = FieldLimitsKernel(a.name, a.field, a.detector, a.decision)
        else:
            out[a.name] = DetectKernel(a.name, a.field, a.detector, a.decision)
    for u in plan.udfs:
        out[u.name] = UdfKernel(u.name, u.spec)
    for e in plan.enrichments:
        watcher = TableWatcher(
            Path(e.spec.path), e.spec.key, e.added, e.check_every_ns, e.table, next_check_ns=1 << 62
        )
        out[e.name] = EnrichKernel(e.name, e.spec, e.added, watcher)
    return out


def _batch(start: int, n: int, *, rich: bool) -> Batch:
    i = np.arange(start, start + n)
    cols: dict[str, Any] = {"volts": np.where(i == 45, 1e5, 220.0 + i % 7), "amps": 1.0 + i % 5}
    cols["power"] = cols["volts"] * cols["amps"]
    if rich:
        cols["limit_high"] = np.where(i % 3 == 1, 5.0, 1000.0)
    return Batch.from_columns([f"d{k % 3}" for k in i], i * 1_000_000_000, cols)


def _input(name: str, start: int, n: int) -> Batch:
    """A batch with the fields the step's input stream has."""
    b = _batch(start, n, rich=name not in ("power", "split", "rich"))
    if name == "power":  # the derive step reads the source's fields only
        keep = [b.fields.index("volts"), b.fields.index("amps")]
        return Batch(("volts", "amps"), b.keys, b.key_idx, b.t, b.values[keep])
    return b


def _text(out: list[tuple[str, Batch | RecordBatch]]) -> list[tuple[str, str]]:
    """Outputs in a comparable form (NaN equal to NaN)."""
    res = []
    for port, x in out:
        if isinstance(x, RecordBatch):
            res.append((port, repr(x.rows())))
        else:
            res.append(
                (port, repr((x.fields, x.key_array().tolist(), x.t.tolist(), x.values.tolist())))
            )
    return res


def _fast(k: Kernel[Any], state: Any, b: Batch, now: int) -> list[tuple[str, Batch | RecordBatch]]:
    """The kernel's own entry (what the engine's loop calls), as ``(port, batch)`` pairs."""
    if isinstance(k, WindowKernel):
        res = k.step_batch(state, b, now)
        return [(p, x) for p, x in (("windows", res.windows), ("late", res.late)) if x is not None]
    if isinstance(k, UdfKernel):
        outs, dead = k.step_batch(b)
        return [*outs, *([("dead_letters", dead)] if dead is not None else [])]
    if isinstance(k, EnrichKernel):
        return list(k.step_batch(b, now))
    assert isinstance(k, DownsampleKernel | DetectKernel | FieldLimitsKernel)
    rb = k.step_batch(state, b)
    return [] if rb is None else [(k.outputs[0], rb)]


def test_kernels_declare_the_plans_streams_and_report_no_problems(tmp_path: Path) -> None:
    plan = _flow(tmp_path)
    kernels = _kernels(plan)
    assert set(kernels) == {"power", "split", "rich", "win", "trend", "z", "lim"}
    outputs = {s["name"]: s.get("outputs") for s in plan.to_dict()["steps"]}
    for name, k in kernels.items():
        assert isinstance(k, Kernel)
        assert k.step == name
        assert k.inputs == ("readings",)
        assert [f"{name}.{p}" for p in k.outputs] == outputs[name], name
        assert k.problems() == [], name
    assert kernels["win"].reads == ("power",)
    assert kernels["trend"].reads == ("power",)
    assert kernels["lim"].reads == ("power", "limit_high")
    assert kernels["power"].reads is None and kernels["rich"].reads is None


def test_process_equals_step_batch_and_a_restored_state_continues_alike(tmp_path: Path) -> None:
    kernels = _kernels(_flow(tmp_path))
    now = 10**18
    for name, k in kernels.items():
        fast_state, state = k.init(), k.init()
        first, second = _input(name, 0, 30), _input(name, 30, 30)
        assert _text(k.process(state, first, now)) == _text(_fast(k, fast_state, first, now)), name
        restored = k.restore(k.snapshot(state), now)
        expected = _text(k.process(state, second, now)) + _text(k.finish(state))
        got = _text(k.process(restored, second, now)) + _text(k.finish(restored))
        assert got == expected, name
        assert expected or name == "lim", f"{name}: nothing to compare"


def test_a_kernel_with_a_bad_argument_reports_it() -> None:
    """``problems()`` is the operator's own check (the one validation runs on the spec)."""
    k = DownsampleKernel.__new__(DownsampleKernel)
    k.spec = downsample.deadband("power", band=-1.0)
    assert any("band" in m for m in k.problems())
