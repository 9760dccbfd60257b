"""The best split of a fixed total across agents, searched with Optuna.

The search starts from what the agents use: the target is first measured under its base
policy, which gives each agent's share of the tokens, the part of it that is context, and
its calls per request. Each trial then proposes, per agent, a multiplier of that share
(between a third and three times, on a log scale) and a context part near the observed
one; shares are renormalised so the budgets add up to the fixed total, and divided by the
agent's calls per request. The budgets run as the ``static`` policy on the target
(simulated quality for a workload, the user's metric for a pipeline) over the same
requests every trial. The first two trials are the equal split (as near as the range of
multipliers allows) and the observed split; Optuna's TPE sampler, seeded, explores from
there, so a search is repeatable. The best split is written as a budgets file the
``static`` policy loads.

The search scales out: given a ``storage`` (:mod:`apportion.analysis.study_storage`: an
Optuna RDB URL such as ``sqlite:///search.db`` or ``postgresql://...``, or a journal file
``journal:///search.log``) and a ``study_name``, any number of workers, on any machines
that reach the storage, add their trials to one study until it holds ``trials`` finished
ones. The first worker keeps in the study what the search is relative to (the total, the
agents, and their observed usage), so every worker reads a trial's numbers alike; a
worker whose target or total differs is refused. Each worker seeds its sampler with the
seed and its process id (their proposals differ), so a shared search is not repeatable
trial by trial.

This is the cross-agent efficiency measure: how much quality a fixed total buys when it
is split well, beside the equal split (``uniform``), the best built-in policy and, for a
workload, the oracle.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from apportion.analysis.sweep import SweepTarget
from apportion.errors import MissingExtra, PolicyConfigError, StudyUnavailable
from apportion.policies import Budget, StaticPolicy
from apportion.redaction import redact

Progress = Callable[[int], None]


def split_budgets(
    total: int,
    shares: dict[str, float],
    context: dict[str, float],
    calls: dict[str, float],
) -> dict[str, Budget]:
    """Per-call budgets: ``total * share / sum(shares)`` per agent, over its calls."""
    scale = sum(shares.values()) or 1.0
    budgets = {}
    for name, share in shares.items():
        tokens = int(total * share / scale / max(calls.get(name, 1.0), 1.0))
        ctx = int(tokens * context[name])
        budgets[name] = Budget(ctx, max(1, tokens - ctx))
    return budgets


def optimize(
    target: SweepTarget,
    total: int,
    *,
    trials: int = 60,
    seed: int = 0,
    progress: Progress | None = None,
    storage: str | None = None,
    study_name: str | None = None,
) -> dict[str, Any]:
    """Search the split of ``total`` tokens across the target's agents.

    Args:
        target: what to measure (its ceiling should be ``total``).
        total: the fixed total to split (the request ceiling).
        trials: Optuna trials (with a ``storage``: the finished trials the shared study
            is to hold, over all its workers).
        seed: the sampler's seed.
        progress: called with 1 after each trial (of this worker).
        storage: a study storage URL shared by several workers (see the module
            docstring); ``None``: a study in memory, this process only.
        study_name: the study's name in ``storage`` (default ``apportion-optimize``).

    Returns:
        ``{"best": {"quality", "budgets": {agent: {"context_tokens", "output_tokens"}}},
        "trials", ...}``.

    Raises:
        MissingExtra: Optuna is not installed.
        PolicyConfigError: no trial or a total below one token per agent.
        StudyUnavailable: the storage cannot be used, or its study was made for another
            target or total.
    """
    if trials < 1:
        raise PolicyConfigError(f"trials must be at least 1, not {trials!r}")
    if total < len(target.agents):
        raise PolicyConfigError(f"a total of {total} tokens cannot be split over the agents")
    try:
        import optuna
    except ImportError as exc:
        raise MissingExtra("optuna", "optimize") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = None
    if storage is not None:
        from apportion.analysis.study_storage import open_study_storage

        shared = open_study_storage(storage)
    name = study_name or "apportion-optimize"
    sampler = optuna.samplers.TPESampler(
        seed=seed if shared is None else (seed * 1_000_003 + os.getpid()) % 2**32
    )
    try:
        study = optuna.create_study(
            study_name=name if shared is not None else None,
            storage=shared,
            direction="maximize",
            sampler=sampler,
            load_if_exists=True,
        )
    except ValueError as exc:  # a study of that name that minimises, or several objectives
        raise StudyUnavailable(redact(storage), f"study {name!r}: {exc}") from None
    worker = f"{socket.gethostname()}:{os.getpid()}"
    agents = target.agents
    basis = study.user_attrs.get("apportion")
    if basis is None:
        observed = target.measure(target.base_policy()).usage_by_agent
        observed_use = {a: list(observed.get(a, (1.0, 1.0, 1.0))) for a in agents}
        basis = {"total": total, "agents": list(agents), "used": observed_use}
        study.set_user_attr("apportion", basis)  # the others read the first one's
        basis = study.user_attrs.get("apportion", basis) if shared is not None else basis
    if basis.get("total") != total or basis.get("agents") != list(agents):
        raise StudyUnavailable(
            redact(storage),
            f"study {name!r} searches a total of {basis.get('total')} over agents "
            f"{basis.get('agents')}, not {total} over {list(agents)}: give another "
            "--study-name",
        )
    used: dict[str, tuple[float, ...]] = {a: tuple(basis["used"][a]) for a in agents}
    base_share = {a: max(u[1] + u[2], 1.0) for a, u in used.items()}
    base_context = {a: min(0.95, max(0.05, u[1] / max(u[1] + u[2], 1.0))) for a, u in used.items()}
    calls = {a: max(u[0], 1.0) for a, u in used.items()}

    def budgets_of(params: dict[str, float]) -> dict[str, Budget]:
        shares = {a: base_share[a] * 3.0 ** params[f"m:{a}"] for a in agents}
        context = {a: params[f"c:{a}"] for a in agents}
        return split_budgets(total, shares, context, calls)

    def objective(trial: Any) -> float:
        params = {}
        for a in agents:
            params[f"m:{a}"] = trial.suggest_float(f"m:{a}", -1.0, 1.0)
            low, high = max(0.05, base_context[a] - 0.25), min(0.95, base_context[a] + 0.25)
            params[f"c:{a}"] = trial.suggest_float(f"c:{a}", low, high)
        quality = target.measure(StaticPolicy(budgets_of(params))).quality
        if shared is not None:
            trial.set_user_attr("worker", worker)  # which worker ran it, in a shared study
        if progress:
            progress(1)
        return quality

    equal = {a: 1.0 / base_share[a] for a in agents}  # multipliers making shares equal
    mean = sum(equal.values()) / len(equal)
    study.enqueue_trial(
        {
            **{f"m:{a}": max(-1.0, min(1.0, _log3(equal[a] / mean))) for a in agents},
            **{f"c:{a}": base_context[a] for a in agents},
        },
        skip_if_exists=True,
    )
    study.enqueue_trial(
        {**{f"m:{a}": 0.0 for a in agents}, **{f"c:{a}": base_context[a] for a in agents}},
        skip_if_exists=True,
    )
    finished = (optuna.trial.TrialState.COMPLETE,)
    for _ in range(trials + 1):
        try:
            study.optimize(
                objective,
                n_trials=trials,
                callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)],
            )
            break
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
            # On a storage without row locks (SQLite) two workers can pop the same enqueued
            # trial (optuna#4621); the second to finish it cannot tell it. The first one's
            # result stands: go on with the study.
            told_twice = isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or str(
                exc
            ).startswith("Cannot tell a")
            if shared is None or not told_twice:
                raise
    done = len(study.get_trials(deepcopy=False, states=finished))
    best = study.best_trial
    budgets = budgets_of(dict(best.params))
    return {
        "target": target.name,
        "simulated": target.simulated,
        "total": total,
        "trials": done,
        **({"study": name, "storage": redact(storage)} if storage is not None else {}),
        "best": {
            "quality": round(float(best.value or 0.0), 4),
            "budgets": {
                a: {"context_tokens": b.context_tokens, "output_tokens": b.output_tokens}
                for a, b in budgets.items()
            },
        },
        "policy": StaticPolicy(budgets),
    }


def _log3(value: float) -> float:
    import math

    return math.log(value) / math.log(3.0)
