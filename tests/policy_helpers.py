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
