"""The declarative API: build a flow in Python; nothing runs until it is run.

Modules: :mod:`~edgeflow.flow.api` (Flow and streams, what a user calls),
:mod:`~edgeflow.flow.steps` (graph nodes and ports), :mod:`~edgeflow.flow.validation`
(checks a flow into a plan) and :mod:`~edgeflow.flow.plan` (the validated plan).
"""

from edgeflow.flow.api import Flow, ReadingStream, RecordStream, SinkStep
from edgeflow.flow.plan import Plan
from edgeflow.flow.steps import Step

__all__ = ["Flow", "Plan", "ReadingStream", "RecordStream", "SinkStep", "Step"]
