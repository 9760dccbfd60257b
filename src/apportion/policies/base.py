"""The policy contract: what a policy decides, when, and from what it may decide.

A policy is consulted by the controller at five moments of a request:

* ``plan`` when the request opens: the planned allocation per agent (advisory, shown in
  summaries) and the reservations held for agents that have not started (enforced by the
  ledger: only agents of strictly higher priority may draw on them);
* ``grant`` when an agent begins a call: how many context and output tokens it gets;
* ``on_finish`` when a call settles: a new planned allocation for the agents still to run
  (redistribution), or ``None`` to keep the plan;
* ``extend`` when a cut agent asks for more: how many output tokens to add (0: wrap up);
* ``learn`` when the request closes: the outcome score, if the user gave one.

And once, when a controller with telemetry is made with it, ``attach_telemetry``: the
:class:`DecisionLog` where a policy writes decisions of its own (a rollout's promotions
and rollbacks); a policy that makes none ignores it.

Every hook receives an :class:`Observation`: the pipeline, the ceiling, the request's
features and the ledger's current state. That is all a real system can see at that moment,
and all a policy is ever given: never a simulator's hidden needs or quality model.

The ledger, not the policy, enforces the ceiling: a grant larger than what the agent may
draw is refused whatever the policy says. A policy should nonetheless grant within
``obs.state.available_for(agent)``; the controller refuses a grant whose output is below
the agent's ``min_output``, raising :class:`~apportion.errors.BudgetExceeded`.
Policy objects are shared by all requests of a controller, across threads: hooks must not
keep per-request state on ``self`` (use ``obs.memo`` for scratch work) and must lock what
they share. What happened to each call is in ``obs.calls``, one
:class:`~apportion.calls.CallRecord` per grant keyed by grant id; a policy that predicts a
call's output need returns it in its :class:`Decision`, and finds it again on the record.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

from apportion.calls import CallRecord
from apportion.ledger import EXPIRED, Grant
from apportion.ledger_view import LedgerView
from apportion.spec import Agent, OutputKind, Pipeline


class Plan(NamedTuple):
    """A policy's plan for a request when it opens.

    Attributes:
        allocation: planned tokens per agent (advisory; summaries show it as allocated).
        reserve: tokens held for each agent until it starts (enforced by the ledger).
    """

    allocation: Mapping[str, int] = {}
    reserve: Mapping[str, int] = {}


class Decision(NamedTuple):
    """What a policy decides for one call (:meth:`Policy.route`).

    Attributes:
        context: context tokens to grant.
        output: output tokens to grant.
        model: the model to call (a routing policy's choice), or ``None``.
        predicted_output: the output the policy expects the call to need, if it predicted
            one (kept on the call's record).
    """

    context: int
    output: int
    model: str | None = None
    predicted_output: float | None = None


_new = tuple.__new__  # builds a NamedTuple from a full tuple, skipping its slow __new__


class Observation:
    """Everything a policy may see about one request.

    Attributes:
        request_id: the request's id.
        pipeline: the pipeline (agents, priorities, order).
        ceiling: the request's token ceiling.
        features: the request's features (message count, document length, ...).
        state: the ledger's state after the latest operation.
        calls: one record per grant begun so far, by grant id (in grant order).
        refused: a record per ``begin`` that was refused (status ``refused``, grant id 0).
        memo: scratch space for the policy's own work on this request.
        ceiling_usd: the request's cost ceiling in USD, or ``None``.
        catalog: the controller's model catalog (prices, limits, capability), or ``None``.
    """

    __slots__ = (
        "calls",
        "catalog",
        "ceiling",
        "ceiling_usd",
        "features",
        "memo",
        "pipeline",
        "refused",
        "request_id",
        "state",
    )

    def __init__(
        self,
        request_id: str,
        pipeline: Pipeline,
        ceiling: int,
        features: Mapping[str, float],
        state: LedgerView | None = None,
    ) -> None:
        self.request_id = request_id
        self.pipeline = pipeline
        self.ceiling = ceiling
        self.features = features
        self.state: LedgerView = state  # type: ignore[assignment]
        self.calls: dict[int, CallRecord] = {}
        self.refused: list[CallRecord] = []
        self.memo: dict[str, Any] = {}
        self.ceiling_usd: float | None = None
        self.catalog: Any = None

    def finished(self) -> list[CallRecord]:
        """The calls that reported their usage, in grant order."""
        return [c for c in self.calls.values() if c.finished]

    def usage(self) -> list[tuple[str, int, int, bool]]:
        """``(agent, input_tokens, output_tokens, truncated)`` of each finished call."""
        return [
            (c.budgeted_as, c.input_used or 0, c.output_used or 0, c.truncated)
            for c in self.finished()
        ]

    def unstarted(self, *, besides: str | None = None) -> list[Agent]:
        """Agents that have not begun a call yet, in execution order."""
        calls = self.state.calls
        return [a for a in self.pipeline.agents if not calls[a.name] and a.name != besides]


class DecisionLog(Protocol):
    """Where a policy writes the decisions it makes about itself: telemetry.

    What :meth:`Policy.attach_telemetry` is given (a controller's sinks), or made by
    :func:`apportion.telemetry.decision_log` from a URL. ``record(policy, decision)``
    queues one decision for the sinks that keep its kind (a
    :class:`~apportion.policies.rollout.Rollout`'s
    :class:`~apportion.policies.rollout.RolloutEvent`: the SQL sink) and passes over the
    others; it never raises and never waits on a sink.
    """

    def record(self, policy: Policy, decision: object) -> None:
        """Queue ``decision``, made by ``policy``, for the sinks that keep its kind."""
        ...


class Policy(abc.ABC):
    """Base class of every allocation policy; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    routes: ClassVar[bool] = False
    """A routing policy chooses the model too (:meth:`route`), and integrations call the
    model it chose instead of the caller's ``model=``."""

    def check_pipeline(self, pipeline: Pipeline) -> None:  # noqa: B027 (optional hook)
        """Refuse a pipeline this policy's configuration does not fit.

        The controller the policy is given to calls it once; by default every pipeline fits.

        Raises:
            ApportionError: the configuration names what the pipeline lacks.
        """

    def plan(self, obs: Observation) -> Plan:
        """Plan the request when it opens (default: no plan, no reservations)."""
        return Plan()

    @abc.abstractmethod
    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """Decide ``(context_tokens, output_tokens)`` for one call of ``agent``.

        Args:
            obs: the request as it stands.
            agent: the agent about to call its model.
            input_tokens: the input it has in hand, counted exactly.
            output_tokens: the output the caller asks for, if it asked (an upper bound).
        """

    def route(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> Decision:
        """Decide the context, the output and the model of one call of ``agent``.

        What the controller asks. The model is a catalog name, or ``None`` for the caller's
        own model; it is obeyed only when the policy ``routes``. Default: :meth:`grant`
        and no model.
        """
        ctx, out = self.grant(obs, agent, input_tokens, output_tokens)
        return _new(Decision, (ctx, out, None, None))

    def on_finish(
        self,
        obs: Observation,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        truncated: bool,
    ) -> Mapping[str, int] | None:
        """Return a new planned allocation once this call settles, or ``None`` to keep it.

        Called before the store settles the call; it must not change anything (the
        settlement may still be refused). The call's record is ``obs.calls[grant.grant_id]``.
        """
        return None

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        """Decide how many output tokens to add to a cut call (0: the agent must wrap up)."""
        return 0

    def learn(self, obs: Observation, outcome: float | None) -> None:  # noqa: B027
        """Learn from a closed request (its final state and outcome score); default: nothing.

        Also called, with ``outcome`` ``None``, for a request that expired
        (``obs.state.status == "expired"``: closed by ``reap``, from the calls the store
        recorded). It may have been abandoned halfway: learn from its finished calls, not
        from which agents ran or how often (:func:`ended_in_full`).
        """

    def attach_telemetry(self, log: DecisionLog) -> None:  # noqa: B027
        """Take the telemetry of a controller made with this policy; default: nothing.

        Called once, by a controller that has telemetry, with a log over its sinks. A
        policy whose own decisions are worth recording (a rollout's start, promotions and
        rollback) keeps ``log`` and writes each with ``log.record(self, decision)``.
        """


# ------------------------------------------------------------------- helpers


def ended_in_full(obs: Observation) -> bool:
    """Whether the request ran to its end: closed, not expired (see :meth:`Policy.learn`)."""
    return obs.state is None or obs.state.status != EXPIRED


_OUTPUT_FIRST_SHARE = {
    OutputKind.STRUCTURED: 0.75,
    OutputKind.REASONING: 0.75,
    OutputKind.PROSE: 0.5,
}


def split(
    budget: int,
    input_tokens: int,
    want_output: int,
    agent: Agent,
    *,
    least_output: int | None = None,
) -> tuple[int, int]:
    """Divide one call's budget between reading input and writing output.

    When the budget covers ``input_tokens + want_output``, both are granted in full.
    Otherwise structured and reasoning answers, which are worthless when cut, keep
    ``want_output`` (margin included) up to three quarters of the budget; prose, which
    degrades gracefully, is first given only ``least_output`` (the expected output without
    a margin), up to half the budget. The input gets what remains, and budget the input
    does not need goes back to the output, up to ``want_output``. ``want_output`` is first
    clipped to the agent's ``min_output``/``max_output``.

    Returns:
        ``(context_tokens, output_tokens)`` with a sum of at most ``max(budget, 0)``.
    """
    budget = max(budget, 0)
    want = max(want_output, agent.min_output)
    if agent.max_output is not None:
        want = min(want, agent.max_output)
    if input_tokens + want <= budget:
        return input_tokens, want
    least = want
    if least_output is not None and agent.output_kind is OutputKind.PROSE:
        least = min(max(least_output, agent.min_output), want)
    out = min(least, int(budget * _OUTPUT_FIRST_SHARE[agent.output_kind]))
    ctx = min(input_tokens, budget - out)
    return ctx, min(want, budget - ctx)


def clip_output(out: int, requested: int | None) -> int:
    """The policy's output cap, lowered to what the caller asked for (if it asked)."""
    return out if requested is None or requested >= out else requested
