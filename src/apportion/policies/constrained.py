"""``Constrained``: another policy, with one agent starved to a fraction of its grants.

Rule: every decision is the wrapped policy's, except that each grant (and extension) of
one chosen agent is cut to ``fraction`` of what the wrapped policy would have given it:
context and output both scaled by the fraction (output at least the agent's
``min_output``). The critical-path sweep uses it to ask what an agent's budget is worth;
it also tallies the tokens each agent consumed over the requests it saw.
"""

from __future__ import annotations

from collections.abc import Mapping

from apportion.errors import PolicyConfigError
from apportion.ledger import Grant
from apportion.policies.base import Observation, Plan, Policy
from apportion.spec import Agent, Pipeline


class Constrained(Policy):
    """``policy`` with ``agent``'s grants scaled by ``fraction``.

    Args:
        policy: the policy deciding everything else.
        agent: the agent to starve (``None``: nobody, for the baseline).
        fraction: the share of its grants it keeps, in (0, 1].

    Attributes:
        consumed: tokens consumed per agent, summed over the closed requests.
        usage: per agent, ``[calls, input tokens, output tokens]`` summed likewise.
        requests: how many requests closed.

    Raises:
        PolicyConfigError: the fraction is outside (0, 1].
    """

    name = "constrained"

    def __init__(self, policy: Policy, agent: str | None, fraction: float = 1.0) -> None:
        if not (isinstance(fraction, int | float) and 0.0 < fraction <= 1.0):
            raise PolicyConfigError(f"a fraction is in (0, 1], not {fraction!r}", fraction=fraction)
        self.policy = policy
        self.agent = agent
        self.fraction = float(fraction)
        self.consumed: dict[str, float] = {}
        self.usage: dict[str, list[int]] = {}
        self.requests = 0

    def check_pipeline(self, pipeline: Pipeline) -> None:
        """The wrapped policy's check."""
        self.policy.check_pipeline(pipeline)

    def plan(self, obs: Observation) -> Plan:
        """The wrapped policy's plan."""
        return self.policy.plan(obs)

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """The wrapped policy's grant, scaled for the starved agent."""
        ctx, out = self.policy.grant(obs, agent, input_tokens, output_tokens)
        if agent.name != self.agent or self.fraction == 1.0:
            return ctx, out
        return int(ctx * self.fraction), max(agent.min_output, int(out * self.fraction))

    def on_finish(
        self,
        obs: Observation,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        truncated: bool,
    ) -> Mapping[str, int] | None:
        """The wrapped policy's re-plan."""
        return self.policy.on_finish(obs, grant, input_tokens, output_tokens, truncated)

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        """The wrapped policy's extension, scaled for the starved agent."""
        extra = self.policy.extend(obs, grant, output_tokens, context_tokens)
        if grant.agent != self.agent:
            return extra
        return int(extra * self.fraction)

    def learn(self, obs: Observation, outcome: float | None) -> None:
        """The wrapped policy learns; the request's consumption is tallied."""
        self.requests += 1
        for agent, tokens in obs.state.consumed_by.items():
            self.consumed[agent] = self.consumed.get(agent, 0.0) + tokens
        for agent, input_tokens, output_tokens, _ in obs.usage():
            row = self.usage.setdefault(agent, [0, 0, 0])
            row[0] += 1
            row[1] += input_tokens
            row[2] += output_tokens
        self.policy.learn(obs, outcome)
