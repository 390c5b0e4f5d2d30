"""``edgeflow plot``: render one key's streams from a short run of a flow or from recorded files."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgeflow.cli.params import DURATION, FLOW
from edgeflow.errors import EdgeflowError, FlowValidationError
from edgeflow.timeutil import format_duration

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("plot")
@click.argument("flow_ref", metavar="[FLOW]", required=False)
@click.option("--key", required=True, help="The key (device) to plot, e.g. m-3.")
@click.option("--field", default=None, help="Raw field for the top panel (default: the first).")
@click.option(
    "--span",
    type=DURATION,
    default="2m",
    show_default=True,
    help="Stream time of the short run: simulated sources run as fast as possible for this "
    "long (sets EDGEFLOW_SIM_SPEED=max and EDGEFLOW_SIM_DURATION for flows that use "
    "simulate.from_env()).",
)
@click.option(
    "--for",
    "run_for",
    type=DURATION,
    default="60s",
    show_default=True,
    help="Wall-clock limit of the short run (live sources run this long).",
)
@click.option(
    "--readings", "readings", multiple=True, type=_FILE, help="Recorded raw readings (JSON lines)."
)
@click.option("--trend", multiple=True, type=_FILE, help="Recorded trend points (JSON lines).")
@click.option(
    "--windows", multiple=True, type=_FILE, help="Recorded window summaries (JSON lines)."
)
@click.option(
    "--anomalies", multiple=True, type=_FILE, help="Recorded anomaly events (JSON lines)."
)
@click.option("--panels", type=click.IntRange(1, 12), default=5, show_default=True,
              help="At most this many panels (the raw field, then window columns).")  # fmt: skip
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("edgeflow-plot.png"),
    show_default=True, help="The PNG to write.",
)  # fmt: skip
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also save the short run's recorded streams here as JSON lines (replot them with "
    "--readings/--trend/--windows/--anomalies).",
)
def plot_cmd(
    flow_ref: str | None,
    key: str,
    field: str | None,
    span: int,
    run_for: int,
    readings: tuple[Path, ...],
    trend: tuple[Path, ...],
    windows: tuple[Path, ...],
    anomalies: tuple[Path, ...],
    panels: int,
    out: Path,
    keep: Path | None,
) -> None:
    """Render a PNG of one key: raw readings, the reduced trend, window summaries and
    anomaly markers, from a short run of FLOW or from recorded JSON-lines files.

    \b
      edgeflow plot flows/predictive_maintenance.py --key m-3 --span 5m -o m3.png
      edgeflow plot --key m-3 --readings raw.jsonl --windows features.jsonl -o m3.png
    """
    from edgeflow.plot.record import from_files, short_run
    from edgeflow.plot.render import render

    files = {"readings": readings, "trend": trend, "windows": windows, "anomalies": anomalies}
    recorded = any(files.values())
    if recorded == (flow_ref is not None):
        raise click.UsageError(
            "give either FLOW (a short run) or recorded files (--readings/--trend/--windows/"
            "--anomalies), not both and not neither"
        )
    try:
        if flow_ref is not None:
            os.environ.setdefault("EDGEFLOW_SIM_SPEED", "max")
            os.environ.setdefault("EDGEFLOW_SIM_DURATION", format_duration(span))
            flow = FLOW.convert(flow_ref, None, click.get_current_context())
            try:
                plan = flow.plan()
            except FlowValidationError as exc:
                raise click.UsageError(str(exc)) from None
            rec = short_run(plan, key, run_for)
            if keep is not None:
                for p in rec.save(keep):
                    click.echo(f"recorded {p}", err=True)
        else:
            rec = from_files(key, {k: list(v) for k, v in files.items()})
        path = render(rec, out, field=field, max_panels=panels)
    except (EdgeflowError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")
