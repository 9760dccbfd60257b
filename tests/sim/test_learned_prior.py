"""A fresh ``learned`` policy is as good as ``estimate`` from its first requests (its prior).

Issue 21, item 1: over the first 20 requests of every shipped base-format workload, each
policy fresh and seeded as the bench seeds it, ``learned`` is not worse than ``estimate``
by more than twice the standard error of the per-request difference (the margin: what
20 requests can tell apart), and better on average over the workloads (simulated).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from apportion.sim.bench import make_policy
from apportion.sim.runner import run_requests
from apportion.sim.workload import Workload, load_workload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workloads"
FIRST = 20


def _first(workload: Workload, policy: str) -> list[float]:
    made = make_policy(policy, workload, workload.seed or 0, FIRST)
    return [o.quality for o in run_requests(workload, made, FIRST)]


def test_a_fresh_learned_policy_is_as_good_as_estimate_over_its_first_requests() -> None:
    means = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        workload = load_workload(path)
        if workload.dynamic:  # trees and teams: docs/workload-trees.md
            continue
        learned, estimate = _first(workload, "learned"), _first(workload, "estimate")
        differences = [a - b for a, b in zip(learned, estimate, strict=True)]
        mean = statistics.fmean(differences)
        margin = 2 * statistics.stdev(differences) / math.sqrt(FIRST)
        assert mean >= -margin, (workload.name, mean, margin)
        means[workload.name] = mean
    assert len(means) == 7
    assert statistics.fmean(means.values()) > 0, means
