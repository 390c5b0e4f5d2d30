"""The engine-output guard (edgeflow/engine/engine_output.py) keeps crash blocks from the
terminal and passes everything else on; at the end of a run it waits for what the run wrote,
not for every child process that inherited the pipe (a Kafka forwarder, multiprocessing's
resource tracker) to close it: before, every run with such a child ended 2 s late."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from edgeflow.engine.engine_output import EngineOutputGuard


def test_the_guard_ends_without_waiting_for_a_child_holding_its_pipe(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDGEFLOW_DEBUG", raising=False)
    guard = EngineOutputGuard()
    with guard:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            os.write(2, b"a line a user should see\n")
            os.write(2, b'Traceback (most recent call last):\n  File "x.py", line 1\n')
            os.write(2, b"ValueError: boom\n")
            os.write(2, b"partial progress")  # no newline: passed on as it is
            t0 = time.monotonic()
        except BaseException:
            child.kill()
            raise
    took = time.monotonic() - t0
    child.kill()
    child.wait()
    # the end waits for the pump to read a few lines (milliseconds), not for the child
    # (it used to wait a fixed 2 s); 1.5 s leaves room for a busy machine
    assert took < 1.5, f"the guard waited {took:.1f} s for a child that kept the pipe open"
    assert "ValueError: boom" in guard.text() and "Traceback" in guard.text()
    err = capfd.readouterr().err
    assert "a line a user should see" in err and "partial progress" in err
    assert "boom" not in err and "\x00" not in err


def test_the_guard_ends_at_once_when_no_child_holds_its_pipe(
    capfd: pytest.CaptureFixture[str],
) -> None:
    guard = EngineOutputGuard()
    with guard:
        os.write(2, b"thread 'main' panicked at src/run.rs:1:1:\nboom\n")
        os.write(2, b"note: run with `RUST_BACKTRACE=1` to show a backtrace\n\nafter\n")
    assert "panicked" in guard.text()
    err = capfd.readouterr().err
    assert "after" in err and "panicked" not in err
