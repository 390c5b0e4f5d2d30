"""``edgeflow fleet status``: the fleet's state as its nodes last reported it to the status topic."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from edgeflow.fleet.status_topic import DEFAULT_TOPIC, FleetReadError, read_latest


@click.group("fleet")
def fleet_group() -> None:
    """Read the status topic the nodes of a fleet report to (edgeflow deploy --status-topic)."""


def _update(value: dict[str, Any]) -> str:
    upd = value.get("last_update") or {}
    result = upd.get("result")
    if not result:
        return "-"
    if result == "rolled back":
        return f"{upd.get('to')} failed, rolled back to {upd.get('from')}: {upd.get('reason')}"
    return f"{upd.get('from')} -> {upd.get('to')} {result}"


def _age(value: dict[str, Any], now: float) -> str:
    at = value.get("reported_at")
    return f"{now - float(at):.0f}s ago" if isinstance(at, (int, float)) else "-"


@fleet_group.command("status")
@click.option(
    "--bootstrap",
    envvar="EDGEFLOW_STATUS_BOOTSTRAP",
    required=True,
    metavar="HOST:PORT",
    help="Kafka brokers of the status topic (or EDGEFLOW_STATUS_BOOTSTRAP).",
)
@click.option(
    "--topic",
    envvar="EDGEFLOW_STATUS_TOPIC",
    default=DEFAULT_TOPIC,
    show_default=True,
    help="The status topic (or EDGEFLOW_STATUS_TOPIC).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the latest record per node as JSON.")
@click.option(
    "--timeout", type=float, default=30, show_default=True, help="Seconds to read the topic."
)
def fleet_status_cmd(bootstrap: str, topic: str, as_json: bool, timeout: float) -> None:
    """Print each node's deployment, version, health and last update result (the latest record
    per key of the status topic). Exits 1 when a deployment is failed, refused or rolled back."""
    try:
        latest = read_latest(bootstrap, topic, timeout)
    except FleetReadError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [latest[k] | {"key": k} for k in sorted(latest)]
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        now = time.time()
        table = [("NODE", "DEPLOYMENT", "VERSION", "STATE", "HEALTH", "REPORTED", "LAST UPDATE")]
        table += [
            (
                str(v.get("node", k.split("/")[0])),
                str(v.get("deployment", "-")),
                str(v.get("version") or "-"),
                str(v.get("state", "-")),
                str(v.get("health", "-")),
                _age(v, now),
                _update(v),
            )
            for k, v in zip(sorted(latest), rows, strict=True)
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
        for r in table:
            click.echo(
                "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
            )
    bad = [
        v
        for v in rows
        if v.get("state") in ("failed", "refused")
        or (v.get("last_update") or {}).get("result") == "rolled back"
    ]
    if bad:
        sys.exit(1)


@fleet_group.command("publish")
@click.argument(
    "bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option(
    "--bootstrap",
    envvar="EDGEFLOW_STATUS_BOOTSTRAP",
    required=True,
    metavar="HOST:PORT",
    help="Kafka brokers of the control topic (or EDGEFLOW_STATUS_BOOTSTRAP).",
)
@click.option(
    "--topic",
    envvar="EDGEFLOW_CONTROL_TOPIC",
    required=True,
    help="The control topic the nodes follow (edgeflow deploy --control-topic; or EDGEFLOW_CONTROL_TOPIC).",
)
@click.option("--name", default=None, help="Deployment name [default: the bundle's flow name].")
def fleet_publish_cmd(bundle_file: Path, bootstrap: str, topic: str, name: str | None) -> None:
    """Publish a signed BUNDLE to a control topic: every node running deployment NAME with
    --control-topic TOPIC updates to it (and rolls back by itself if it is unhealthy)."""
    from kafka.errors import KafkaError

    from edgeflow.bundle import BundleError, open_bundle
    from edgeflow.cli.deployments import BundleRefused
    from edgeflow.fleet.control_topic import publish_bundle

    try:
        bundle = open_bundle(bundle_file)
    except BundleError as exc:
        raise BundleRefused(str(exc)) from None
    if bundle.signature_key is None:
        raise BundleRefused(
            f"{bundle_file} is not signed, and nodes take only signed bundles from a control "
            f"topic; sign it first: edgeflow bundle sign {bundle_file} --key KEY"
        )
    dep = name or re.sub(r"[^A-Za-z0-9_-]", "_", bundle.name)
    try:
        publish_bundle(bootstrap, topic, dep, bundle_file.read_bytes())
    except ValueError as exc:  # the EDGEFLOW_FLEET_* security settings
        raise BundleRefused(str(exc)) from None
    except KafkaError as exc:
        raise click.ClickException(
            f"publishing to {topic!r} on {bootstrap} failed: {exc}"
        ) from None
    click.echo(f"published {bundle.name} {bundle.version} for deployment {dep} to {topic}")
