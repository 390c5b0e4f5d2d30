"""How to run a plan: the options both the runner and the bytewax adapter read.

Its own module so that :mod:`edgeflow.engine.runner` (which imports the adapter lazily)
and :mod:`edgeflow.engine.bytewax_adapter` (which reads the options) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunOptions:
    """Options of one run; the defaults run one worker without state until end of input."""

    workers: int = 1
    state_dir: Path | None = None
    run_for_ns: int | None = None
    snapshot_every_ns: int = 2_000_000_000
    metrics_port: int | None = None
    #: this process's place in a cluster (bytewax cluster mode): the ``host:port`` of every
    #: member, in process-id order, and which of them this process is; None: a run on its own
    addresses: list[str] | None = None
    process_id: int | None = None

    @property
    def processes(self) -> int:
        """How many processes run the flow together (1 without a cluster)."""
        return len(self.addresses) if self.addresses else 1
