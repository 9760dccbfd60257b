"""The learned policy's learning curve on a workload, against the oracle and the rules.

:func:`run_learning` plays ``requests`` requests of a workload online through a fresh
``learned`` policy (it learns from each request's simulated quality as it closes), the
same requests through every rule-based policy, and solves each for the hindsight oracle.
It returns the ``apportion learn --json`` document: ``final_quality_vs_oracle`` (the
learned policy's mean quality over the last 20% of the requests, over the oracle's on the
same requests), ``best_rule_policy`` and ``best_rule_quality_vs_oracle`` (the rule-based
policy with the highest quality over that same window), ``requests``, and ``curve``:
points ``{"requests": n, "quality_vs_oracle": q}``, ``q`` being the learned policy's
quality over the oracle's on the window of requests ending at ``n``; ``state``, the
learned policy's state at the end (for :meth:`LearnedPolicy.warm_start`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from apportion.errors import PolicyConfigError
from apportion.policies.learned import LearnedPolicy
from apportion.sim.bench import make_policy
from apportion.sim.needs import draw_needs
from apportion.sim.oracle import Oracle
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import Workload

RULE_POLICIES = ("uniform", "static", "estimate", "elastic", "iterative")
"""The rule-based policies the learned one is compared with."""

FINAL_SHARE = 0.2
"""The final window: the last 20% of the requests."""

CURVE_POINTS = 20


def run_learning(
    workload: Workload,
    requests: int,
    *,
    ceiling: int | None = None,
    seed: int | None = None,
    policy: LearnedPolicy | None = None,
    rules: Sequence[str] = RULE_POLICIES,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Learn online over ``requests`` requests; compare with the oracle and the rules.

    Args:
        workload: the workload.
        requests: how many requests (at least 5).
        ceiling: per-request ceiling (default: the workload's).
        seed: the seed (default: the workload's).
        policy: the learned policy to train (default: a new one, seeded by ``seed``).
        rules: rule-based policy names to compare with.
        progress: called with the number of requests just played (any policy or oracle).

    Returns:
        The ``apportion learn`` JSON document (see the module docstring), with the rule
        policies' figures under ``"rules"`` and the learned policy's state summary under
        ``"learned"``.
    """
    ceiling = ceiling or workload.ceiling
    if ceiling is None:
        raise PolicyConfigError(f"workload {workload.name!r} sets no ceiling: give one")
    if requests < 5:
        raise ValueError(f"requests must be at least 5, got {requests}")
    seed = seed if seed is not None else (workload.seed or 0)
    needs = [draw_needs(workload, seed, r) for r in range(requests)]
    oracle = Oracle(workload)
    best: list[float] = []
    for item in needs:
        best.append(oracle.solve(item, ceiling).quality)
        if progress:
            progress(1)
    learned = policy if policy is not None else LearnedPolicy(seed=seed)
    controller = controller_for(workload, learned)
    qualities: list[float] = []
    for item in needs:
        qualities.append(run_request(controller, workload, item, ceiling).quality)
        if progress:
            progress(1)
    start = requests - max(1, round(requests * FINAL_SHARE))
    final_oracle = statistics.fmean(best[start:])

    def vs_oracle(values: Sequence[float], lo: int, hi: int) -> float:
        reference = statistics.fmean(best[lo:hi])
        return round(statistics.fmean(values[lo:hi]) / reference, 4) if reference else 0.0

    rule_figures: dict[str, float] = {}
    for name in rules:
        rule = controller_for(workload, make_policy(name, workload, seed, requests))
        got = []
        for item in needs:
            got.append(run_request(rule, workload, item, ceiling).quality)
            if progress:
                progress(1)
        rule_figures[name] = vs_oracle(got, start, requests)
    best_rule = max(rule_figures, key=rule_figures.__getitem__) if rule_figures else None
    width = max(1, requests // CURVE_POINTS)
    curve = [
        {"requests": end, "quality_vs_oracle": vs_oracle(qualities, max(0, end - width), end)}
        for end in range(width, requests + 1, width)
    ]
    return {
        "workload": workload.name,
        "simulated": True,
        "ceiling": ceiling,
        "seed": seed,
        "requests": requests,
        "final_window": requests - start,
        "final_quality_vs_oracle": round(statistics.fmean(qualities[start:]) / final_oracle, 4)
        if final_oracle
        else 0.0,
        "best_rule_policy": best_rule,
        "best_rule_quality_vs_oracle": rule_figures.get(best_rule, 0.0) if best_rule else 0.0,
        "rules": rule_figures,
        "curve": curve,
        "learned": learned.summary(),
        "state": json.loads(learned.state()),
    }


def progress_steps(requests: int, rules: int = len(RULE_POLICIES)) -> int:
    """How many progress steps :func:`run_learning` reports."""
    return requests * (rules + 2)
