"""``edgeflow status | logs | stop | list`` and the managed side of ``edgeflow deploy``."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from edgeflow.cli.supervisor import alive, read_json
from edgeflow.connectors.connection_state import describe as describe_connection
from edgeflow.engine.figures import kafka_connection, outbox_figures, summary_line

DEFAULT_ROOT = Path(".edgeflow") / "deployments"
RESTART_WINDOW_DEFAULT = "10m"
_ROOT_HELP = "Where deployments live (or EDGEFLOW_DEPLOYMENTS)."
#: ``--root``: the deployments root, on every command that takes one
DEPLOY_ROOT_OPTION = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ROOT,
    show_default=True,
    envvar="EDGEFLOW_DEPLOYMENTS",
    help=_ROOT_HELP,
)


def _no_state_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(
            f"--state-dir is a flow's state directory (edgeflow run/deploy); for the "
            f"deployments root use --root {value}"
        )


def ROOT_OPTION(f: Any) -> Any:  # noqa: N802 - used as a decorator, like click.option
    """status, logs, stop, list: ``--root``; ``--state-dir`` is refused with the right word."""
    f = click.option(
        "--state-dir",
        callback=_no_state_dir,
        expose_value=False,
        hidden=True,
        is_eager=True,
        default=None,
    )(f)
    return DEPLOY_ROOT_OPTION(f)


def start_detached(
    flow_file: Path, name: str, root: Path, extra: list[str], limits: list[str] | None = None
) -> int:
    """Copy the flow into ``root/name`` and start its supervisor in the background: ``extra``
    are arguments of the worker's ``edgeflow run``, ``limits`` the supervisor's own
    (``--max-restarts``, ``--restart-window``)."""
    d = root / name
    pid = alive(d / "supervisor.pid")
    if pid:
        raise click.ClickException(
            f"deployment {name!r} is already running (supervisor pid {pid}); stop it first with: edgeflow stop {name}"
        )
    (d / "state").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(flow_file, d / "flow.py")
    (d / "flow.sha256").write_text(hashlib.sha256(flow_file.read_bytes()).hexdigest() + "\n")
    log = (d / "edgeflow.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflow.cli.supervisor", str(d), *(limits or []), "--", *extra],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    (d / "supervisor.pid").write_text(str(proc.pid))
    return proc.pid


def _deployments(root: Path, name: str | None) -> list[Path]:
    if name is not None:
        d = root / name
        if not d.is_dir():
            raise click.ClickException(
                f"no deployment {name!r} under {root}; see: edgeflow list --root {root}"
            )
        return [d]
    return sorted(p for p in root.iterdir() if (p / "flow.py").exists()) if root.is_dir() else []


def _failed(d: Path) -> dict[str, Any] | None:
    """status.json of a deployment whose supervisor gave up, or None."""
    st = read_json(d / "status.json")
    return st if st.get("state") == "failed" and not alive(d / "supervisor.pid") else None


def _describe(d: Path) -> str:
    pid = alive(d / "supervisor.pid")
    st = read_json(d / "status.json")
    if _failed(d):
        window = st.get("restart_window_s", 0)
        n = st.get("restarts", 0)
        waiting = outbox_figures(d / "state" / "outbox.sqlite")["outbox_depth"]
        outbox = f" | outbox {waiting} waiting" if waiting > 0 else ""
        return (
            f"{d.name}: failed (gave up after {st.get('exits_in_window')} exits within "
            f"{window:.0f}s, {n} restart{'' if n == 1 else 's'}), last exit {st.get('last_exit')}: "
            f"{st.get('error') or 'no error line'}; see: edgeflow logs {d.name}{outbox}"
        )
    stats = read_json(d / "stats.json")
    state = f"running (pid {pid})" if pid else "stopped"
    up = f"up {time.time() - st['started_at']:.0f}s" if pid and "started_at" in st else ""
    figs = stats.get("figures", {})
    if not pid:  # rates of a stopped deployment are 0; its outbox may still hold records
        figs = {**figs, "readings_per_s": 0, "records_per_s": 0}
        figs.update(outbox_figures(d / "state" / "outbox.sqlite"))
    links = ""
    if pid:
        links = "".join(
            f" | source {name}: {describe_connection(c)}"
            for name, c in sorted(stats.get("connections", {}).items())
        )
        kafka = kafka_connection(d / "state" / "outbox.sqlite")
        if kafka:
            links += f" | kafka: {kafka}"
    return (
        f"{d.name}: {state} {up} restarts {st.get('restarts', 0)} last exit {st.get('last_exit')} | "
        f"{summary_line(figs)}{links}"
    )


@click.command("status")
@click.argument("name", required=False)
@ROOT_OPTION
def status_cmd(name: str | None, root: Path) -> None:
    """Show deployments: running or not, uptime, restarts, the flow's figures and the
    connection state of its sources. Exits 1 when a deployment has failed (its supervisor
    gave up restarting it)."""
    found = _deployments(root, name)
    if not found:
        click.echo(f"no deployments under {root}")
    for d in found:
        click.echo(_describe(d))
    if any(_failed(d) for d in found):
        sys.exit(1)


@click.command("list")
@ROOT_OPTION
def list_cmd(root: Path) -> None:
    """List deployments on this node."""
    for d in _deployments(root, None):
        state = "running" if alive(d / "supervisor.pid") else "failed" if _failed(d) else "stopped"
        click.echo(f"{d.name}\t{state}\t{d}")


@click.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@ROOT_OPTION
def logs_cmd(name: str, follow: bool, root: Path) -> None:
    """Print a deployment's log (supervisor and flow output)."""
    (d,) = _deployments(root, name)
    with (d / "edgeflow.log").open("rb") as f:
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            if not follow:
                return
            time.sleep(0.5)


@click.command("stop")
@click.argument("name")
@click.option(
    "--timeout", type=float, default=60, show_default=True, help="Seconds to wait for a clean stop."
)
@ROOT_OPTION
def stop_cmd(name: str, timeout: float, root: Path) -> None:
    """Stop a deployment cleanly: the flow snapshots its state and exits."""
    (d,) = _deployments(root, name)
    pid = alive(d / "supervisor.pid")
    if not pid:
        click.echo(f"{name} is not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(d / "supervisor.pid") and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(d / "supervisor.pid"):
        raise click.ClickException(
            f"{name} did not stop within {timeout:.0f}s (supervisor pid {pid})"
        )
    click.echo(f"stopped {name}")
