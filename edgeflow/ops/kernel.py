"""The operator protocol: what every step kernel (window, downsample, detect, user
functions, enrich) implements, so that the engine and the tests can treat them alike.

A kernel is plain numpy (no engine import). It declares

* ``step`` — the step it runs (named in records, dead letters and errors);
* ``inputs`` — the kind of stream it reads (``("readings",)`` for every kernel today);
* ``outputs`` — the ports it produces (``windows``/``late``, ``trend``, ``anomalies``, a
  route per name, ``dead_letters``, ``unmatched``...), exactly the step's streams in the plan;
* ``reads`` — the fields of its input it reads (None: any field, e.g. user code or a join);

and implements

* ``problems()`` — its arguments' problems, one line each (empty: valid); validation has
  already run the same checks on the spec, so a built kernel normally reports none;
* ``init()`` — a fresh state (``None`` for a stateless kernel);
* ``process(state, batch, now_ns)`` — one batch: every output as ``(port, batch)``,
  exactly what the kernel's own fast entry (``step_batch``) gives, in its order;
* ``finish(state)`` — what the end of input releases (open windows, held points);
* ``snapshot(state)`` / ``restore(blob, now_ns)`` — the state as bytes and back; a restored
  state continues exactly as the snapshotted one would have.

The engine's loop still calls each kind's ``step_batch`` (its return shapes are tuned to
the loop); the protocol is the uniform view: snapshots, declared ports and fields, and
``process``/``finish`` for generic drivers and tests. Every kernel class subclasses
:class:`Kernel`, so mypy checks each against it (tests/test_kernel_protocol.py checks
that each implements every member and that ``process`` equals ``step_batch``).
"""

from __future__ import annotations

import pickle
from typing import Any, Protocol, TypeVar, runtime_checkable

from edgeflow.batch import Batch, RecordBatch

S = TypeVar("S")

#: a kernel's outputs for one call: ``(port, batch)`` pairs
Emitted = list[tuple[str, Batch | RecordBatch]]


@runtime_checkable
class Kernel(Protocol[S]):
    """One operator's kernel (see the module docstring for each member's guarantee)."""

    step: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    reads: tuple[str, ...] | None

    def problems(self) -> list[str]: ...

    def init(self) -> S: ...

    def process(self, state: S, batch: Batch, now_ns: int) -> Emitted: ...

    def finish(self, state: S) -> Emitted: ...

    def snapshot(self, state: S) -> bytes: ...

    def restore(self, blob: bytes, now_ns: int) -> S: ...


def pickled(state: Any) -> bytes:
    """A state as bytes (kernels whose state is plain Python/numpy data)."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def unpickled(blob: bytes) -> Any:
    """The state :func:`pickled` made."""
    return pickle.loads(blob)


def records(port: str, rb: RecordBatch | None) -> Emitted:
    """``[(port, rb)]``, or ``[]`` when the kernel gave nothing (``None``)."""
    return [] if rb is None else [(port, rb)]
