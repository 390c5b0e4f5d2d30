"""State written by an older edgeflow whose snapshots this one cannot resume (detection v2
keeps other per-key state) is refused with one line and the way out, never unpickled into a
crash."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import edgeflow
from tests.test_supervisor_cli import sim_flow


def test_state_of_an_older_state_format_is_refused_with_the_way_out(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    flow = sim_flow(tmp_path / "flow.py", "1s", out)
    state = tmp_path / "state"
    edgeflow("run", str(flow), "--state-dir", str(state), "--for", "1s")
    plan = json.loads((state / "plan.json").read_text())
    assert plan["state_format"] >= 2
    del plan["state_format"]  # what edgeflow wrote before detection v2
    (state / "plan.json").write_text(json.dumps(plan, sort_keys=True))
    res = edgeflow("run", str(flow), "--state-dir", str(state), "--for", "1s", check=False)
    assert res.returncode != 0
    assert "written by an older edgeflow (state format 1" in res.stderr
    assert "--new-state" in res.stderr and "Traceback" not in res.stderr
    res = edgeflow("run", str(flow), "--state-dir", str(state), "--for", "1s", "--new-state")
    assert res.returncode == 0, res.stderr
    assert list(tmp_path.glob("state.old-*")), "the old state is kept aside"
