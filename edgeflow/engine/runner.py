"""Run a plan: options, state directory, recovery, summary. Engine-neutral front door."""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeflow.connectors.base import SinkContext
from edgeflow.connectors.connection_state import CONNECTIONS
from edgeflow.engine import wal_keeper
from edgeflow.engine.cluster import PeerWatch
from edgeflow.engine.counters import COUNTERS
from edgeflow.engine.engine_output import EngineOutputGuard, debug_wanted
from edgeflow.engine.figures import RateWindow, figures
from edgeflow.engine.options import RunOptions as RunOptions  # re-exported: old import path
from edgeflow.engine.state_faults import (
    StateError,
    check_free_space,
    check_recovery_store,
    disk_full_line,
    is_disk_full,
    recovery_failure_line,
)
from edgeflow.file_modes import private_state
from edgeflow.flow.plan import Plan
from edgeflow.timeutil import now_ns


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
    #: in a cluster member: the sinks this process neither opened nor wrote to (another
    #: member holds them), whose end-of-run report it left out
    untouched: list[str] = field(default_factory=list)

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
        dups = {k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("duplicates.")}
        if dups:  # a source skipped re-delivered records (kafka.source dedup)
            each = ", ".join(f"{n} by {step}" for step, n in sorted(dups.items()))
            out.append(f"duplicates skipped (same edgeflow-id): {each}")
        if self.unrouted:
            out.append(f"not routed to any sink (counted only): {', '.join(self.unrouted)}")
        return out + list(dict.fromkeys(self.reports))  # sinks sharing an outbox report it once


def run(plan: Plan, options: RunOptions | None = None) -> RunSummary:
    """Run ``plan`` to completion (end of input, or ``run_for_ns``); blocks. With a state
    directory, what the run writes there is its owner's alone (files 0600, directories 0700:
    see :mod:`edgeflow.file_modes`)."""
    opts = options or RunOptions()
    if opts.state_dir is None:
        return _run(plan, opts)
    with private_state(opts.state_dir):
        return _run(plan, opts)


def _run(plan: Plan, opts: RunOptions) -> RunSummary:
    from edgeflow.engine import bytewax_adapter  # the only bytewax import

    if opts.state_dir is not None:
        _prepare_state_dir(plan, opts.state_dir)
    COUNTERS.reset()
    CONNECTIONS.run_started(opts.run_for_ns)
    if opts.metrics_port is not None:
        from edgeflow.engine.metrics import BROKER_KINDS, serve

        serve(
            plan.name,
            opts.metrics_port,
            opts.state_dir / "outbox.sqlite" if opts.state_dir is not None else None,
            [s.name for s in plan.sources if s.spec.kind in BROKER_KINDS],
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
    guard = EngineOutputGuard()
    keeper = wal_keeper.start(opts.state_dir) if opts.state_dir is not None else None
    peers = None
    if opts.addresses and opts.process_id is not None:  # which peer, should one be lost
        peers = PeerWatch(opts.addresses, opts.process_id)
        peers.start()
    # a cluster member: the engine's threads may print a lost peer's panic through
    # sys.stderr while the run ends; the filter stays after a failure (see _silence_engine)
    quiet = _EnginePanicFilter().__enter__() if opts.addresses else None
    try:
        with guard:
            bytewax_adapter.execute(plan, opts)
    except Exception as exc:  # the engine failed: one line for the user, detail in a file
        if opts.addresses:
            _silence_engine()
        lost = peers.lost if peers is not None else None
        raise EngineError(_failure_line(plan, opts, exc, guard.text(), lost)) from exc
    except BaseException as exc:  # a Rust panic (e.g. a cluster member lost a peer)
        if type(exc).__name__ != "PanicException":
            raise
        if opts.addresses:
            _silence_engine()
        lost = peers.lost if peers is not None else None
        raise EngineError(_failure_line(plan, opts, exc, guard.text(), lost)) from exc
    finally:
        done.set()
        wal_keeper.stop(keeper)
        if peers is not None:
            peers.stop()
    if quiet is not None:
        quiet.__exit__()
    summary = RunSummary(plan.name, (now_ns() - t0) / 1e9, COUNTERS.snapshot(), plan.unrouted)
    summary.failures = [c.never_reached() for c in CONNECTIONS.never_connected()]
    for k in plan.sinks:
        if opts.addresses and not _sink_touched(k.name, k.spec, summary.counters):
            summary.untouched.append(k.name)  # another member's: its report is theirs
            continue
        sink_ctx = SinkContext(plan.name, k.name, plan.version, opts.state_dir)
        summary.reports.extend(k.spec.report(sink_ctx))
        summary.failures.extend(k.spec.failures(sink_ctx))  # e.g. Kafka refused the connection
    return summary


def _sink_touched(name: str, spec: object, counters: dict[str, int]) -> bool:
    """Whether this process wrote to the sink or opened it (to resume a snapshot). In a
    cluster the engine opens each partition of a sink in one process only; the others'
    end-of-run report would be wrong (a file sink empties a file its process never
    opened, taking it for an earlier run's output; a Kafka sink counts another process's
    records as this run's), so only the processes that touched a sink report it."""
    return counters.get(f"records_to.{name}", 0) > 0 or bool(getattr(spec, "opened", False))


class _EnginePanicFilter:
    """Context manager for a cluster member's run: ``sys.stderr`` without the engine's
    report of a panicked network thread (``RuntimeError: (src/run.rs:292:17) panicked at
    ...`` and its message line), which the engine prints through Python when a peer's
    connection closes; the member says it once in its own error line instead. Everything
    else passes through, line by line."""

    _START = re.compile(r"^\w+: \(src/[\w/.]+:\d+:\d+\) panicked at ")

    def __init__(self, real: Any = None) -> None:
        self._pending = ""
        self._skip_next = False
        self._real: Any = real

    def __enter__(self) -> _EnginePanicFilter:
        """Filter ``sys.stderr`` (or the stream given when made) in its place."""
        if self._real is None:
            self._real = sys.stderr
        sys.stderr = self
        return self

    def __exit__(self, *_: object) -> None:
        if self._pending:
            self._real.write(self._pending)
            self._pending = ""
        sys.stderr = self._real

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if self._START.match(line):
                self._skip_next = True
            elif self._skip_next:
                self._skip_next = False
            else:
                self._real.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...
        return getattr(self._real, name)


def _silence_engine() -> None:
    """A cluster member's engine failed: its other network threads may still be unwinding
    and print their panics (to file descriptor 2, or through ``sys.stderr``) after the run
    returned. From here on descriptor 2 goes to /dev/null and ``sys.stderr`` writes the
    real standard error without those panic lines, so the member's own error line is what
    the user sees (the caller ends the process right after it)."""
    try:
        real = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        return
    stream = open(real, "w", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115
    current = sys.stderr
    if isinstance(current, _EnginePanicFilter):  # the run's filter: now over the real stderr
        current._real = stream
    else:
        _EnginePanicFilter(stream).__enter__()


def prepare_cluster_state(plan: Plan, state_dir: Path, partitions: int) -> None:
    """Before the members of a cluster on this machine start (``--processes``): the state
    directory checked (as :func:`run` does), ``plan.json`` written and the snapshot store
    made with ``partitions`` partitions, once, so the members sharing the directory do not
    race to make them. Raises :class:`StateError` with one line."""
    from edgeflow.engine import bytewax_adapter  # the only bytewax import

    with private_state(state_dir):
        _prepare_state_dir(plan, state_dir)
        bytewax_adapter.init_recovery(state_dir, partitions)


def _write_stats(path: Path, outbox: Path | None, done: threading.Event) -> None:
    """Every second: the run's figures (see :mod:`edgeflow.engine.figures`) and counters."""
    rates = RateWindow()  # rates over the last 10 s: 2-s windows do not show 0 records/s
    rates.push(time.time(), COUNTERS.snapshot())
    while not done.wait(1.0):
        now, c = time.time(), COUNTERS.snapshot()
        prev, span_s = rates.push(now, c)
        figs = figures(c, prev, span_s, outbox=outbox, now=now)
        tmp = path.with_suffix(".tmp")
        links = CONNECTIONS.snapshot()
        tmp.write_text(
            json.dumps({"at": now, "figures": figs, "counters": c, "connections": links})
        )
        tmp.replace(path)


def stop() -> None:
    """Ask the flow running in this process to stop gracefully (as at the end of ``--for``).

    Safe from a signal handler at any moment: the engine adapter may still be importing
    (it is not imported here); a flow that starts after this sees the request and stops at
    once."""
    _STOP_WAITING.set()

    CONNECTIONS.request_stop()  # connectors stop waiting for brokers, forwarders for the drain
    adapter = sys.modules.get("edgeflow.engine.bytewax_adapter")
    request = getattr(adapter, "request_stop", None)
    if request is not None:
        request()


def state_mismatch(plan: Plan, state_dir: Path) -> str | None:
    """Why the snapshots in ``state_dir`` do not fit ``plan`` (it is not the flow that wrote
    them), or None when they fit or there are none."""
    path = state_dir / "plan.json"
    if not path.exists():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
        written = json.loads(text)
    except (OSError, ValueError):
        written = None
    if not isinstance(written, dict):
        return (
            f"{path} is damaged (not the plan edgeflow writes there; a write cut short?), so "
            "the snapshots beside it cannot be matched to the flow"
        )
    if text == _plan_text(plan):
        return None
    if written.get("state_format") != STATE_FORMAT:
        return (
            f"the state in {state_dir} was written by an older edgeflow (state format "
            f"{written.get('state_format', 1)}; this edgeflow reads format {STATE_FORMAT}: "
            "detection keeps different per-key state since detection v2), so its snapshots "
            "cannot be resumed"
        )
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


#: the format of the snapshots a flow's state holds; bump it when state written by an older
#: edgeflow cannot be resumed (2: detection v2, edgeflow/ops/detect/ - resolution, warm-up
#: blocks and adapting streaks in every detector's state)
STATE_FORMAT = 2


def _plan_text(plan: Plan) -> str:
    return json.dumps({**plan.to_dict(), "state_format": STATE_FORMAT}, sort_keys=True, default=str)


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
        _write_atomically(path, _plan_text(plan).encode())


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that it holds all of ``data`` or stays as it was: a temporary file,
    fsynced, renamed over it, and the directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _prepare_state_dir(plan: Plan, state_dir: Path) -> None:
    """Refuse a state directory the engine would fail on, with one line saying what to do:
    a full disk, a damaged or incomplete snapshot store, another flow's state."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        if os.environ.get("EDGEFLOW_STATS_FILE"):  # a managed deployment: wait, do not die
            _wait_for_space(state_dir)
        problem = check_free_space(state_dir) or check_recovery_store(state_dir)
        if problem:
            raise StateError(problem)
        _check_plan_unchanged(plan, state_dir)
    except OSError as exc:
        if is_disk_full(exc):
            raise StateError(disk_full_line(state_dir)) from exc
        raise StateError(
            f"the state directory {state_dir} cannot be used: {exc.strerror or exc}"
        ) from exc


#: set by :func:`stop`: a run waiting for disk space gives up waiting
_STOP_WAITING = threading.Event()


def _wait_for_space(state_dir: Path) -> None:
    """Under a supervisor, a state directory on a full disk is waited for (one line when
    the wait starts, one when it ends) instead of a crash loop that gives up; a stop request
    ends the wait (the run then fails with the disk-full line)."""
    problem = check_free_space(state_dir)
    if problem is None:
        return
    print(f"waiting: {problem}; the flow starts by itself once space frees", file=sys.stderr)
    sys.stderr.flush()
    while check_free_space(state_dir) and not _STOP_WAITING.wait(1.0):
        pass
    if not check_free_space(state_dir):
        print(f"space freed on the disk of {state_dir}: starting", file=sys.stderr)


class EngineError(RuntimeError):
    """The engine stopped with an error; the message is one line (step, file, what to do)
    and the full detail is in the file it names."""


def _failure_line(
    plan: Plan,
    opts: RunOptions,
    exc: BaseException,
    engine_text: str,
    lost_peer: str | None = None,
) -> str:
    """One line for an engine failure; the detail (engine output, traceback) goes to a file.
    ``lost_peer``: a cluster member's peer seen closing its connection first."""
    text = f"{engine_text}\n{type(exc).__name__}: {exc}"
    step = _failed_step(exc)
    resume = (
        "the run resumes from the last snapshot"
        if opts.state_dir is not None
        else "the run starts over (it keeps no state without --state-dir)"
    )
    line: str | None = None
    path = getattr(exc, "filename", None)
    if is_disk_full(exc, text):
        if isinstance(exc, OSError) and path:
            where = f"step {step!r} " if step else ""
            line = f"{where}cannot write {path}: its disk is full: free space, then run again; {resume}"
        elif opts.state_dir is not None:
            line = disk_full_line(opts.state_dir)
        else:
            line = f"a disk is full: free space, then run again; {resume}"
    elif opts.state_dir is not None:
        line = recovery_failure_line(opts.state_dir, text)
    if line is None and opts.addresses and _lost_peer(exc):
        line = _lost_peer_line(plan, opts, lost_peer)
    if line is None:
        reason = _first_line(exc)
        where = f"in step {step!r}" if step else "in the engine"
        line = f"the flow {plan.name!r} stopped {where}: {reason}"
    if debug_wanted():
        return line
    detail = _write_detail(plan, opts, exc, engine_text)
    return f"{line} (details: {detail})" if detail else line


def _lost_peer(exc: BaseException) -> bool:
    """Whether the engine stopped because a connection to another process of the cluster
    broke (timely's network threads panic when a peer's socket closes)."""
    text = str(exc).lower()
    return type(exc).__name__ == "PanicException" or any(
        w in text for w in ("send thread", "recv thread", "connection reset", "broken pipe")
    )


def _lost_peer_line(plan: Plan, opts: RunOptions, lost: str | None) -> str:
    peers = [a for i, a in enumerate(opts.addresses or []) if i != opts.process_id]
    which = f"the peer at {lost}" if lost else f"a peer (one of {', '.join(peers)})"
    resume = (
        f"to resume from the last snapshot (state dir {opts.state_dir})"
        if opts.state_dir is not None
        else "(without --state-dir the flow starts over)"
    )
    return (
        f"process {opts.process_id} of {opts.processes} of the cluster running {plan.name!r} "
        f"lost its connection to {which}: that process stopped or its "
        f"machine cannot be reached, and the cluster stopped; start every process of the "
        f"cluster again with the same command {resume}"
    )


def _failed_step(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        step = getattr(seen, "edgeflow_step", None)
        if isinstance(step, str):
            return step
        m = re.search(r"in step '?([\w.-]+)", str(seen))
        if m:
            return m.group(1)
        seen = seen.__cause__ or seen.__context__
    return None


def _engine_wrapper(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("bytewax") or bool(
        re.match(r"\(src/[\w/.]+:\d+:\d+\)", str(exc))
    )


def _first_line(exc: BaseException) -> str:
    """The first line of the step's own error, at most 300 characters: the engine wraps it
    in errors of its own (``error resuming StatefulSink``), which are skipped; an edgeflow
    error raised ``from`` a library's error is kept (it names the file)."""
    root = exc
    while _engine_wrapper(root):
        inner = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if inner is None:
            break
        root = inner
    text = str(root).strip().splitlines()
    if not text:
        return type(root).__name__
    first = re.sub(r"^\(src/[\w/.]+:\d+:\d+\):?\s*", "", text[0])  # the engine's source line
    return first[:300] + "..." if len(first) > 300 else first


def _write_detail(
    plan: Plan, opts: RunOptions, exc: BaseException, engine_text: str
) -> Path | None:
    """The engine's own output and the Python traceback, for a bug report; in the state
    directory, else (no state directory, or its disk full) in the temporary directory."""
    body = (
        f"{datetime.now(timezone.utc).isoformat()} flow {plan.name!r} failed\n"
        + engine_text
        + "".join(traceback.format_exception(exc))
    ).encode("utf-8", "replace")
    places = [opts.state_dir] if opts.state_dir is not None else []
    places.append(Path(tempfile.gettempdir()))
    member = f".p{opts.process_id}" if opts.addresses else ""  # cluster members apart
    for place in places:
        name = (
            f"engine-error{member}.log"
            if place == opts.state_dir
            else f"edgeflow-{_safe(plan.name)}-error{member}.log"
        )
        try:
            (place / name).write_bytes(body)
            return place / name
        except OSError:
            continue
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
