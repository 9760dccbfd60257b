"""``routed`` and ``learned-routed``: a model and a budget for each call, under both ceilings.

Rule: at each call, the agent about to run and every agent still to run get one option
each, ``(model, output cap)``, chosen together as a multiple-choice knapsack: the value of
an option is the log of its expected quality (the model's capability for the agent's
output kind, times the expected coverage of the input it can read, times the chance that
the output cap covers the predicted output, from the need model's spread), weighted by
priority (critical 3, standard 2, peripheral 1); its weight is its tokens (input plus
output at full size) and its cost in USD at full size. A dynamic programme over the tokens
the agent may draw solves the token ceiling; the cost ceiling is a Lagrange multiplier on
cost, raised geometrically until the whole plan fits in what the cost ceiling leaves
(when no plan fits, the agent about to run gets the best option that fits alone, its
output cap shrunk to what the tokens and the cost left allow). Only the agent about to
run is granted its option's model, with the tokens its budget policy would grant it there
(``elastic``'s for ``routed``, ``learned``'s for ``learned-routed``; cut to the model's
limits; the option's own tokens when those cost more than is left); the others are
re-planned at their own call, with the pool and the budget their predecessors left
(reclaim comes for free).

Cost always has a least price, so a plan does not buy the capable model where the cheap
one is almost as good merely because it may: ``cost_weight`` (default
:data:`COST_WEIGHT`) units of value for the whole cost ceiling, or without a cost
ceiling, ``uncapped_cost_weight`` (default :data:`UNCAPPED_COST_WEIGHT`) for what the
request's predicted needs would cost on the dearest model; 0 maximises quality under the
ceilings alone. So a critical agent buys the capable model when its quality matters more
than its cost, and peripheral agents take the cheap model with room to finish.

The models offered are the catalog's routable ones (:meth:`~apportion.catalog.Catalog.routable`:
priced, with a declared capability table, or without one when capability is learned).
Capability is learned from outcome scores by default (``learn_capability``;
:mod:`apportion.policies.capability`): the declared table is the prior, a model without
one starts from a neutral prior, and what was learned is saved with the policy
(``policy.save(path)``, ``RoutedPolicy.load(path)``) and, given ``store=``, shared with
the other workers (:meth:`Routing.share_capability`). Without any model, each behaves
as its budget policy, whose extensions, redistribution and learning it keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from apportion.errors import PolicyConfigError
from apportion.limits import excerpt
from apportion.policies.base import Decision, Observation, clip_output
from apportion.policies.capability import (
    PRIOR_SD,
    UNDECLARED_PRIOR,
    UNDECLARED_SD,
    CapabilityModel,
    Key,
    Parts,
    added,
    clean_calls,
    decode_shared,
    encode_shared,
)
from apportion.policies.elastic import ElasticPolicy
from apportion.policies.learned import LearnedPolicy
from apportion.policies.options import number_option
from apportion.policies.predicting import PredictingPolicy
from apportion.policies.sharing import SharedState, compare_and_set
from apportion.spec import Agent, OutputKind

_LEVELS = (0.6, 0.85, 1.0, 1.25, 1.6, 2.0, 2.6, 3.4)
"""Output caps offered, as multiples of the predicted output."""
_STEPS = 80
"""Token resolution of the knapsack: the pool is cut in this many steps."""
_PRIORITY_WEIGHT = {2: 3.0, 1: 2.0, 0: 1.0}
_FLOOR = 1e-3
COST_WEIGHT = 2.0
"""Spending the request's whole cost ceiling is worth this much priority-weighted log
quality: the least price put on cost, so a plan does not buy a capable model where a cheap
one is almost as good just because the ceiling allows it."""
UNCAPPED_COST_WEIGHT = 0.25
"""Without a cost ceiling, spending what the request's predicted needs would cost on the
dearest model is worth this much (on generated tuning workloads, seeds 1 to 6: 0.91 to
0.99 of ``elastic``'s quality at 0.55 to 0.85 of its cost; 0.5 gave 0.90 to 0.97 at 0.40
to 0.75)."""


def _coverage(kind: str, cap: float, mu: float, sigma: float) -> float:
    """Expected output quality of a cap when the need is log-normal around ``mu``."""
    if cap <= 0:
        return 0.0
    z = math.log(cap / mu) / sigma
    p = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    if kind == "structured":
        return p
    partial = min(1.0, cap / (mu * math.exp(sigma)))
    if kind == "reasoning":
        return p + (1.0 - p) * 0.5 * partial
    return p + (1.0 - p) * partial


class Routing(PredictingPolicy):
    """Model choice by the knapsack, over a predicting policy's budgets (module docstring).

    Mixed in before the policy whose budgets it keeps: :class:`RoutedPolicy` over
    ``elastic``, :class:`LearnedRoutedPolicy` over ``learned``.
    """

    routes: ClassVar[bool] = True

    def _routing_options(
        self, cost_weight: float, learn_capability: bool, uncapped_cost_weight: float
    ) -> None:
        """Check and keep the routing options (every routing policy's ``__init__`` calls it)."""
        if not isinstance(learn_capability, bool):
            raise PolicyConfigError(
                f"learn_capability must be true or false, not {excerpt(learn_capability)}",
                learn_capability=learn_capability,
            )
        self.learn_capability = learn_capability
        """Correct the catalog's capability tables from outcome scores (and offer models
        without a table, from a neutral prior): :mod:`apportion.policies.capability`."""
        self.capability = CapabilityModel()
        """What the outcome scores taught about each model's capability."""
        self.capability_key = self.needs_key.removesuffix(".needs") + ".capability"
        """Where a policy given ``store=`` shares :attr:`capability` with other workers."""
        self._capability_shared = False
        number_option("cost_weight", cost_weight, 0.0, 1e6)
        number_option("uncapped_cost_weight", uncapped_cost_weight, 0.0, 1e6)
        self.cost_weight = float(cost_weight)
        """Value (priority-weighted log quality) of spending the whole cost ceiling."""
        self.uncapped_cost_weight = float(uncapped_cost_weight)
        """Without a cost ceiling: value of spending what the request's predicted needs
        would cost on the dearest model offered."""

    def _routable(self, obs: Observation) -> list[Any]:
        models: list[Any] | None = obs.memo.get("routable")
        if models is None:
            found = obs.catalog.routable(undeclared=self.learn_capability) if obs.catalog else []
            models = obs.memo["routable"] = list(found)
        return models

    def capabilities(self, models: Iterable[Any]) -> dict[Key, float]:
        """What the policy holds of each model's capability, per ``(model, output kind)``.

        ``models`` are catalog models (:class:`~apportion.catalog.ModelInfo`). Learning,
        the declared tables corrected by the scores (a model without a table from
        :data:`~apportion.policies.capability.UNDECLARED_PRIOR`); else the tables alone.

        Raises:
            PolicyConfigError: an item of ``models`` is not a catalog model.
        """
        models = list(models)
        for model in models:
            if not isinstance(getattr(model, "name", None), str) or not callable(
                getattr(model, "capable", None)
            ):
                raise PolicyConfigError(
                    f"capabilities takes catalog models (ModelInfo), not {excerpt(model)}",
                    model=excerpt(model),
                )
        kinds = [kind.value for kind in OutputKind]
        if not self.learn_capability:
            return {(m.name, k): float(m.capable(k)) for m in models for k in kinds}
        if not self._capability_shared:  # a new worker starts from what the others learned
            self.share_capability()
        priors = {
            (m.name, k): (
                (UNDECLARED_PRIOR, UNDECLARED_SD)
                if m.capability is None
                else (float(m.capable(k)), PRIOR_SD)
            )
            for m in models
            for k in kinds
        }
        return self.capability.capabilities(priors)

    def capable(self, obs: Observation, model: Any, kind: str) -> float:
        """``model``'s capability for ``kind`` in this request (:meth:`capabilities`)."""
        table: dict[Key, float] | None = obs.memo.get("capable")
        if table is None:
            table = obs.memo["capable"] = self.capabilities(self._routable(obs))
        return table[model.name, kind]

    def learn(self, obs: Observation, outcome: float | None) -> None:
        """As the base policy; and a scored request that ran in full teaches capability."""
        super().learn(obs, outcome)
        if self.learn_capability and outcome is not None and not obs.refused:
            rows = clean_calls(obs.pipeline, obs.calls.values())
            if self.capability.observe(rows, outcome) and (
                self.capability.unshared >= self.sync_every
            ):
                self.share_capability()

    def share_capability(self) -> None:
        """Merge :attr:`capability` with the store's copy (given ``store=``), and adopt it.

        Compare-and-set under :attr:`capability_key`, as the need models are shared: every
        ``sync_every`` observed requests, and once when a worker first routes.

        Raises:
            PolicyStateError: the store holds shared state of another format or version.
            ApportionError: too much contention.
        """
        store = self.store
        self._capability_shared = True
        if store is None:
            return
        key = self.capability_key
        where = f"store:{key}"

        def exchange(delta: Parts) -> Parts:
            def update(data: bytes | None) -> tuple[bytes, Parts]:
                merged = delta if data is None else added(decode_shared(data, where), delta)
                return encode_shared(merged), merged

            return compare_and_set(store, key, update)

        self.capability.share(exchange)

    def _state_parts(self) -> dict[str, Any]:
        """A saved policy file holds the capability statistics too, under ``capability``."""
        parts = super()._state_parts()
        if self.capability.observed:
            parts["capability"] = self.capability.document()
        return parts

    def _restore_parts(self, document: Mapping[str, Any], where: str) -> Any:
        base = super()._restore_parts(document, where)
        part = document.get("capability")
        if part is None:
            return base
        parts = CapabilityModel.parse(part, where)

        def apply() -> None:
            base()
            self.capability.merge(parts)

        return apply

    def _options(
        self, obs: Observation, agent: Agent, inp: float, models: list[Any]
    ) -> list[tuple[int, int, int, float, str]]:
        """``(ctx, out, cost in nano-USD, value, model)`` per option of ``agent``."""
        mu, sigma = self._output_spread(obs, agent, inp)
        weight = _PRIORITY_WEIGHT[agent.priority.rank]
        options = []
        for model in models:
            for level in _LEVELS:
                out = max(agent.min_output, round(mu * level))
                if agent.max_output is not None:
                    out = min(out, agent.max_output)
                ctx, out = _within(model, round(inp), out)
                options.append(self._option(obs, agent, model, ctx, out, inp, mu, sigma, weight))
        return options

    def _output_spread(self, obs: Observation, agent: Agent, inp: float) -> tuple[float, float]:
        """``(mu, sigma)``: the predicted output, and the log-normal spread of the need."""
        mu = max(1.0, self.predicted_output(obs, agent, inp))
        return mu, math.log(max(1.05, self._model(obs).spread(agent))) / 1.2816

    def _option(
        self,
        obs: Observation,
        agent: Agent,
        model: Any,
        ctx: int,
        out: int,
        inp: float,
        mu: float,
        sigma: float,
        weight: float,
    ) -> tuple[int, int, int, float, str]:
        """The option ``(ctx, out, cost in nano-USD, value, model)`` of ``agent`` on ``model``."""
        kind = str(agent.output_kind)
        q_in = ctx / inp if inp > 0 else 1.0
        quality = self.capable(obs, model, kind) * q_in * _coverage(kind, out, mu, sigma)
        pin, pout = model.nano_prices()
        return ctx, out, ctx * pin + out * pout, weight * math.log(max(quality, _FLOOR)), model.name

    def _least_multiplier(self, obs: Observation, models: list[Any]) -> float:
        """The least price of a nano-USD.

        :attr:`cost_weight` over the cost ceiling; without one, :attr:`uncapped_cost_weight`
        over what the request's predicted needs would cost on the dearest model offered.
        """
        ceiling = obs.state.cost_ceiling if obs.state is not None else None
        if ceiling:
            return self.cost_weight / float(ceiling) if self.cost_weight > 0 else 0.0
        if self.uncapped_cost_weight <= 0:
            return 0.0
        scale = obs.memo.get("cost_scale")
        if scale is None:
            needs = self.predicted_needs(obs)
            outputs = self.predicted_outputs(obs)
            scale = obs.memo["cost_scale"] = max(
                sum((needs[a] - outputs[a]) * pin + outputs[a] * pout for a in needs)
                for pin, pout in (m.nano_prices() for m in models)
            )
        return self.uncapped_cost_weight / scale if scale > 0 else 0.0

    def _budget(
        self,
        obs: Observation,
        agent: Agent,
        input_tokens: int,
        output_tokens: int | None,
        model: Any,
        planned: tuple[int, int],
    ) -> Decision:
        """The base policy's grant on the chosen model when it fits, else the plan's option.

        The knapsack chooses the models; the tokens of the call are those the policy it
        is mixed into would grant (``elastic``'s rules for the pool beat the knapsack's
        coverage model: on generated tuning workloads without a cost ceiling, budgets from
        the knapsack reached 0.74 to 0.95 of ``elastic``'s quality on the same models),
        cut to the model's limits, unless they cost more than is left.
        """
        base = super().route(obs, agent, input_tokens, output_tokens)
        ctx, out = _within(model, base.context, base.output)
        left = obs.state.cost_available()
        pin, pout = model.nano_prices()
        if left is not None and ctx * pin + out * pout > left:
            ctx, out = planned
        return Decision(ctx, clip_output(out, output_tokens), model.name, base.predicted_output)

    def _shrunk(
        self,
        obs: Observation,
        agent: Agent,
        inp: float,
        models: list[Any],
        available: int,
        usd: float,
    ) -> list[tuple[int, int, int, float, str]]:
        """Options of ``agent`` that fit alone in the tokens and the cost left.

        Per model: the largest output cap left on the whole input, and each output level
        with the input cut to fit.
        """
        mu, sigma = self._output_spread(obs, agent, inp)
        least = max(1, agent.min_output)
        whole = round(inp)
        options = []
        for model in models:
            pin, pout = model.nano_prices()
            caps = [c for c in (agent.max_output, model.max_output) if c is not None]
            room = available - whole
            if not math.isinf(usd):
                room = min(room, int((usd - whole * pin) // max(1, pout)))
            outs = {min([max(least, round(mu * level)), *caps]) for level in _LEVELS}
            outs.add(min([room, *caps]))
            for out in sorted(outs):
                if out < least:
                    continue
                ctx = min(whole, available - out)
                if model.context_window is not None:
                    ctx = min(ctx, model.context_window - out)
                if not math.isinf(usd):
                    ctx = min(ctx, int((usd - out * pout) // max(1, pin)))
                if ctx < 0 or (ctx == 0 and whole > 0):
                    continue
                options.append(self._option(obs, agent, model, ctx, out, inp, mu, sigma, 1.0))
        return options

    def route(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> Decision:
        """Choose the context, the output and the model of this call (see the module)."""
        models = self._routable(obs)
        if not models:
            return super().route(obs, agent, input_tokens, output_tokens)
        state = obs.state
        available = state.available_for(agent.name)
        left = state.cost_available()
        usd = math.inf if left is None else float(left)
        needs = self.predicted_needs(obs)
        mine = self._options(obs, agent, float(input_tokens), models)
        others = []
        for b in obs.unstarted(besides=agent.name):
            inp = max(1.0, needs[b.name] - self.predicted_output(obs, b, None))
            others.append(self._options(obs, b, inp, models))
        step = max(1, available // _STEPS)
        size = available // step
        best = None
        floor = self._least_multiplier(obs, models)
        for lam in _multipliers(mine, others, size, step, usd, floor):
            pick = _solve(mine, others, size, step, usd, lam)
            if pick is not None:
                best = pick
                break
        if best is None:  # no plan fits: the best option that fits alone, shrunk if need be
            fitting = [o for o in mine if o[0] + o[1] <= available and o[2] <= usd]
            fitting += self._shrunk(obs, agent, float(input_tokens), models, available, usd)
            if not fitting:
                return Decision(0, 0)
            best = max(fitting, key=lambda o: (o[3] - floor * o[2], -o[2]))
        ctx, out, _, _, name = best
        chosen = next(m for m in models if m.name == name)
        return self._budget(obs, agent, input_tokens, output_tokens, chosen, (ctx, out))


class RoutedPolicy(Routing, ElasticPolicy):
    """``routed``: models chosen by the knapsack, budgets by ``elastic``'s rules."""

    name = "routed"

    def __init__(
        self,
        margin: float = 0.2,
        cost_weight: float = COST_WEIGHT,
        learn_capability: bool = True,
        uncapped_cost_weight: float = UNCAPPED_COST_WEIGHT,
        *,
        store: SharedState | None = None,
        key: str | None = None,
        sync_every: int = 32,
    ) -> None:
        super().__init__(margin, store=store, key=key, sync_every=sync_every)
        self._routing_options(cost_weight, learn_capability, uncapped_cost_weight)


class LearnedRoutedPolicy(Routing, LearnedPolicy):
    """``learned-routed``: models chosen by the knapsack, budgets learned from outcomes.

    ``learned`` and ``routed`` in one policy: the knapsack of :class:`Routing` chooses
    each call's model, ``learned`` its tokens on that model, and both learn from the
    same scores (``learned`` the agents' weights, :class:`Routing` the capabilities).
    Options: those of :class:`~apportion.policies.learned.LearnedPolicy` (its shared
    state under ``learned-routed`` by default) and the routing ones.
    """

    name = "learned-routed"

    def __init__(
        self,
        *,
        cost_weight: float = COST_WEIGHT,
        learn_capability: bool = True,
        uncapped_cost_weight: float = UNCAPPED_COST_WEIGHT,
        **learned: Any,
    ) -> None:
        super().__init__(**{"key": "learned-routed", **learned})
        self._routing_options(cost_weight, learn_capability, uncapped_cost_weight)


def _within(model: Any, ctx: int, out: int) -> tuple[int, int]:
    """``(ctx, out)`` cut to ``model``'s limits: its longest answer, then its context window."""
    if model.max_output is not None:
        out = min(out, model.max_output)
    if model.context_window is not None:
        ctx = max(0, min(ctx, model.context_window - out))
    return ctx, out


def _multipliers(
    mine: list[tuple[int, int, int, float, str]],
    others: list[list[tuple[int, int, int, float, str]]],
    size: int,
    step: int,
    usd: float,
    floor: float = 0.0,
) -> list[float]:
    """Lagrange multipliers on cost to try, smallest first (``floor``: the least price)."""
    if math.isinf(usd):
        return [floor]
    values = [abs(o[3]) for o in mine] + [abs(o[3]) for opts in others for o in opts]
    costs = [o[2] for o in mine] + [o[2] for opts in others for o in opts]
    scale = (max(values) + 1.0) / max(1.0, min(c for c in costs if c > 0) if any(costs) else 1.0)
    return [floor] + [floor + scale * 2.0 ** (k - 24) for k in range(0, 30, 2)]


def _solve(
    mine: list[tuple[int, int, int, float, str]],
    others: list[list[tuple[int, int, int, float, str]]],
    size: int,
    step: int,
    usd: float,
    lam: float,
) -> tuple[int, int, int, float, str] | None:
    """The option of the agent about to run in the best plan costing at most ``usd``."""
    dp = np.zeros(size + 1)
    cost = np.zeros(size + 1)
    for options in reversed(others):
        new = np.full(size + 1, -np.inf)
        new_cost = np.zeros(size + 1)
        for ctx, out, c, value, _ in options:
            w = -(-(ctx + out) // step)
            if w > size:
                continue
            cand = dp[: size + 1 - w] + value - lam * c
            better = cand > new[w:]
            new[w:] = np.where(better, cand, new[w:])
            new_cost[w:] = np.where(better, cost[: size + 1 - w] + c, new_cost[w:])
        dp, cost = new, new_cost
    best = None
    best_score = -math.inf
    for option in mine:
        ctx, out, c, value, _ = option
        w = -(-(ctx + out) // step)
        if w > size or not math.isfinite(dp[size - w]):
            continue
        if c + cost[size - w] > usd:
            continue
        score = value - lam * c + dp[size - w]
        if score > best_score:
            best, best_score = option, score
    return best
