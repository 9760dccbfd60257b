"""Allocation quality: every workload in examples/ and the ChatDev replay, in one JSON.

For each workload file in ``examples/workloads/``: the bench at the workload's default
ceiling (every built-in policy and the oracle, simulated quality). Then the replay of the
real ChatDev call log on its test split at a ceiling of 80% of each run's real tokens,
learning policies fitted on the train split. Prints one JSON document.

    python benchmarks/allocation.py [--requests N] [--calls PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from apportion.sim.bench import run_bench
from apportion.sim.replay import load_calls, run_replay
from apportion.sim.workload import load_workload
from apportion.spec import Pipeline

ROOT = Path(__file__).resolve().parents[1]
CALLS = ROOT.parent / "shared" / "data" / "chatdev" / "calls.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None, help="default: each workload's")
    parser.add_argument("--calls", type=Path, default=CALLS, help="ChatDev calls.csv")
    args = parser.parse_args()
    started = time.perf_counter()
    workloads = {}
    for path in sorted((ROOT / "examples" / "workloads").glob("*.yaml")):
        workload = load_workload(path)
        if workload.dynamic:  # trees and teams: docs/workload-trees.md, measured apart
            continue
        result = run_bench(workload, requests=args.requests)
        best = max(result["policies"], key=lambda p: result["policies"][p]["quality_mean"])
        result["best_policy"] = best
        workloads[result["workload"]] = result
    replay = None
    if args.calls.exists():
        pipeline = Pipeline.from_yaml(ROOT / "examples" / "chatdev" / "pipeline.yaml")
        replay = run_replay(
            load_calls(args.calls, pipeline), pipeline, ceiling_ratio=0.8, split="test"
        )
    print(
        json.dumps(
            {
                "simulated_quality": True,
                "workloads": workloads,
                "chatdev_replay": replay,
                "seconds": round(time.perf_counter() - started, 1),
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
