"""Start-up cost: importing edgeflow, the CLI's help and a windowing flow load no scipy,
matplotlib or bytewax they do not use (each check runs in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.signal import lfilter as scipy_lfilter

from edgeflow.ops import scipy_lazy
from tests.helpers import ROOT

HEAVY = ("scipy", "matplotlib", "bytewax")

#: a sink that drops what it gets, for the flows run in a fresh interpreter below
NULL_SINK = textwrap.dedent(
    """
    from edgeflow.connectors.base import SinkPartition, SinkSpec

    class Null(SinkSpec):
        kind = "null"
        def describe(self):
            return {"kind": self.kind}
        def open(self, partition, resume, ctx):
            class Part(SinkPartition):
                def write(self, batches):
                    pass
            return Part()
    """
)


def loaded_after(code: str) -> list[str]:
    """Top-level packages among HEAVY imported by running ``code`` in a new interpreter
    (a line ``{null_sink}`` in it stands for :data:`NULL_SINK`)."""
    probe = code.replace("{null_sink}", NULL_SINK) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, res.stderr
    out: list[str] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_import_edgeflow_loads_no_scipy_matplotlib_or_bytewax() -> None:
    assert loaded_after("import edgeflow\nfrom edgeflow import Flow, agg, window, detect") == []


def test_cli_help_and_validate_load_no_bytewax_or_scipy() -> None:
    code = textwrap.dedent(
        """
        import sys
        from edgeflow.cli.main import main
        for argv in (["--help"], ["validate", "flows/quickstart.py"]):
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code == 0, (argv, exc.code)
        """
    )
    assert loaded_after(code) == []


def test_windowing_flow_loads_no_scipy() -> None:
    """The windowing regression of 156e6c9: scipy (and its own BLAS, ~60 MB) was loaded
    for every flow through the detection kernels, doubling a window flow's memory."""
    code = textwrap.dedent(
        """
        from edgeflow import Flow, agg, window
        from edgeflow.connectors import simulate
        from edgeflow.connectors.base import SinkContext, SinkPartition, SinkSpec
        from edgeflow.engine import RunOptions, run

        {null_sink}

        flow = Flow("lazy")
        r = flow.source(
            simulate.sensors(devices=5, rate_hz=10, seed=1, speed=None, duration="3s"),
            key="device", time="ts",
        )
        r.window(window.tumbling("1s"), agg.count(), agg.std("accel"), agg.p95("accel")).to(Null())
        summary = run(flow.plan(), RunOptions(workers=1))
        assert summary.counters["windows_out"] > 0
        """
    )
    assert "scipy" not in loaded_after(code)


@pytest.mark.parametrize("shape", [(7,), (64,), (5, 4), (1, 1), (300, 3)])
def test_short_first_order_filter_equals_scipy_bit_for_bit(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * 100
    x.flat[0] = np.nan if x.size > 2 else x.flat[0]
    a = 0.07
    b, den = [a], [1.0, -(1 - a)]
    if x.ndim == 1:
        zi: object = [(1 - a) * 3.5]
        want = scipy_lfilter(b, den, x, zi=zi)
        got = scipy_lazy._first_order(b, den, x, -1, zi)
    else:
        zi = ((1 - a) * rng.normal(size=shape[0]))[:, None]
        want = scipy_lfilter(b, den, x, axis=1, zi=zi)
        got = scipy_lazy._first_order(b, den, x, 1, zi)
    assert got is not None
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape
        assert np.array_equal(w, g, equal_nan=True)
    assert np.array_equal(
        scipy_lfilter([1.0], den, x[..., :3], axis=-1),
        scipy_lazy._first_order([1.0], den, x[..., :3], -1, None),
        equal_nan=True,
    )


def test_score_with_ewma_on_a_small_file_loads_no_scipy(tmp_path: object) -> None:
    code = textwrap.dedent(
        """
        import pathlib, tempfile
        from edgeflow.cli.main import main
        d = pathlib.Path(tempfile.mkdtemp())
        src = d / "in.csv"
        src.write_text("ts,value\\n" + "".join(f"{i},{i % 3}.5\\n" for i in range(10)))
        try:
            main(["score", "--detector", "ewma", "--input", str(src), "--time-col", "ts",
                  "--value-col", "value", "--out", str(d / "out.csv")])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        assert len((d / "out.csv").read_text().splitlines()) == 11
        """
    )
    assert loaded_after(code) == []


@pytest.mark.parametrize(
    "shape,axis",
    [((1,), -1), ((65,), -1), ((5000,), 0), ((3, 70), 1), ((100, 513), 1), ((70, 3), 0)],
)
@pytest.mark.parametrize("with_zi", [False, True])
def test_the_directly_loaded_filter_equals_scipy_bit_for_bit(
    shape: tuple[int, ...], axis: int, with_zi: bool
) -> None:
    """Long inputs go through scipy's C loop loaded on its own: the same results as
    scipy.signal.lfilter, first- and second-order, with and without initial state."""
    direct = scipy_lazy._direct_filter()
    assert direct is not None, "scipy's filter loop could not be loaded on its own"
    rng = np.random.default_rng(len(shape) * 1000 + shape[0])
    x = rng.normal(size=shape)
    x[tuple(rng.integers(0, n) for n in shape)] = 1e300  # extremes pass through alike
    for b, den in (([0.05], [1.0, -0.95]), ([0.2, 0.1], [1.0, -0.5, 0.06])):
        zi = None
        if with_zi:
            zshape = list(shape)
            zshape[axis] = len(den) - 1
            zi = rng.normal(size=zshape)
        want = scipy_lfilter(b, den, x, axis=axis, zi=zi)
        got = scipy_lazy.lfilter(b, den, x, axis=axis, zi=zi)
        if zi is None:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_a_detection_flow_loads_scipys_filter_loop_but_not_scipy_signal() -> None:
    """A flow with `detect.auto()` (filters on long passes) loads scipy's C filter loop on
    its own: not scipy.signal and scipy.stats (about 0.6 s and 50 MB more)."""
    code = textwrap.dedent(
        """
        import sys
        from edgeflow import Flow, detect
        from edgeflow.connectors import simulate
        from edgeflow.connectors.base import SinkContext, SinkPartition, SinkSpec
        from edgeflow.engine import RunOptions, run
        from edgeflow.ops import scipy_lazy

        {null_sink}

        flow = Flow("lazy")
        r = flow.source(
            simulate.sensors(devices=50, rate_hz=100, seed=1, speed=None, duration="60s"),
            key="device", time="ts",
        )
        r.detect(detect.auto(), "accel").to(Null())
        summary = run(flow.plan(), RunOptions(workers=1))
        assert summary.counters["readings_in"] == 300_000, summary.counters
        heavy = sorted(m for m in sys.modules if m in ("scipy.signal", "scipy.stats"))
        assert heavy == [], heavy
        import scipy.signal  # importing it afterwards still works, with the same loop
        import numpy as np
        x = np.random.default_rng(0).normal(size=(4, 300))
        assert np.array_equal(scipy.signal.lfilter([0.1], [1, -0.9], x, axis=1),
                              scipy_lazy.lfilter([0.1], [1, -0.9], x, axis=1))
        """
    )
    assert "scipy" in loaded_after(code)
