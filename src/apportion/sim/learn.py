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

:func:`run_learning_replay` does the same on a call log (``apportion learn CALLS.csv
--pipeline PIPELINE.yaml``): request ``i`` replays a run of the ``train`` split (through
:func:`~apportion.sim.replay.replay_run`, at that run's own ceiling), the runs taken in a
seeded random order that is drawn again at each pass over them. A log has no hidden
needs to solve an oracle on, so its "oracle" is
:func:`~apportion.sim.replay.replay_upper_bound`, a bound no allocation can beat: every
``quality_vs_oracle`` of a log is quality over that upper bound, conservative (low). The
rule policies are fitted as ``apportion replay`` fits them (``static`` profiled on the
train runs, a policy that learns first replays every train run once) and then play the
same sequence. After the sequence, every policy plays each run of ``--split`` (``test``
by default) once, still learning online; the figures are under ``"test"``, whose
``best_rule_policy`` is the rule with the highest quality on those held-out runs.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from apportion.controller import Controller
from apportion.errors import PolicyConfigError, SpecError
from apportion.policies.learned import LearnedPolicy
from apportion.policies.registry import check_policy_names, rule_policies
from apportion.sim.bench import make_policy
from apportion.sim.needs import draw_needs
from apportion.sim.oracle import Oracle
from apportion.sim.replay import (
    CallLog,
    LoggedRun,
    _learns,
    _learns_name,
    _make_policy,
    check_replay,
    replay_run,
    replay_upper_bound,
    run_ceiling,
    select_runs,
)
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import Workload
from apportion.spec import Pipeline

RULE_POLICIES = tuple(rule_policies())
"""The rule-based policies the learned one is compared with by default."""

FINAL_SHARE = 0.2
"""The final window: the last 20% of the requests."""

CURVE_POINTS = 20


def compared(names: Sequence[str]) -> list[str]:
    """The policies a learning run compares with: ``names`` without repeats nor ``learned``.

    ``learned`` is the policy that learns, always run: naming it changes nothing.

    Raises:
        UnknownPolicy: a name is not registered.
    """
    check_policy_names(names)
    return [name for name in dict.fromkeys(names) if name != "learned"]


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
        rules: registered policy names to compare with (default: the rule-based ones).
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
    rules = compared(rules)
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
    rule_qualities: dict[str, list[float]] = {}
    for name in rules:
        rule = controller_for(workload, make_policy(name, workload, seed, requests))
        got = []
        for item in needs:
            got.append(run_request(rule, workload, item, ceiling).quality)
            if progress:
                progress(1)
        rule_qualities[name] = got
    return {
        "workload": workload.name,
        "simulated": True,
        "ceiling": ceiling,
        "seed": seed,
        **_figures(best, qualities, rule_qualities),
        "learned": learned.summary(),
        "state": json.loads(learned.state()),
    }


def _ratio(values: Sequence[float], reference: Sequence[float]) -> float:
    """Mean of ``values`` over mean of ``reference``, rounded (0 when the reference is 0)."""
    total = statistics.fmean(reference) if reference else 0.0
    return round(statistics.fmean(values) / total, 4) if total else 0.0


def _figures(
    best: Sequence[float], qualities: Sequence[float], rules: Mapping[str, Sequence[float]]
) -> dict[str, Any]:
    """The figures over the oracle shared by both learning runs (see the module docstring).

    Args:
        best: the oracle's quality on each request.
        qualities: the learned policy's quality on each request.
        rules: each rule policy's quality on each request.
    """
    requests = len(best)
    start = requests - max(1, round(requests * FINAL_SHARE))
    rule_figures = {name: _ratio(got[start:], best[start:]) for name, got in rules.items()}
    best_rule = max(rule_figures, key=rule_figures.__getitem__) if rule_figures else None
    width = max(1, requests // CURVE_POINTS)
    curve = [
        {
            "requests": end,
            "quality_vs_oracle": _ratio(
                qualities[max(0, end - width) : end], best[max(0, end - width) : end]
            ),
        }
        for end in range(width, requests + 1, width)
    ]
    return {
        "requests": requests,
        "final_window": requests - start,
        "final_quality_vs_oracle": _ratio(qualities[start:], best[start:]),
        "best_rule_policy": best_rule,
        "best_rule_quality_vs_oracle": rule_figures.get(best_rule, 0.0) if best_rule else 0.0,
        "rules": rule_figures,
        "curve": curve,
    }


def progress_steps(requests: int, rules: int = len(RULE_POLICIES)) -> int:
    """How many progress steps :func:`run_learning` reports."""
    return requests * (rules + 2)


def run_learning_replay(
    log: CallLog,
    pipeline: Pipeline,
    requests: int,
    *,
    ceiling: int | None = None,
    ceiling_ratio: float | None = None,
    split: str | None = None,
    seed: int | None = None,
    policy: LearnedPolicy | None = None,
    rules: Sequence[str] = RULE_POLICIES,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Learn online over ``requests`` replayed runs of a call log (see the module docstring).

    Args:
        log: the call log (its agents must all be in ``pipeline``).
        pipeline: the pipeline: agents, priorities, output kinds.
        requests: how many requests (at least 5); each replays one train run.
        ceiling: fixed per-run ceiling; exclusive with ``ceiling_ratio``.
        ceiling_ratio: per-run ceiling as a share of the run's real tokens (default 0.8).
        split: runs for the held-out figures, ``train`` or ``test`` (see
            :func:`~apportion.sim.replay.select_runs`; default ``test``).
        seed: the seed of the run order and of the learned policy (default 0).
        policy: the learned policy to train (default: a new one, seeded by ``seed``).
        rules: registered policy names to compare with (default: the rule-based ones).
        progress: called with the number of runs just played (any policy).

    Returns:
        The ``apportion learn`` JSON document of :func:`run_learning`, every
        ``..._vs_oracle`` over :func:`~apportion.sim.replay.replay_upper_bound`, with
        ``"source": "log"``, the log's file, the pipeline's name, the ceiling (or ratio),
        the train runs under ``"train"`` and the held-out figures under ``"test"``.

    Raises:
        SpecError: a bad split, an agent of the log not in the pipeline, or no train run.
        PolicyConfigError: both ceilings given, or one that is not positive.
        UnknownPolicy: a rule name is not registered.
        ValueError: fewer than 5 requests.
    """
    if requests < 5:
        raise ValueError(f"requests must be at least 5, got {requests}")
    rules = compared(rules)
    ceiling_ratio = check_replay(log, pipeline, ceiling, ceiling_ratio)
    held_out, train, in_sample = select_runs(log, split)
    if not train:
        raise SpecError("no run is in split 'train' to learn on", file=log.file, key="split")
    seed = 0 if seed is None else seed
    sequence = _run_order(train, requests, seed)

    def limit(run: LoggedRun) -> int:
        return run_ceiling(run, ceiling, ceiling_ratio)

    bounds = {id(run): replay_upper_bound(run, limit(run)) for run in log.runs}
    best = [bounds[id(run)] for run in sequence]
    learned = policy if policy is not None else LearnedPolicy(seed=seed)
    controllers = {"learned": Controller(pipeline, policy=learned, store="memory://")}
    qualities: dict[str, list[float]] = {}
    for name in ("learned", *rules):
        if name != "learned":
            rule = _make_policy(name, train, pipeline)
            controllers[name] = Controller(pipeline, policy=rule, store="memory://")
            if _learns(rule):
                for run in train:
                    replay_run(controllers[name], run, limit(run))
                    if progress:
                        progress(1)
        got = []
        for run in sequence:
            got.append(replay_run(controllers[name], run, limit(run)).quality)
            if progress:
                progress(1)
        qualities[name] = got
    figures = _figures(best, qualities.pop("learned"), qualities)
    test_bounds = [bounds[id(run)] for run in held_out]
    test: dict[str, float] = {}
    for name, controller in controllers.items():
        got = []
        for run in held_out:
            got.append(replay_run(controller, run, limit(run)).quality)
            if progress:
                progress(1)
        test[name] = _ratio(got, test_bounds)
    learned_test = test.pop("learned")
    # the best rule on the held-out runs, which need not be the train runs' winner
    best_rule = max(test, key=test.__getitem__) if test else None
    return {
        "source": "log",
        "calls_file": log.file,
        "pipeline": pipeline.name,
        "simulated": True,
        "oracle": "upper bound (fractional knapsack over each run's calls)",
        "ceiling": ceiling,
        "ceiling_ratio": ceiling_ratio,
        "seed": seed,
        "split": held_out[0].split if log.has_split else None,
        "train": {
            "runs": len(train),
            "upper_bound_mean": round(statistics.fmean(bounds[id(run)] for run in train), 4),
        },
        **figures,
        "test": {
            "split": held_out[0].split if log.has_split else None,
            "runs": len(held_out),
            "in_sample": in_sample,
            "upper_bound_mean": round(statistics.fmean(test_bounds), 4),
            "learned_quality_vs_oracle": learned_test,
            "best_rule_policy": best_rule,
            "best_rule_quality_vs_oracle": test.get(best_rule, 0.0) if best_rule else 0.0,
            "rules": test,
        },
        "learned": learned.summary(),
        "state": json.loads(learned.state()),
    }


def _run_order(runs: Sequence[LoggedRun], requests: int, seed: int) -> list[LoggedRun]:
    """``requests`` runs: passes over ``runs``, each in a fresh seeded random order."""
    rng = random.Random(seed)
    order: list[LoggedRun] = []
    while len(order) < requests:
        batch = list(runs)
        rng.shuffle(batch)
        order.extend(batch)
    return order[:requests]


def progress_steps_replay(
    log: CallLog, requests: int, split: str | None = None, rules: Sequence[str] = RULE_POLICIES
) -> int:
    """How many progress steps :func:`run_learning_replay` reports."""
    rules = compared(rules)
    held_out, train, _ = select_runs(log, split)
    warm = sum(1 for name in rules if _learns_name(name))
    return (requests + len(held_out)) * (len(rules) + 1) + len(train) * warm
