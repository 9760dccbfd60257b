"""``uniform``: the equal split the field uses today, and the baseline for every comparison.

Rule: every agent gets the same share of the ceiling, ``ceiling // n`` tokens for ``n``
agents, like one context limit and one ``max_tokens`` for everybody. Within its share an
agent reads its input, cut if needed so that a quarter of the share stays for its answer,
and may write with whatever of its share is left (as ``max_tokens = window - prompt``
does). Repeated calls of an agent draw on the same share. What an agent leaves unused is
never handed to another, priorities are ignored, and extensions are always refused.
"""

from __future__ import annotations

from apportion.policies.base import Observation, Plan, Policy, clip_output
from apportion.spec import Agent


class UniformPolicy(Policy):
    """Equal shares of the ceiling; see the module docstring."""

    name = "uniform"
    output_share = 0.25
    """Part of the share kept for the answer when the input would fill it."""

    def plan(self, obs: Observation) -> Plan:
        """Give every agent ``ceiling // n``."""
        share = obs.ceiling // len(obs.pipeline)
        return Plan(allocation=dict.fromkeys(obs.pipeline.names, share))

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """Read up to three quarters of what is left of the share; write with the rest."""
        state = obs.state
        name = agent.name
        share = state.allocation[name] - state.consumed_by[name] - state.reserved_by[name]
        budget = max(0, min(share, state.available_for(name)))
        ctx = min(input_tokens, budget - int(budget * self.output_share))
        out = budget - ctx
        if agent.max_output is not None:
            out = min(out, agent.max_output)
        return ctx, clip_output(out, output_tokens)
