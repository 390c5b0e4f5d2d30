"""The live console view of a foreground run: the operator's figures, about once a second.

Shown on stderr (stdout stays for records). By default only when stderr is a terminal and
no sink of the flow prints to the console; ``--live`` forces it, ``--no-live`` hides it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from edgeflow.connectors.connection_state import CONNECTIONS
from edgeflow.connectors.connection_state import describe as describe_connection
from edgeflow.engine.counters import COUNTERS
from edgeflow.engine.figures import RateWindow, figures, human_bytes
from edgeflow.flow.plan import Plan


def wanted(plan: Plan, choice: bool | None, stderr_is_tty: bool) -> bool:
    if choice is not None:
        return choice
    prints = any(k.spec.describe().get("kind") == "stdio" for k in plan.sinks)
    return stderr_is_tty and not prints


def render(
    plan: Plan,
    figs: dict[str, Any],
    c: dict[str, int],
    elapsed_s: float,
    links: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """A rich renderable of the figures (a table per flow, a row per sink, a line per source
    that connects to a broker: connected, or retrying since when and why)."""
    from rich.table import Table

    lag = figs.get("watermark_lag_s")
    top = Table.grid(padding=(0, 2))
    top.add_column(style="bold")
    top.add_column(justify="right")
    top.add_column(style="bold")
    top.add_column(justify="right")
    top.add_row(
        "readings/s in", f"{figs['readings_per_s']:,.0f}",
        "records/s out", f"{figs['records_per_s']:,.0f}",
    )  # fmt: skip
    top.add_row(
        "readings in", f"{figs['readings_in']:,}", "records out", f"{figs['records_out']:,}"
    )
    top.add_row(
        "bytes in", human_bytes(figs["bytes_in"]), "bytes out", human_bytes(figs["bytes_out"])
    )
    top.add_row(
        "reduction", f"{figs['reduction']:,.1f}x",
        "watermark lag", "-" if lag is None else f"{lag:,.1f} s",
    )  # fmt: skip
    top.add_row("late readings", f"{figs['late']:,}", "dead letters", f"{figs['dead_letters']:,}")
    top.add_row(
        "anomalies", f"{figs['anomalies']:,}",
        "outbox waiting / dropped", f"{figs['outbox_depth']:,} / {figs['outbox_dropped']:,}",
    )  # fmt: skip
    sinks = Table(title=None, box=None, padding=(0, 2), show_edge=False)
    sinks.add_column("sink")
    sinks.add_column("kind")
    sinks.add_column("records", justify="right")
    sinks.add_column("bytes", justify="right")
    for k in plan.sinks:
        sinks.add_row(
            k.name,
            str(k.spec.describe().get("kind")),
            f"{c.get(f'records_to.{k.name}', 0):,}",
            human_bytes(c.get(f"bytes_to.{k.name}", 0)),
        )
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    parts: list[Any] = [top, "", sinks]
    if links:
        parts.append("")
        for name, state in sorted(links.items()):
            style = "green" if state.get("connected") else "bold red"
            parts.append(Text(f"source {name}: {describe_connection(state)}", style=style))
    return Panel(
        Group(*parts),
        title=f"edgeflow · {plan.name} · {elapsed_s:,.0f} s",
        expand=False,
    )


class LiveView:
    def __init__(self, plan: Plan, state_dir: Path | None, interval_s: float = 1.0) -> None:
        self.plan = plan
        self.outbox = state_dir / "outbox.sqlite" if state_dir is not None else None
        self.interval_s = interval_s
        self.rates = RateWindow()  # rates over the last 10 s, as `edgeflow status` shows
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def _frame(self, prev: dict[str, int], dt: float, t0: float) -> tuple[Any, dict[str, int]]:
        c = COUNTERS.snapshot()
        prev, dt = self.rates.push(time.time(), c)
        figs = figures(c, prev, dt, outbox=self.outbox)
        return render(self.plan, figs, c, time.time() - t0, CONNECTIONS.snapshot()), c

    def _loop(self) -> None:
        from rich.console import Console
        from rich.live import Live

        t0 = last_t = time.time()
        prev: dict[str, int] = {}
        frame, prev = self._frame(prev, 1.0, t0)
        console = Console(stderr=True)
        with Live(frame, console=console, auto_refresh=False) as live:
            while not self.done.wait(self.interval_s):
                now = time.time()
                frame, prev = self._frame(prev, now - last_t, t0)
                last_t = now
                live.update(frame, refresh=True)
            now = time.time()
            frame, prev = self._frame(prev, now - last_t, t0)
            live.update(frame, refresh=True)
        if not console.is_terminal:
            console.print()  # a file or pipe gets the last frame; end its line

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, daemon=True, name="edgeflow-live")
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(5)
