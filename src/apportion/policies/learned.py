"""``learned``: allocation that weighs each agent by what its cuts were seen to cost.

Rule: when an agent is about to run, the pool it may draw from is shared between its own
input and output and the input and output of every agent still to run, by the expected
quality each token buys (:mod:`apportion.policies.tradeoff`): predicted needs from the
request's features (the need model of ``estimate``), the spread of the need model's past
errors for outputs, the answer's kind (a structured answer is worth nothing until it is
complete), and per agent two weights, what cutting its input and its output costs the
outcome. A cap is spent only as far as the answer needs, so the call's own ``(context,
cap)`` is chosen on the whole expected outcome (:func:`~apportion.policies.tradeoff.
choose_call`): over what its answer may need, what it writes and what that leaves the
agents after it. An answer that was cut is extended only when finishing it is worth more
than the resent prompt and the tokens it takes from the agents after it. The need model
learns each input as it was in hand (not as it was read, which a cut shortens), and counts
cut answers as censored (their need was above what they wrote).

Learning: the weights are hidden (an agent's influence and input sensitivity), so they
are learned from the outcome scores told at close, by Bayesian linear regression of
``-ln Q`` on what each agent's cuts cost (:class:`~apportion.policies.outcome_model.
OutcomeModel`). Each request draws its weights from the posterior (Thompson sampling,
spread scaled by ``explore``), so the policy explores while it is unsure and settles as
evidence comes in. ``explore`` is 0.5 by default (tempered sampling): on six tight random
workloads it ended 0.008 closer to the oracle on average than 1.0, while 0 (the posterior
mean, no exploration) once locked onto a bad early estimate and ended at 0.30 of the
oracle. What a cut answer lacks, the agents that read it lack too: an agent listed in
another's ``after`` is taken to feed it, so its output is worth its readers' input as
well, and when learning, a reader's input cost counts what its cut sources lacked.
The prior is the user's priorities. The class of a request is its
features: the allocation is computed per request from its predicted needs, with weights
that belong to the agents, so what is learned on one kind of request carries over to
all. The reward traded off is ``Q - price * tokens / ceiling``: a token is spent only
where it buys more than ``price / ceiling`` of log-quality.

Safety: exploration never leaves the ceiling (the ledger enforces it for every grant), and
no weight of a critical agent is drawn below
:data:`~apportion.policies.outcome_model.CRITICAL_LEAST`: critical agents are never
starved to explore.

Bad outcomes are not learned from: a request closed without a score is counted in
:attr:`LearnedPolicy.unscored`; a score outside [0, 1] or NaN is refused and counted in
:attr:`LearnedPolicy.refused`. The need model still learns from the request's usage.

State: the regression's sufficient statistics per pipeline, which add up, so many workers
learn together: with ``store=``, each worker folds its new statistics into the store's
copy every ``sync_every`` scored requests by compare-and-set (any store keeping policy
state, memory or Redis: :mod:`apportion.policies.learned_state`) and continues from the
sum. :meth:`LearnedPolicy.state` exports them as JSON bytes;
:meth:`LearnedPolicy.load_state` warm-starts from them; a state of another format version
is refused with :class:`~apportion.errors.StateVersionError`.

Warm start (:meth:`LearnedPolicy.warm_start`): from the result of a learning run
(``apportion learn --json`` holds the state under ``"state"``, as does
:func:`~apportion.sim.learn.run_learning`), or a saved state, the statistics are added,
scaled by ``weight`` (a simulated run may be worth less than live traffic: with
``weight=0.1``, ten simulated requests count as one). From a telemetry database, only the
need model is warmed (:func:`apportion.analysis.warm_start.warm_from_telemetry`, every
finished call of the pipeline's requests, with their features): telemetry holds no
outcome scores, so no weight can honestly be drawn from it.

Libraries weighed: MABWiser (contextual bandits incl. Thompson sampling over discrete
arms; its learners are pickled objects that cannot be merged across workers, and it adds
pandas/scikit-learn), Vowpal Wabbit (contextual bandits with ``--cb_explore_adf``; a heavy
native dependency whose model files cannot be merged by compare-and-set either),
scikit-learn's ``BayesianRidge`` (the same posterior, but refitted from the raw rows,
which would then have to be stored and shipped between workers). The first version of
this policy was a Thompson-sampling bandit over eight settings of the rule-based
policies; it could not learn that a "peripheral" agent matters most, and stayed under
the oracle where the best setting did. The model here is a few lines of NumPy over
additive sufficient statistics, which is what makes shared state across processes a
compare-and-set of a small JSON document, so it is written by hand with NumPy only
(already a dependency).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from apportion.errors import PolicyConfigError, PolicyStateError, StateVersionError
from apportion.ledger import Grant
from apportion.limits import excerpt
from apportion.policies import learned_state
from apportion.policies.base import Decision, Observation, clip_output, ended_in_full
from apportion.policies.learned_state import STATE_FORMAT, STATE_VERSION
from apportion.policies.outcome_model import OutcomeModel, output_cost
from apportion.policies.predicting import PredictingPolicy
from apportion.policies.sharing import SharedState
from apportion.policies.tradeoff import (
    FLOOR,
    OUTPUT_RATIOS,
    Call,
    Curve,
    choose_call,
    divide,
    extension_curve,
    input_curve,
    leaves_enough,
    output_curve,
)
from apportion.spec import Agent, OutputKind, Pipeline

__all__ = [
    "PRIOR_SPREAD",
    "STATE_FORMAT",
    "STATE_VERSION",
    "LearnedPolicy",
    "StateVersionError",
    "check_outcome",
]

PRIOR_SPREAD = 0.35
"""Sigma of the log-normal error assumed for an agent's output until eight are known."""
_PRIOR_RATIOS = np.exp(
    PRIOR_SPREAD * np.array([NormalDist().inv_cdf((i + 0.5) / 32) for i in range(32)])
)
_LEAST_Q = 1e-5


def check_outcome(outcome: float | None) -> float | None:
    """The outcome as a float if it can be learned from, else ``None``.

    Raises:
        ValueError: the outcome is not a number in [0, 1] (NaN included).
    """
    if outcome is None:
        return None
    if isinstance(outcome, bool) or not isinstance(outcome, int | float):
        raise ValueError(f"an outcome score is a number in [0, 1], not {outcome!r}")
    value = float(outcome)
    if not (0.0 <= value <= 1.0):  # NaN fails too
        raise ValueError(f"an outcome score is a number in [0, 1], not {outcome!r}")
    return value


def _kept(
    obs: Observation, key: tuple[Any, ...], ratios: np.ndarray, make: Callable[[], Curve]
) -> Curve:
    """The curve ``make`` gives, kept for the request (its hull with it).

    Kept while ``key`` and the error samples ``ratios`` (replaced, not changed, when the
    model learns) stay.
    """
    kept: dict[tuple[Any, ...], tuple[np.ndarray, Curve]] = obs.memo.setdefault("curves", {})
    found = kept.get(key)
    if found is not None and found[0] is ratios:
        return found[1]
    curve = make()
    kept[key] = (ratios, curve)
    return curve


def _readers_of(obs: Observation) -> dict[str, list[Agent]]:
    """The agents that name each agent in their ``after``, in execution order (memo)."""
    found: dict[str, list[Agent]] | None = obs.memo.get("readers_of")
    if found is None:
        found = obs.memo["readers_of"] = {}
        for b in obs.pipeline.agents:
            for name in b.after:
                readers = found.setdefault(name, [])
                if not readers or readers[-1] is not b:
                    readers.append(b)
    return found


def _unstarted_readers(
    obs: Observation,
    name: str,
    inputs: Mapping[str, float],
    weights: Mapping[str, tuple[float, float]],
) -> tuple[tuple[float, float], ...]:
    """``(input need, input weight)`` of the agents not started yet that read agent ``name``."""
    calls = obs.state.calls
    return tuple(
        (inputs[b.name], weights[b.name][0])
        for b in _readers_of(obs).get(name, ())
        if not calls[b.name] and b.name != name
    )


class LearnedPolicy(PredictingPolicy):
    """Allocation by expected quality per token, with agent weights learned from outcomes.

    See the module docstring.

    Args:
        price: the price of spending the whole ceiling, in outcome units.
        store: a store to share the learned state with other workers (``None``: local).
        key: the state's key in the store.
        sync_every: scored requests between two merges with the store.
        seed: seed of the sampler (``None``: fresh entropy).
        explore: scale of the posterior's spread when drawing (1: plain Thompson sampling;
            0: always the posterior mean).

    Attributes:
        unscored: requests closed without a score (not learned from).
        refused: requests whose score was outside [0, 1] or NaN (not learned from).
        scored: requests learned from.
    """

    name = "learned"

    def __init__(
        self,
        *,
        price: float = 0.02,
        store: SharedState | None = None,
        key: str = "learned",
        sync_every: int = 32,
        seed: int | None = None,
        explore: float = 0.5,
    ) -> None:
        super().__init__(margin=0.0, store=store, key=key, sync_every=sync_every)
        for name, value in (("price", price), ("explore", explore)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value < 1e9
            ):
                raise PolicyConfigError(f"{name} must be a number >= 0, not {excerpt(value)}")
        if seed is not None and (type(seed) is not int or not 0 <= seed < 2**128):
            raise PolicyConfigError(f"seed must be a non-negative integer, not {excerpt(seed)}")
        self.explore = float(explore)
        self.price = float(price)
        self.store = store
        self.key = key
        self.sync_every = sync_every
        self.unscored = 0
        self.refused = 0
        self.scored = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._models: dict[str, OutcomeModel] = {}
        self._delta: dict[str, np.ndarray] = {}  # learned here since the last merge
        self._pending: dict[str, np.ndarray] = {}  # loaded before the pipeline was seen

    # ------------------------------------------------------------ the weights

    def outcome_model(self, pipeline: Pipeline) -> OutcomeModel:
        """The outcome model of ``pipeline`` (created on first use).

        Raises:
            PolicyConfigError: a pipeline of the same name with other agents was seen.
        """
        model = self._models.get(pipeline.name)
        if model is None:
            with self._lock:
                model = self._models.get(pipeline.name)
                if model is None:
                    model = OutcomeModel(pipeline)
                    pending = self._pending.pop(pipeline.name, None)
                    if pending is None and self.store is not None:
                        pending = learned_state.pull(
                            self.store, self.key, pipeline.name, self._models
                        )
                    if pending is not None:
                        model.stats += learned_state.fit_width(pipeline.name, pending, model.width)
                    self._delta[pipeline.name] = np.zeros_like(model.stats)
                    self._models[pipeline.name] = model
        if model.agents != tuple(a.name for a in pipeline.agents):
            raise PolicyConfigError(
                f"pipeline {pipeline.name!r} has other agents than the one learned for "
                f"({', '.join(model.agents)})"
            )
        return model

    def agent_weights(self, obs: Observation) -> dict[str, tuple[float, float]]:
        """``(input weight, output weight)`` per agent, drawn once per request."""
        drawn: dict[str, tuple[float, float]] | None = obs.memo.get("weights")
        if drawn is None:
            model = self.outcome_model(obs.pipeline)
            with self._lock:
                w_in, w_out = model.draw(self._rng, self.explore)
            drawn = obs.memo["weights"] = {
                a: (float(i), float(o)) for a, i, o in zip(model.agents, w_in, w_out, strict=True)
            }
            for team in set(self.teams(obs).values()):
                # alike agents, each seen in few requests: one weight, the team's mean
                shared = (
                    sum(drawn[a][0] for a in team) / len(team),
                    sum(drawn[a][1] for a in team) / len(team),
                )
                drawn.update(dict.fromkeys(team, shared))
        return drawn

    # ------------------------------------------------------------ the curves

    def _errors(self, obs: Observation, agent: Agent) -> np.ndarray:
        """Observed / predicted output of the agent's past calls (a prior until 8)."""
        ratios = self._model(obs).errors(agent)
        return ratios if len(ratios) >= 8 else _PRIOR_RATIOS

    def _output_curve(
        self,
        obs: Observation,
        agent: Agent,
        predicted: float,
        most: int | None,
        readers: tuple[tuple[float, float], ...] | None = None,
    ) -> Curve:
        limit = agent.max_output if most is None else most
        ratios = self._errors(obs, agent)
        weight = self.agent_weights(obs)[agent.name][1]
        if readers is None:
            readers = self._readers(obs, agent)
        key = ("out", agent.name, predicted, weight, limit, readers)
        return _kept(
            obs,
            key,
            ratios,
            lambda: output_curve(
                agent.output_kind.value,
                predicted,
                ratios,
                weight,
                least=agent.min_output,
                most=limit,
                readers=readers,
            ),
        )

    def _input_curve(self, obs: Observation, agent: Agent, need: float, weight: float) -> Curve:
        ratios = self._model(obs).input_errors(agent)
        key = ("in", agent.name, need, weight)
        return _kept(obs, key, ratios, lambda: input_curve(need, weight, ratios))

    def _inputs_ahead(self, obs: Observation) -> dict[str, float]:
        """Predicted input of every agent not yet started, for this request (memo)."""
        ahead: dict[str, float] | None = obs.memo.get("inputs")
        if ahead is None:
            model = self._model(obs)
            row = obs.memo.get("row") or model.row(obs.features)
            prior = self.prior_input(obs)
            ahead = obs.memo["inputs"] = {
                b.name: model.input(b, row, self.team_prior(obs, b, 0, prior)) or 0.0
                for b in obs.pipeline.agents
            }
        return ahead

    def _inputs_now(self, obs: Observation) -> dict[str, float]:
        """:meth:`_inputs_ahead`, readers of varying lines brought up to date.

        As :meth:`~apportion.policies.predicting.PredictingPolicy.needs_now`: a reader's
        input moves with the answers its upstream lines wrote and are still expected to.
        """
        ahead = self._inputs_ahead(obs)
        now = self.needs_now(obs)
        planned = self.predicted_needs(obs)
        if now is planned:
            return ahead
        return {name: max(0.0, need + now[name] - planned[name]) for name, need in ahead.items()}

    def _readers(self, obs: Observation, agent: Agent) -> tuple[tuple[float, float], ...]:
        """``(input need, input weight)`` of the agents still to run that read ``agent``.

        An agent listed in another's ``after`` is taken to feed it: what its answer lacks,
        their input lacks.
        """
        return _unstarted_readers(obs, agent.name, self._inputs_now(obs), self.agent_weights(obs))

    def _curves_after(self, obs: Observation, agent: Agent, *, begun: bool = False) -> list[Curve]:
        """Input and output curves of the calls still to come, ``agent``'s current one excepted.

        An agent still expected to call ``k`` times (:meth:`expected_calls`: less than once
        for an agent that may not run, more for one that loops; ``agent`` itself for its
        calls after this one, ``begun`` when this one is already counted) is one pair of
        curves over ``k`` times its predicted need.
        """
        curves: list[Curve] = []
        ahead = self._inputs_now(obs)
        weights = self.agent_weights(obs)
        alike = self.teams(obs)
        pooled: dict[tuple[str, ...], tuple[Agent, float, float]] = {}
        calls = self.calls_ahead(obs, None if begun else agent.name)
        # each agent's pair, kept for the request while what it is made of stays
        version = self._model(obs).version
        memo: tuple[int, dict[tuple[Any, ...], tuple[Curve, Curve]]] | None = obs.memo.get(
            "curves_after"
        )
        if memo is None or memo[0] != version:
            memo = obs.memo["curves_after"] = (version, {})
        for b, times in zip(obs.pipeline.agents, calls, strict=True):
            if times <= 0:
                continue
            need_in = ahead[b.name]
            team = alike.get(b.name)
            readers = () if team is not None else _unstarted_readers(obs, b.name, ahead, weights)
            key = (b.name, need_in, times, readers)
            pair = None if team is not None else memo[1].get(key)
            if pair is not None:
                curves.extend(pair)
                continue
            predicted = self.predicted_output(obs, b, need_in)
            if times != 1.0:
                need_in, predicted = need_in * times, predicted * times
            if team is not None:  # the team's calls still to come are one line, as a kind's
                _, team_in, team_out = pooled.get(team, (b, 0.0, 0.0))
                pooled[team] = (b, team_in + need_in, team_out + predicted)
                continue
            pair = memo[1][key] = (
                self._input_curve(obs, b, need_in, weights[b.name][0]),
                self._output_curve(obs, b, predicted, None, readers),
            )
            curves.extend(pair)
        for b, need_in, predicted in pooled.values():
            curves.append(self._input_curve(obs, b, need_in, weights[b.name][0]))
            curves.append(self._output_curve(obs, b, predicted, None))
        return curves

    def _takes_after(self, obs: Observation, agent: Agent) -> float:
        """At least what the calls of :meth:`_curves_after` would take, without their curves.

        Per call still expected, its curves' tops (:meth:`_tops`) times the calls (and a
        token more each for rounding). Infinite where a team's calls are one curve (its
        members' samples are not each its own).
        """
        if self.teams(obs):
            return math.inf
        tops = self._tops(obs)
        total = 0.0
        for b, times in zip(obs.pipeline.agents, self.calls_ahead(obs, agent.name), strict=True):
            if times > 0:
                per_call, fixed = tops[b.name]
                total += times * per_call + fixed
        return total

    def _tops(self, obs: Observation) -> dict[str, tuple[float, float]]:
        """Per agent, what its curves take at most: ``(per call, besides)`` (memo).

        An input's top is its need times the largest of its samples (at least 1), an
        answer's its largest cap: :data:`OUTPUT_RATIOS` of its prediction, or its least
        output. Kept for the request while the need model and the inputs stay.
        """
        now = self._inputs_now(obs)
        model = self._model(obs)
        key = (model.version, obs.memo.get("needs_now_key"))
        memo: tuple[object, dict[str, tuple[float, float]]] | None = obs.memo.get("tops")
        if memo is not None and memo[0] == key:
            return memo[1]
        most = float(OUTPUT_RATIOS[-1])
        tops = {}
        for b in obs.pipeline.agents:
            need_in = now[b.name]
            ratios = model.input_errors(b)
            top = max(float(ratios.max()), 1.0) if len(ratios) else 1.0
            predicted = self.predicted_output(obs, b, need_in)
            tops[b.name] = (need_in * top + most * predicted, top + most + b.min_output)
        obs.memo["tops"] = (key, tops)
        return tops

    def _least_gain(self, obs: Observation) -> float:
        return self.price / max(obs.ceiling, 1)

    # ------------------------------------------------------------ the hooks

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """Share the pool between this call and the agents after it (module docstring)."""
        return self.route(obs, agent, input_tokens, output_tokens)[:2]

    def route(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> Decision:
        """:meth:`grant`, with the predicted output need kept on the call's record."""
        predicted = self.predicted_output(obs, agent, input_tokens)
        most = None if output_tokens is None else max(output_tokens, agent.min_output)
        if most is not None and agent.max_output is not None:
            most = min(most, agent.max_output)
        weights = self.agent_weights(obs)[agent.name]
        pool = obs.state.available_for(agent.name)
        call = Call(
            input_need=input_tokens,
            input_weight=weights[0],
            kind=agent.output_kind.value,
            predicted=predicted,
            ratios=self._errors(obs, agent),
            output_weight=weights[1],
            least=agent.min_output,
            most=agent.max_output if most is None else most,
            readers=self._readers(obs, agent),
        )
        # where every choice leaves the agents after it all they would take, they are valued
        # the same whatever it takes: their curves are not made
        ample = leaves_enough(call, pool, self._takes_after(obs, agent))
        after = [] if ample else self._curves_after(obs, agent)
        chosen = choose_call(call, pool, after, least_gain=self._least_gain(obs))
        ctx, out = chosen if chosen is not None else (min(input_tokens, pool), 0)
        ctx = min(ctx, input_tokens)
        if ctx < input_tokens:
            ctx = max(ctx, self._cold_context(obs, agent, input_tokens, predicted, out, pool))
        out = min(out, pool - ctx)
        return Decision(ctx, clip_output(max(out, 0), output_tokens), None, predicted)

    def _cold_context(
        self,
        obs: Observation,
        agent: Agent,
        input_tokens: int,
        predicted: float,
        out: int,
        pool: int,
    ) -> int:
        """Cold start: how much of its input an agent whose errors are not known yet reads.

        Until eight of its answers were seen uncut, the spread of its output (and so the
        choice of its cap) is a prior: then it reads its input in hand as far as the pool
        pays for it beside its expected output (:meth:`~apportion.policies.predicting.
        PredictingPolicy.least_output`) and what the agents still to run are expected to
        need. Once its errors are known: 0 (the choice is the trade-off's alone).
        """
        if len(self._model(obs).errors(agent)) >= 8:
            return 0
        keep = sum(self.expected_needs(obs, calling=agent.name).values())
        least = self.least_output(obs, agent, predicted, max(out, round(predicted)))
        return max(0, min(input_tokens, pool - keep - max(least, agent.min_output)))

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        """Extend when finishing the answer is worth its cost to the agents after it."""
        agent = obs.pipeline[grant.agent]
        written = obs.state.grants.get(grant.grant_id, grant).output_tokens
        most = output_tokens
        if agent.max_output is not None:
            most = min(most, agent.max_output - written)
        pool = obs.state.available_for(agent.name)
        if most <= 0 or pool <= context_tokens:
            return 0
        record = obs.calls.get(grant.grant_id)
        predicted = None if record is None else record.predicted_output
        after = self._curves_after(obs, agent, begun=True)
        gain = self._least_gain(obs)
        _, stay = divide(after, pool, least_gain=gain)
        more = extension_curve(
            agent.output_kind.value,
            written,
            predicted if predicted is not None else written,
            self._errors(obs, agent),
            self.agent_weights(obs)[agent.name][1],
            most=most,
            readers=self._readers(obs, agent),
        )
        got, go = divide([more, *after], pool - context_tokens, least_gain=gain)
        if got[0] <= 0 or go <= stay + float(more.values[0]) + 1e-9:
            return 0
        return min(output_tokens, got[0])

    # ------------------------------------------------------------ learning

    def learn(self, obs: Observation, outcome: float | None) -> None:
        """Learn needs from the usage, and the agents' weights from the outcome (if valid).

        An expired request teaches its calls' needs alone (see :meth:`Policy.learn`).
        """
        if obs.finished():
            self._observe(obs, self._usage(obs))
        if not ended_in_full(obs):
            return
        self._count_calls(obs)
        try:
            value = check_outcome(outcome)
        except ValueError:
            with self._lock:
                self.refused += 1
            return
        if value is None:
            with self._lock:
                self.unscored += 1
            return
        row = self.row(obs)
        with self._lock:
            self.scored += 1
            due = self.store is not None and self.scored % self.sync_every == 0
        if row is not None and value > _LEAST_Q:
            self.record(obs.pipeline, row, -math.log(value))
        if due:
            self.sync()

    @staticmethod
    def _usage(obs: Observation) -> list[tuple[str, int, int, bool]]:
        """The finished calls, each with the input it had in hand rather than what it read.

        A cut input read less than it needed; learning from what it read would predict
        less and less for an agent the policy keeps cutting.
        """
        return [
            (c.budgeted_as, max(c.input_used or 0, c.input_asked), c.output_used or 0, c.truncated)
            for c in obs.finished()
        ]

    def row(self, obs: Observation) -> np.ndarray | None:
        """What each agent's cuts cost in this request, as a regression row.

        ``None`` when the request teaches nothing about the weights: a structured answer
        was cut (its outcome is 0 whatever they are), or a call was never granted.
        """
        finished = obs.finished()
        if not finished:
            return None
        input_cost: dict[str, float] = {}
        out_cost: dict[str, float] = {}
        missing: dict[str, float] = {}  # what a cut answer is expected to lack
        for call in finished:
            name, ctx, wrote = call.budgeted_as, call.context_granted, call.output_used or 0
            agent = obs.pipeline[name]
            # the input lacked what the cut answers it reads lacked
            need = call.input_asked + sum(missing.get(u, 0.0) for u in agent.after)
            if ctx < need:
                input_cost[name] = input_cost.get(name, 0.0) - math.log(max(ctx, 1) / need)
            if call.truncated:
                if agent.output_kind is OutputKind.STRUCTURED:
                    return None
                predicted = call.predicted_output
                if predicted is None:
                    predicted = float(call.output_cap)
                needs = self._errors(obs, agent) * max(predicted, 1.0)
                cost, lack = output_cost(agent.output_kind.value, wrote, needs)
                out_cost[name] = out_cost.get(name, 0.0) + cost
                missing[name] = missing.get(name, 0.0) + lack
        return OutcomeModel.row_of(self.outcome_model(obs.pipeline).agents, input_cost, out_cost)

    def record(self, pipeline: Pipeline, row: np.ndarray, target: float) -> None:
        """Fold one request's row and ``-ln Q`` in."""
        model = self.outcome_model(pipeline)
        with self._lock:
            self._delta[pipeline.name] += model.add(row, min(target, -FLOOR))

    def sync(self) -> None:
        """Merge what this worker learned into the store's state, and adopt the sum.

        Raises:
            StateVersionError: the store holds a state of another format or version.
            ApportionError: other workers kept writing first (too much contention).
        """
        store = self.store
        if store is None:
            return
        with self._lock:
            delta = {name: d.copy() for name, d in self._delta.items()}
            models = dict(self._models)
        merged = learned_state.merge(store, self.key, delta, models)
        with self._lock:
            for name, d in delta.items():
                self._delta[name] -= d
            for name, stats in merged.items():
                model = self._models.get(name)
                if model is None:
                    self._pending[name] = stats
                else:
                    model.stats = stats + self._delta[name]

    # ------------------------------------------------------------ state

    def _state_parts(self) -> dict[str, Any]:
        """A saved policy file holds the outcome statistics too, under ``learned``."""
        return {"learned": json.loads(self.state())}

    def _restore_parts(self, document: Mapping[str, Any], where: str) -> Any:
        part = document.get("learned")
        if part is None:
            return lambda: None
        try:
            tables = learned_state.decode(json.dumps(part), self._models)
        except StateVersionError as exc:
            raise PolicyStateError(
                f"learned: {exc}", path=where, version=exc.version, expected=exc.expected
            ) from None
        except (PolicyConfigError, TypeError, ValueError) as exc:
            raise PolicyStateError(f"learned: {exc}", path=where) from None
        return lambda: self._add(tables, 1.0)

    def _tables(self) -> dict[str, np.ndarray]:
        tables = {name: stats.copy() for name, stats in self._pending.items()}
        for name, model in self._models.items():
            tables[name] = model.stats.copy()
        return tables

    def state(self) -> bytes:
        """Everything learned (the statistics per pipeline), as JSON bytes."""
        with self._lock:
            return learned_state.encode(self._tables(), self._models)

    def load_state(self, data: bytes | str) -> None:
        """Warm-start: add a saved state's statistics to what is known.

        Raises:
            StateVersionError: the state is of another format or version.
            PolicyConfigError: the state's agents are not the pipeline's.
        """
        self._add(learned_state.decode(data, self._models), 1.0)

    def _add(self, tables: Mapping[str, np.ndarray], weight: float) -> None:
        with self._lock:
            for name, stats in tables.items():
                model = self._models.get(name)
                if model is None:
                    pending = self._pending.get(name)
                    self._pending[name] = stats * weight + (0 if pending is None else pending)
                    continue
                added = learned_state.fit_width(name, stats, model.width) * weight
                model.stats += added
                self._delta[name] += added  # shared with the store at the next merge

    def warm_start(
        self, source: Mapping[str, Any] | bytes | Path, *, weight: float = 1.0
    ) -> dict[str, int]:
        """Warm-start from a learning run or a saved state (see the module docstring).

        Telemetry warms only the need model, and is read by
        :func:`apportion.analysis.warm_start.warm_from_telemetry` (policies read no
        telemetry themselves).

        Args:
            source: a learning run's result (a mapping with ``"state"``); a state as bytes
                or the path of a state file.
            weight: how much each learned request counts.

        Returns:
            ``{"requests": ..., "calls": 0}``: requests added to the statistics (weighted).

        Raises:
            StateVersionError: the state is of another format or version.
            PolicyStateError: the state file cannot be read.
            PolicyConfigError: the state's agents are not the pipeline's, ``weight`` is
                not positive, a result holds no state, or ``source`` is none of the above
                (a telemetry URL: the error names the function that reads it).
        """
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise PolicyConfigError(f"weight must be a number > 0, not {weight!r}")
        if isinstance(source, Mapping):
            if "state" not in source:
                raise PolicyConfigError(
                    "this result holds no learned state (rerun apportion learn)"
                )
            data: bytes | str = json.dumps(source["state"])
        elif isinstance(source, bytes):
            data = source
        elif isinstance(source, Path):
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise PolicyStateError(
                    f"cannot read: {exc.strerror or exc}", path=str(source)
                ) from None
        else:
            raise PolicyConfigError(
                "warm_start takes a learning run's result, a state (bytes) or a state file "
                f"(Path), not {type(source).__name__}; to warm the need model from "
                "telemetry, use apportion.analysis.warm_start.warm_from_telemetry(policy, "
                "URL, pipeline=...)"
            )
        tables = learned_state.decode(data, self._models)
        self._add(tables, weight)
        requests = sum(float(stats[-1]) * weight for stats in tables.values())
        return {"requests": round(requests), "calls": 0}

    def summary(self) -> dict[str, Any]:
        """Requests learned from, and per pipeline the learned weights per agent."""
        with self._lock:
            models = dict(self._models)
            counts = {name: round(float(m.stats[-1])) for name, m in models.items()}
        return {
            "scored": self.scored,
            "unscored": self.unscored,
            "refused": self.refused,
            "pipelines": {
                name: {"requests": counts[name], "weights": model.means()}
                for name, model in models.items()
            },
        }
