"""Run a plan: options, state directory, recovery, summary. Engine-neutral front door."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgeflow.connectors.base import SinkContext
from edgeflow.connectors.connection_state import CONNECTIONS
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
    #: why the run failed although the engine ended cleanly (a source never reached its
    #: broker); the CLI prints each as an error line and exits non-zero
    failures: list[str] = field(default_factory=list)

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
    CONNECTIONS.reset()
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
    summary.failures = [c.never_reached() for c in CONNECTIONS.never_connected()]
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
        links = CONNECTIONS.snapshot()
        tmp.write_text(
            json.dumps({"at": now, "figures": figs, "counters": c, "connections": links})
        )
        tmp.replace(path)


def stop() -> None:
    """Ask the flow running in this process to stop gracefully (as at the end of ``--for``)."""
    from edgeflow.engine import bytewax_adapter

    bytewax_adapter.request_stop()


def state_mismatch(plan: Plan, state_dir: Path) -> str | None:
    """Why the snapshots in ``state_dir`` do not fit ``plan`` (it is not the flow that wrote
    them), or None when they fit or there are none."""
    path = state_dir / "plan.json"
    if not path.exists():
        return None
    if path.read_text() == _plan_text(plan):
        return None
    return (
        f"the flow changed since the state in {state_dir} was written; its snapshots do not "
        "fit the new flow"
    )


def move_state_aside(state_dir: Path) -> Path | None:
    """Rename ``state_dir`` to ``<name>.old-<UTC time>`` beside it (kept, never deleted: its
    outbox may hold records not yet delivered) so a run starts from fresh state."""
    if not state_dir.exists():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = state_dir.with_name(f"{state_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = state_dir.with_name(f"{state_dir.name}.old-{stamp}-{n}")
    state_dir.rename(target)
    return target


def _plan_text(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), sort_keys=True, default=str)


def _check_plan_unchanged(plan: Plan, state_dir: Path) -> None:
    """Resuming a different flow from old snapshots gives wrong results: refuse it."""
    problem = state_mismatch(plan, state_dir)
    if problem:
        raise RuntimeError(
            f"{problem}. Run with --new-state to move it aside and start from fresh state, "
            "or give another --state-dir."
        )
    path = state_dir / "plan.json"
    if not path.exists():
        path.write_text(_plan_text(plan))
