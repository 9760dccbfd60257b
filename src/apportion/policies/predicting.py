"""Machinery shared by the policies that predict needs: estimate, elastic and iterative.

Each of them predicts what every agent will need (:class:`~apportion.policies.needs.NeedModel`,
with an equal share of the ceiling as the fallback), grants the agent about to run what it
is predicted to need, and holds back what the agents still to run are predicted to need.
When the pool cannot cover everyone, the agent gets its weighted proportional share of what
it may draw. The subclasses differ in what they predict for a call, whom they hold back
for, with which weights, and how they answer an extension.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from apportion.errors import PolicyConfigError
from apportion.ledger import MAX_TOKENS, Grant
from apportion.policies.base import Observation, Plan, Policy, clip_output, split
from apportion.policies.needs import NeedModel
from apportion.spec import Agent, Pipeline

_FALLBACK_OUTPUT_SHARE = 0.25
_ROOM_ENOUGH = 0.5
"""Up to this part of what it wants, a squeezed agent may eat into the others' needs."""


class PredictingPolicy(Policy):
    """Base of the policies that predict each agent's need.

    Args:
        margin: safety margin added to predicted output (0.2 = 20% more).
    """

    weights: ClassVar[Mapping[int, float]] = {2: 1.0, 1: 1.0, 0: 1.0}
    """Weight of each priority rank when the pool is split in proportion."""

    def __init__(self, margin: float = 0.2) -> None:
        if not 0.0 <= margin <= 10.0:
            raise PolicyConfigError(
                f"margin must be between 0 and 10, not {margin!r}", margin=margin
            )
        self.margin = margin
        self.output_factor = 1 + margin
        self._needs: dict[int, NeedModel] = {}

    def needs(self, pipeline: Pipeline) -> NeedModel:
        """The need model learned for ``pipeline`` (created on first use)."""
        model = self._needs.get(id(pipeline))
        if model is None:
            model = self._needs.setdefault(id(pipeline), NeedModel(pipeline))
        return model

    def _model(self, obs: Observation) -> NeedModel:
        model: NeedModel | None = obs.memo.get("model")
        if model is None:
            model = obs.memo["model"] = self.needs(obs.pipeline)
        return model

    # ------------------------------------------------------------ predictions

    def predicted_needs(self, obs: Observation) -> dict[str, int]:
        """Tokens (input plus output, no margin) each agent is expected to use in this request.

        Computed once per request, when it opens, and kept in ``obs.memo``.
        """
        needs: dict[str, int] | None = obs.memo.get("needs")
        if needs is None:
            model = self._model(obs)
            features = obs.features
            row = obs.memo["row"] = model.row(features)
            share = obs.ceiling / len(obs.pipeline)
            fallback_in = share * (1 - _FALLBACK_OUTPUT_SHARE)
            needs = {}
            for agent in obs.pipeline.agents:
                inp = model.input(agent, row) or fallback_in
                out = model.output(agent, features, row, inp)
                if out is None:
                    out = self._fallback_output(obs, agent)
                # expected, not padded: margins are for the agent's own grant; padding every
                # later agent's need would starve the earlier ones for insurance
                out = max(out, agent.min_output) * min(1.0, self.output_factor)
                needs[agent.name] = round(inp + max(out, agent.min_output))
            obs.memo["needs"] = needs
        return needs

    output_factor: float = 1.2
    """What a call's output grant is, as a multiple of its predicted output (``1 + margin``)."""

    @staticmethod
    def _fallback_output(obs: Observation, agent: Agent) -> float:
        guess = obs.ceiling / len(obs.pipeline) * _FALLBACK_OUTPUT_SHARE
        return guess if agent.max_output is None else min(guess, agent.max_output)

    def predicted_output(self, obs: Observation, agent: Agent, input_tokens: float | None) -> float:
        """Expected output of one call, with the fallback when nothing is known."""
        model = self._model(obs)
        row = obs.memo.get("row") or model.row(obs.features)
        guess = model.output(agent, obs.features, row, input_tokens)
        if guess is None:
            guess = self._fallback_output(obs, agent)
        return max(guess, float(agent.min_output))

    def call_output(self, obs: Observation, agent: Agent, predicted: float) -> float:
        """Output tokens to grant one call predicted to write ``predicted`` tokens."""
        out = predicted * self.output_factor * self._model(obs).spread(agent)
        return max(out, float(agent.min_output))

    def held_back(self, obs: Observation, agent: Agent) -> tuple[int, float]:
        """What ``agent`` leaves room for: ``(sum of needs, sum of needs times weights)``.

        The agents held back for: those not yet started, without a reservation, and of a
        priority rank at least :meth:`held_for` gives.
        """
        return self._held_back(obs, agent, self.held_for(agent), self.weights)

    def _held_back(
        self,
        obs: Observation,
        agent: Agent,
        floor: int | None,
        weights: Mapping[int, float] | Sequence[float],
    ) -> tuple[int, float]:
        """The loop of :meth:`held_back`, for a priority ``floor`` and rank ``weights``."""
        if floor is None:
            return 0, 0.0
        reserve = obs.state.reserve
        calls = obs.state.calls
        needs = self.predicted_needs(obs)
        keep = 0
        weighted = 0.0
        for b in obs.pipeline.agents:
            name = b.name
            rank = b.priority.rank
            if calls[name] or name == agent.name or name in reserve or rank < floor:
                continue
            keep += needs[name]
            weighted += needs[name] * weights[rank]
        return keep, weighted

    def held_for(self, agent: Agent) -> int | None:
        """The lowest priority rank ``agent`` leaves room for (``None``: nobody).

        Here: every agent, whatever its priority.
        """
        return 0

    # --------------------------------------------------------------- the hooks

    def plan(self, obs: Observation) -> Plan:
        """Allocate the predicted needs, scaled down in proportion when they exceed the ceiling."""
        return Plan(allocation=_fit(self.predicted_needs(obs), obs.ceiling))

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """Grant the predicted need, or a weighted share when the pool cannot cover all."""
        predicted = self.predicted_output(obs, agent, input_tokens)
        want_out = round(self.call_output(obs, agent, predicted))
        if output_tokens is not None:
            want_out = min(want_out, max(output_tokens, agent.min_output))
        want = input_tokens + want_out
        budget = self.budget(obs, agent, want)
        ctx, out = split(budget, input_tokens, want_out, agent, least_output=round(predicted))
        return ctx, clip_output(out, output_tokens)

    def budget(self, obs: Observation, agent: Agent, want: int) -> int:
        """What the agent gets for a call wanting ``want`` tokens.

        It gets what it wants when that leaves the agents it holds back for their predicted
        needs. Otherwise it gets the room they leave; when that room is under half of what
        it wants, it may take more, up to half of what it wants, as its share of the pool in
        proportion to needs times priority weights (eating into theirs). The budget never
        grows when the others need more.
        """
        available = obs.state.available_for(agent.name)
        keep, others = self.held_back(obs, agent)
        room = available - keep
        if room >= want:
            return want
        mine = want * self.weights[agent.priority.rank]
        weighted = mine + others
        share = int(available * mine / weighted) if weighted else available
        return min(want, available, max(room, min(share, int(want * _ROOM_ENOUGH))))

    def on_finish(
        self,
        obs: Observation,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        truncated: bool,
    ) -> Mapping[str, int] | None:
        """Re-plan the agents still to run over the pool this call leaves.

        Returns only what changed: the finished agent's allocation becomes what it used, and
        the agents still to run are scaled down when their predicted needs exceed the pool.
        """
        state = obs.state
        used = input_tokens + output_tokens
        plan = {grant.agent: min(MAX_TOKENS, state.consumed_by[grant.agent] + used)}
        pool = state.free + grant.context_tokens + grant.output_tokens - used
        needs = self.predicted_needs(obs)
        rest = {a.name: needs[a.name] for a in obs.unstarted()}
        if sum(rest.values()) > pool:
            plan.update(_fit(rest, max(pool, 0)))
        return plan

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        """Add output from what the agents still to run are not predicted to need."""
        agent = obs.pipeline[grant.agent]
        if agent.max_output is not None:  # never past max_output, whatever was granted before
            granted = obs.state.grants.get(grant.grant_id, grant).output_tokens
            output_tokens = min(output_tokens, agent.max_output - granted)
        spare = obs.state.available_for(agent.name) - context_tokens
        spare -= self.held_back(obs, agent)[0]
        return max(0, min(output_tokens, spare))

    def learn(self, obs: Observation, outcome: float | None) -> None:
        """Fold the request's finished calls into the need model."""
        usage = obs.usage()
        if usage:
            self._model(obs).observe(obs.features, usage)


def _fit(needs: dict[str, int], total: int) -> dict[str, int]:
    """``needs`` as they are when they fit in ``total``, else scaled down in proportion."""
    asked = sum(needs.values())
    if asked <= total or asked == 0:
        return dict(needs)
    return {a: need * total // asked for a, need in needs.items()}
