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

A new operator is one :class:`Operator` subclass registered with :func:`register`, one
stream method calling ``ReadingStream.operator(kind, ...)`` and its tests: the step's
streams (``PORTS``), validation (its ``problems()``, every field in ``reads`` checked
against the input stream, ``out_fields``), the plan (``to_dict``/``describe``), unrouted
optional outputs and the engine's wiring (``process``/``finish``/``snapshot`` driven
generically, see tests/test_new_operator.py) all follow from the class.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

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


class RecordKernel(Kernel[dict[str, Any]]):
    """The protocol for a kernel that turns readings into records on one port (:attr:`port`)
    with ``step_batch(state, batch)`` and ``flush(state)``, and keeps plain picklable state:
    ``process``, ``finish``, ``snapshot`` and ``restore`` written once."""

    port: ClassVar[str] = ""

    def step_batch(self, state: dict[str, Any], batch: Batch) -> RecordBatch | None:
        raise NotImplementedError

    def flush(self, state: dict[str, Any]) -> RecordBatch | None:
        raise NotImplementedError

    def process(self, state: dict[str, Any], batch: Batch, now_ns: int) -> Emitted:
        return records(self.port, self.step_batch(state, batch))

    def finish(self, state: dict[str, Any]) -> Emitted:
        return records(self.port, self.flush(state))

    def snapshot(self, state: dict[str, Any]) -> bytes:
        return pickled(state)

    def restore(self, blob: bytes, now_ns: int) -> dict[str, Any]:
        state: dict[str, Any] = unpickled(blob)
        return state


class StatelessKernel(Kernel[None]):
    """The protocol for a kernel that holds nothing between batches (user functions, a
    table join): ``init``, ``finish``, ``snapshot`` and ``restore`` written once."""

    def init(self) -> None:
        return None

    def finish(self, state: None) -> Emitted:
        return []  # nothing is held back

    def snapshot(self, state: None) -> bytes:
        return b""

    def restore(self, blob: bytes, now_ns: int) -> None:
        return None


#: step kinds edgeflow wires itself (a registered operator cannot take one of these names)
BUILTIN_KINDS = ("source", "window", "downsample", "detect", "features", "udf", "enrich", "sink")


class Operator(Kernel[S]):
    """Base of a registered operator's kernel: a step of kind :attr:`kind` on a reading stream.

    The class declares everything the flow needs; nothing else in edgeflow names it:

    * ``kind`` — the step kind (and default step name);
    * ``outputs`` — its ports; a port named ``readings`` carries :class:`Batch` readings
      (windows, detect, sinks can read it); other ports may carry readings or records;
    * ``optional_outputs`` — ports that may go nowhere (counted as unrouted, not a problem);
      every other output must be read by a step or a sink;
    * ``reads`` (set in ``__init__``) — fields the kernel reads: each must be a field of the
      input stream, else validation names the step and the stream's fields (None: any);
    * ``problems()`` — its arguments' problems, one line each (see ``edgeflow.ops.args``).

    It is built as ``cls(step, **arguments)`` (the stream method's keyword arguments) by
    validation and again by the engine; the constructor must not raise on bad arguments
    (``problems()`` reports them). ``out_fields`` gives the output readings' fields (default:
    the input's). ``describe()`` is what ``inspect`` shows: the JSON-able arguments.
    The state from ``init()`` is per shard; ``process`` may keep state in it (snapshotted
    with ``snapshot``, pickled by default). An exception in ``process`` fails the run with
    one error line naming the step.
    """

    kind: ClassVar[str] = ""
    optional_outputs: ClassVar[tuple[str, ...]] = ()
    inputs: tuple[str, ...] = ("readings",)
    outputs: tuple[str, ...] = ("readings",)
    reads: tuple[str, ...] | None = None

    def __init__(self, step: str, **arguments: Any) -> None:
        self.step = step
        self.arguments: dict[str, Any] = arguments

    def problems(self) -> list[str]:
        return []

    def out_fields(self, fields: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """The output readings' fields given the input's (None: known only from the data)."""
        return fields

    def describe(self) -> dict[str, Any]:
        """The arguments as ``inspect`` shows them (JSON values only)."""
        return {k: v for k, v in self.arguments.items() if _is_json(v)}

    def finish(self, state: S) -> Emitted:
        return []

    def snapshot(self, state: S) -> bytes:
        return pickled(state)

    def restore(self, blob: bytes, now_ns: int) -> S:
        restored: S = unpickled(blob)
        return restored


def _is_json(v: Any) -> bool:
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_json(x) for x in v)
    return isinstance(v, Mapping) and all(isinstance(k, str) and _is_json(x) for k, x in v.items())


#: registered operators by step kind (see :func:`register`)
OPERATORS: dict[str, type[Operator[Any]]] = {}

OperatorClass = TypeVar("OperatorClass", bound="type[Operator[Any]]")


def register(cls: OperatorClass) -> OperatorClass:
    """Register an :class:`Operator` class under its ``kind`` (a class decorator).
    Registering a class of the same module and name again replaces it (a re-imported flow
    file); another class under a taken kind, or a built-in kind, is a ValueError."""
    kind = cls.kind
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"{cls.__name__}.kind={kind!r}: give the step kind, e.g. 'clip'")
    if kind in BUILTIN_KINDS:
        raise ValueError(f"{cls.__name__}.kind={kind!r} is a built-in step kind; pick another")
    old = OPERATORS.get(kind)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"step kind {kind!r} is already registered by {old.__qualname__}")
    if not set(cls.optional_outputs) <= set(cls.outputs):
        raise ValueError(f"{cls.__name__}.optional_outputs must be some of its outputs")
    OPERATORS[kind] = cls
    return cls
