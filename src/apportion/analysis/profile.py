"""Budgets files for the ``static`` policy, profiled from telemetry (``apportion profile``).

For each agent with at least ``min_calls`` finished calls, the budget is
:func:`~apportion.analysis.report.recommend`: the chosen percentile of the input needed
and of the output used, plus the margin, rounded up (and at least the largest usage of a
cut call, plus the margin, when more than 10% of the agent's calls hit their budget).

The file is the one :meth:`~apportion.policies.StaticPolicy.from_yaml` loads::

    budgets:
      reasoner: {context_tokens: 9000, output_tokens: 1500}
    source: {database: sqlite:///apportion.db, input_percentile: 90, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from apportion.analysis.report import agent_calls, recommend
from apportion.telemetry.sql import Dataset

__all__ = ["budgets_yaml", "profile_budgets"]


def profile_budgets(
    dataset: Dataset,
    *,
    input_percentile: float = 90.0,
    output_percentile: float = 90.0,
    margin: float = 0.1,
    min_calls: int = 1,
    under_hit_rate: float = 0.10,
) -> dict[str, dict[str, Any]]:
    """Budgets per agent from a dataset.

    Args:
        dataset: the calls (see :meth:`~apportion.telemetry.sql.Database.load`).
        input_percentile: percentile of the input needed to budget for (0..100).
        output_percentile: percentile of the output to budget for (0..100).
        margin: added on top (0.1 = 10%).
        min_calls: agents with fewer finished calls are left out.
        under_hit_rate: above this ceiling-hit rate, cut calls count as lower bounds.

    Returns:
        Per agent (sorted by name): ``{"context_tokens", "output_tokens", "calls",
        "censored"}``.

    Raises:
        ValueError: a percentile outside 0..100, a negative margin, ``min_calls < 1``.
    """
    for name, q in (
        ("input_percentile", input_percentile),
        ("output_percentile", output_percentile),
    ):
        if not 0 <= q <= 100:
            raise ValueError(f"{name} must be between 0 and 100, not {q}")
    if margin < 0:
        raise ValueError(f"margin must not be negative, not {margin}")
    if min_calls < 1:
        raise ValueError(f"min_calls must be at least 1, not {min_calls}")
    budgets: dict[str, dict[str, Any]] = {}
    for agent, calls in agent_calls(dataset.calls).items():
        budget = recommend(
            calls,
            input_percentile=input_percentile,
            output_percentile=output_percentile,
            margin=margin,
            under_hit_rate=under_hit_rate,
        )
        done = [c for c in calls if c.settled == "finish" and c.used is not None]
        if budget is None or len(done) < min_calls:
            continue
        budgets[agent] = {
            **budget,
            "calls": len(done),
            "input_cut_calls": sum(1 for c in done if c.input_cut),
            "truncated_calls": sum(1 for c in done if c.truncated),
        }
    return budgets


def budgets_yaml(budgets: Mapping[str, Mapping[str, Any]], source: Mapping[str, Any]) -> str:
    """The budgets file the ``static`` policy loads, with where it came from.

    Args:
        budgets: per agent, at least ``context_tokens`` and ``output_tokens``.
        source: how the budgets were made (database, period, percentiles ...), kept under
            the file's ``source`` key.
    """
    table = {
        agent: {
            "context_tokens": int(b["context_tokens"]),
            "output_tokens": int(b["output_tokens"]),
        }
        for agent, b in budgets.items()
    }
    text: str = yaml.safe_dump(
        {"budgets": table, "source": dict(source)},
        default_flow_style=None,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    return text
