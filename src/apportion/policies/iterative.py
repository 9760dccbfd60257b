"""``iterative``: a small first grant, then more on demand.

Rule: an agent's first grant reads its whole counted input but gets only half of its
predicted output (at least its ``min_output``), leaving the rest of the pool free. When its
answer is cut, the agent asks for more with ``extend``: the extension is funded from the
pool beyond the minimal needs (input plus half the predicted output) of the agents still to
run, which in practice is what agents that finished under budget left behind. When nothing
can be spared, ``extend`` returns ``None`` and the agent must wrap up with what it has.
Priorities are not used.
"""

from __future__ import annotations

from apportion.policies.base import Observation
from apportion.policies.predicting import PredictingPolicy
from apportion.spec import Agent


class IterativePolicy(PredictingPolicy):
    """Minimal first grants, extended on demand; see the module docstring.

    Args:
        first_share: part of the predicted output granted at first (0.5).
        margin: safety margin added to the predicted output before that share is taken.
    """

    name = "iterative"

    def __init__(self, first_share: float = 0.5, margin: float = 0.0) -> None:
        super().__init__(margin=margin)
        self.first_share = first_share

    def call_output(self, obs: Observation, agent: Agent, input_tokens: float | None) -> float:
        """Half the predicted output (the minimal first grant)."""
        full = super().call_output(obs, agent, input_tokens)
        return max(float(agent.min_output), full * self.first_share)
