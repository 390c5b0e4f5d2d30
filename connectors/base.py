"""Connector contracts: the public API for writing a source or a sink. Engine-neutral:
nothing here imports bytewax, and a connector never needs to.

**A source** is a :class:`SourceSpec` (configuration, checked before anything runs) that
opens one :class:`SourcePartition` per partition. Implement:

* ``SourceSpec.describe()`` (a JSON-able dict, ``"kind"`` first), ``partitions()`` (stable
  names: a snapshot is kept per partition name), ``open(partition, resume, ctx)``;
  optionally ``problems()`` (what is wrong with the configuration, as sentences: the flow
  exits 2 listing them), ``columns()`` (when known before running) and ``guarantee()``.
* ``SourcePartition.next_batch()`` **never blocks**: it returns what is ready now (possibly
  ``[]``), as :class:`~edgeflow.batch.Batch` objects of readings (build them with
  :class:`edgeflow.connectors.parse.BatchBuilder`, or decode payloads with
  :class:`edgeflow.connectors.payloads.Decoder` as every built-in source does) and
  :class:`~edgeflow.batch.RecordBatch` objects of kind ``dead_letter`` for input that could
  not be read (``BatchBuilder.fail``: where, raw bytes, reason). It raises
  ``StopIteration`` when the input is finished (a live source never does). It must not
  raise for bad input: bad input is a dead letter.
* ``next_awake()`` says when to call ``next_batch`` again (ns since the epoch) instead of
  sleeping, e.g. the next poll of a device; ``None`` means "as soon as possible". A source
  that polls returns ``[]`` from ``next_batch`` until then.
* ``snapshot()`` returns a position (picklable, small) that, given back to
  ``SourceSpec.open`` as ``resume``, continues reading *after* the last item returned:
  nothing twice, nothing skipped (the engine calls it between batches and stores it with
  the flow's state; after a crash the flow resumes from the last stored snapshot, so the
  source must give again everything read after it). ``close()`` releases connections.

**Delivery guarantee.** State it in the connector's docstring and return it from
``guarantee()``: one of :data:`GUARANTEES`. ``exactly-once`` (the default for sources):
resuming from a snapshot replays exactly what came after it (files, Kafka offsets, a
device's sequence numbers). ``at-least-once``: records read after the last snapshot may come
again, none is lost. ``at-most-once``: a crash may lose records read since the last
snapshot (a live feed without replay), none comes twice. Check the claim with
:func:`edgeflow.testing.check_source`.

**A sink** is a :class:`SinkSpec` that opens :class:`SinkPartition` objects; ``write``
gets record batches (``RecordBatch.rows()`` gives dicts; ``id_columns`` name the columns
that identify a record: put them in a message id so consumers can drop duplicates). A sink
that keeps a position sets ``stateful = True`` and makes its output durable before
``snapshot()`` returns it, so that a resumed run continues exactly where the snapshot was
(``exactly-once``); a sink without one (``stateful = False``) is ``at-least-once``: after a
crash, the records written since the last snapshot are written again. ``write`` may raise
``OSError`` (a full disk, say): the flow stops with one line naming the sink. Check it
with :func:`edgeflow.testing.check_sink`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeflow.batch import Batch, RecordBatch

Item = Batch | RecordBatch

#: Delivery guarantees a connector may state (see the module docstring).
GUARANTEES = ("exactly-once", "at-least-once", "at-most-once")


@dataclass(frozen=True)
class SourceContext:
    """How the flow wants readings cut: which column is the key, which the time."""

    flow: str
    step: str
    key: str
    time: str
    fields: tuple[str, ...] | None
    batch_max: int = 131_072
    batch_budget_ns: int = 1_000_000
    #: the source's declared fields (``fields`` above is the part of them the flow uses);
    #: a source checks every declared field, so dead letters do not depend on the flow
    declared: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SinkContext:
    flow: str
    step: str
    version: str = "0"
    state_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SourcePartition(ABC):
    #: raw bytes read so far (payloads, lines, messages); the engine reports the growth
    #: as ``bytes_in``. Simulators estimate the JSON their readings would be sent as.
    bytes_read: int = 0

    @abstractmethod
    def next_batch(self) -> list[Item]: ...

    def next_awake(self) -> int | None:
        return None

    @abstractmethod
    def snapshot(self) -> Any: ...

    def close(self) -> None:
        return None


class SourceSpec(ABC):
    """Configuration of a source. ``columns()`` lists the columns it yields, if known."""

    kind: str = "source"
    default_key: str | None = None
    default_time: str | None = None

    def columns(self) -> Sequence[str] | None:
        return None

    def guarantee(self) -> str:
        """What resuming from a snapshot gives (one of :data:`GUARANTEES`; default
        ``exactly-once``, the contract of :meth:`SourcePartition.snapshot`)."""
        return "exactly-once"

    def numeric_fields(self, key: str, time: str) -> tuple[str, ...] | None:
        """The fields readings will carry, if known before running (default: columns - key - time)."""
        cols = self.columns()
        return None if cols is None else tuple(c for c in cols if c not in (key, time))

    def check_context(self, key: str, time: str) -> list[str]:
        """Problems with the key/time the flow chose (default: they must be columns, if known)."""
        cols = self.columns()
        out = []
        if cols is not None:
            for what, name in (("key", key), ("time", time)):
                if name and name not in cols:
                    out.append(f"unknown {what} field {name!r}; the source has: {', '.join(cols)}")
        return out

    def problems(self) -> list[str]:
        return []

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    @abstractmethod
    def partitions(self) -> list[str]: ...

    def keys_partitioned(self) -> bool:
        """True when each key's readings all come through one partition, in order (so
        per-key work such as detection can run inside the partition). Default: a single
        partition."""
        return len(self.partitions()) == 1

    @abstractmethod
    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition: ...


class SinkPartition(ABC):
    #: bytes written so far (lines, or Kafka message keys + values); reported as ``bytes_out``
    bytes_written: int = 0

    @abstractmethod
    def write(self, batches: list[RecordBatch]) -> None: ...

    def snapshot(self) -> Any:
        return None

    def close(self) -> None:
        return None


class SinkSpec(ABC):
    kind: str = "sink"
    #: True when the sink keeps a position and resumes exactly (one partition per item key).
    stateful: bool = False

    def problems(self) -> list[str]:
        return []

    def guarantee(self) -> str:
        """What a crash leaves delivered (one of :data:`GUARANTEES`): ``exactly-once`` for a
        stateful sink (it resumes at its snapshot), else ``at-least-once``."""
        return "exactly-once" if self.stateful else "at-least-once"

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def partitions(self) -> list[str]:
        return ["0"]

    @abstractmethod
    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition: ...

    def report(self, ctx: SinkContext) -> list[str]:
        """Lines for the end-of-run summary (e.g. what is still queued)."""
        return []

    def failures(self, ctx: SinkContext) -> list[str]:
        """Why the run failed although the engine ended (one line each, e.g. the broker
        refused the connection): the CLI prints them as errors and exits non-zero."""
        return []
