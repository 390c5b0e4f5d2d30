"""Render a :class:`~edgeflow.plot.record.Recording` as a PNG (matplotlib, no display needed).

The top panel is the raw field with its reduced trend and the anomalies raised on it;
below, one panel per window summary column (with its own trend and anomalies). Every
anomaly also draws a faint red line across all panels, so causes line up in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import EdgeflowError
from edgeflow.plot.record import Recording

SKIP_COLUMNS = {"key", "t", "window_start", "window_end", "window_seq", "count"}


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise EdgeflowError(
            "edgeflow plot needs matplotlib: install edgeflow[plot] (pip install 'edgeflow[plot]')"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dt(ns: np.ndarray) -> np.ndarray:
    return np.asarray(ns, dtype=np.int64).astype("datetime64[ns]")


def numeric_fields(table: dict[str, np.ndarray]) -> list[str]:
    return [
        c for c, v in table.items() if c not in SKIP_COLUMNS and np.issubdtype(v.dtype, np.number)
    ]


def render(rec: Recording, out: Path, *, field: str | None = None, max_panels: int = 5) -> Path:
    plt = _matplotlib()
    raw = rec.table("readings")
    trend = rec.table("trend")
    windows = rec.table("windows")
    alerts = rec.table("anomalies")
    fields = numeric_fields(raw)
    if field is None:
        field = fields[0] if fields else None
    elif raw and field not in fields:
        raise EdgeflowError(
            f"--field {field!r}: the readings of {rec.key!r} have {', '.join(fields) or 'no fields'}"
        )
    flagged = set(alerts["field"].tolist()) if alerts else set()
    # columns with anomalies or a trend first: they are what the flow acts on
    columns = sorted(numeric_fields(windows), key=lambda c: (c not in flagged, c not in trend))
    columns = columns[: max(0, max_panels - 1)]
    if not raw and not columns and not trend:
        raise EdgeflowError(
            f"nothing recorded for key {rec.key!r}: check --key (keys look like the source's "
            "device names) and that the run was long enough for a window to close"
        )
    panels = ([field] if raw and field else []) + columns
    if not panels:
        panels = [next(c for c in trend if c not in SKIP_COLUMNS)]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, figsize=(12, 2.2 + 1.6 * len(panels)), squeeze=False
    )
    alert_times = _dt(alerts["t"]) if alerts else np.empty(0, "datetime64[ns]")
    for ax, name in zip(axes[:, 0], panels, strict=True):
        if name == field and raw:
            ax.plot(
                _dt(raw["t"]), raw[name], lw=0.5, color="0.55", label=f"raw {name}", rasterized=True
            )
        elif windows and name in windows:
            ax.step(_dt(windows["window_end"]), windows[name], where="pre", lw=1.2, color="tab:blue",
                    label=f"window {name}")  # fmt: skip
        if trend and name in trend:
            ax.plot(_dt(trend["t"]), trend[name], "-o", ms=2.5, lw=1, color="tab:orange",
                    label=f"trend ({len(trend['t'])} points)")  # fmt: skip
        if alerts:
            for t in alert_times:
                ax.axvline(t, color="tab:red", alpha=0.15, lw=1)
            mine = alerts["field"] == name
            if mine.any():
                ax.plot(_dt(alerts["t"][mine]), alerts["value"][mine], "v", color="tab:red", ms=8,
                        label=f"anomalies ({int(mine.sum())})")  # fmt: skip
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    axes[0, 0].set_title(f"{rec.key}: raw readings, reduced trend, window summaries, anomalies")
    axes[-1, 0].set_xlabel("event time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
