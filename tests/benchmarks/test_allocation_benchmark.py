"""``benchmarks/allocation.py`` prints one JSON document with every section (tiny run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "allocation.py"


def test_the_allocation_benchmark_prints_every_section() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    args = [
        "--requests", "6", "--seeds", "1", "--tight", "0.7", "--learn-requests", "8",
        "--shift-requests", "20", "--shift-seeds", "1", "--shift-width", "5",
        "--only", "support-triage", "--no-replay", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    triage = document["workloads"]["support-triage"]
    assert {"uniform", "estimate", "elastic", "learned"} <= set(triage["policies"])
    assert set(triage["losses"]) == set(triage["policies"])
    for name, block in triage["losses"].items():
        gap = triage["oracle"]["quality_mean"] - triage["policies"][name]["quality_mean"]
        assert abs(block["gap"] - gap) < 2e-4
    assert document["options"]["unseen_seeds"] == [9001]
    assert set(document["unseen"]["default"]) == {"unseen-9001"}
    assert set(document["unseen"]["tight"]["0.7"]) == {"unseen-9001"}
    assert document["learned_curves"]["unseen-9001"]["0.7"]["first_20_size"] == 8
    shift = document["shift"]["9101"]
    assert shift["shift_at"] == 10
    assert len(shift["policies"]["learned"]["curve"]) == 4
