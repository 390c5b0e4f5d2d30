"""Flows as bytewax clusters: ``--processes N`` on one machine, ``--addresses`` across machines.

A cluster is bytewax's own cluster mode (timely dataflow): N processes, each with
``--workers`` threads, run ONE dataflow; keyed state is sharded over all workers of all
processes, source and sink partitions are spread over them, and snapshots go to the
recovery partitions of the state directory, so a restarted cluster resumes every process
from the same epoch.

* ``edgeflow run FLOW --addresses h0:p0,h1:p1 --process-id I``: this process is member I of
  that cluster (see :func:`parse_addresses` for what is accepted).
* ``edgeflow run FLOW --processes N``: :func:`launch` starts N members on this machine
  (``edgeflow run ... --addresses 127.0.0.1:<free ports> --process-id i``), prefixes their log
  lines with ``[process i]``, forwards SIGTERM/SIGINT to all of them, prints one summary for
  the cluster, and exits with the worst exit code. When a member dies the launcher stops the
  others and prints one line naming it; running the same command again resumes from the
  last snapshot (with ``--state-dir``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click

from edgeflow.flow.plan import Plan

#: a member under a launcher writes its end-of-run summary (JSON) to this file instead of
#: printing it; the launcher prints one summary for the cluster
SUMMARY_ENV = "EDGEFLOW_CLUSTER_SUMMARY"

#: how long stopping members get to snapshot and exit before SIGKILL
STOP_TIMEOUT_S = 40.0
#: ... and after a member died: the rest cannot finish an epoch without it, so there is
#: nothing left to snapshot; they only get the time to say why they stopped
FAILED_STOP_TIMEOUT_S = 5.0


class ClusterUsageError(click.ClickException):
    """A wrong cluster option: one line (``Error: ...``), exit 2 as for every usage error."""

    exit_code = 2


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def parse_addresses(text: str) -> list[str]:
    """``host:port`` items separated by ``,`` or ``;`` (blanks around them ignored), in
    process-id order. Raises :class:`ClusterUsageError` (one line) for an empty list, an
    item that is not ``host:port`` with a port in 1-65535 (an IPv6 host in brackets), or
    the same address twice."""
    items = [a.strip() for a in re.split(r"[,;]", text)]
    if not any(items):
        raise ClusterUsageError(
            "--addresses is empty: give host:port of every process, e.g. --addresses 10.0.0.1:2101,10.0.0.2:2101"
        )
    out: list[str] = []
    for a in items:
        host, sep, port = a.rpartition(":")
        if not sep or not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ClusterUsageError(
                f"--addresses: {a!r} is not host:port (a host name or IP address, a port in "
                "1-65535); separate the processes' addresses with ',' or ';'"
            )
        norm = f"{host.lower()}:{int(port)}"
        if norm in out:
            raise ClusterUsageError(
                f"--addresses: {a!r} is given twice; every process needs an address of its own"
            )
        out.append(norm)
    return out


def check_membership(
    addresses: str | None, process_id: int | None, processes: int | None
) -> list[str] | None:
    """The cluster addresses of this run (None: not a member), after checking the cluster
    options fit together; :class:`ClusterUsageError` (one line) when they do not."""
    if processes is not None and processes < 1:
        raise ClusterUsageError(
            f"--processes {processes}: give at least 1 (the number of processes to run the flow on)"
        )
    if processes is not None and processes > 1 and (addresses or process_id is not None):
        raise ClusterUsageError(
            "--processes starts a cluster on this machine; --addresses/--process-id make this "
            "process one member of a cluster: give one or the other"
        )
    if addresses is None:
        if process_id is not None:
            raise ClusterUsageError(
                "--process-id needs --addresses (the host:port of every process of the cluster)"
            )
        return None
    found = parse_addresses(addresses)
    if process_id is None:
        raise ClusterUsageError(
            f"--addresses needs --process-id: which of the {len(found)} processes this one is "
            f"(0 to {len(found) - 1})"
        )
    if not 0 <= process_id < len(found):
        raise ClusterUsageError(
            f"--process-id {process_id} is out of range: --addresses names {len(found)} "
            f"process{'' if len(found) == 1 else 'es'}, so give 0 to {len(found) - 1}"
        )
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: lines of a member that are never passed on: the engine's connection retries while the
#: members start, and crash blocks of members that lost a peer (the launcher says it once)
_NOISE = re.compile(
    r"^(worker \d+:\s+error connecting to worker \d+: .*retrying"
    r"|thread '[^']*' panicked at |note: run with `RUST_BACKTRACE|Traceback \(most recent"
    r"|\w+: \(src/[\w/.]+:\d+:\d+\) panicked at |timely communication error"
    r"|pyo3_runtime\.PanicException|\s+File \"|\s+\^+\s*$)"
)


def _die_with_parent() -> None:
    """In a member, before exec: SIGTERM when the launcher dies (it snapshots and stops)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Member:
    def __init__(self, index: int, proc: subprocess.Popen[bytes], summary: Path) -> None:
        self.index = index
        self.proc = proc
        self.summary = summary
        self.errors: list[str] = []
        #: the launcher signalled it (stop or kill): its own death is not a cause
        self.signalled = False


class Launcher:
    """Runs N members of one cluster on this machine; see the module docstring."""

    def __init__(
        self,
        plan: Plan,
        child_args: list[str],
        processes: int,
        state_dir: Path | None,
        say: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.child_args = child_args
        self.n = processes
        self.state_dir = state_dir
        self.say = say
        self.members: list[_Member] = []
        self.failed: tuple[_Member, int] | None = None
        self.stopping = False
        self._lock = threading.Lock()
        self._tmp = Path(tempfile.mkdtemp(prefix="edgeflow-cluster-"))
        #: every line the members wrote (kept when the cluster failed: the line names it)
        place = state_dir if state_dir is not None and state_dir.is_dir() else self._tmp
        self.detail = place / "cluster-members.log"
        self.detail.unlink(missing_ok=True)

    # -- starting ---------------------------------------------------------------------
    def start(self) -> None:
        ports = free_ports(self.n)
        addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
        metrics = os.environ.get("EDGEFLOW_METRICS_PORT")
        stats = os.environ.get("EDGEFLOW_STATS_FILE")
        for i in range(self.n):
            env = {**os.environ, SUMMARY_ENV: str(self._tmp / f"summary-{i}.json")}
            if metrics and metrics.strip().isdigit():  # process i serves port + i
                env["EDGEFLOW_METRICS_PORT"] = str(int(metrics) + i)
            if stats:
                env["EDGEFLOW_STATS_FILE"] = f"{stats}.p{i}"
            cmd = [
                sys.executable, "-m", "edgeflow", "run", *self.child_args,
                "--addresses", addresses, "--process-id", str(i),
            ]  # fmt: skip
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                process_group=0,  # a Ctrl-C reaches the launcher only; it stops them
                preexec_fn=_die_with_parent,  # before the relay threads start
            )
            self.members.append(_Member(i, proc, self._tmp / f"summary-{i}.json"))
        for m in self.members:
            threading.Thread(target=self._relay, args=(m,), daemon=True).start()
            threading.Thread(target=self._relay_stdout, args=(m,), daemon=True).start()
        if stats:
            threading.Thread(target=self._merge_stats, args=(Path(stats),), daemon=True).start()

    def _relay(self, m: _Member) -> None:
        """Pass member ``m``'s stderr on, each line prefixed ``[process i]``; its error
        lines are kept for the launcher's own line, crash blocks go to the detail log."""
        assert m.proc.stderr is not None
        stream: IO[bytes] = m.proc.stderr
        with self.detail.open("ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(f"[process {m.index}] ".encode() + raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.lower().startswith("error:"):
                    m.errors.append(line[6:].strip())
                    continue
                if _NOISE.match(line):
                    continue
                with self._lock:
                    if self.failed is None:
                        self.say(f"[process {m.index}] {line}")

    def _relay_stdout(self, m: _Member) -> None:
        """Pass member ``m``'s standard output on unchanged (records a sink prints), but
        for the engine's connection retries while the members start."""
        assert m.proc.stdout is not None
        out = sys.stdout.buffer
        for raw in iter(m.proc.stdout.readline, b""):
            if _NOISE.match(raw.decode("utf-8", "replace")):
                continue
            with self._lock:
                out.write(raw)
                out.flush()

    def _merge_stats(self, path: Path) -> None:
        """A managed deployment: the members' figures (``stats.json.p<i>``) summed into
        ``stats.json`` every second, as one flow's (``edgeflow status``)."""
        from edgeflow.engine.figures import RateWindow, figures

        rates = RateWindow()
        while any(m.proc.poll() is None for m in self.members):
            time.sleep(1.0)
            parts = [_read_json(Path(f"{path}.p{m.index}")) for m in self.members]
            counters = merge_counters([p.get("counters") or {} for p in parts])
            links: dict[str, Any] = {}
            for p in parts:
                links.update(p.get("connections") or {})
            now = time.time()
            prev, span_s = rates.push(now, counters)
            outbox = self.state_dir / "outbox.sqlite" if self.state_dir is not None else None
            figs = figures(counters, prev, span_s, outbox=outbox, now=now)
            body = {"at": now, "figures": figs, "counters": counters, "connections": links}
            tmp = path.with_suffix(".tmp")
            with contextlib.suppress(OSError):
                tmp.write_text(json.dumps({**body, "processes": self.n}))
                tmp.replace(path)

    # -- running ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask every member to stop gracefully (SIGTERM: snapshot, then exit)."""
        self.stopping = True
        for m in self.members:
            if m.proc.poll() is None:
                m.signalled = True
                with contextlib.suppress(OSError):
                    m.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        for m in self.members:
            if m.proc.poll() is None:
                m.signalled = True
                with contextlib.suppress(OSError):
                    m.proc.kill()

    def wait(self) -> int:
        """Wait for all members; the cluster's exit code (0, or the first failure's)."""
        stop_at: float | None = None
        while True:
            codes = [m.proc.poll() for m in self.members]
            if all(c is not None for c in codes):
                break
            if self.failed is None:
                for m, c in zip(self.members, codes, strict=True):
                    if c is not None and c != 0:
                        with self._lock:
                            self.failed = (m, c)
                        self.stop()  # the rest would fail on the lost peer anyway
                        stop_at = time.monotonic()
                        break
            if self.stopping and stop_at is None:
                stop_at = time.monotonic()
            grace = STOP_TIMEOUT_S if self.failed is None else FAILED_STOP_TIMEOUT_S
            if stop_at is not None and time.monotonic() - stop_at > grace:
                self.kill()
            time.sleep(0.05)
        if self.failed is None:
            for m in self.members:
                code = m.proc.returncode
                if code:
                    self.failed = (m, code)
                    break
        elif self.failed[1] > 0:
            # a peer may notice a lost member before the launcher polls the member itself:
            # the cause is a member killed by a signal the launcher did not send
            for m in self.members:
                code = m.proc.returncode
                if code is not None and code < 0 and not m.signalled:
                    self.failed = (m, code)
                    break
        time.sleep(0.1)  # the relay threads pass on the last lines
        return 0 if self.failed is None else max(1, self.failed[1])

    def failure_line(self) -> str | None:
        """One line for the member that failed first, or None when none did."""
        if self.failed is None:
            return None
        m, code = self.failed
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = f"was killed by {name}"
        else:
            errors = [e for e in m.errors if e]
            what = f"exited with {code}" + (f": {errors[0]}" if errors else "")
        resume = (
            f"Run the same command again to resume from the last snapshot (state dir {self.state_dir})"
            if self.state_dir is not None
            else "Run the same command again: without --state-dir the flow starts over"
        )
        return (
            f"process {m.index} of {self.n} (pid {m.proc.pid}) {what}; the cluster stopped. "
            f"{resume} (members' output: {self.detail})"
        )

    def summaries(self) -> list[dict[str, Any]]:
        return [_read_json(m.summary) for m in self.members]

    def cleanup(self) -> None:
        """Remove the launcher's scratch files unless the detail log is needed."""
        for m in self.members:
            m.summary.unlink(missing_ok=True)
        if self.failed is None:
            self.detail.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._tmp.rmdir()


def merge_counters(parts: list[dict[str, int]]) -> dict[str, int]:
    """The members' counters as one flow's: sums, except watermarks (the most advanced)."""
    out: dict[str, int] = {}
    for c in parts:
        for k, v in c.items():
            if k.startswith("watermark."):
                out[k] = max(out.get(k, v), v)
            else:
                out[k] = out.get(k, 0) + v
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_cluster(
    plan: Plan,
    flow_ref: str,
    processes: int,
    workers: int,
    state_dir: Path | None,
    snapshot_every_ns: int,
    run_for_ns: int | None,
) -> int:
    """``edgeflow run FLOW --processes N``: the cluster started, watched and summarised;
    its exit code (see the module docstring). A SIGTERM or a first Ctrl-C stops every
    member gracefully; a second Ctrl-C kills them (the next run resumes from the last
    snapshot)."""
    from edgeflow.engine.runner import prepare_cluster_state

    def say(line: str) -> None:
        click.echo(line, err=True)

    if state_dir is not None:
        try:
            prepare_cluster_state(plan, state_dir, processes * workers)
        except RuntimeError as exc:  # the state directory's one line
            say(f"error: {exc}")
            return 1
    args = [flow_ref, "--workers", str(workers), "--snapshot-every", f"{snapshot_every_ns}ns"]
    args += ["--no-live"]
    if run_for_ns is not None:
        args += ["--for", f"{run_for_ns}ns"]
    if state_dir is not None:
        args += ["--state-dir", str(state_dir)]
    launcher = Launcher(plan, args, processes, state_dir, say)
    interrupts = [0]

    def on_interrupt(_signum: int, _frame: object) -> None:
        interrupts[0] += 1
        if interrupts[0] == 1:
            say("stopping the cluster (Ctrl-C again to quit at once)...")
            launcher.stop()
        else:
            launcher.kill()
            os._exit(130)

    signal.signal(signal.SIGTERM, lambda *_: launcher.stop())
    signal.signal(signal.SIGINT, on_interrupt)
    started = time.monotonic()
    launcher.start()
    say(f"cluster of {processes} processes x {workers} worker(s) started for flow {plan.name!r}")
    code = launcher.wait()
    line = launcher.failure_line()
    if line is not None:
        say(f"error: {line}")
        launcher.cleanup()
        return code
    summary = cluster_summary(plan, launcher.summaries(), time.monotonic() - started, state_dir)
    launcher.cleanup()
    for out in summary.lines():
        say(out)
    for failure in summary.failures:
        say(f"error: {failure}")
    return 1 if summary.failures else 0


def cluster_summary(
    plan: Plan, parts: list[dict[str, Any]], seconds: float, state_dir: Path | None
) -> Any:
    """One :class:`~edgeflow.engine.runner.RunSummary` for the cluster: the members'
    counters merged, their sink reports and failures once each. A file sink that no member
    opened is reported (emptied, as a one-process run does: it is an earlier run's output)."""
    from edgeflow.connectors.base import SinkContext
    from edgeflow.engine.runner import RunSummary

    summary = RunSummary(
        plan.name, seconds, merge_counters([p.get("counters") or {} for p in parts]), plan.unrouted
    )
    for p in parts:
        summary.reports.extend(p.get("reports") or [])
        summary.failures.extend(f for f in p.get("failures") or [] if f not in summary.failures)
    untouched = (
        set.intersection(*(set(p.get("untouched") or []) for p in parts)) if parts else set()
    )
    for k in plan.sinks:
        if k.name in untouched and hasattr(k.spec, "opened"):
            summary.reports.extend(
                k.spec.report(SinkContext(plan.name, k.name, plan.version, state_dir))
            )
    return summary
