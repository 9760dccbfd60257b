"""``static``: fixed per-agent budgets from a file, whatever the request.

Rule: each agent gets, for every call, the context and output tokens written for it in a
budgets file, written by hand or profiled from observed percentiles (say the P90 of input
and output tokens, plus a margin; :meth:`StaticPolicy.from_usage`). An agent absent from
the file gets an equal share of what the listed budgets leave of the ceiling. The input is
cut to the context budget; the output is capped at the output budget. When the pool left
is smaller than the budget, the agent gets what is left. Nothing is re-planned, priorities
are ignored, and extensions are refused.

Budgets file::

    budgets:
      triage:    {context_tokens: 800,  output_tokens: 64}
      reasoner:  {context_tokens: 9000, output_tokens: 1500}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from apportion.errors import PolicyConfigError, SpecError, UnknownAgent
from apportion.files import write_atomic
from apportion.ledger import check_tokens
from apportion.limits import excerpt, listing
from apportion.policies.base import Observation, Plan, Policy, clip_output, split
from apportion.spec import Agent, Pipeline
from apportion.yamlfile import YamlMap, load_yaml


class Budget(NamedTuple):
    """One agent's fixed budget per call."""

    context_tokens: int
    output_tokens: int


class StaticPolicy(Policy):
    """Fixed per-agent budgets; see the module docstring.

    Args:
        budgets: per agent, a :class:`Budget` or a mapping with ``context_tokens`` and
            ``output_tokens``.

    Raises:
        PolicyConfigError: no budgets were given.
        InvalidTokenCount: a budget is not a token count.
    """

    name = "static"

    def __init__(self, budgets: Mapping[str, Budget | Mapping[str, int]] | None = None) -> None:
        if budgets is not None and not isinstance(budgets, Mapping):
            raise PolicyConfigError(
                f"budgets must be a mapping of agent names to budgets, not {excerpt(budgets)}",
                budgets=budgets,
            )
        if not budgets:
            raise PolicyConfigError(
                "the static policy needs budgets: StaticPolicy({'agent': Budget(ctx, out)}), "
                "StaticPolicy.from_yaml('budgets.yaml') or policy='static:budgets.yaml'"
            )
        self.budgets: dict[str, Budget] = {}
        self._lines: dict[str, tuple[str, int | None]] = {}  # agent -> file, line (from_yaml)
        for agent, budget in budgets.items():
            if type(agent) is not str:
                raise PolicyConfigError(
                    f"budgets are keyed by agent names, not {excerpt(agent)}", agent=agent
                )
            if isinstance(budget, tuple) and len(budget) == 2:
                ctx, out = budget
            elif isinstance(budget, Mapping) and {"context_tokens", "output_tokens"} <= set(budget):
                ctx, out = budget["context_tokens"], budget["output_tokens"]
            else:
                raise PolicyConfigError(
                    f"budget of {agent!r} must be Budget(context_tokens, output_tokens) or a "
                    f"mapping with both keys, not {excerpt(budget)}",
                    agent=agent,
                )
            self.budgets[agent] = Budget(
                check_tokens(f"budgets[{agent}].context_tokens", ctx),
                check_tokens(f"budgets[{agent}].output_tokens", out),
            )

    @classmethod
    def from_yaml(cls, path: str | Path) -> StaticPolicy:
        """Load budgets from a YAML file (see the module docstring for its form).

        Raises:
            SpecError: the file is missing or malformed; names the file, line and key.
        """
        data = load_yaml(path)
        if not isinstance(data, YamlMap):
            raise SpecError(
                "a budgets file is a mapping with a 'budgets' key", file=str(path), line=1
            )
        data.check_keys({"budgets", "source"}, required=("budgets",))
        table = data["budgets"]
        if not isinstance(table, YamlMap) or not table:
            data.fail("budgets", "budgets must map agent names to {context_tokens, output_tokens}")
        budgets: dict[str, Budget] = {}
        for agent, entry in table.items():
            if not isinstance(entry, YamlMap):
                table.fail(agent, "a budget is a mapping {context_tokens: N, output_tokens: M}")
            entry.check_keys(
                {"context_tokens", "output_tokens"}, ("context_tokens", "output_tokens")
            )
            values = []
            for key in ("context_tokens", "output_tokens"):
                value = entry[key]
                if type(value) is not int or value < 0:
                    entry.fail(key, f"must be a non-negative integer, not {value!r}")
                values.append(value)
            budgets[agent] = Budget(*values)
        policy = cls(budgets)
        policy._lines = {agent: (str(path), table.key_lines.get(agent)) for agent in budgets}
        return policy

    def check_pipeline(self, pipeline: Pipeline) -> None:
        """Refuse budgets for an agent the pipeline does not have.

        A misspelt name would otherwise be ignored, and that agent budgeted by the
        equal-share fallback.

        Raises:
            SpecError: a budgets file names an unknown agent (``file``, ``line``, ``key``).
            UnknownAgent: budgets given in code name an unknown agent.
        """
        for agent in self.budgets:
            if agent in pipeline:
                continue
            if agent in self._lines:
                file, line = self._lines[agent]
                raise SpecError(
                    f"unknown agent {excerpt(agent)}; the pipeline {excerpt(pipeline.name)} "
                    f"has: {listing(pipeline.names)}",
                    file=file,
                    line=line,
                    key=f"budgets.{agent}",
                )
            raise UnknownAgent(agent, pipeline.names)

    @classmethod
    def from_usage(
        cls,
        usage: Mapping[str, Iterable[tuple[int, int]]],
        *,
        percentile: float = 90.0,
        margin: float = 0.1,
    ) -> StaticPolicy:
        """Profile budgets from observed ``(input_tokens, output_tokens)`` per call of each agent.

        Args:
            usage: per agent, the observed calls.
            percentile: which percentile of input and output to budget for.
            margin: added on top (0.1 = 10%).
        """
        budgets = {}
        for agent, calls in usage.items():
            rows = np.asarray(list(calls), dtype=float).reshape(-1, 2)
            if len(rows) == 0:
                continue
            ctx, out = np.percentile(rows, percentile, axis=0) * (1 + margin)
            budgets[agent] = Budget(int(np.ceil(ctx)), max(1, int(np.ceil(out))))
        return cls(budgets)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The budgets as a YAML file the policy loads; written to ``path`` if given.

        The file is written atomically: whole, or not at all (a failed write leaves the
        previous file as it was).

        Raises:
            OSError: the file cannot be written (nothing is changed).
        """
        table = {agent: budget._asdict() for agent, budget in self.budgets.items()}
        text: str = yaml.safe_dump(
            {"budgets": table},
            default_flow_style=None,
            sort_keys=False,
            allow_unicode=True,
            width=2**31 - 1,
        )
        if path is not None:
            write_atomic(path, text)
        return text

    def _budget(self, obs: Observation, agent: Agent) -> Budget:
        budget = self.budgets.get(agent.name)
        if budget is not None:
            return budget
        names = obs.pipeline.names
        listed = sum(
            b.context_tokens + b.output_tokens for a, b in self.budgets.items() if a in names
        )
        unlisted = sum(1 for a in names if a not in self.budgets)
        share = max(0, obs.ceiling - listed) // max(unlisted, 1)
        return Budget(share - share // 4, share // 4)

    def plan(self, obs: Observation) -> Plan:
        """Allocate each agent its fixed budget."""
        allocation: dict[str, Any] = {}
        for agent in obs.pipeline.agents:
            budget = self._budget(obs, agent)
            allocation[agent.name] = budget.context_tokens + budget.output_tokens
        return Plan(allocation=allocation)

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """The fixed budget, cut to what is left of the pool."""
        budget = self._budget(obs, agent)
        ctx = min(input_tokens, budget.context_tokens)
        want = budget.output_tokens
        if agent.max_output is not None:
            want = min(want, agent.max_output)
        available = obs.state.available_for(agent.name)
        if ctx + want > available:
            ctx, out = split(available, ctx, want, agent)
        else:
            out = want
        return ctx, clip_output(out, output_tokens)
