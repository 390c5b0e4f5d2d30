"""Publish records to Kafka through the durable outbox; read readings from Kafka topics.

**Sink** (``kafka.sink("topic")``). Delivery guarantee: at-least-once into Kafka, with a
deterministic record id on every message (header ``edgeflow-id``: flow/step/key/window
start, or sequence) so consumers drop the rare duplicate after a crash. Records are
appended to the outbox (SQLite, fsync'ed) inside the flow; a background forwarder sends
them with an idempotent producer (``acks="all"``) and deletes only what the broker
acknowledged, so an unreachable broker never blocks the flow and loses nothing (up to
the outbox's disk budget, beyond which low-priority records are dropped and counted).
Without any bootstrap configured, records stay in the local outbox.

``exactly_once=True``: exactly-once into Kafka for ``read_committed`` consumers. The
forwarders write each batch of outbox records and the outbox position in one Kafka
transaction (:mod:`edgeflow.connectors.forwarder`), and a resumed flow does not queue again
the records a transaction already committed (their ids are kept, :mod:`outbox`), so across
crashes of the node and broker outages a consumer with ``isolation_level="read_committed"``
sees each record once, with no de-duplication downstream. What it needs and costs: consumers
must read ``read_committed`` (a ``read_uncommitted`` one also sees aborted attempts); records
are visible only when their transaction commits; the broker must support transactions
(``transaction.state.log.replication.factor``/``min.isr`` no more than its brokers); the
forwarder makes the topic ``edgeflow.outbox-positions`` (8 partitions, no records); every Kafka
sink sharing the flow's outbox must use the same ``exactly_once``; throughput is that of
batched transactions (see ``bench/_sink_rates.py``).

Messages: key = the device key (dead letters: their source), value = the record as JSON,
headers ``edgeflow-id``, ``edgeflow-flow``, ``edgeflow-version``, ``edgeflow-step``,
``edgeflow-schema`` (``window/v1``, ``late/v1``, ``reading/v1``, ``dead_letter/v1``).

**Source** (``kafka.source("topic")``, ``topics=[...]``, ``pattern=``; defined in
:mod:`edgeflow.connectors.kafka_source`, re-exported here). Delivery guarantee: exactly-once
replay; each topic partition is one flow partition whose snapshot is the next offset to read
(and the ``edgeflow-id`` values it remembers to skip duplicates); ``records=True`` yields
node flows' records instead of readings.

One run of a flow at a time uses an outbox (a lock file beside it): a second one is refused.

The broker address comes from ``bootstrap=``, else ``EDGEFLOW_KAFKA_BOOTSTRAP``, else
``KAFKA_BOOTSTRAP`` (``edgeflow run --kafka-bootstrap`` sets the first), so one flow file
runs at many sites.

**Security** (both): ``security_protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
``ssl_cafile``, ``ssl_certfile`` + ``ssl_keyfile`` (mTLS; a key password from
``ssl_key_password_env``/``_file``), ``ssl_check_hostname`` (on by default),
``sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), ``sasl_username`` and the password
from ``sasl_password_env="VAR"`` or ``sasl_password_file="path"`` only: see
:mod:`edgeflow.connectors.kafka_security`. The sink's producers and its topic creation and
the source's consumers all use them. A connection the broker refuses for a security reason is
said once in one line naming the cause; the sink keeps its records in the outbox and the run
fails with that line at its end; the source fails the run at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import orjson

from edgeflow.batch import RecordBatch
from edgeflow.connectors.base import (
    SinkContext,
    SinkPartition,
    SinkSpec,
)
from edgeflow.connectors.forwarder import Forwarder
from edgeflow.connectors.kafka_security import (
    KafkaSecurity,
    raw_option_problems,
)
from edgeflow.connectors.outbox import (
    DEFAULT_BUDGET,
    PRIORITIES,
    Outbox,
    OutboxError,
    OutRecord,
    hold_for_run,
    priority_of,
)
from edgeflow.timeutil import Duration, parse_duration

log = logging.getLogger("edgeflow.kafka")

KIND_PRIORITY = {
    "window": "summary",
    "late": "raw",
    "reading": "raw",
    "trend": "trend",
    "dead_letter": "summary",
    "anomaly": "alert",
}
ENV_VARS = ("EDGEFLOW_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP")
DRAIN_TIMEOUT_ENV = "EDGEFLOW_DRAIN_TIMEOUT"  # a node-wide default for drain_timeout


def resolve_bootstrap(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    for var in ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def best_compression() -> str:
    """lz4, else zstd, else gzip: whichever codec is installed."""
    from kafka import codec

    if codec.has_lz4():
        return "lz4"
    if codec.has_zstd():
        return "zstd"
    return "gzip"


def outbox_path(ctx: SinkContext) -> Path:
    if ctx.state_dir is not None:
        return ctx.state_dir / "outbox.sqlite"
    return Path(".edgeflow") / "outbox" / f"{ctx.flow}.sqlite"


# -- the sink -----------------------------------------------------------------------------------
#: records encoded and appended to the outbox at a time: a write of many keys' windows is
#: streamed in pieces of this many, so the sink's memory does not grow with the number of keys
APPEND_CHUNK = 8192


def _event_times(batch: RecordBatch) -> npt.NDArray[np.int64]:
    """Each record's event time (ns; 0 when the records have none), for oldest-first order."""
    for col in ("window_start", "t", "received_at"):
        if col in batch.columns:
            v = batch.columns[col]
            if isinstance(v, np.ndarray) and v.dtype.kind in "iu":
                return v.astype(np.int64, copy=False)
            return np.array([int(x) for x in (v.tolist() if hasattr(v, "tolist") else v)], np.int64)
    return np.zeros(batch.n, np.int64)


def _pick(col: Any, rows: slice | npt.NDArray[np.intp]) -> Any:
    """The values of a column (list or array) at ``rows`` (a slice or an index array)."""
    if isinstance(col, np.ndarray) or isinstance(rows, slice):
        return col[rows]
    return [col[i] for i in rows.tolist()]


def _plain(col: Any) -> list[Any]:
    """A column as Python values (ids, keys): as ``RecordBatch.record_ids`` reads it."""
    return col.tolist() if isinstance(col, np.ndarray) else list(col)


def _json_values(col: Any) -> list[Any]:
    """A column as JSON-ready Python values, NaN ("no value") as None: as ``RecordBatch.rows``
    gives them, without a per-value check for numeric arrays."""
    if isinstance(col, np.ndarray):
        if col.dtype.kind in "iub":
            return list(col.tolist())
        if col.dtype.kind == "f":
            f64 = col.astype(np.float64, copy=False)
            missing = np.isnan(f64)
            if not missing.any():
                return list(f64.tolist())
            obj = f64.astype(object)
            obj[missing] = None
            return list(obj.tolist())
        col = col.tolist()
    return [None if isinstance(v, float) and v != v else v for v in col]


def _encode(
    flow: str, b: RecordBatch, rows: slice | npt.NDArray[np.intp], meta: bytes
) -> list[tuple[bytes | None, bytes, bytes]]:
    """(key, value, headers) of the records of ``b`` at ``rows``, in that order: the value is
    the record as JSON, the headers ``[["edgeflow-id", id], *meta]`` as JSON (``meta`` is the
    JSON of the batch's other headers). Each bytes object is exactly its length (orjson's own
    results keep a 4 KiB buffer each: 8 KiB per record while a write is in memory)."""
    cols = {name: _pick(col, rows) for name, col in b.columns.items()}
    names = list(cols)
    values = [_json_values(cols[name]) for name in names]
    n = len(values[0]) if values else 0
    ids = [_plain(cols[c]) for c in b.id_columns]
    prefix = f"{flow}/{b.step}"
    key_col = cols.get("key")
    if key_col is None:
        key_col = cols.get("source")
    keys: list[bytes | None] = (
        [None] * n if key_col is None else [str(k).encode() for k in _plain(key_col)]
    )
    tail = b"]," + meta[1:]
    dumps = orjson.dumps
    out = []
    for i, row in enumerate(zip(*values, strict=True)):
        rid = "/".join([prefix, *(str(c[i]) for c in ids)])
        value = bytes(memoryview(dumps(dict(zip(names, row, strict=True)))))
        out.append((keys[i], value, b'[["edgeflow-id",' + dumps(rid) + tail))
    return out


#: set to 1 to go on when the outbox lost records its last snapshot says were waiting
ACCEPT_LOSS_ENV = "EDGEFLOW_ACCEPT_OUTBOX_LOSS"
#: exactly-once: the ids a resumed run expects a replaying source to produce again are carried
#: in the snapshots for at most this many snapshots (a live source never produces them again)
PENDING_SNAPSHOTS = 1800

#: (outbox path, sink step) -> the sink's counters when this run opened it, for the summary
_AT_START: dict[tuple[Path, str], dict[str, int]] = {}
#: (outbox path, sink step) -> why the broker refused this run's connection (security), if it did
_REFUSED: dict[tuple[Path, str], str] = {}


def _resume_position(resume: Any) -> tuple[str | None, int, int]:
    """(outbox id, last seq, records waiting) of a snapshot; an older edgeflow's is a bare seq."""
    if isinstance(resume, dict):
        return str(resume.get("outbox") or "") or None, int(resume["seq"]), int(resume["waiting"])
    return None, int(resume), 0


def _hold_outbox(ctx: SinkContext) -> None:
    """Refuse (:class:`OutboxError`) a second run of the flow on the same outbox (each would
    count and send the other's records): the run holds a lock beside the outbox until it exits."""
    path = outbox_path(ctx)
    holder = hold_for_run(path)
    if holder is None:
        return
    who = f" (pid {holder})" if holder else ""
    how = (
        "give each run its own --state-dir"
        if ctx.state_dir is not None
        else "to run both, give each its own --state-dir"
    )
    raise OutboxError(
        f"another run of {ctx.flow}{who} is using the outbox {path.resolve()}; stop it first, "
        f"or {how}"
    )


def _fatal(message: str) -> NoReturn:
    """Stop the whole flow with one error line. Raised from here, the error would reach the
    engine as a bare "error resuming StatefulSink" panic without its reason; the flow has
    taken no snapshot since it started, so the next run resumes from the same one."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    # while the flow runs, fd 2 is a pipe a thread passes on to the terminal: give it the
    # time to pass the line on before the process ends
    time.sleep(0.5)
    os._exit(1)


class _KafkaSinkPartition(SinkPartition):
    """Appends to the outbox. Its snapshot is ``{"outbox": id, "seq": last seq, "waiting": n}``:
    on resume, an outbox that is not the snapshot's, or ends before its seq, while records
    were waiting, stops the flow (:class:`OutboxError`) unless ``EDGEFLOW_ACCEPT_OUTBOX_LOSS=1``
    (then the loss is counted). Records appended after the snapshot (or, in a state
    directory without any snapshot yet, all of this sink's) are kept and delivered: a live
    source never produces them again, and the records a replaying source produces again are
    recognised by their ``edgeflow-id`` and not queued twice."""

    def __init__(self, spec: KafkaSink, resume: Any, ctx: SinkContext) -> None:
        self.spec = spec
        self.ctx = ctx
        _hold_outbox(ctx)
        self.outbox = Outbox.at(outbox_path(ctx), spec.budget)
        #: exactly-once: the seqs of the last two snapshots (committed ids up to the older one
        #: are forgotten: no resume replays them)
        self._snapshot_seqs: list[int] = []
        #: exactly-once: for how many snapshots the expected replays (``_leftover``) were carried
        self._pending_age = int(resume.get("pending_age", 0)) if isinstance(resume, dict) else 0
        #: edgeflow-ids of the records an interrupted attempt appended after its last snapshot
        #: (or before its first): they are kept (and delivered), and this run's records with
        #: the same id (a replaying source produces them again) are not queued twice;
        #: forgotten at the first snapshot
        self._leftover: set[str] = set()
        lost = 0
        if resume is not None:
            ident, seq, waiting = _resume_position(resume)
            lost, intact = self._check_outbox(ident, seq, waiting)
            # records appended after the snapshot: a replaying source produces them again, a
            # live one never does; keep them (they are durable) and skip their replay by id
            self._leftover = self.outbox.ids_after(ctx.step, seq) if intact else set()
            if spec.exactly_once:
                self._leftover |= self._committed_replays(resume, seq)
            self.last = self.outbox.last_seq()
        elif ctx.state_dir is not None:
            # no snapshot yet: what this sink appended came from an attempt that never took
            # one. A replaying source produces those records again, a live one (a simulator,
            # a broker's new messages) never does: keep them, and skip their replay by id
            self._leftover = self.outbox.ids_after(ctx.step, 0)
            if spec.exactly_once:
                self._leftover |= self._committed_replays(None, 0)
            if self._leftover:
                log.warning(
                    "kafka sink %r: %d records an interrupted earlier attempt (before its first "
                    "snapshot) left in the outbox %s are kept and delivered; records this run "
                    "produces again (same edgeflow-id) are not queued twice",
                    ctx.step,
                    len(self._leftover),
                    self.outbox.path,
                )
            self.last = self.outbox.last_seq()
        else:
            self.last = self.outbox.last_seq()
        bootstrap = resolve_bootstrap(spec.bootstrap)
        self._note_start(bootstrap, lost)
        _REFUSED.pop((self.outbox.path, ctx.step), None)
        self.forwarder: Forwarder | None = None
        if bootstrap and spec.forwarders > 0:
            self.forwarder = Forwarder.ensure(
                self.outbox,
                bootstrap,
                spec.producer_config(),
                {spec.topic: (spec.topic_partitions, spec.replication)}
                if spec.create_topic
                else {},
                spec.forwarders,
                security=spec.security,
                who=f"kafka sink {ctx.step!r}",
                exactly_once=spec.exactly_once,
            )

    def _committed_replays(self, resume: Any, seq: int) -> set[str]:
        """Exactly-once: the ids a resumed run must not queue again: those a Kafka transaction
        committed after the snapshot's ``seq``, and those the snapshot still expected a
        replaying source to produce again (``pending``). Committed ids up to ``seq`` are
        forgotten: no later resume replays them."""
        box, step = self.outbox, self.ctx.step
        ids = box.committed_ids_after(step, seq)
        if isinstance(resume, dict):
            ids.update(str(i) for i in resume.get("pending") or ())
        box.forget_committed(step, seq)
        return ids

    def write(self, batches: list[RecordBatch]) -> None:
        """Append the records, highest priority first, each priority oldest first (stable: each
        key keeps its order), in pieces of :data:`APPEND_CHUNK` records: memory stays that of
        one piece however many records (keys) the batches hold."""
        by_priority: dict[int, list[RecordBatch]] = {}
        for b in batches:
            prio = priority_of(
                self.spec.priority
                if self.spec.priority is not None
                else KIND_PRIORITY.get(b.kind, "summary")
            )
            by_priority.setdefault(prio, []).append(b)
        for prio, group in sorted(by_priority.items(), reverse=True):
            for piece in self._oldest_first(group):
                if self._leftover:
                    piece = self._without_leftovers(piece)
                self.last = self.outbox.append(self.ctx.step, prio, piece)

    def _without_leftovers(self, piece: list[OutRecord]) -> list[OutRecord]:
        """``piece`` without the records an interrupted attempt left in the outbox already."""
        keep = []
        for r in piece:
            rid = dict(orjson.loads(r.headers)).get("edgeflow-id")
            if rid in self._leftover:
                self._leftover.discard(rid)
            else:
                keep.append(r)
        return keep

    def _oldest_first(self, group: list[RecordBatch]) -> Iterator[list[OutRecord]]:
        """The records of ``group`` by event time (ties: as given), APPEND_CHUNK at a time."""
        metas = [
            orjson.dumps(
                [
                    ["edgeflow-flow", self.ctx.flow],
                    ["edgeflow-version", self.ctx.version],
                    ["edgeflow-step", b.step],
                    ["edgeflow-schema", f"{b.kind}/v1"],
                ]
            )
            for b in group
        ]
        times = [_event_times(b) for b in group]
        all_t = np.concatenate(times) if times else np.zeros(0, np.int64)
        if not len(all_t):
            return
        which = np.repeat(np.arange(len(group)), [b.n for b in group])
        starts = np.cumsum([0] + [b.n for b in group])
        if bool(np.all(all_t[1:] >= all_t[:-1])):
            order: npt.NDArray[np.intp] | None = None  # in order already: plain slices
        else:
            order = np.argsort(all_t, kind="stable")
        for lo in range(0, len(all_t), APPEND_CHUNK):
            hi = min(len(all_t), lo + APPEND_CHUNK)
            pos = np.arange(lo, hi) if order is None else order[lo:hi]
            src = which[pos]
            topic = self.spec.topic
            if order is None:  # runs of one batch each, in order: slices
                runs = np.flatnonzero(np.r_[True, src[1:] != src[:-1], True])
                piece: list[OutRecord] = []
                for a, z in zip(runs[:-1].tolist(), runs[1:].tolist(), strict=True):
                    j = int(src[a])
                    local = pos[a:z] - starts[j]
                    rows = slice(int(local[0]), int(local[-1]) + 1)
                    for key, value, headers in _encode(self.ctx.flow, group[j], rows, metas[j]):
                        self.bytes_written += len(value) + len(key or b"")
                        piece.append(OutRecord(topic, key, value, headers))
                yield piece
                continue
            # interleaved batches (windows, trend points and alerts by time): each batch's
            # records of this piece encoded in one call, then put in time order
            slots: list[OutRecord | None] = [None] * (hi - lo)
            for j in np.unique(src).tolist():
                at = np.flatnonzero(src == j)
                local = pos[at] - starts[j]
                encoded = _encode(self.ctx.flow, group[j], local, metas[j])
                for k, (key, value, headers) in zip(at.tolist(), encoded, strict=True):
                    self.bytes_written += len(value) + len(key or b"")
                    slots[k] = OutRecord(topic, key, value, headers)
            yield [r for r in slots if r is not None]

    def _check_outbox(self, ident: str | None, seq: int, waiting: int) -> tuple[int, bool]:
        """Stop (or, when accepted, count the loss) if the outbox lost records the snapshot
        says were waiting. Returns (how many were counted as lost now, whether the outbox is
        the snapshot's, whole)."""
        box, step = self.outbox, self.ctx.step
        accepted = f"accepted_loss.{step}"
        if ident is None:  # a snapshot from an older edgeflow: nothing to check against
            return 0, True
        if box.status().get(accepted) == f"{ident}:{seq}":
            return 0, False  # this loss was accepted and counted by an earlier run
        if ident != box.identity:
            what = "is not the outbox the last snapshot was taken with (it was deleted, emptied or replaced)"
            present = 0
        elif box.last_seq() < seq:
            what = (
                f"ends at record {box.last_seq()} while the last snapshot was taken at record "
                f"{seq} (its -wal file was deleted or damaged)"
            )
            present = box.count_present(step, seq)
        else:
            return 0, True
        lost = max(0, waiting - present)
        if lost == 0:
            log.warning(
                "kafka sink %r: the outbox %s %s; none of the records waiting at that snapshot "
                "are missing",
                step,
                box.path,
                what,
            )
            return 0, False
        if os.environ.get(ACCEPT_LOSS_ENV, "").strip().lower() in ("1", "true", "yes"):
            box.count_lost(step, lost)
            box.set_status(accepted, f"{ident}:{seq}")
            log.warning(
                "kafka sink %r: the outbox %s %s: up to %d records that were waiting for Kafka "
                "are lost; going on because %s is set (counted as lost in the summary)",
                step,
                box.path,
                what,
                lost,
                ACCEPT_LOSS_ENV,
            )
            return lost, False
        raise OutboxError(
            f"the outbox {box.path} {what}: up to {lost} records that were waiting for Kafka "
            "at the last snapshot are missing. Restore the outbox (with its -wal file) and run "
            f"again; or, to go on without them (counted as lost), run again with {ACCEPT_LOSS_ENV}=1"
        )

    def _note_start(self, bootstrap: str | None, lost: int) -> None:
        """Remember this sink's counters for the run's summary (``lost``: counted by this run
        already); say what earlier runs left."""
        box, step = self.outbox, self.ctx.step
        stats = box.stats()
        _AT_START[(box.path, step)] = {**stats, f"lost.{step}": stats.get(f"lost.{step}", 0) - lost}
        waiting = stats.get(f"queued.{step}", 0)
        if waiting > 0:
            log.warning(
                "kafka sink %r: %d records from earlier runs are waiting in the outbox %s; %s",
                step,
                waiting,
                box.path,
                "they are delivered first"
                if bootstrap and self.spec.forwarders > 0
                else "no Kafka is configured, so they stay there",
            )

    def snapshot(self) -> Any:
        # appends are committed with fsync before write() returns; from now on a crash
        # resumes from this snapshot, which the leftover records are part of
        waiting = self.outbox.stats().get(f"queued.{self.ctx.step}", 0)
        state = {"outbox": self.outbox.identity, "seq": self.last, "waiting": waiting}
        if not self.spec.exactly_once:
            self._leftover = set()
            return state
        # exactly-once: the ids a replaying source has not produced again yet stay expected
        # (a resume from this snapshot produces them after it), and committed ids up to the
        # snapshot before the last one are forgotten (that one is stored by now)
        self._pending_age = self._pending_age + 1 if self._leftover else 0
        if self._pending_age > PENDING_SNAPSHOTS:
            log.warning(
                "kafka sink %r: %d records expected again from a replaying source after a crash "
                "did not come within %d snapshots (a live source): no longer expected",
                self.ctx.step, len(self._leftover), PENDING_SNAPSHOTS,
            )  # fmt: skip
            self._leftover, self._pending_age = set(), 0
        state["pending"] = sorted(self._leftover)
        state["pending_age"] = self._pending_age
        self._snapshot_seqs = [*self._snapshot_seqs, self.last][-3:]
        if len(self._snapshot_seqs) == 3:
            self.outbox.forget_committed(self.ctx.step, self._snapshot_seqs[0])
        return state

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.release(self.spec.drain_timeout_s)
            line = self.forwarder.failure()
            if line:
                _REFUSED[(self.outbox.path, self.ctx.step)] = line


class KafkaSink(SinkSpec):
    kind = "kafka"
    stateful = True

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | None = None,
        priority: str | int | None = None,
        create_topic: bool = True,
        partitions: int = 1,
        replication: int = 1,
        budget_bytes: int = DEFAULT_BUDGET,
        linger: Duration = "20ms",
        compression: str = "auto",
        drain_timeout: Duration | None = None,
        producer_options: dict[str, Any] | None = None,
        forwarders: int = 2,
        security: KafkaSecurity | None = None,
        exactly_once: bool = False,
    ) -> None:
        self.topic = topic
        self.exactly_once = exactly_once
        self.security = security or KafkaSecurity()
        self.bootstrap = bootstrap
        self.priority = priority
        self.create_topic = create_topic
        self.topic_partitions = partitions
        self.replication = replication
        self.budget = budget_bytes
        self.linger = linger
        self.compression = compression
        self.drain_timeout = drain_timeout
        self.producer_options = dict(producer_options or {})
        self.forwarders = forwarders

    @property
    def drain_timeout_s(self) -> float:
        """How long the end of a run waits for the outbox to drain: ``drain_timeout=``, else
        ``EDGEFLOW_DRAIN_TIMEOUT`` (for a whole node), else 30 s."""
        return parse_duration(self._drain_timeout()) / 1e9

    def _drain_timeout(self) -> Duration:
        if self.drain_timeout is not None:
            return self.drain_timeout
        return os.environ.get(DRAIN_TIMEOUT_ENV, "").strip() or "30s"

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.topic, str) or not self.topic or len(self.topic) > 249:
            out.append(f"topic {self.topic!r}: give a Kafka topic name (1-249 characters)")
        if self.priority is not None:
            try:
                priority_of(self.priority)
            except ValueError as exc:
                out.append(str(exc))
        for name, value in (("linger", self.linger), ("drain_timeout", self._drain_timeout())):
            try:
                parse_duration(value, what=name)
            except ValueError as exc:
                env = self.drain_timeout is None and name == "drain_timeout"
                out.append(f"{DRAIN_TIMEOUT_ENV}: {exc}" if env else str(exc))
        if self.compression not in ("auto", "lz4", "zstd", "gzip", "snappy", "none"):
            out.append(
                f"compression={self.compression!r}: use auto, lz4, zstd, gzip, snappy or none"
            )
        if not isinstance(self.budget_bytes_ok, bool) or not self.budget_bytes_ok:
            out.append(f"budget_bytes={self.budget!r}: give a positive number of bytes")
        for k in ("acks", "enable_idempotence", "bootstrap_servers"):
            if k in self.producer_options:
                out.append(
                    f"producer_options[{k!r}] is fixed by edgeflow (acks=all, idempotent); remove it"
                )
        if not isinstance(self.exactly_once, bool):
            out.append(f"exactly_once={self.exactly_once!r}: give True or False")
        elif self.exactly_once and "transactional_id" in self.producer_options:
            out.append(
                "producer_options['transactional_id'] is set by edgeflow with exactly_once=True "
                "(one per outbox and forwarder); remove it"
            )
        out.extend(raw_option_problems(self.producer_options, "producer_options"))
        out.extend(self.security.problems())
        return out

    def guarantee(self) -> str:
        """``exactly-once``: into the outbox always; into Kafka with ``exactly_once=True``, for
        ``read_committed`` consumers (else at-least-once there, ``edgeflow-id`` to de-duplicate)."""
        return "exactly-once"

    @property
    def budget_bytes_ok(self) -> bool:
        return isinstance(self.budget, int) and self.budget > 0

    def producer_config(self) -> dict[str, Any]:
        comp = best_compression() if self.compression == "auto" else self.compression
        return {
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": None if comp == "none" else comp,
            "linger_ms": parse_duration(self.linger) // 1_000_000,
            "batch_size": 1024 * 1024,
            "max_in_flight_requests_per_connection": 5,
            # keep retrying through uplink outages instead of failing records
            "delivery_timeout_ms": 7 * 24 * 3600 * 1000,
            "reconnect_backoff_max_ms": 2000,
            "max_block_ms": 10_000,
            **self.producer_options,
        }

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "topic": self.topic,
            "bootstrap": self.bootstrap or "(from EDGEFLOW_KAFKA_BOOTSTRAP/KAFKA_BOOTSTRAP)",
            "priority": self.priority,
        }
        if self.exactly_once is True:  # a plain sink's description is as it always was
            out["exactly_once"] = True
            out["delivery"] = "exactly-once into Kafka for read_committed consumers"
        if not self.security.plaintext:  # a plain sink's description is as it always was
            out["security"] = self.security.describe()
        return out

    def failures(self, ctx: SinkContext) -> list[str]:
        """Why this run failed to deliver: the broker refused the connection for a security
        reason (one line naming the cause); the records stay in the outbox."""
        line = _REFUSED.get((outbox_path(ctx).resolve(), ctx.step))
        return [line] if line else []

    def open_partition(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        """Open a partition; raises :class:`OutboxError` when the outbox is damaged or lost
        records its snapshot says were waiting."""
        return _KafkaSinkPartition(self, resume, ctx)

    def open(self, partition: str, resume: Any, ctx: SinkContext) -> SinkPartition:
        """As :meth:`open_partition`, for the engine: an outbox error stops the flow."""
        try:
            return self.open_partition(partition, resume, ctx)
        except OutboxError as exc:
            _fatal(f"kafka sink {ctx.step!r}: {exc}")

    def report(self, ctx: SinkContext) -> list[str]:
        """This run's figures of the sink (queued, delivered, rejected by Kafka, dropped by the
        budget or a full disk, lost with a damaged outbox), and what waits in the outbox."""
        path = outbox_path(ctx)
        if not path.exists():
            return []
        box = Outbox.at(path)
        n, size = box.depth()
        st = box.stats()
        start = _AT_START.get((box.path, ctx.step), {})

        def this_run(name: str) -> int:
            key = f"{name}.{ctx.step}"
            return st.get(key, 0) - start.get(key, 0)

        where = (
            resolve_bootstrap(self.bootstrap) or "no Kafka configured: records stay in the outbox"
        )
        errors = [
            f"  last forwarder error: {v}"
            for k, v in sorted(box.status().items())
            if k.startswith("error.")
        ]
        earlier = start.get(f"queued.{ctx.step}", 0)
        lost = this_run("lost")
        return [
            f"kafka sink {ctx.step!r} -> {self.topic}: {this_run('appended')} queued, "
            f"{this_run('delivered')} delivered, {this_run('dropped')} dropped (outbox full), "
            f"{this_run('rejected')} rejected by Kafka (too large)"
            + (f", {lost} lost (damaged outbox, {ACCEPT_LOSS_ENV})" if lost else "")
            + (f"; {earlier} records were waiting from earlier runs" if earlier else ""),
            f"outbox {path} ({where}): {n} records ({size / 1e6:.1f} MB) waiting; "
            f"{box.disk_bytes() / 1e6:.1f} MB on disk of a {box.budget / 1e6:.1f} MB budget",
            *errors,
        ]


def sink(
    topic: str,
    *,
    bootstrap: str | None = None,
    priority: str | int | None = None,
    create_topic: bool = True,
    partitions: int = 1,
    replication: int = 1,
    budget_bytes: int = DEFAULT_BUDGET,
    compression: str = "auto",
    drain_timeout: Duration | None = None,
    producer_options: dict[str, Any] | None = None,
    forwarders: int = 2,
    security_protocol: str = "PLAINTEXT",
    ssl_cafile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_key_password_env: str | None = None,
    ssl_key_password_file: str | None = None,
    ssl_check_hostname: bool = True,
    sasl_mechanism: str | None = None,
    sasl_username: str | None = None,
    sasl_password_env: str | None = None,
    sasl_password_file: str | None = None,
    sasl_password: Any = None,
    ssl_password: Any = None,
    exactly_once: bool = False,
) -> KafkaSink:
    """Publish records to ``topic`` through the durable outbox (see the module docstring).

    ``exactly_once=True``: exactly-once into Kafka for ``read_committed`` consumers (each
    batch and its outbox position in one Kafka transaction; records visible only at commit;
    see the module docstring for what it needs and costs). Default: at-least-once with an
    ``edgeflow-id`` header for de-duplication.

    Security (producers and topic creation alike): ``security_protocol``, ``ssl_cafile``,
    ``ssl_certfile``/``ssl_keyfile`` (mTLS), ``ssl_check_hostname``, ``sasl_mechanism``,
    ``sasl_username`` and ``sasl_password_env``/``sasl_password_file``; a literal
    ``sasl_password=`` or ``ssl_password=`` is refused (a password never sits in a flow file).

    ``priority`` (raw < trend < summary < alert) decides what the outbox drops first when
    it reaches ``budget_bytes`` (default 1 GiB). At the end of a run the outbox drains for up
    to ``drain_timeout`` (default: the environment variable ``EDGEFLOW_DRAIN_TIMEOUT``, else
    30 s); by default window summaries and dead
    letters are ``summary`` and late/raw readings ``raw``. ``forwarders`` is the number of
    processes draining the outbox (each owns some keys, so per-key order holds).
    """
    security = KafkaSecurity.of(
        {
            "security_protocol": security_protocol, "ssl_cafile": ssl_cafile,
            "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile,
            "ssl_key_password_env": ssl_key_password_env,
            "ssl_key_password_file": ssl_key_password_file,
            "ssl_check_hostname": ssl_check_hostname, "sasl_mechanism": sasl_mechanism,
            "sasl_username": sasl_username, "sasl_password_env": sasl_password_env,
            "sasl_password_file": sasl_password_file,
        },
        {"sasl_password": sasl_password, "ssl_password": ssl_password},
    )  # fmt: skip
    return KafkaSink(
        topic, bootstrap=bootstrap, priority=priority, create_topic=create_topic, partitions=partitions,
        replication=replication, budget_bytes=budget_bytes, compression=compression,
        drain_timeout=drain_timeout, producer_options=producer_options, forwarders=forwarders,
        security=security, exactly_once=exactly_once,
    )  # fmt: skip


# -- the source (connectors/kafka_source.py) ------------------------------------------------------
from edgeflow.connectors.kafka_source import KafkaSource, source  # noqa: E402

__all__ = ["PRIORITIES", "KafkaSink", "KafkaSource", "sink", "source"]
