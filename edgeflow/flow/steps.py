"""The nodes of a flow graph and the streams each kind of step produces.

Shared by the user API (:mod:`edgeflow.flow.api`), validation
(:mod:`edgeflow.flow.validation`) and the plan (:mod:`edgeflow.flow.plan`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edgeflow.ops.enrich import UNMATCHED
from edgeflow.ops.udf import UNROUTED

#: what a step or field name may be
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

#: Streams a step produces: a source gives readings and dead letters, a window gives
#: window records and late readings.
PORTS = {
    "source": ("readings", "dead_letters"),
    "window": ("windows", "late"),
    "downsample": ("trend",),
    "detect": ("anomalies",),
    "features": ("readings",),
    "sink": (),
}
OPTIONAL_PORTS = {"dead_letters", "late", UNROUTED, UNMATCHED}


@dataclass
class Step:
    """One node of the flow graph."""

    name: str
    kind: str
    inputs: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    user_named: bool = False

    def ref(self, port: str) -> str:
        return f"{self.name}.{port}"
