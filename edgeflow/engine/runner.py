"""Run a plan: options, state directory, recovery, summary. Engine-neutral front door."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeflow.connectors.base import SinkContext
from edgeflow.engine.counters import COUNTERS
from edgeflow.engine.figures import figures
from edgeflow.flow.plan import Plan
from edgeflow.timeutil import now_ns


@dataclass
class RunOptions:
    workers: int = 1
    state_dir: Path | None = None
    run_for_ns: int | None = None
    snapshot_every_ns: int = 2_000_000_000
    metrics_port: int | None = None


@dataclass
class RunSummary:
    flow: str
    seconds: float
    counters: dict[str, int] = field(default_factory=dict)
    unrouted: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        c = self.counters
        out = [
            f"flow {self.flow!r} ran {self.seconds:.1f}s: {c.get('readings_in', 0)} readings in, "
            f"{c.get('windows_out', 0)} window records, {c.get('late', 0)} late readings, "
            f"{c.get('dead_letters', 0)} dead letters"
        ]
        if c.get("trend_points_in"):
            ratio = c["trend_points_in"] / max(1, c.get("trend_points", 0))
            out.append(
                f"downsampling: {c['trend_points_in']} points in, {c.get('trend_points', 0)} out ({ratio:.1f}x reduction)"
            )
        if c.get("anomalies_in"):
            out.append(
                f"detection: {c['anomalies_in']} readings scored, {c.get('anomalies', 0)} anomalies"
            )
        if self.unrouted:
            out.append(f"not routed to any sink (counted only): {', '.join(self.unrouted)}")
        return out + list(dict.fromkeys(self.reports))  # sinks sharing an outbox report it once


def run(plan: Plan, options: RunOptions | None = None) -> RunSummary:
    """Run ``plan`` to completion (end of input, or ``run_for_ns``); blocks."""
    from edgeflow.engine import bytewax_adapter  # the only bytewax import

    opts = options or RunOptions()
    if opts.state_dir is not None:
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        _check_plan_unchanged(plan, opts.state_dir)
    COUNTERS.reset()
    if opts.metrics_port is not None:
        from edgeflow.engine.metrics import serve

        serve(
            plan.name,
            opts.metrics_port,
            opts.state_dir / "outbox.sqlite" if opts.state_dir is not None else None,
        )
    t0 = now_ns()
    stats_file = os.environ.get("EDGEFLOW_STATS_FILE")
    done = threading.Event()
    if stats_file:  # a managed deployment: `edgeflow status` reads these figures
        outbox = opts.state_dir / "outbox.sqlite" if opts.state_dir is not None else None
        threading.Thread(
            target=_write_stats, args=(Path(stats_file), outbox, done), daemon=True
        ).start()
    # everything made so far (modules, the plan) lives for the whole run: keep it out of
    # the cyclic collector's full passes, which would otherwise pause the flow for ms
    gc.collect()
    gc.freeze()
    try:
        bytewax_adapter.execute(plan, opts)
    finally:
        done.set()
    summary = RunSummary(plan.name, (now_ns() - t0) / 1e9, COUNTERS.snapshot(), plan.unrouted)
    for k in plan.sinks:
        summary.reports.extend(
            k.spec.report(SinkContext(plan.name, k.name, plan.version, opts.state_dir))
        )
    return summary


def _write_stats(path: Path, outbox: Path | None, done: threading.Event) -> None:
    """Every second: the run's figures (see :mod:`edgeflow.engine.figures`) and counters."""
    last_t, last_c = time.time(), COUNTERS.snapshot()
    while not done.wait(1.0):
        now, c = time.time(), COUNTERS.snapshot()
        figs = figures(c, last_c, now - last_t, outbox=outbox, now=now)
        last_t, last_c = now, c
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"at": now, "figures": figs, "counters": c}))
        tmp.replace(path)


def stop() -> None:
    """Ask the flow running in this process to stop gracefully (as at the end of ``--for``)."""
    from edgeflow.engine import bytewax_adapter

    bytewax_adapter.request_stop()


def _check_plan_unchanged(plan: Plan, state_dir: Path) -> None:
    """Resuming a different flow from old snapshots gives wrong results: refuse it."""
    path = state_dir / "plan.json"
    current = json.dumps(plan.to_dict(), sort_keys=True, default=str)
    if path.exists():
        saved = path.read_text()
        if saved != current:
            raise RuntimeError(
                f"the flow changed since the state in {state_dir} was written; its snapshots "
                "do not fit the new flow. Use a new --state-dir (or delete this one to start over)."
            )
    else:
        path.write_text(current)
