"""The declarative API: build a flow in Python; nothing runs until it is run."""

from edgeflow.flow.plan import Flow, Plan, ReadingStream, RecordStream, SinkStep, Step

__all__ = ["Flow", "Plan", "ReadingStream", "RecordStream", "SinkStep", "Step"]
