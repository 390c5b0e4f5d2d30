"""The nodes of a flow graph and the streams each kind of step produces.

Shared by the user API (:mod:`edgeflow.flow.api`), validation
(:mod:`edgeflow.flow.validation`) and the plan (:mod:`edgeflow.flow.plan`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeflow.ops.enrich import UNMATCHED
from edgeflow.ops.kernel import OPERATORS
from edgeflow.ops.udf import UNROUTED

#: what a step or field name may be
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

#: Streams a step produces: a source gives readings and dead letters, a window gives
#: window records and late readings.
_BUILTIN_PORTS = {
    "source": ("readings", "dead_letters"),
    "record_source": ("records", "dead_letters"),
    "rollup": ("rollups", "late"),
    "window": ("windows", "late"),
    "downsample": ("trend",),
    "detect": ("anomalies",),
    "features": ("readings",),
    "sink": (),
}


class _Ports(Mapping[str, tuple[str, ...]]):
    """The built-in kinds' ports, then each registered operator's declared ``outputs``
    (:data:`edgeflow.ops.kernel.OPERATORS`, looked up when asked: registered later too)."""

    def __getitem__(self, kind: str) -> tuple[str, ...]:
        if kind in _BUILTIN_PORTS:
            return _BUILTIN_PORTS[kind]
        return OPERATORS[kind].outputs

    def __iter__(self) -> Iterator[str]:
        return iter({**_BUILTIN_PORTS, **dict.fromkeys(OPERATORS)})

    def __len__(self) -> int:
        return len(_BUILTIN_PORTS) + len(OPERATORS)


PORTS: Mapping[str, tuple[str, ...]] = _Ports()
OPTIONAL_PORTS = {"dead_letters", "late", UNROUTED, UNMATCHED}


def optional_port(kind: str, port: str) -> bool:
    """Whether a step of ``kind`` may leave ``port`` unread (then counted as unrouted)."""
    cls = OPERATORS.get(kind)
    if cls is not None:
        return port in cls.optional_outputs
    return port in OPTIONAL_PORTS


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
