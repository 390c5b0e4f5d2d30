"""Every argument of every operator is checked when the flow is built (issue 12, item 6).

Each bad value - 0, negatives, NaN, inf, a bool or a float where a whole number is expected,
a huge value, a wrong type - is refused by ``edgeflow validate`` (exit 2) with one line
naming the step, the argument, the value given and the valid range. Each good boundary value
is accepted, and the flow runs on real input to the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgeflow import Flow, agg, detect, downsample, window
from edgeflow.cli.main import main
from edgeflow.connectors import files
from edgeflow.engine import run
from edgeflow.errors import FlowValidationError

S = 1_000_000_000
NAN, INF = math.nan, math.inf
#: wrong for any whole-number argument
BAD_INT = [0, -5, True, 2.5, 4.0, NAN, INF, -INF, 10**12, "8"]
#: wrong for any number argument
BAD_NUMBER = [NAN, INF, -INF, True, "1"]
#: wrong for any duration above 0
BAD_DURATION = ["0s", 0, -1, NAN, INF, True, "soon", 1e300, "99999d"]


@dataclass
class Case:
    """One argument of one operator factory: values it refuses and boundary values it takes."""

    factory: str  # module.function, e.g. "detect.zscore"
    arg: str
    bad: list[Any]
    good: list[Any]
    base: dict[str, Any] = field(default_factory=dict)  # the other arguments

    @property
    def fn(self) -> Callable[..., Any]:
        module, name = self.factory.split(".")
        mods = {"window": window, "agg": agg, "downsample": downsample, "detect": detect}
        fn: Callable[..., Any] = getattr(mods[module], name)
        return fn

    def build(self, value: Any) -> Any:
        return self.fn(**{**self.base, self.arg: value})


def _ints(low: int, high: int, *extra: Any) -> list[Any]:
    return [
        v
        for v in BAD_INT
        if not (isinstance(v, int) and not isinstance(v, bool) and low <= v <= high)
    ] + [
        low - 1,
        high + 1,
        *extra,
    ]


CASES = [
    # windows
    Case("window.tumbling", "size", BAD_DURATION, ["1ns", "3650d", 0.5]),
    Case("window.tumbling", "offset", [-1, NAN, True, "x", "3651d"], [0, "3650d"], {"size": "1s"}),
    Case("window.tumbling", "time", ["wall", 1, None], ["event", "processing"], {"size": "1s"}),
    Case("window.hopping", "size", BAD_DURATION, ["1s", "1000s"], {"slide": "1s"}),
    Case("window.hopping", "slide", [*BAD_DURATION, "3s", "1ms"], ["1s", "2ms"], {"size": "2s"}),
    Case("window.session", "gap", BAD_DURATION, ["1ns", "3650d"]),
    Case("window.count", "n", _ints(1, 1_000_000), [1, 1_000_000]),
    # aggregations (those with only a field: the field)
    *[
        Case(f"agg.{f}", "field", [5, "", None, True], ["v"])
        for f in ("sum", "mean", "min", "max", "std", "var", "rms", "first", "last", "median")
    ],
    *[Case(f"agg.{f}", "field", [5, "", None], ["v"]) for f in ("p50", "p90", "p95", "p99")],
    *[Case(f"agg.{f}", "field", [5, ""], ["v"]) for f in ("kurtosis", "crest_factor")],
    Case("agg.count", "field", [5, True], [None, "v"]),
    Case("agg.percentile", "q", [*BAD_NUMBER, -0.1, 100.5, None], [0, 100, 99.9], {"field": "v"}),
    Case(
        "agg.band_energy",
        "high_hz",
        [*BAD_NUMBER, 0, 2.0, 6.0],
        [5.0, 2.5],
        {"field": "v", "low_hz": 2.0, "fs": 10.0},
    ),
    Case(
        "agg.band_energy",
        "low_hz",
        [*BAD_NUMBER, -1, 5.0],
        [0, 4.9],
        {"field": "v", "high_hz": 5.0, "fs": 10.0},
    ),
    Case(
        "agg.band_energy",
        "fs",
        [*BAD_NUMBER, 0, -10, 1e12],
        [10.0, 1e9],
        {"field": "v", "low_hz": 0, "high_hz": 5.0},
    ),
    Case("agg.heart_rate", "fs", [*BAD_NUMBER, 0, -250, 1e12], [10.0, 1e9], {"field": "v"}),
    Case("agg.rr_irregularity", "fs", [*BAD_NUMBER, 0, 1e12], [10.0, 1e9], {"field": "v"}),
    # reductions
    Case("downsample.deadband", "band", [*BAD_NUMBER, -0.1], [0, 1e300], {"field": "v"}),
    Case("downsample.deadband", "percent", [*BAD_NUMBER, -1], [0, 1e6], {"field": "v"}),
    Case(
        "downsample.deadband",
        "max_interval",
        BAD_DURATION,
        [None, "1ns", "3650d"],
        {"field": "v", "band": 0.5},
    ),
    Case(
        "downsample.swinging_door",
        "deviation",
        [*BAD_NUMBER, 0, -0.01, None],
        [1e-9, 1e300],
        {"field": "v"},
    ),
    Case(
        "downsample.swinging_door",
        "max_interval",
        BAD_DURATION,
        [None, "1ns"],
        {"field": "v", "deviation": 0.1},
    ),
    Case(
        "downsample.changes", "max_interval", BAD_DURATION, [None, "1ns", "3650d"], {"field": "v"}
    ),
    Case("downsample.decimate", "q", _ints(2, 10_000, None), [2, 10_000], {"field": "v"}),
    Case(
        "downsample.decimate",
        "numtaps",
        _ints(1, 100_001),
        [None, 1, 100_001],
        {"field": "v", "q": 2},
    ),
    Case(
        "downsample.lttb",
        "points",
        _ints(3, 100_000, None),
        [3, 100_000],
        {"field": "v", "every": "10s"},
    ),
    Case(
        "downsample.lttb",
        "every",
        [*BAD_DURATION, None],
        ["1ns", "3650d"],
        {"field": "v", "points": 3},
    ),
    Case(
        "downsample.m4",
        "points",
        [*_ints(4, 100_000), 6, 10],
        [4, 8, 100_000],
        {"field": "v", "every": "10s"},
    ),
    Case("downsample.m4", "every", BAD_DURATION, ["1ns", "3650d"], {"field": "v", "points": 4}),
    Case(
        "downsample.minmax",
        "points",
        [*_ints(2, 100_000), 3, 5],
        [2, 4, 100_000],
        {"field": "v", "every": "10s"},
    ),
    Case("downsample.minmax", "every", BAD_DURATION, ["1ns", "3650d"], {"field": "v", "points": 2}),
    # detectors
    Case("detect.zscore", "window", _ints(2, 100_000), [2, 100_000]),
    Case("detect.zscore", "level", [*BAD_NUMBER, 0, -3, 1e6], [1e-9, 1000]),
    Case("detect.zscore", "warmup", [-1, True, 2.5, NAN, 10**12], [0, 10**9]),
    Case("detect.ewma", "alpha", [*BAD_NUMBER, 0, 1, 2, -0.5], [1e-9, 0.999999]),
    Case("detect.ewma", "level", [*BAD_NUMBER, 0], [1e-9, 1000]),
    Case("detect.ewma", "warmup", [-1, 1.5, True], [0, 10**9]),
    Case("detect.mad", "window", _ints(3, 100_000), [3, 100_000]),
    Case("detect.mad", "stride", _ints(1, 100_000), [1, 100_000]),
    Case("detect.mad", "level", [*BAD_NUMBER, 0, -1], [1e-9, 1000]),
    Case("detect.mad", "warmup", [-1, 1.5, INF], [0, 10**9]),
    Case("detect.cusum", "h", [*BAD_NUMBER, 0, -1, 1e9], [1e-9, 1000]),
    Case("detect.cusum", "k", [*BAD_NUMBER, -0.5, 1e9], [0, 1000]),
    Case("detect.cusum", "alpha", [*BAD_NUMBER, 0, 1, 1.5], [1e-9, 0.999999]),
    Case("detect.cusum", "warmup", [-1, 2.5, False], [0, 10**9]),
    Case("detect.seasonal", "window", _ints(16, 100_000, 3), [16, 100_000]),
    Case("detect.seasonal", "refresh", _ints(1, 100_000), [1, 100_000]),
    Case("detect.seasonal", "level", [*BAD_NUMBER, 0], [1e-9, 1000]),
    Case("detect.seasonal", "warmup", [-1, 0.5], [0, 10**9]),
    Case("detect.limits", "low", [*BAD_NUMBER], [-1e300, 0.5], {"high": 1e300}),
    Case("detect.limits", "high", [*BAD_NUMBER], [1e300, 0.6], {"low": 0.5}),
    # decisions
    Case("detect.threshold", "score", [*BAD_NUMBER, 0, 1, 1.5, -0.1], [1e-9, 0.999999]),
    Case("detect.threshold", "cooldown", [-1, 2.5, True, NAN, 10**12], [0, 10**9]),
    Case("detect.quantile", "q", [*BAD_NUMBER, 0, 1, 99], [1e-9, 0.999999]),
    Case("detect.quantile", "every", _ints(1, 100_000), [1, 100_000]),
    Case("detect.quantile", "floor", [*BAD_NUMBER, -0.1, 1.1], [0, 1]),
    Case("detect.quantile", "cooldown", [-1, 2.5, True], [0, 10**9]),
]

#: every operator factory a flow can use (detect.auto takes no arguments)
FACTORIES = {
    "window": ("tumbling", "hopping", "session", "count"),
    "agg": (
        "count", "sum", "mean", "min", "max", "std", "var", "rms", "first", "last", "median",
        "percentile", "p50", "p90", "p95", "p99", "kurtosis", "crest_factor", "band_energy",
        "heart_rate", "rr_irregularity",
    ),
    "downsample": ("deadband", "swinging_door", "changes", "decimate", "lttb", "m4", "minmax"),
    "detect": (
        "zscore", "ewma", "mad", "cusum", "seasonal", "limits", "threshold", "quantile",
    ),
}  # fmt: skip


def _attach(flow: Flow, case: Case, op: Any, src: Path, out_dir: Path) -> None:
    """The operator in a step named 'step' reading ``src``, its output to a file sink."""
    r = flow.source(files.source(str(src)), key="device", time="ts", name="src")
    module = case.factory.split(".")[0]
    out = files.sink(str(out_dir / "out.jsonl"))
    if module == "window":
        r.window(op, agg.count(), name="step").to(out)
    elif module == "agg":
        r.window(window.tumbling("1s"), op, name="step").to(out)
    elif module == "downsample":
        r.downsample(op, name="step").to(out)
    elif case.factory in ("detect.threshold", "detect.quantile"):
        r.detect(detect.zscore(), "v", decision=op, name="step").to(out)
    else:
        r.detect(op, "v", name="step").to(out)


def _ids(cases: list[tuple[Case, Any]]) -> list[str]:
    return [f"{c.factory}-{c.arg}={v!r}" for c, v in cases]


BAD = [(c, v) for c in CASES for v in c.bad]
GOOD = [(c, v) for c in CASES for v in c.good]


def test_every_operator_factory_has_its_arguments_checked() -> None:
    covered = {c.factory for c in CASES}
    wanted = {f"{m}.{f}" for m, fs in FACTORIES.items() for f in fs}
    assert wanted <= covered, sorted(wanted - covered)
    for module, names in FACTORIES.items():  # and the list above is complete
        mod = {"window": window, "agg": agg, "downsample": downsample, "detect": detect}[module]
        assert all(callable(getattr(mod, n)) for n in names)


@pytest.mark.parametrize("case, value", BAD, ids=_ids(BAD))
def test_a_bad_argument_is_refused_at_build_time_naming_it(
    case: Case, value: Any, csv_input: Path
) -> None:
    try:
        op = case.build(value)
    except (ValueError, TypeError) as exc:
        # a factory may refuse outright (detect.limits without limits): still one message
        assert case.arg in str(exc) or "low=" in str(exc), exc
        return
    flow = Flow("bad")
    _attach(flow, case, op, csv_input, Path("/nonexistent"))
    with pytest.raises(FlowValidationError) as err:
        flow.plan()
    lines = [p for p in err.value.problems if f"{case.arg}" in p]
    assert lines, err.value.problems
    line = lines[0]
    assert line.startswith("step 'step' ("), line
    assert "\n" not in line
    assert case.arg in line
    if value is not None:
        assert repr(value) in line or str(value) in line, line


@pytest.mark.parametrize("case, value", GOOD, ids=_ids(GOOD))
def test_a_good_boundary_argument_is_accepted_and_runs(
    case: Case, value: Any, csv_input: Path, tmp_path: Path
) -> None:
    flow = Flow("good")
    _attach(flow, case, case.build(value), csv_input, tmp_path)
    plan = flow.plan()
    summary = run(plan)
    assert summary.counters.get("readings_in") == N_ROWS, summary.lines()


def test_validate_reports_each_bad_argument_on_one_line_with_exit_2(tmp_path: Path) -> None:
    """The issue's cases, through the real command."""
    flow = tmp_path / "flow.py"
    flow.write_text(
        "from edgeflow import Flow, detect, downsample\n"
        "from edgeflow.connectors import simulate, stdio\n"
        "flow = Flow('bad')\n"
        "r = flow.source(simulate.sensors(), name='src')\n"
        "r.detect(detect.zscore(window=-5), 'accel', name='z').to(stdio.sink())\n"
        "r.detect(detect.zscore(window=0), 'accel', name='z0').to(stdio.sink())\n"
        "r.detect(detect.ewma(alpha=2), 'accel', name='e').to(stdio.sink())\n"
        "r.detect(detect.mad(window=1), 'accel', name='m').to(stdio.sink())\n"
        "r.detect(detect.cusum(h=-1), 'accel', name='c').to(stdio.sink())\n"
        "r.detect(detect.seasonal(window=3), 'accel', name='s').to(stdio.sink())\n"
        "r.downsample(downsample.m4('accel', every='1s', points=6), name='d').to(stdio.sink())\n"
    )
    res = CliRunner().invoke(main, ["validate", str(flow)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for step, text in (
        ("z", "window=-5"),
        ("z0", "window=0"),
        ("e", "alpha=2"),
        ("m", "window=1"),
        ("c", "h=-1"),
        ("s", "window=3"),
        ("d", "points=6"),
    ):
        line = next((x for x in res.output.splitlines() if f"step '{step}' (" in x), "")
        assert text in line and re.search(r"[\[(][-\d.]+, [-\d.]+[\])]|between", line), line


N_ROWS = 2 * 400


@pytest.fixture(scope="module")
def csv_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two keys, 400 readings each, 10 per second: a sine with noise and one spike."""
    path = tmp_path_factory.mktemp("ops") / "in.csv"
    rng = np.random.default_rng(12)
    t0 = 1_700_000_000 * S
    with path.open("w") as f:
        f.write("device,ts,v\n")
        for i in range(400):
            for k in ("a", "b"):
                v = math.sin(i / 5) + 0.1 * rng.normal() + (8.0 if i == 300 else 0.0)
                f.write(f"{k},{t0 + i * S // 10},{v!r}\n")
    return path


def test_every_operator_with_its_default_arguments_is_valid() -> None:
    defaults = [
        detect.auto(), detect.zscore(), detect.ewma(), detect.mad(), detect.cusum(),
        detect.seasonal(), detect.threshold(), detect.quantile(),
        window.tumbling("1s"), window.hopping("10s", "1s"), window.session("5s"), window.count(10),
        downsample.changes("v"), downsample.decimate("v", 4),
        downsample.lttb("v", every="1s", points=3), downsample.m4("v", every="1s", points=4),
        downsample.minmax("v", every="1s", points=2),
        agg.band_energy("v", 1, 5, fs=10), agg.heart_rate("v", fs=250), agg.p99("v"),
    ]  # fmt: skip
    for op in defaults:
        assert op.problems() == [], op
