"""Poll a device's HTTP endpoint for readings: the worked example of a custom source.

    src = http_poll.source("http://10.0.0.7/readings", fields=["temp"], every="500ms")
    flow.source(src, key="device", time="ts")

The device answers ``GET <url>?after=<seq>`` with a JSON array of the readings it has after
sequence number ``seq``, oldest first, each an object with a sequence number (``seq_field``,
default ``"seq"``), the key, the time and numeric fields::

    [{"seq": 41, "device": "pump-1", "ts": 1700000000123, "temp": 21.5}, ...]

(``after=0`` at the start.) The request runs in a background thread, so ``next_batch`` never
blocks: it returns the readings a finished poll brought, or ``[]``, and ``next_awake`` says
when the next poll is due. Each reading is read by the parser every source shares
(:class:`edgeflow.connectors.payloads.Decoder`); one that cannot be read, or a response
that is not a JSON array of objects with an integer sequence number, becomes a dead letter
(never a crash). A device that cannot be reached is retried at every poll; the first
failure and the recovery are printed as one line each.

Delivery guarantee: exactly-once replay, as long as the device still holds the readings
after the snapshot's sequence number (its history). The snapshot is the last sequence
number handed to the flow; a resumed run asks for the readings after it.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import orjson

from edgeflow.connectors.base import Item, SourceContext, SourcePartition, SourceSpec
from edgeflow.connectors.parse import BatchBuilder
from edgeflow.connectors.payloads import Decoder, Limits, PayloadError, Schema
from edgeflow.timeutil import Duration, now_ns, parse_duration


class HttpPollSource(SourceSpec):
    kind = "http_poll"

    def __init__(
        self,
        url: str,
        *,
        fields: Sequence[str],
        every: Duration = "1s",
        seq_field: str = "seq",
        timeout: Duration = "5s",
        time_unit: str = "auto",
        max_payload: int = 4 * 1024 * 1024,
    ) -> None:
        self.url = url
        self.fields = tuple(fields)
        self.every = every
        self.seq_field = seq_field
        self.timeout = timeout
        self.time_unit = time_unit
        self.max_payload = max_payload

    def problems(self) -> list[str]:
        out = []
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            out.append(f"url={self.url!r}: give an http:// or https:// address")
        for name, value in (("every", self.every), ("timeout", self.timeout)):
            try:
                if parse_duration(value) <= 0:
                    out.append(f"{name}={value!r}: give a positive duration such as '500ms'")
            except ValueError as exc:
                out.append(f"{name}={value!r}: {exc}")
        return out

    def numeric_fields(self, key: str, time: str) -> tuple[str, ...]:
        return self.fields

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "url": self.url,
            "fields": list(self.fields),
            "every": self.every,
        }

    def partitions(self) -> list[str]:
        return ["0"]  # one device, one partition: its readings in sequence order

    def open(self, partition: str, resume: Any, ctx: SourceContext) -> SourcePartition:
        return _HttpPollPartition(self, 0 if resume is None else int(resume), ctx)


class _HttpPollPartition(SourcePartition):
    def __init__(self, spec: HttpPollSource, after: int, ctx: SourceContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.seq = after  # the last sequence number handed to the flow: the snapshot
        self.every_ns = parse_duration(spec.every)
        self.timeout_s = parse_duration(spec.timeout) / 1e9
        fields = ctx.fields if ctx.fields is not None else spec.fields
        self.fields = fields
        checked = ctx.declared or spec.fields
        schema = Schema(
            ctx.key, ctx.time, tuple(fields), {},
            {f: math.nan for f in (*fields, *checked)}, spec.time_unit, checked=tuple(checked),
        )  # fmt: skip
        self.decoder = Decoder("json", schema, Limits.of(256 * 1024, 8, 10_000, "1h", None))
        self.lock = threading.Lock()
        self.ready: list[tuple[bytes, int]] = []  # responses not yet handed over (body, poll time)
        self.next_poll_ns = now_ns()
        self.failing: str | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._poll_loop,
            args=(after,),
            name=f"edgeflow-http-poll-{ctx.step}",
            daemon=True,
        )
        self.thread.start()

    # -- the background poller: the only place that waits ---------------------------------------
    def _poll_loop(self, after: int) -> None:
        while not self.stopping.is_set():
            started = now_ns()
            body = self._get(after)
            if body is not None:
                last = _last_seq(body, self.spec.seq_field)
                with self.lock:
                    self.ready.append((body, started))
                after = max(after, last) if last is not None else after
            self.next_poll_ns = started + self.every_ns
            self.stopping.wait(max(0.0, (self.next_poll_ns - now_ns()) / 1e9))

    def _get(self, after: int) -> bytes | None:
        url = f"{self.spec.url}{'&' if '?' in self.spec.url else '?'}after={after}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                body: bytes = resp.read(self.spec.max_payload + 1)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            why = str(getattr(exc, "reason", exc))
            if why != self.failing:
                print(
                    f"http_poll source {self.ctx.step!r}: cannot reach {self.spec.url}: {why}; "
                    f"trying again every {self.spec.every}",
                    file=sys.stderr,
                )
            self.failing = why
            return None
        if self.failing is not None:
            print(
                f"http_poll source {self.ctx.step!r}: {self.spec.url} answers again",
                file=sys.stderr,
            )
            self.failing = None
        return body

    # -- the flow's side: never blocks -----------------------------------------------------------
    def next_batch(self) -> list[Item]:
        with self.lock:
            ready, self.ready = self.ready, []
        if not ready:
            return []
        out = BatchBuilder(self.fields, self.ctx.step)
        for body, received in ready:
            self.bytes_read += len(body)
            self._read(body, received, out)
        return out.items()

    def _read(self, body: bytes, received: int, out: BatchBuilder) -> None:
        where = f"{self.spec.url}?after={self.seq}"
        if len(body) > self.spec.max_payload:
            out.fail(where, body, f"response over the {self.spec.max_payload}-byte limit")
            return
        try:
            readings = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            out.fail(where, body, f"the response is not JSON: {exc}")
            return
        if not isinstance(readings, list):
            out.fail(where, body, "the response is not a JSON array of readings")
            return
        for r in readings:
            seq = r.get(self.spec.seq_field) if isinstance(r, dict) else None
            raw = orjson.dumps(r)
            if not isinstance(seq, int) or isinstance(seq, bool):
                out.fail(where, raw, f"reading without an integer {self.spec.seq_field!r}")
                continue
            if seq <= self.seq:
                continue  # already handed over (a poll that overlapped the previous one)
            self.seq = seq
            try:
                out.add_all(self.decoder.decode(raw, "", received))
            except PayloadError as exc:
                out.fail(f"{self.spec.url}#{seq}", raw, str(exc))

    def next_awake(self) -> int | None:
        with self.lock:
            if self.ready:
                return None
        return self.next_poll_ns

    def snapshot(self) -> Any:
        return self.seq

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(RuntimeError):
            self.thread.join(self.timeout_s + 1)


def _last_seq(body: bytes, seq_field: str) -> int | None:
    """The highest sequence number in a response (None when it has none)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        readings = orjson.loads(body)
        if isinstance(readings, list):
            seqs = [
                r[seq_field]
                for r in readings
                if isinstance(r, dict) and isinstance(r.get(seq_field), int)
            ]
            return max(seqs) if seqs else None
    return None


def source(
    url: str,
    *,
    fields: Sequence[str],
    every: Duration = "1s",
    seq_field: str = "seq",
    timeout: Duration = "5s",
    time_unit: str = "auto",
) -> HttpPollSource:
    """Readings with numeric ``fields`` polled from ``url`` every ``every`` (see the module
    docstring)."""
    return HttpPollSource(
        url, fields=fields, every=every, seq_field=seq_field, timeout=timeout, time_unit=time_unit
    )


__all__ = ["HttpPollSource", "source"]
