"""``elastic``: one shared pool with priority classes.

Rule: the request's ceiling is one pool. When the request opens, every ``critical`` agent
gets a reservation of its predicted need, its answer's margin included (all critical
reservations together at most 70% of the ceiling; only for an agent seen in every
request: one that does not always run is held back for instead, see
:meth:`ElasticPolicy.plan`), which
``standard`` and ``peripheral`` agents cannot drain, so a critical agent keeps its
headroom until it runs. When an agent calls, it draws what it is predicted to need (its
counted input plus predicted output and margin) from the pool: critical agents draw first
and may take all of it but what their own later calls are expected to need; a standard
agent leaves room for the predicted needs of the standard agents still to run; a
peripheral agent gets best effort, leaving room for every agent still to run, and when
the pool is short each gets a share weighted by priority (critical 4, standard 2,
peripheral 1). Where the pool has room beyond what an agent leaves for the others, its
cap reaches into it, up to twice its own (a cap costs only what the answer writes). An
agent still to run is counted for the calls it is expected to make
(:mod:`apportion.policies.predicting`, "Agents that may not run"). What a finished agent
did not use returns to the pool at once and is re-planned for the agents still to run.
Extensions are granted from the same pool, on the same priority terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from apportion.ledger import MAX_TOKENS, Grant
from apportion.policies.base import Observation, Plan
from apportion.policies.occurrence import weighted
from apportion.policies.predicting import PredictingPolicy, _fit
from apportion.spec import Agent, OutputKind, Priority

_CRITICAL_RESERVE_SHARE = 0.7


class ElasticPolicy(PredictingPolicy):
    """A shared pool with priority classes; see the module docstring."""

    name = "elastic"
    weights: ClassVar[dict[int, float]] = {2: 4.0, 1: 2.0, 0: 1.0}
    spreads_shortfall: ClassVar[bool] = True
    trades_cap: ClassVar[bool] = True

    def plan(self, obs: Observation) -> Plan:
        """Reserve the critical agents' predicted needs; allocate the rest by weight.

        A critical agent reserves its predicted input and its answer with the margin its
        grant will give it (:meth:`call_output`), not the answer expected: reserving only
        the expected answer left its input to pay for the margin when it ran (over
        generated tuning workloads, seeds 1 to 30 and the shipped ones, ``elastic`` 0.903
        to 0.911 of the oracle). Only in a fixed pipeline, though (every agent listed and
        seen making one call in every request): where agents come and go, the margin held
        until the critical agent begins is taken from the agents that do run (on the
        shipped trees and teams, ``expert-team``, ``expert-team-listed``,
        ``research-fanout`` and ``optional-agents``, reserving it cost 0.002 to 0.024).

        Only an agent seen in every request reserves: a reservation is held until its
        agent begins or the request closes, so one for an agent that does not come (an
        escalation that runs in a third of the requests) is lost to the agents after it
        (on ``optional-agents``, a formatter cut a token short, the request's quality 0,
        in 22 of 195 tight requests: ``elastic`` 0.520 with those reservations, 0.589
        without). An agent that may not run is held back for (its need times its chance
        of running, until it is no longer expected) and allocated its need times the
        calls it is expected to make.
        """
        needs = self.predicted_needs(obs)
        counts = self.call_counts(obs.pipeline)
        critical = {
            a.name: needs[a.name]
            for a in obs.pipeline.agents
            if a.priority is Priority.CRITICAL and counts.chance(a.name) >= 1.0
        }
        if not obs.pipeline.kind_names and not counts.moving().any():
            # a fixed pipeline (each line one call in every request, so it always ran):
            # the answer with the margin its grant will have
            outputs = self.predicted_outputs(obs)
            for name in critical:
                out = outputs[name]
                critical[name] += round(
                    max(0.0, self.call_output(obs, obs.pipeline[name], out) - out)
                )
        reserve = _fit(critical, int(obs.ceiling * _CRITICAL_RESERVE_SHARE))
        expected = self.expected_needs(obs)
        shares = {
            a.name: round(expected.get(a.name, 0) * self.weights[a.priority.rank])
            for a in obs.pipeline.agents
        }
        planned = _fit(shares, obs.ceiling)
        allocation = {a: max(reserve.get(a, 0), min(needs[a], planned[a])) for a in needs}
        return Plan(allocation=allocation, reserve=reserve)

    def held_for(self, agent: Agent) -> int | None:
        """Room for agents of the same or higher priority; a critical agent draws first."""
        return None if agent.priority is Priority.CRITICAL else agent.priority.rank

    def holds(self, obs: Observation, agent: Agent, *, begun: bool = False) -> tuple[int, float]:
        """As the base rule; a critical agent leaves room for its own later calls only.

        A critical agent that calls at most once per request also leaves room for the
        answers (not the inputs) of the agents still to come that call at most once: an
        input can be read in part, a cut record or conclusion is worth little. Not where
        agents loop (their answers are spread over many calls): on the ChatDev log (roles
        that each speak many times) that cost 0.15 of quality.
        """
        if agent.priority is not Priority.CRITICAL:
            keep, total = super().holds(obs, agent, begun=begun)
            records = self.lower_records(obs, agent, begun=begun)
            return keep + records, total + records * self.weights[0]
        ahead = self.calls_ahead(obs, None if begun else agent.name)
        times = ahead[obs.pipeline.index(agent.name)]
        need = 0 if times <= 0 else weighted(self.predicted_needs(obs)[agent.name], times)
        keep, total = need, need * self.weights[agent.priority.rank]
        outputs = self.predicted_outputs(obs)
        reserve = obs.state.reserve
        counts = self.call_counts(obs.pipeline)
        if not counts.at_most_once(agent.name):
            return keep, total
        once = counts.at_most_once_all()
        for k, (b, later) in enumerate(zip(obs.pipeline.agents, ahead, strict=True)):
            if later <= 0 or not once[k] or b.name == agent.name or b.name in reserve:
                continue
            answer = float(outputs[b.name])
            if b.output_kind is not OutputKind.PROSE:  # worth nothing cut: its margin too
                answer = self.call_output(obs, b, answer)
            out = weighted(answer, later)
            keep += out
            total += out * self.weights[b.priority.rank]
        return keep, total

    def holds_at_most(self, obs: Observation, agent: Agent) -> float:
        """As the base rule's bound: it covers these rules too (the needs and the answers)."""
        return super().holds_at_most(obs, agent)

    def lower_records(self, obs: Observation, agent: Agent, *, begun: bool = False) -> int:
        """Room a standard agent leaves for the records of lower-priority agents to come.

        A standard agent leaves room for the standard and critical agents only; the
        structured answer of a peripheral agent after it (a formatter's record, worth 0
        cut, and with it the request) then got what was left, its cap short in 28% to 30%
        of the tight requests of some generated tuning workloads (seeds 4 and 21). So it
        also leaves room for those answers, with their margin (not for their inputs,
        which can be read in part), as a critical agent does for every answer
        (:meth:`held_back`). Memo per epoch, as the held-back parts.
        """
        if agent.priority is not Priority.STANDARD:
            return 0
        epoch = self._epoch(obs)
        key = ("lower_records", epoch, agent.name, begun)
        memo = obs.memo.get("lower_records")
        if epoch is not None and memo is not None and memo[0] == key:
            return int(memo[1])
        once = self.call_counts(obs.pipeline).at_most_once_all()
        outputs = self.predicted_outputs(obs)
        rank = agent.priority.rank
        found = 0
        ahead = self.calls_ahead(obs, None if begun else agent.name)
        for k, (b, later) in enumerate(zip(obs.pipeline.agents, ahead, strict=True)):
            if (
                later <= 0
                or b.priority.rank >= rank
                or b.output_kind is not OutputKind.STRUCTURED
                or not once[k]
            ):
                continue
            found += weighted(self.call_output(obs, b, float(outputs[b.name])), later)
        obs.memo["lower_records"] = (key, found)
        return found

    def held_inputs(
        self, obs: Observation, agent: Agent
    ) -> tuple[int, int, list[tuple[float, float, float]]]:
        """As the base rule; for a critical agent, of what :meth:`held_back` keeps.

        The inputs of its own later calls, and every answer it leaves room for (all of
        them are treated as answers a squeezed critical call does not eat into).
        """
        if agent.priority is not Priority.CRITICAL:
            inputs, fragile, sizes = super().held_inputs(obs, agent)
            return inputs, fragile + self.lower_records(obs, agent), sizes
        keep = self.held_back(obs, agent)[0]
        times = self.calls_ahead(obs, agent.name)[obs.pipeline.index(agent.name)]
        own = self.predicted_needs(obs)[agent.name] - self.predicted_outputs(obs)[agent.name]
        inputs = 0 if times <= 0 else weighted(max(0, own), times)
        sizes = [(max(0.0, own), times, self.weights[agent.priority.rank])] if times > 0 else []
        return inputs, max(0, keep - inputs), sizes

    def on_finish(
        self,
        obs: Observation,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        truncated: bool,
    ) -> Mapping[str, int] | None:
        """Hand the whole pool left to the agents still to run, by predicted need and weight."""
        state = obs.state
        used = input_tokens + output_tokens
        plan = {grant.agent: min(MAX_TOKENS, state.consumed_by[grant.agent] + used)}
        pool = max(0, state.free + grant.context_tokens + grant.output_tokens - used)
        ahead = self.expected_needs(obs, besides=grant.agent)
        pipeline, weights = obs.pipeline, self.weights
        shares = {
            name: need * weights[pipeline[name].priority.rank] for name, need in ahead.items()
        }
        total = sum(shares.values())
        if total > 0:
            plan.update({name: int(pool * w / total) for name, w in shares.items()})
        return plan
