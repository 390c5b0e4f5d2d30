"""edgeflow: declarative stream processing for edge nodes.

from edgeflow import Flow, window, agg
from edgeflow.connectors import simulate, stdio

flow = Flow("press-3")
r = flow.source(simulate.sensors(devices=50, rate_hz=100, seed=1), key="device", time="ts", lateness="2s")
r.window(window.tumbling("1s"), agg.count(), agg.mean("accel")).to(stdio.sink())

The names below are loaded on first use (``import edgeflow`` alone loads neither numpy nor
the engine), so a command pays only for what it touches. scipy, matplotlib and bytewax are
never loaded by importing edgeflow: scipy when a step that needs it first runs, matplotlib
when a plot is drawn, bytewax when a flow is run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeflow.flow import Flow, Plan
    from edgeflow.ops import agg, detect, downsample, window

__version__ = "0.1.0"
__all__ = ["Flow", "Plan", "__version__", "agg", "detect", "downsample", "window"]

#: public name -> (module, attribute in it, or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "Flow": ("edgeflow.flow", "Flow"),
    "Plan": ("edgeflow.flow", "Plan"),
    "agg": ("edgeflow.ops.agg", None),
    "detect": ("edgeflow.ops.detect", None),
    "downsample": ("edgeflow.ops.downsample", None),
    "window": ("edgeflow.ops.window", None),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'edgeflow' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
