"""``edgeflow`` commands: run, deploy, validate, inspect."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from edgeflow.cli.bundle import bundle_group
from edgeflow.cli.cluster import SUMMARY_ENV, ClusterUsageError, check_membership, run_cluster
from edgeflow.cli.deployments import (
    DEPLOY_ROOT_OPTION,
    RESTART_WINDOW_DEFAULT,
    fleet_options,
    fleet_settings,
    install_bundle,
    install_flow_file,
    list_cmd,
    logs_cmd,
    open_deployable,
    private_dir,
    report_update,
    start_detached,
    status_cmd,
    stop_cmd,
    update_policy,
    update_running,
    wait_for_update,
)
from edgeflow.cli.fleet import fleet_group
from edgeflow.cli.live import LiveView, wanted
from edgeflow.cli.params import DURATION, FLOW, FLOW_REF_KEY
from edgeflow.cli.plot import plot_cmd
from edgeflow.cli.score import score_cmd
from edgeflow.cli.supervisor import alive
from edgeflow.engine import RunOptions, run, stop
from edgeflow.engine.figures import outbox_figures
from edgeflow.engine.runner import move_state_aside, state_mismatch
from edgeflow.errors import FlowValidationError, UserInputError
from edgeflow.fleet.release import current_release
from edgeflow.flow.plan import Flow, Plan


def _plan_or_exit(flow: Flow) -> Plan:
    try:
        return flow.plan()
    except FlowValidationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


_interrupts = [0]


def _on_interrupt(_signum: int, _frame: object) -> None:
    _interrupts[0] += 1
    if _interrupts[0] == 1:
        click.echo("stopping (Ctrl-C again to quit at once)...", err=True)
        stop()
    else:
        os._exit(130)


def _run(
    plan: Plan,
    *,
    run_for: int | None,
    workers: int,
    state_dir: Path | None,
    snapshot_every: int,
    live: bool | None = None,
    addresses: list[str] | None = None,
    process_id: int | None = None,
) -> None:
    # SIGTERM (docker stop, systemd, kill) and Ctrl-C (SIGINT) stop gracefully: sources end,
    # state is snapshotted, the summary is printed. A second Ctrl-C ends the process at once
    # (exit 130); what the last snapshot holds resumes on the next run.
    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, _on_interrupt)
    port = os.environ.get("EDGEFLOW_METRICS_PORT")
    if port and not (port.strip().isdigit() and 1 <= int(port) <= 65535):
        click.echo(
            f"error: EDGEFLOW_METRICS_PORT={port!r} is not a port number; give one in "
            "1-65535 (or use --metrics-port)",
            err=True,
        )
        sys.exit(2)
    opts = RunOptions(
        workers=workers,
        state_dir=state_dir,
        run_for_ns=run_for,
        snapshot_every_ns=snapshot_every,
        metrics_port=int(port) if port else None,
        addresses=addresses,
        process_id=process_id,
    )
    view = LiveView(plan, state_dir) if wanted(plan, live, sys.stderr.isatty()) else None
    if view is not None:
        view.start()
    try:
        summary = run(plan, opts)
    except UserInputError as exc:  # e.g. --metrics-port on a busy port
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except RuntimeError as exc:  # the runner's one line (state directory, engine failure)
        click.echo(f"error: {exc}", err=True)
        if addresses:  # a cluster member whose engine failed: see _leave
            _leave(1, view)
        sys.exit(1)
    except OSError as exc:  # e.g. a sink's end-of-run report on a full disk
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        if view is not None:
            view.stop()
    report_to = os.environ.get(SUMMARY_ENV)
    if report_to:  # a member under a --processes launcher: it prints one for the cluster
        Path(report_to).write_bytes(
            orjson.dumps(
                {
                    "seconds": summary.seconds,
                    "counters": summary.counters,
                    "reports": summary.reports,
                    "failures": summary.failures,
                    "untouched": summary.untouched,
                }
            )
        )
        return
    for line in summary.lines():
        click.echo(line, err=True)
    for failure in summary.failures:
        click.echo(f"error: {failure}", err=True)
    if summary.failures:
        sys.exit(1)


def _leave(code: int, view: LiveView | None) -> None:
    """End a cluster member at once after its engine failed (a peer lost): the engine's
    network threads may still be unwinding, and the interpreter's normal shutdown racing
    them can abort the process ("FATAL: exception not rethrown") instead of exiting with
    the error line's code."""
    if view is not None:
        view.stop()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _fresh_state(plan: Plan, state_dir: Path, new_state: bool, how: str) -> None:
    """Refuse snapshots of another flow (with the way out), or move them aside with
    ``--new-state``."""
    problem = state_mismatch(plan, state_dir)
    if new_state:
        moved = move_state_aside(state_dir)
        if moved is not None:
            queued = outbox_figures(moved / "outbox.sqlite")["outbox_depth"]
            left = f"; its outbox still holds {queued} undelivered records" if queued > 0 else ""
            click.echo(f"moved the old state aside to {moved}{left}", err=True)
        return
    if problem:
        raise click.ClickException(
            f"{problem}. {how} --new-state to start from fresh state (the old state is "
            "moved aside, not deleted)."
        )


def _kafka_bootstrap(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        os.environ["EDGEFLOW_KAFKA_BOOTSTRAP"] = value
    return value


def _metrics_port(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None:
        os.environ["EDGEFLOW_METRICS_PORT"] = str(value)
    return value


def _metrics_host(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        os.environ["EDGEFLOW_METRICS_HOST"] = value.strip()
    return value


_common = [
    click.option(
        "--metrics-port",
        type=click.IntRange(1, 65535),
        callback=_metrics_port,
        expose_value=False,
        is_eager=True,
        help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics, and /healthz and "
        "/ready probes (or set EDGEFLOW_METRICS_PORT).",
    ),
    click.option(
        "--metrics-host",
        metavar="HOST",
        callback=_metrics_host,
        expose_value=False,
        is_eager=True,
        help="The address --metrics-port listens on [default: 127.0.0.1, this machine only]; "
        "0.0.0.0 for a Kubernetes probe or a remote Prometheus (or set EDGEFLOW_METRICS_HOST).",
    ),
    click.option(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        callback=_kafka_bootstrap,
        expose_value=False,
        is_eager=True,
        help="Kafka brokers for kafka.sink/kafka.source without bootstrap= (sets EDGEFLOW_KAFKA_BOOTSTRAP).",
    ),
    click.option(
        "--for",
        "run_for",
        type=DURATION,
        default=None,
        help="Stop after this long (e.g. 30s); default: until the input ends.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(1, 256),
        default=1,
        show_default=True,
        help="Worker threads.",
    ),
    click.option(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="Run the flow as one bytewax cluster of N processes on this machine (each with "
        "--workers threads; keyed state sharded over all of them) [default: 1]. See docs/clusters.md.",
    ),
    click.option(
        "--addresses",
        metavar="HOST:PORT,...",
        default=None,
        help="Run this process as one member of a cluster across machines: the host:port of "
        "every process, in process-id order (',' or ';' between them); with --process-id.",
    ),
    click.option(
        "--process-id",
        type=int,
        default=None,
        metavar="I",
        help="Which of the --addresses this process is (0 = the first).",
    ),
    click.option(
        "--live/--no-live",
        default=None,
        help="Show the live console view of the flow's figures on stderr (default: when "
        "stderr is a terminal and no sink prints to the console).",
    ),
    click.option(
        "--snapshot-every",
        type=DURATION,
        default="2s",
        show_default=True,
        help="How often state is snapshotted for resume.",
    ),
]


NEW_STATE_OPTION = click.option(
    "--new-state",
    is_flag=True,
    help="Start from fresh state: move the existing state directory aside (to "
    "STATE.old-<time>, not deleted) first. Needed when the flow changed since its state was written.",
)

F = TypeVar("F", bound=Callable[..., Any])


def common_options(f: F) -> F:
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeflow")
def main() -> None:
    """Declarative stream processing for edge nodes: window, downsample and detect on the
    spot, publish only what matters.

    FLOW is path/to/flow.py, path.py:name or module:name.
    """


@main.command("run")
@click.argument("flow", type=FLOW)
@common_options
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The flow's state directory: keep snapshots here and resume from them.",
)
@NEW_STATE_OPTION
def run_cmd(
    flow: Flow,
    run_for: int | None,
    workers: int,
    processes: int | None,
    addresses: str | None,
    process_id: int | None,
    snapshot_every: int,
    live: bool | None,
    state_dir: Path | None,
    new_state: bool,
) -> None:
    """Run FLOW in the foreground (with --processes or --addresses: as a cluster)."""
    members = check_membership(addresses, process_id, processes)
    plan = _plan_or_exit(flow)
    if state_dir is not None:
        _fresh_state(plan, state_dir, new_state, "Run with")
    elif new_state:
        raise click.UsageError("--new-state needs --state-dir (a run without one keeps no state)")
    if processes is not None and processes > 1:
        _no_live_view(live)
        ref = click.get_current_context().meta[FLOW_REF_KEY]
        sys.exit(run_cluster(plan, ref, processes, workers, state_dir, snapshot_every, run_for))
    _run(
        plan,
        run_for=run_for,
        workers=workers,
        state_dir=state_dir,
        snapshot_every=snapshot_every,
        live=live,
        addresses=members,
        process_id=process_id,
    )


@main.command("deploy")
@click.argument("flow_ref", metavar="FLOW")
@common_options
@click.option("--name", default=None, help="Deployment name (default: the flow's name).")
@click.option(
    "--detach",
    is_flag=True,
    help="Run under a supervisor in the background (restarts it if it dies).",
)
@DEPLOY_ROOT_OPTION
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The flow's state directory, foreground only (default and with --detach: ROOT/NAME/state).",
)
@NEW_STATE_OPTION
@click.option(
    "--max-restarts",
    type=click.IntRange(0, 1000),
    default=None,
    help="With --detach: give up (status: failed) when the flow dies more than this many "
    "times within --restart-window [default: 5].",
)
@click.option(
    "--restart-window",
    type=DURATION,
    default=None,
    help=f"With --detach: the window --max-restarts counts in [default: {RESTART_WINDOW_DEFAULT}].",
)
@fleet_options
def deploy_cmd(
    flow_ref: str,
    run_for: int | None,
    workers: int,
    processes: int | None,
    addresses: str | None,
    process_id: int | None,
    snapshot_every: int,
    live: bool | None,
    name: str | None,
    detach: bool,
    root: Path,
    state_dir: Path | None,
    new_state: bool,
    max_restarts: int | None,
    restart_window: int | None,
    trust: tuple[Path, ...],
    grace: int,
    max_error_rate: float,
    wait: bool,
    status_topic: str | None,
    status_bootstrap: str | None,
    control_topic: str | None,
    node_id: str | None,
    status_every: int,
) -> None:
    """Validate FLOW, print its plan, and run it with a state directory (resumes after a crash).

    FLOW is a flow file or a bundle (edgeflow bundle build; verified, and with --trust or
    EDGEFLOW_TRUST its signature required). With --detach, a supervisor runs it in the background
    from a copy (0600 files in a 0700 directory, checked against their sha256 before every
    start), restarting it with backoff when it dies, and giving up after --max-restarts deaths
    within --restart-window; see edgeflow status / logs / stop / list.

    A bundle deployed under the NAME of a running deployment is an over-the-air update: the
    new version starts, its health is checked for --grace, and it rolls back to the previous
    version by itself when the check fails."""
    from edgeflow.bundle import trusted_keys_from_env

    members = check_membership(addresses, process_id, processes)
    trust_keys = list(trust) or trusted_keys_from_env()
    bundle = open_deployable(Path(flow_ref), trust_keys)
    dep = name or (re.sub(r"[^A-Za-z0-9_-]", "_", bundle.name) if bundle is not None else None)
    updating = bundle is not None and dep is not None and alive(root / dep / "supervisor.pid")
    if detach or updating:
        _refuse_with_detach(state_dir=state_dir, live=live)
    else:
        for opt, value in (("--max-restarts", max_restarts), ("--restart-window", restart_window)):
            if value is not None:
                raise click.UsageError(f"{opt} applies to --detach (a supervised deployment) only")
    fleet = fleet_settings(
        status_topic, status_bootstrap, node_id, status_every, control_topic, trust_keys
    )
    installed = None
    if bundle is not None:
        assert dep is not None
        running = (current_release(root / dep) or {}).get("version") if updating else None
        if running == bundle.version:
            raise click.ClickException(
                f"{dep} already runs version {bundle.version}; build the update with a new version"
            )
        installed = install_bundle(private_dir(root / dep), bundle)
        flow_ref = str(root / dep / installed["entry"])
        click.echo(
            f"bundle {bundle.name} {bundle.version} verified"
            + (f" (signed by {bundle.signed_by})" if bundle.signed_by else " (unsigned)"),
            err=True,
        )
    flow = FLOW.convert(flow_ref, None, click.get_current_context())
    plan = _plan_or_exit(flow)
    dep = dep or name or re.sub(r"[^A-Za-z0-9_-]", "_", plan.name)
    click.echo(plan.describe(), err=True)
    ctx = click.get_current_context()
    given = {
        p for p in ("run_for", "workers", "snapshot_every", "max_restarts", "restart_window",
                    "grace", "max_error_rate", "processes", "addresses", "process_id")
        if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE
    }  # fmt: skip
    grace_s, max_error_rate = update_policy(root / dep, given, grace / 1e9, max_error_rate)
    if given & {"grace", "max_error_rate"}:  # kept for later updates (also from a control topic)
        fleet["policy"] = {"grace_s": grace_s, "max_error_rate": max_error_rate}
    extra = ["--snapshot-every", f"{snapshot_every}ns", "--workers", str(workers)]
    extra += cluster_args(processes, members, process_id)
    if run_for is not None:
        extra += ["--for", f"{run_for}ns"]
    limits = []
    if max_restarts is not None:
        limits += ["--max-restarts", str(max_restarts)]
    if restart_window is not None:
        limits += ["--restart-window", f"{restart_window / 1e9}"]
    if updating and installed is not None:
        d = root / dep
        problem = state_mismatch(plan, d / "state")
        update_running(
            d, installed, problem, grace_s=grace_s, max_error_rate=max_error_rate,
            run_args=extra
            if given & {"run_for", "workers", "snapshot_every", "processes", "addresses", "process_id"}
            else None,
            limits=limits if given & {"max_restarts", "restart_window"} else None,
            fleet=fleet,
        )  # fmt: skip
        click.echo(
            f"updating {dep} to {installed['version']}: checking its health for "
            f"{grace_s:.0f} s; see: edgeflow status {dep}",
            err=True,
        )
        if wait:
            report_update(d, wait_for_update(d, grace_s + 180))
        return
    if detach:
        path = Path(flow_ref)
        if path.suffix != ".py" or not path.is_file():
            raise click.UsageError(
                f"--detach deploys a flow file (path/to/flow.py) or a bundle; {flow_ref!r} is not one"
            )
        running_pid = alive(root / dep / "supervisor.pid")
        if running_pid:
            raise click.ClickException(
                f"deployment {dep!r} is already running (supervisor pid {running_pid}); stop it first with: edgeflow stop {dep}"
            )
        _fresh_state(plan, root / dep / "state", new_state, "Deploy with")
        d = private_dir(root / dep)
        current = installed or install_flow_file(d, path)
        pid = start_detached(d, current, extra, limits, fleet)
        click.echo(
            f"deployed {dep} (supervisor pid {pid}) in {root / dep}; see: edgeflow status {dep}"
        )
        return
    if alive(root / dep / "supervisor.pid"):
        raise click.ClickException(
            f"deployment {dep!r} is already running in the background; stop it first with: edgeflow stop {dep}"
        )
    state = state_dir or root / dep / "state"
    _fresh_state(plan, state, new_state, "Deploy with")
    click.echo(f"state directory: {state}", err=True)
    if processes is not None and processes > 1:
        _no_live_view(live)
        sys.exit(run_cluster(plan, flow_ref, processes, workers, state, snapshot_every, run_for))
    _run(
        plan,
        run_for=run_for,
        workers=workers,
        state_dir=state,
        snapshot_every=snapshot_every,
        live=live,
        addresses=members,
        process_id=process_id,
    )


def _no_live_view(live: bool | None) -> None:
    """A cluster on this machine has no live console view: ``--live`` is refused, not ignored."""
    if live:
        raise ClusterUsageError(
            "--live shows the figures of one process; a cluster (--processes) prints one "
            "summary at the end (figures while it runs: --metrics-port, process i serves PORT+i)"
        )


def cluster_args(
    processes: int | None, members: list[str] | None, process_id: int | None
) -> list[str]:
    """The cluster options of a deployment's ``edgeflow run`` (none for one process)."""
    if processes is not None and processes > 1:
        return ["--processes", str(processes)]
    if members is not None:
        return ["--addresses", ",".join(members), "--process-id", str(process_id)]
    return []


def _refuse_with_detach(*, state_dir: Path | None, live: bool | None) -> None:
    """Options a detached deployment cannot honour are refused, never ignored."""
    if state_dir is not None:
        raise click.UsageError(
            "--state-dir applies to a foreground deploy; with --detach the state lives in "
            "ROOT/NAME/state (choose ROOT with --root, NAME with --name)"
        )
    if live is not None:
        raise click.UsageError(
            "--live/--no-live apply to a foreground run; a detached deployment has no console "
            "(see edgeflow status NAME, edgeflow logs NAME, or --metrics-port)"
        )


main.add_command(score_cmd)
main.add_command(plot_cmd)
main.add_command(bundle_group)
for _cmd in (status_cmd, logs_cmd, stop_cmd, list_cmd, fleet_group):
    main.add_command(_cmd)


@main.command("validate")
@click.argument("flow", type=FLOW)
def validate_cmd(flow: Flow) -> None:
    """Check FLOW without running it: exit 0 when valid, 2 with the problems otherwise."""
    plan = _plan_or_exit(flow)
    n = len(plan.sources) + len(plan.windows) + len(plan.sinks)
    click.echo(f"flow {plan.name!r} is valid: {n} steps")


@main.command("inspect")
@click.argument("flow", type=FLOW)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def inspect_cmd(flow: Flow, as_json: bool) -> None:
    """Print FLOW's plan: steps, streams and sinks."""
    plan = _plan_or_exit(flow)
    if as_json:
        click.echo(orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        click.echo(plan.describe())
