"""Policies for tests: fixed, predictable decisions."""

from __future__ import annotations

from apportion import Agent, Policy
from apportion.ledger import Grant
from apportion.policies.base import Observation


class NoMore(Policy):
    """Grants what is asked (200 output by default); never extends."""

    name = "no-more"

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        return input_tokens, 200 if output_tokens is None else output_tokens

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        return 0


class FixedPolicy(Policy):
    """Grants at most ``context`` input and ``output`` output tokens; extends by ``extra``."""

    name = "fixed"

    def __init__(self, context: int = 10_000, output: int = 1_000, extra: int = 0) -> None:
        self.context = context
        self.output = output
        self.extra = extra

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        out = self.output if output_tokens is None else min(self.output, output_tokens)
        available = obs.state.available_for(agent.name)
        ctx = min(input_tokens, self.context, max(available - out, 0))
        return ctx, min(out, available - ctx)

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        spare = obs.state.available_for(grant.agent) - context_tokens
        return max(0, min(self.extra, output_tokens, spare))
