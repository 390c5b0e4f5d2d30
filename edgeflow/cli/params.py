"""click parameter types: durations (``10s``, ``5m``) and flow references."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from edgeflow.cli.loader import load_flow
from edgeflow.errors import DurationError, FlowLoadError
from edgeflow.flow.plan import Flow
from edgeflow.timeutil import parse_duration

if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
    _FlowParam = click.ParamType[Flow]
else:
    _IntParam = _FlowParam = click.ParamType


class DurationType(_IntParam):
    """A duration such as ``500ms``, ``10s``, ``5m``, ``1h``; converted to int nanoseconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value), what="duration", allow_zero=False)
        except DurationError as exc:
            self.fail(str(exc), param, ctx)


#: ``ctx.meta`` key of the FLOW argument as the user gave it (path or module reference)
FLOW_REF_KEY = "edgeflow.flow_ref"


class FlowType(_FlowParam):
    """``path/to/flow.py``, ``path.py:name`` or ``module:name``; loads the Flow."""

    name = "flow"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Flow:
        if isinstance(value, Flow):
            return value
        if ctx is not None:  # as given, for the members a cluster launcher starts
            ctx.meta[FLOW_REF_KEY] = str(value)
        try:
            return load_flow(str(value))
        except FlowLoadError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()
FLOW = FlowType()
