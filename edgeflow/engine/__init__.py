"""Compiles a plan into a bytewax dataflow and runs it. The only place that imports bytewax."""

from edgeflow.engine.runner import RunOptions, RunSummary, run, stop

__all__ = ["RunOptions", "RunSummary", "run", "stop"]
