"""Keep the engine's own crash output (Rust panics, backtraces, Python tracebacks) away from
the user while a flow runs.

The engine reports a failure twice: its panic hook writes the panic message and backtrace
straight to file descriptor 2, then the run raises. :class:`EngineOutputGuard` points fd 2
at a pipe for the length of the run; a thread passes every other line through to the real
stderr at once and keeps the crash blocks, so the caller can print one error line and write
the detail to a log file. With ``EDGEFLOW_DEBUG=1`` nothing is filtered.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO

_PANIC_START = re.compile(rb"^thread '[^']*' panicked at ")
_PANIC_END = re.compile(rb"^note: (run with `RUST_BACKTRACE|Some details are omitted)")
_ABORT = re.compile(rb"^(thread caused non-unwinding panic|fatal runtime error)")
_TRACEBACK_START = re.compile(rb"^Traceback \(most recent call last\):")
_BACKTRACE_LINE = re.compile(rb"^(stack backtrace:|\s+\d+:|\s+at )")
#: written through the pipe when the guard ends: everything before it has been read when
#: the pump sees it (one write of under PIPE_BUF bytes: it arrives whole)
_END = b"\x00edgeflow-engine-output-end\x00"
#: the longest wait at the end for the pump to reach the end marker
END_WAIT_S = 2.0


def debug_wanted() -> bool:
    """``EDGEFLOW_DEBUG=1``: show the engine's own output (panics, tracebacks) unfiltered."""
    return os.environ.get("EDGEFLOW_DEBUG", "").strip() not in ("", "0")


class EngineOutputGuard:
    """Context manager: while active, crash blocks written to fd 2 are kept in
    :attr:`detail` instead of reaching the terminal; all other output passes through
    unchanged (line-buffered; a partial line is passed on as soon as it is read)."""

    def __init__(self) -> None:
        self.detail: list[str] = []
        self._lock = threading.Lock()
        self._saved = -1
        self._write = -1
        self._thread: threading.Thread | None = None
        #: set when the pump has read everything written before the guard ended
        self._drained = threading.Event()
        self._python_stderr: TextIO = sys.stderr
        self.active = False

    def __enter__(self) -> EngineOutputGuard:
        STEP_FAILED.clear()
        if debug_wanted():
            return self
        # a shorter panic block ("note: run with RUST_BACKTRACE=1 ..." ends it); the
        # panic hook reads the variable at the first panic, after this point
        os.environ["RUST_BACKTRACE"] = "0"
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            read, self._write = os.pipe()
            os.dup2(self._write, 2)
        except OSError:
            return self
        self.active = True
        # Python's own writes (click, the live view, which asks whether stderr is a
        # terminal) go straight to the real stderr; only native writes and child processes
        # that inherit fd 2 pass through the filter
        self._python_stderr = sys.stderr
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr = io.TextIOWrapper(
                open(os.dup(self._saved), "wb", buffering=0),
                encoding=sys.stderr.encoding,
                errors="backslashreplace",
                line_buffering=True,
                write_through=True,
            )
        self._thread = threading.Thread(
            target=self._pump, args=(read,), name="engine-output", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.active:
            return
        self.active = False
        if sys.stderr is not self._python_stderr:
            mine, sys.stderr = sys.stderr, self._python_stderr
            with contextlib.suppress(OSError, ValueError):
                mine.close()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(self._saved, 2)
        with contextlib.suppress(OSError):
            os.write(self._write, _END)
        os.close(self._write)
        if self._thread is not None:
            # wait until the pump has read what the run wrote (up to the end marker), not
            # for the pipe to close: a child process (a forwarder, multiprocessing's
            # resource tracker) that inherited it may keep it open long after; the thread
            # then keeps passing its output on, as a daemon
            self._drained.wait(timeout=END_WAIT_S)

    def text(self) -> str:
        with self._lock:
            return "".join(self.detail)

    def _keep(self, line: bytes) -> None:
        with self._lock:
            self.detail.append(line.decode("utf-8", "replace"))

    def _pass(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._saved, data)

    def _pump(self, read: int) -> None:
        pending = b""
        state = "pass"  # or "panic" / "traceback": inside a crash block being kept
        while True:
            try:
                chunk = os.read(read, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            ended = _END in pending
            if ended:
                pending = pending.replace(_END, b"")
            *whole, pending = pending.split(b"\n")
            for raw in whole:
                state = self._line(raw + b"\n", state)
            # a partial line (a progress display): show it now, unless it may start a crash
            # block or the end marker
            partial = pending and state == "pass" and b"\x00" not in pending
            if partial and not _could_start_block(pending):
                self._pass(pending)
                pending = b""
            if ended:
                self._drained.set()
        if pending:
            self._line(pending, state)
        self._drained.set()
        os.close(read)
        os.close(self._saved)

    def _line(self, line: bytes, state: str) -> str:
        if _PANIC_START.match(line) or _ABORT.match(line):
            self._keep(line)
            return "panic"
        if state == "panic":
            self._keep(line)
            return "after" if _PANIC_END.match(line) else "panic"
        if state == "after" and not line.strip():
            self._keep(line)  # the blank line the engine writes after a panic block
            return "pass"
        if _TRACEBACK_START.match(line):
            self._keep(line)
            return "traceback"
        if state == "traceback":
            self._keep(line)
            # the exception's own line (not indented) ends a traceback
            ends = line[:1] not in (b" ", b"\t") and not line.startswith(b"During handling")
            ends = ends and line.strip() != b"" and not line.startswith(b"The above exception")
            return "pass" if ends else "traceback"
        if _BACKTRACE_LINE.match(line):
            self._keep(line)
            return "pass"
        self._pass(line)
        return "pass"


def _could_start_block(fragment: bytes) -> bool:
    for start in (b"thread '", b"Traceback (", b"note: ", b"fatal runtime"):
        n = min(len(fragment), len(start))
        if fragment[:n] == start[:n]:
            return True
    return False


@contextlib.contextmanager
def in_step(step: str) -> Iterator[None]:
    """Mark an exception raised inside a step's code with the step's name
    (``edgeflow_step``), so the one error line of a failed run can name it. StopIteration
    (a source's end) passes untouched."""
    try:
        yield
    except StopIteration:
        raise
    except Exception as exc:
        STEP_FAILED.set()
        if getattr(exc, "edgeflow_step", None) is None:
            setattr(exc, "edgeflow_step", step)  # noqa: B010 - an attribute exceptions lack
        raise


#: set when a step's code raised in this run: the engine is unwinding
STEP_FAILED = threading.Event()


@contextlib.contextmanager
def closing_part() -> Iterator[None]:
    """Around a partition's ``close``: while the engine unwinds from a step's error, a second
    error from ``close`` would make it abort the process (a panic during a panic) and the
    first error would never be reported, so it is dropped; otherwise it is raised."""
    try:
        yield
    except Exception:
        if not STEP_FAILED.is_set():
            raise
