"""``edgeflow status | logs | stop | list`` and the managed side of ``edgeflow deploy``."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeflow.cli.params import DURATION
from edgeflow.cli.supervisor import alive, read_json
from edgeflow.connectors.connection_state import describe as describe_connection
from edgeflow.connectors.kafka_security import OPTIONS as FLEET_SECURITY_OPTIONS
from edgeflow.engine.figures import kafka_connection, outbox_figures, summary_line
from edgeflow.file_modes import restrict_tree
from edgeflow.fleet.health import MAX_ERROR_RATE
from edgeflow.fleet.release import (
    current_release,
    file_hashes,
    read_release,
    state_aside_keeping_outbox,
    write_private,
    write_release,
)
from edgeflow.fleet.status_topic import DEFAULT_TOPIC

if TYPE_CHECKING:
    from edgeflow.bundle import Bundle

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


class BundleRefused(click.ClickException):
    """A bundle (or a plain flow on a node that accepts only signed bundles) refused:
    one line, exit 2 as for every input problem."""

    exit_code = 2


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


#: environment a worker reads its options from; recorded at deploy so an update keeps them
RECORDED_ENV = (
    "EDGEFLOW_METRICS_PORT",
    "EDGEFLOW_METRICS_HOST",
    "EDGEFLOW_KAFKA_BOOTSTRAP",
    # the fleet clients' security (names and paths; a password stays in its variable)
    *(f"EDGEFLOW_FLEET_{o.upper()}" for o in FLEET_SECURITY_OPTIONS),
)
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def private_dir(path: Path) -> Path:
    """``path`` created (with parents) and made 0700, with everything in it 0700/0600."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    restrict_tree(path)
    return path


def install_flow_file(d: Path, flow_file: Path) -> dict[str, Any]:
    """Copy a plain flow into ``d/flow.py`` (0600); its release record."""
    data = flow_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    write_private(d / "flow.py", data)
    write_private(d / "flow.sha256", (digest + "\n").encode())
    return {"version": None, "entry": "flow.py", "hashes": {"flow.py": digest}}


def install_bundle(d: Path, bundle: Bundle) -> dict[str, Any]:
    """Extract ``bundle`` into ``d/versions/<version>/`` (beside the other versions); its
    release record with the sha256 of every extracted file."""
    from edgeflow.bundle import BundleError

    if not _VERSION.fullmatch(bundle.version):
        raise BundleRefused(
            f"bundle {bundle.path} has version {bundle.version!r}, which cannot name a "
            "directory; rebuild it with a version like 1.2.0"
        )
    versions = private_dir(d / "versions")
    target = versions / bundle.version
    tmp = versions / f".{bundle.version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        entry = bundle.extract(tmp).resolve().relative_to(tmp.resolve())
    except BundleError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleRefused(str(exc)) from None
    if target.exists():  # an earlier copy of this version (not the running one): replaced
        shutil.rmtree(target)
    tmp.rename(target)
    restrict_tree(target)
    return {
        "version": bundle.version,
        "name": bundle.name,
        "entry": f"versions/{bundle.version}/{entry.as_posix()}",
        "hashes": file_hashes(d, target),
        "signed_by": bundle.signed_by,
    }


def _launch(d: Path, record: dict[str, Any]) -> int:
    """Start the supervisor of ``d`` in the background with the recorded options."""
    env = {**os.environ}
    for k, v in (record.get("env") or {}).items():
        env.setdefault(k, v)
    log = (d / "edgeflow.log").open("ab")
    os.chmod(d / "edgeflow.log", 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeflow.cli.supervisor", str(d), *record.get("limits", []), "--",
         *record.get("run_args", [])],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
    )  # fmt: skip
    write_private(d / "supervisor.pid", str(proc.pid).encode())
    return proc.pid


def start_detached(
    d: Path,
    current: dict[str, Any],
    extra: list[str],
    limits: list[str] | None = None,
    fleet: dict[str, Any] | None = None,
) -> int:
    """Record ``current`` (from :func:`install_flow_file` or :func:`install_bundle`) as what
    ``d`` runs and start its supervisor in the background: ``extra`` are arguments of the
    worker's ``edgeflow run``, ``limits`` the supervisor's own (``--max-restarts``,
    ``--restart-window``), ``fleet`` the status/control topic and trust settings
    (:func:`fleet_settings`)."""
    pid = alive(d / "supervisor.pid")
    if pid:
        raise click.ClickException(
            f"deployment {d.name!r} is already running (supervisor pid {pid}); stop it first with: edgeflow stop {d.name}"
        )
    private_dir(d / "state")
    rec = read_release(d)
    old = rec.get("current")
    if isinstance(old, dict) and old.get("version") != current.get("version"):
        rec["previous"] = old
    upd = rec.get("update") or {}
    if upd.get("result") == "checking":  # an update stopped on probation, now replaced
        upd.update(result="superseded", at=time.time(), reason="replaced by a new deploy")
    rec.update(
        current=current,
        run_args=extra,
        limits=limits or [],
        env={k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
    )
    rec.update({k: v for k, v in (fleet or {}).items() if v is not None})
    write_release(d, rec)
    return _launch(d, rec)


def stop_supervisor(d: Path, timeout: float) -> bool:
    """SIGTERM the supervisor of ``d`` (its worker snapshots and exits); whether it stopped."""
    pid = alive(d / "supervisor.pid")
    if not pid:
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(d / "supervisor.pid") and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(d / "supervisor.pid")


def _label(release: dict[str, Any] | None) -> str:
    v = (release or {}).get("version")
    return str(v) if v is not None else "flow.py"


def update_running(
    d: Path,
    new: dict[str, Any],
    state_problem: str | None,
    *,
    grace_s: float,
    max_error_rate: float,
    run_args: list[str] | None,
    limits: list[str] | None,
    fleet: dict[str, Any] | None,
) -> None:
    """Over-the-air update of the running deployment ``d`` to ``new`` (a bundle's release
    record from :func:`install_bundle`, extracted beside the running one): the running one stops cleanly (its state
    snapshotted, its outbox kept), the state is kept when it fits the new version
    (``state_problem`` is None) or moved aside (kept, never deleted) when it does not, and the
    supervisor starts the new version on probation: it rolls back by itself when the grace
    check fails (:mod:`edgeflow.fleet.health`)."""
    rec = read_release(d)
    cur = current_release(d)
    if (rec.get("update") or {}).get("result") == "checking":  # on probation: not known good
        cur = rec.get("previous") or cur
    version = new["version"]
    readings = read_json(d / "stats.json").get("counters", {}).get("readings_in", 0)
    if not stop_supervisor(d, 120):
        raise click.ClickException(
            f"{d.name} did not stop within 120 s for the update; nothing changed (see: edgeflow logs {d.name})"
        )
    state_note, aside = "kept (it fits the new version)", None
    if state_problem:
        moved = state_aside_keeping_outbox(d / "state")
        if moved is not None:
            aside = str(moved)
            state_note = (
                f"moved aside to {moved} ({state_problem}); {version} starts from fresh "
                "state, the outbox kept"
            )
    rec.update(
        current=new,
        previous=cur,
        update={
            "from": _label(cur), "to": version, "result": "checking", "at": time.time(),
            "grace_s": grace_s, "need_input": readings > 0, "max_error_rate": max_error_rate,
            "state": state_note, "state_aside": aside,
        },
    )  # fmt: skip
    if run_args is not None:
        rec["run_args"] = run_args
    if limits is not None:
        rec["limits"] = limits
    rec.update({k: v for k, v in (fleet or {}).items() if v is not None})
    for k in RECORDED_ENV:
        if k in os.environ:
            rec.setdefault("env", {})[k] = os.environ[k]
    write_release(d, rec)
    _launch(d, rec)


def update_policy(
    d: Path, given: set[str], grace_s: float, max_error_rate: float
) -> tuple[float, float]:
    """The grace period and error-rate limit of an update of ``d``: the ones given on the
    command line, else the ones recorded at an earlier deploy, else the defaults."""
    recorded = read_release(d).get("policy") or {}
    if "grace" not in given:
        grace_s = float(recorded.get("grace_s", grace_s))
    if "max_error_rate" not in given:
        max_error_rate = float(recorded.get("max_error_rate", max_error_rate))
    return grace_s, max_error_rate


def wait_for_update(d: Path, timeout: float) -> dict[str, Any]:
    """The update record once its grace check ended (or the supervisor died, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        upd: dict[str, Any] = read_release(d).get("update") or {}
        if upd.get("result") != "checking":
            return upd
        if not alive(d / "supervisor.pid"):
            return upd
        time.sleep(0.2)
    upd = read_release(d).get("update") or {}
    return upd


def _deployments(root: Path, name: str | None) -> list[Path]:
    if name is not None:
        d = root / name
        if not d.is_dir():
            raise click.ClickException(
                f"no deployment {name!r} under {root}; see: edgeflow list --root {root}"
            )
        return [d]
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if (p / "flow.py").exists() or (p / "release.json").exists()
    )


def _failed(d: Path) -> dict[str, Any] | None:
    """status.json of a deployment whose supervisor gave up or refused to start, or None."""
    st = read_json(d / "status.json")
    failed = st.get("state") in ("failed", "refused")
    return st if failed and not alive(d / "supervisor.pid") else None


def update_line(d: Path) -> str:
    """`` | version V | <the last update and its result>`` for ``status``."""
    cur = current_release(d) or {}
    out = f" | version {cur['version']}" if cur.get("version") is not None else ""
    upd = read_release(d).get("update") or {}
    result, to, frm = upd.get("result"), upd.get("to"), upd.get("from")
    if result == "checking":
        out += (
            f" | update {frm} -> {to}: checking health ({upd.get('grace_s', 0):.0f} s grace period)"
        )
    elif result == "succeeded":
        out += f" | updated {frm} -> {to}"
    elif result == "rolled back":
        out += f" | update to {to} failed: {upd.get('reason')}; rolled back to {frm}"
    elif result == "superseded":
        out += f" | update {frm} -> {to} was stopped on probation and replaced by a new deploy"
    if result and upd.get("state"):
        out += f"; state {upd['state']}"
    return out


def _describe(d: Path) -> str:
    pid = alive(d / "supervisor.pid")
    st = read_json(d / "status.json")
    if _failed(d) and st.get("state") == "refused":
        return f"{d.name}: refused to start: {st.get('error')}{update_line(d)}"
    if _failed(d):
        window = st.get("restart_window_s", 0)
        n = st.get("restarts", 0)
        waiting = outbox_figures(d / "state" / "outbox.sqlite")["outbox_depth"]
        outbox = f" | outbox {waiting} waiting" if waiting > 0 else ""
        return (
            f"{d.name}: failed (gave up after {st.get('exits_in_window')} exits within "
            f"{window:.0f}s, {n} restart{'' if n == 1 else 's'}), last exit {st.get('last_exit')}: "
            f"{st.get('error') or 'no error line'}; see: edgeflow logs {d.name}{outbox}"
            f"{update_line(d)}"
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
        f"{cluster_size(d)}{summary_line(figs)}{links}{update_line(d)}"
    )


def cluster_size(d: Path) -> str:
    """``3 processes x 2 workers | `` for a deployment that runs as a cluster (its run
    arguments have ``--processes`` or ``--addresses``), else nothing."""
    args = [str(a) for a in read_release(d).get("run_args") or []]

    def value(opt: str) -> str | None:
        return args[args.index(opt) + 1] if opt in args[:-1] else None

    workers = value("--workers") or "1"
    each = f" x {workers} worker{'' if workers == '1' else 's'}"
    processes = value("--processes")
    if processes is not None and processes != "1":
        return f"{processes} processes{each} | "
    addresses = value("--addresses")
    if addresses is not None:
        n = len([a for a in addresses.replace(";", ",").split(",") if a.strip()])
        return f"process {value('--process-id')} of a {n}-process cluster{each} | "
    return ""


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
        failed = _failed(d)
        state = (
            "running" if alive(d / "supervisor.pid") else failed["state"] if failed else "stopped"
        )
        version = (current_release(d) or {}).get("version") or "-"
        click.echo(f"{d.name}\t{state}\t{d}\t{version}")


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


def fleet_options(f: Any) -> Any:
    """deploy: ``--trust``, the over-the-air update's grace check and the status topic."""
    opts = [
        click.option(
            "--trust",
            "trust",
            multiple=True,
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            metavar="KEY.pub",
            help="Accept only bundles signed by this Ed25519 public key (repeatable; a node "
            "with EDGEFLOW_TRUST set accepts only bundles signed by those keys, and no plain "
            ".py flows).",
        ),
        click.option(
            "--grace",
            type=DURATION,
            default="30s",
            show_default=True,
            help="Update of a running deployment: check the new version's health this long; "
            "roll back to the previous version when it fails. Given at any deploy, it is kept "
            "for later updates of that deployment (also those from --control-topic).",
        ),
        click.option(
            "--max-error-rate",
            type=click.FloatRange(0, 1),
            default=MAX_ERROR_RATE,
            show_default=True,
            help="Update: dead letters above this share of readings fail the health check "
            "(kept for later updates, like --grace).",
        ),
        click.option(
            "--wait/--no-wait",
            default=True,
            show_default=True,
            help="Update: wait for the grace check's verdict (exit 1 when it rolled back).",
        ),
        click.option(
            "--status-topic",
            envvar="EDGEFLOW_STATUS_TOPIC",
            default=None,
            help=f"Report version, health and update results to this Kafka topic (e.g. "
            f"{DEFAULT_TOPIC}; or EDGEFLOW_STATUS_TOPIC).",
        ),
        click.option(
            "--status-bootstrap",
            envvar="EDGEFLOW_STATUS_BOOTSTRAP",
            metavar="HOST:PORT",
            default=None,
            help="Kafka brokers of --status-topic and --control-topic (or EDGEFLOW_STATUS_BOOTSTRAP).",
        ),
        click.option(
            "--control-topic",
            envvar="EDGEFLOW_CONTROL_TOPIC",
            default=None,
            help="Take new signed bundle versions of this deployment from this Kafka topic "
            "(edgeflow fleet publish; needs --trust or EDGEFLOW_TRUST; or EDGEFLOW_CONTROL_TOPIC).",
        ),
        click.option(
            "--node-id",
            envvar="EDGEFLOW_NODE_ID",
            default=None,
            help="This node's id in the status topic [default: the host name] (or EDGEFLOW_NODE_ID).",
        ),
        click.option(
            "--status-every",
            type=DURATION,
            default="30s",
            show_default=True,
            help="Report to --status-topic this often, and on every change.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def fleet_settings(
    status_topic: str | None,
    bootstrap: str | None,
    node: str | None,
    every_ns: int,
    control_topic: str | None,
    trust: list[Path],
) -> dict[str, Any]:
    """What a deploy records for the supervisor: ``status`` and ``control`` topic settings and
    the ``trust`` keys (None: not given, the recorded ones stay)."""
    if status_topic and not bootstrap:
        raise click.UsageError(
            "--status-topic needs --status-bootstrap HOST:PORT (the fleet's Kafka)"
        )
    if control_topic and not bootstrap:
        raise click.UsageError(
            "--control-topic needs --status-bootstrap HOST:PORT (the fleet's Kafka)"
        )
    if control_topic and not trust:
        raise click.UsageError(
            "--control-topic needs trusted keys (--trust KEY.pub or EDGEFLOW_TRUST): a node "
            "takes only signed bundles from a topic"
        )
    status = None
    if status_topic:
        status = {"topic": status_topic, "bootstrap": bootstrap, "node_id": node,
                  "period_s": every_ns / 1e9}  # fmt: skip
    control = {"topic": control_topic, "bootstrap": bootstrap} if control_topic else None
    return {
        "status": status,
        "control": control,
        "trust": [str(p.resolve()) for p in trust] or None,
    }


def open_deployable(path: Path, trust: list[Path]) -> Bundle | None:
    """The verified bundle at ``path``, or None when ``path`` is not a bundle (a plain flow,
    refused when ``trust`` says this node accepts only signed bundles)."""
    from edgeflow.bundle import BundleError, is_bundle, open_bundle

    if path.is_file() and path.suffix != ".py" and is_bundle(path):
        try:
            return open_bundle(path, trust=trust, require_signature=bool(trust))
        except BundleError as exc:
            raise BundleRefused(str(exc)) from None
    if trust:
        raise BundleRefused(
            f"this node accepts only signed bundles (--trust or EDGEFLOW_TRUST is set), and "
            f"{path} is not one; build and sign it: edgeflow bundle build {path} && edgeflow "
            "bundle sign BUNDLE.efb --key KEY, then deploy the .efb"
        )
    return None


def report_update(d: Path, upd: dict[str, Any]) -> None:
    """The update's verdict in one line; exit 1 when it did not succeed."""
    result = upd.get("result")
    if result == "succeeded":
        click.echo(
            f"updated {d.name} from {upd.get('from')} to {upd.get('to')}: healthy for its "
            f"{upd.get('grace_s', 0):.0f} s grace period; state {upd.get('state')}"
        )
        return
    if result == "rolled back":
        click.echo(
            f"error: update to {upd.get('to')} failed: {upd.get('reason')}; rolled back to "
            f"{upd.get('from')}; see: edgeflow status {d.name}",
            err=True,
        )
    else:
        click.echo(
            f"error: update of {d.name} to {upd.get('to')}: no verdict yet ({result}); see: "
            f"edgeflow status {d.name}",
            err=True,
        )
    sys.exit(1)
