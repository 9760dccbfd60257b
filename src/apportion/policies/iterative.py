"""``iterative``: a minimal first grant, then more on demand.

Rule: an agent's first grant reads its whole counted input and gets its predicted output
with no safety margin (``first_share`` of it: 1.0 by default; lower it when extensions are
cheap, keep it when they re-send a long prompt), at least its ``min_output``, leaving
the rest of the pool free. When its answer is cut, the agent asks for more with
``extend``: the extension is funded from the pool beyond the minimal needs (input plus
first grant) of the agents still to run, which in practice is what agents that finished
under budget left behind. When nothing can be spared, ``extend`` returns ``None`` and the
agent must wrap up with what it has. Priorities are not used.

Unlike the other predicting policies, it keeps holding back once for every agent not
started, whether or not it runs in every request, and its cold-start prior is a share of
the ceiling per agent: weighting agents by their chance to run left more of the pool to
extensions, and on the ChatDev log each extension's resent prompt cost more than it
bought (0.570 fell to 0.515 of simulated quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from apportion.errors import PolicyConfigError
from apportion.limits import excerpt
from apportion.policies.base import Observation
from apportion.policies.predicting import PredictingPolicy, single_calls
from apportion.policies.sharing import SharedState
from apportion.spec import Agent

if TYPE_CHECKING:
    from apportion.ledger_view import LedgerView
    from apportion.policies.predicting import _Ahead


class IterativePolicy(PredictingPolicy):
    """Minimal first grants, extended on demand; see the module docstring.

    Args:
        first_share: part of the predicted output granted at first (default 1.0).
        margin: safety margin added to the predicted output before that share is taken
            (default 0: the margin is paid for only when an extension needs it).
        store: a store to share the need model through (see
            :class:`~apportion.policies.predicting.PredictingPolicy`).
        key: the shared state's key prefix (default ``iterative``).
        sync_every: learned requests between two merges with the store.
    """

    name = "iterative"

    def __init__(
        self,
        first_share: float = 1.0,
        margin: float = 0.0,
        *,
        store: SharedState | None = None,
        key: str | None = None,
        sync_every: int = 32,
    ) -> None:
        super().__init__(margin=margin, store=store, key=key, sync_every=sync_every)
        if (
            isinstance(first_share, bool)
            or not isinstance(first_share, int | float)
            or not 0.0 < first_share <= 1.0
        ):
            raise PolicyConfigError(
                f"first_share must be a number in (0, 1], not {excerpt(first_share)}",
                first_share=first_share,
            )
        self.first_share = first_share
        self.output_factor = first_share * (1 + margin)

    def spare_room(self, obs: Observation, agent: Agent, *, enough: int | None = None) -> int:
        """Only the last call's cap reaches what is left: the first grants stay minimal.

        And only once every agent's output errors are known (before, what is held back
        for the others is a guess).
        """
        if self._expects_after(obs, agent):
            return 0
        model = self._model(obs)
        if not all(model.knows_errors(a) for a in obs.pipeline.agents):
            return 0
        return obs.state.available_for(agent.name)

    def _calls_left(self, ahead: _Ahead, agent: Agent, calling: bool) -> float:
        """The single-call rule: one call until the agent starts (module docstring)."""
        return _single_call(ahead.state, agent.name, calling)

    def _count_ahead(self, obs: Observation, caller: str | None) -> Sequence[float]:
        """The single-call rule for every agent."""
        return single_calls(obs, caller)

    def calls_per_request(self, obs: Observation) -> float:
        """One call per agent, for the cold-start prior (module docstring)."""
        return float(len(obs.pipeline))


def _single_call(state: LedgerView | None, name: str, calling: bool) -> float:
    """One call until agent ``name`` starts (or is about to), then none."""
    return 0.0 if calling or (state is not None and state.calls[name]) else 1.0
