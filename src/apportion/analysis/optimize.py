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

This is the cross-agent efficiency measure: how much quality a fixed total buys when it
is split well, beside the equal split (``uniform``), the best built-in policy and, for a
workload, the oracle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apportion.analysis.sweep import SweepTarget
from apportion.errors import MissingExtra, PolicyConfigError
from apportion.policies import Budget, StaticPolicy

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
) -> dict[str, Any]:
    """Search the split of ``total`` tokens across the target's agents.

    Args:
        target: what to measure (its ceiling should be ``total``).
        total: the fixed total to split (the request ceiling).
        trials: Optuna trials.
        seed: the sampler's seed.
        progress: called with 1 after each trial.

    Returns:
        ``{"best": {"quality", "budgets": {agent: {"context_tokens", "output_tokens"}}},
        "trials", ...}``.

    Raises:
        MissingExtra: Optuna is not installed.
        PolicyConfigError: no trial or a total below one token per agent.
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
    agents = target.agents
    observed = target.measure(target.base_policy()).usage_by_agent
    used = {a: observed.get(a, (1.0, 1.0, 1.0)) for a in agents}
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
        if progress:
            progress(1)
        return quality

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    equal = {a: 1.0 / base_share[a] for a in agents}  # multipliers making shares equal
    mean = sum(equal.values()) / len(equal)
    study.enqueue_trial(
        {
            **{f"m:{a}": max(-1.0, min(1.0, _log3(equal[a] / mean))) for a in agents},
            **{f"c:{a}": base_context[a] for a in agents},
        }
    )
    study.enqueue_trial(
        {**{f"m:{a}": 0.0 for a in agents}, **{f"c:{a}": base_context[a] for a in agents}}
    )
    study.optimize(objective, n_trials=trials)
    best = study.best_trial
    budgets = budgets_of(dict(best.params))
    return {
        "target": target.name,
        "simulated": target.simulated,
        "total": total,
        "trials": trials,
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
