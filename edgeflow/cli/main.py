"""``edgeflow`` commands: run, deploy, validate, inspect."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from edgeflow.cli.deployments import (
    DEPLOY_ROOT_OPTION,
    RESTART_WINDOW_DEFAULT,
    list_cmd,
    logs_cmd,
    start_detached,
    status_cmd,
    stop_cmd,
)
from edgeflow.cli.live import LiveView, wanted
from edgeflow.cli.params import DURATION, FLOW
from edgeflow.cli.plot import plot_cmd
from edgeflow.cli.score import score_cmd
from edgeflow.cli.supervisor import alive
from edgeflow.engine import RunOptions, run, stop
from edgeflow.engine.figures import outbox_figures
from edgeflow.engine.runner import move_state_aside, state_mismatch
from edgeflow.errors import FlowValidationError, UserInputError
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
        sys.exit(1)
    except OSError as exc:  # e.g. a sink's end-of-run report on a full disk
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        if view is not None:
            view.stop()
    for line in summary.lines():
        click.echo(line, err=True)
    for failure in summary.failures:
        click.echo(f"error: {failure}", err=True)
    if summary.failures:
        sys.exit(1)


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


_common = [
    click.option(
        "--metrics-port",
        type=click.IntRange(1, 65535),
        callback=_metrics_port,
        expose_value=False,
        is_eager=True,
        help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (or set EDGEFLOW_METRICS_PORT).",
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
    snapshot_every: int,
    live: bool | None,
    state_dir: Path | None,
    new_state: bool,
) -> None:
    """Run FLOW in the foreground."""
    plan = _plan_or_exit(flow)
    if state_dir is not None:
        _fresh_state(plan, state_dir, new_state, "Run with")
    elif new_state:
        raise click.UsageError("--new-state needs --state-dir (a run without one keeps no state)")
    _run(
        plan,
        run_for=run_for,
        workers=workers,
        state_dir=state_dir,
        snapshot_every=snapshot_every,
        live=live,
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
def deploy_cmd(
    flow_ref: str,
    run_for: int | None,
    workers: int,
    snapshot_every: int,
    live: bool | None,
    name: str | None,
    detach: bool,
    root: Path,
    state_dir: Path | None,
    new_state: bool,
    max_restarts: int | None,
    restart_window: int | None,
) -> None:
    """Validate FLOW, print its plan, and run it with a state directory (resumes after a crash).

    With --detach, a supervisor runs it in the background from a copy of the flow file,
    restarting it with backoff when it dies, and giving up after --max-restarts deaths within
    --restart-window; see edgeflow status / logs / stop / list."""
    if detach:
        _refuse_with_detach(state_dir=state_dir, live=live)
    else:
        for opt, value in (("--max-restarts", max_restarts), ("--restart-window", restart_window)):
            if value is not None:
                raise click.UsageError(f"{opt} applies to --detach (a supervised deployment) only")
    flow = FLOW.convert(flow_ref, None, click.get_current_context())
    plan = _plan_or_exit(flow)
    dep = name or re.sub(r"[^A-Za-z0-9_-]", "_", plan.name)
    click.echo(plan.describe(), err=True)
    if detach:
        path = Path(flow_ref)
        if path.suffix != ".py" or not path.is_file():
            raise click.UsageError(
                f"--detach deploys a flow file (path/to/flow.py); {flow_ref!r} is not one"
            )
        running = alive(root / dep / "supervisor.pid")
        if running:
            raise click.ClickException(
                f"deployment {dep!r} is already running (supervisor pid {running}); stop it first with: edgeflow stop {dep}"
            )
        _fresh_state(plan, root / dep / "state", new_state, "Deploy with")
        extra = ["--snapshot-every", f"{snapshot_every}ns", "--workers", str(workers)]
        if run_for is not None:
            extra += ["--for", f"{run_for}ns"]
        limits = []
        if max_restarts is not None:
            limits += ["--max-restarts", str(max_restarts)]
        if restart_window is not None:
            limits += ["--restart-window", f"{restart_window / 1e9}"]
        pid = start_detached(path, dep, root, extra, limits)
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
    _run(
        plan,
        run_for=run_for,
        workers=workers,
        state_dir=state,
        snapshot_every=snapshot_every,
        live=live,
    )


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
for _cmd in (status_cmd, logs_cmd, stop_cmd, list_cmd):
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
