"""Machinery shared by the policies that predict needs: estimate, elastic and iterative.

Each of them predicts what every agent will need (:class:`~apportion.policies.needs.NeedModel`),
grants the agent about to run what it is predicted to need, and holds back what the agents
still to run are predicted to need. When the pool cannot cover everyone, the agent gets its
weighted proportional share of what it may draw. The subclasses differ in what they predict
for a call, whom they hold back for, with which weights, and how they answer an extension.

Warm start. Before any history, predictions come from a prior: the agent's ``estimator``
or its declared ``typical_input`` / ``typical_output``, else a share of the request's
ceiling per agent (per call the request is expected to make, once agents are seen to run
less or more than once) (:data:`PRIOR_INPUT_SHARE` for inputs, :data:`PRIOR_OUTPUT_SHARE` by
output kind, and :data:`PRIOR_CAP_SHARE` for what a first cap covers). The prior counts
as a few observations and the history takes over as it accumulates
(:mod:`apportion.policies.needs`). While an agent's own history is short, a call whose
budget pays for its input in hand plus its expected output gets that input in full; the
output margin takes its turn before the input only as the evidence behind the margin
grows (:meth:`PredictingPolicy.least_output`, :func:`divide`). What the need model
learned is saved with :meth:`PredictingPolicy.save` and read back with
:meth:`PredictingPolicy.load`, and with ``store=`` it is shared through the store
(compare-and-set every ``sync_every`` requests), so a restart or a second process does
not start cold.

Agents that may not run. What is held back for an agent still to come is its predicted
need for one call times the calls it is still expected to make in this request
(:meth:`PredictingPolicy.expected_calls`, learned from the requests seen:
:mod:`apportion.policies.occurrence`). A listed agent is held back for once until it
starts, times its chance to run (an agent that runs in a third of the requests, for a
third of its need; one that never runs, for nothing). An agent kind's members all count
on the kind's line, and a kind is held back for the calls its members are still expected
to make, whether or not some have run (a fan-out of four children leaves room for the
three after the first; a member about to call leaves room for the members after it). An
agent none of whose later agents (``after``) may still run is done. Given what has run so
far in the request: an agent (or kind) that has not begun is held back for the calls it
made in past requests in which the agent that began last had begun before it
(:meth:`~apportion.policies.occurrence.CallCounts.remaining_after`: a translator seen
only before the answer is no longer expected once the answer has begun), except in a
pipeline whose listed agents loop (see below); and an agent that reads a line whose calls
vary (a summarizer after a team) is held back for the answers that line wrote and is
still expected to write, not for the mean team's (:meth:`PredictingPolicy.needs_now`).
Before any history every agent counts as one call, and with a history of one call per
agent per request the rules are exactly the single-call ones.

Teams. At least eight listed agents that the pipeline declares alike (a pool listed name
by name: :func:`~apportion.policies.occurrence.teams`) are budgeted as a kind: a member
yet to call is held back for its share of the team's calls still to come (the team's
calls per request, learned as a kind's), and its need's prior is the mean of what the
team's calls used (:meth:`PredictingPolicy.team_prior`).

Caps. When a call is squeezed, an answer that later agents read keeps its margin before
its input (what it lacks, their inputs lack), up to three quarters of the call's budget
(:data:`_FEEDER_SHARE`, half for other prose); and a call that gets what it wants gets a
cap that reaches the room left once the agents after it are held back for, up to
``cap_reach`` times its own (twice by default), without a cost ceiling (a cap costs only
what the answer writes: :meth:`PredictingPolicy.spare_room`). A call's predicted output
given the input in hand stays within :data:`OUTPUT_BY_INPUT` of the request's prediction
from its features (a regression on the input taken far outside the inputs seen once
capped a record at 2 tokens). A squeezed last call trades its margin against its input
(:meth:`PredictingPolicy.squeezed_cap`) in the policies that
:attr:`~PredictingPolicy.trades_cap`.

Squeezed calls. A call that cannot have what it wants beside what is held back for the
others never eats into the structured or reasoning answers held back for (a cut record
is worth nothing, a cut conclusion half). With :attr:`PredictingPolicy.spreads_shortfall`
(``estimate``, ``elastic``) it does not bear the shortfall alone either: the answers come
first (its own included), then its input and every input held back for are read up to
one level (:func:`water_level`; times the priority weight for ``elastic``, divided by the
calls the line makes per request), never past its share of the pool: what a read part of
an input is worth grows as its log, so a token is worth as much to any input under the
level, and the large inputs, and those of lines that call many times, give way first.
Not before any request was seen, nor where a listed agent loops, its calls apart (its
later calls are not held back for).

Why a listed agent that loops, its calls apart, is not held back for its own later
calls: on the ChatDev call log (real runs, each given 80% of the tokens it used; a
programmer and a reviewer taking turns) that cost ``elastic`` 0.27 and ``estimate`` 0.25
of simulated quality, its critical coder's answers being cut at every call instead of
at the last ones; for a kind (a team drawn per request, fan-out children) it gained 0.08
to 0.12 on the shipped team and fan-out workloads. One whose calls come in a row (a
tool loop's turns; :meth:`~apportion.policies.occurrence.CallCounts.in_a_row`) is held
back for them, as many as they weigh
(:meth:`~apportion.policies.occurrence.CallCounts.own_remaining`): on ``review-loop``,
``elastic`` 0.709 to 0.803 of the oracle, ``learned`` 0.758 to 0.852. For the same
reason, where a listed agent loops, its calls apart, optional agents keep their plain
chance to run (and a squeezed call shares no shortfall, see above): on
the ChatDev log, what the optional roles no longer held back went to the looping
programmer's early calls (``elastic`` 0.721 to 0.705, ``estimate`` 0.703 to 0.681).

State: the need models, the call counts (``calls``), what ran after what
(``calls_after``) and the teams' calls and usage (``teams``) are saved and loaded.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from apportion.errors import PolicyConfigError, PolicyStateError
from apportion.ledger import MAX_TOKENS, Grant
from apportion.limits import excerpt
from apportion.policies import state as saved
from apportion.policies.base import (
    _OUTPUT_FIRST_SHARE,
    Observation,
    Plan,
    Policy,
    clip_output,
    ended_in_full,
)
from apportion.policies.needs import NeedModel
from apportion.policies.occurrence import (
    CallCounts,
    counts_of,
    parse_after,
    parse_document,
    teams,
    weighted,
)
from apportion.policies.options import number_option
from apportion.policies.sharing import SharedState, compare_and_set
from apportion.spec import Agent, OutputKind, Pipeline

PRIOR_INPUT_SHARE = 0.35
"""Before any history: an agent's input is expected to be this part of ``ceiling / agents``."""
PRIOR_OUTPUT_SHARE = {
    OutputKind.STRUCTURED: 0.15,
    OutputKind.PROSE: 0.25,
    OutputKind.REASONING: 0.25,
}
"""Before any history: an agent's output is expected to be this part of ``ceiling / agents``,
by what it writes (a structured answer, a label or a record, is the shorter)."""
PRIOR_CAP_SHARE = 0.25
"""Before any history: a call's output cap covers this part of ``ceiling / agents`` (with the
margin and spread on top), whatever its kind. A cap costs only what the answer uses and
a cut answer may be worth nothing, so the cap's prior is generous where the expectation
(what the agents after it leave room for) is not. It fades as the agent is observed, and
is dropped once the spread of the agent's errors is known (eight uncut calls)."""
MARGIN_TRUST = 8.0
"""An agent seen ``n`` times keeps ``n / (n + MARGIN_TRUST)`` of its output margin before its
input is cut (:meth:`PredictingPolicy.least_output`)."""
TEAM_PRIOR_AFTER = 8
"""Calls of a team after which they are its members' prior (:meth:`PredictingPolicy.team_prior`)."""
_TEAM_CAP = 1.5
_WIDE_CAP = 2.0
"""A cap may reach the room the others leave, up to this many times its own cap (default)."""
_CUT_GUESS = 1.5  # a cut answer needed more than it wrote: as the need model counts it
_FEEDER_SHARE = 0.75
"""A squeezed answer that other agents read keeps up to this part of its call's budget."""
INPUT_WEIGHT = 0.7
"""What a squeezed call assumes its input is worth: reading a share ``x`` of it keeps ``x ** 0.7``
of the call's quality (the real sensitivity is hidden; :meth:`PredictingPolicy.squeezed_cap`)."""
_CAP_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.45, 1.6, 1.8, 2.0, 2.4, 3.0, 4.0)
"""Caps a squeezed call weighs, as multiples of its predicted output (with the quantiles
:data:`_CAP_QUANTILES` of the agent's errors, where a cap starts to cover one more answer)."""
_CAP_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)
_ROOM_ENOUGH = 0.5
"""Up to this part of what it wants, a squeezed agent may eat into the others' needs."""
OUTPUT_BY_INPUT = (0.75, 2.0)
"""A call's predicted output given its input in hand stays within these multiples of the
output predicted for the request from its features alone
(:meth:`PredictingPolicy.predicted_output`)."""

_ARRAYS_FROM = 32
"""Agents from which :meth:`PredictingPolicy.calls_ahead` is worked out in arrays (fewer are
faster one by one)."""

_P = TypeVar("_P", bound="PredictingPolicy")
_T = TypeVar("_T")


class PredictingPolicy(Policy):
    """Base of the policies that predict each agent's need.

    Args:
        margin: safety margin added to predicted output (0.2 = 20% more).
        store: a store to share the need model with other workers and restarts
            (``None``: this process only).
        key: the shared state's key in the store is ``KEY.needs`` (default: the policy's
            name).
        sync_every: learned requests between two merges with the store.
        cap_reach: how far a cap may reach into the room the others leave, as a multiple
            of the predicted answer with its margin (:meth:`spare_room`; 1: not at all).
            A cap costs only what the answer writes, but some providers count
            ``max_tokens`` against a tokens-per-minute rate limit: lower it there.
    """

    weights: ClassVar[Mapping[int, float]] = {2: 1.0, 1: 1.0, 0: 1.0}
    """Weight of each priority rank when the pool is split in proportion."""
    spreads_shortfall: ClassVar[bool] = False
    """A squeezed call shares the shortfall with the inputs held back for (see :meth:`budget`)."""
    trades_cap: ClassVar[bool] = False
    """A squeezed call trades its output margin against its input (:meth:`squeezed_cap`)."""
    counts_type: ClassVar[type[CallCounts]] = CallCounts
    """What counts the calls per request of a pipeline's lines and of its teams."""

    def __init__(
        self,
        margin: float = 0.2,
        *,
        store: SharedState | None = None,
        key: str | None = None,
        sync_every: int = 32,
        cap_reach: float = _WIDE_CAP,
    ) -> None:
        reach = number_option("cap_reach", cap_reach, 1.0, 10.0)
        number_option("margin", margin, 0.0, 10.0)
        if type(sync_every) is not int or not 1 <= sync_every <= 2**31:
            raise PolicyConfigError(
                f"sync_every must be an integer of at least 1, not {excerpt(sync_every)}",
                sync_every=sync_every,
            )
        if key is not None and (type(key) is not str or not key):
            raise PolicyConfigError(f"key must be a non-empty string, not {excerpt(key)}", key=key)
        self.margin = margin
        self.output_factor = 1 + margin
        self.cap_reach = reach
        self.store = store
        self.sync_every = sync_every
        self.needs_key = f"{key or self.name}.needs"
        self._needs: dict[int, tuple[Pipeline, NeedModel]] = {}
        self._by_name: dict[tuple[str, tuple[str, ...]], NeedModel] = {}
        self._loaded: dict[str, NeedModel] = {}  # restored, for pipelines not seen yet
        self._loaded_from: str | None = None
        self._state_lock = threading.RLock()
        self._unsynced = 0
        self._counts: dict[tuple[str, tuple[str, ...]], CallCounts] = {}
        self._loaded_counts: dict[str, dict[str, dict[str, int]]] = {}
        self._loaded_after: dict[str, dict[str, dict[str, list[int]]]] = {}
        self._of_pipelines: dict[tuple[str, int], tuple[Pipeline, Any]] = {}
        self._teams_counted: dict[tuple[str, tuple[str, ...]], CallCounts] = {}
        self._team_usage: dict[tuple[str, str], tuple[int, float, float]] = {}
        self._loaded_teams: dict[str, dict[str, dict[str, int]]] = {}
        self._cap_tables: dict[
            tuple[str, str], tuple[Any, tuple[tuple[float, float], ...] | None]
        ] = {}

    def needs(self, pipeline: Pipeline) -> NeedModel:
        """The need model learned for ``pipeline`` (created, restored or pulled on first use).

        Raises:
            PolicyStateError: the saved or shared model of a pipeline of this name is for
                other agents, or the store's shared state cannot be read.
        """
        cached = self._needs.get(id(pipeline))
        if cached is not None and cached[0] is pipeline:
            return cached[1]
        with self._state_lock:
            key = (pipeline.name, pipeline.names)
            model = self._by_name.get(key)
            if model is None:
                model = self._by_name[key] = self._first_model(pipeline)
            self._needs[id(pipeline)] = (pipeline, model)
        return model

    def _first_model(self, pipeline: Pipeline) -> NeedModel:
        """A pipeline's model at first use: the store's copy, else a loaded one, else new."""
        model = self._loaded.pop(pipeline.name, None)
        if model is not None:
            saved.check_agents(model, pipeline, self._loaded_from or "loaded state")
        if self.store is None:
            return model or NeedModel(pipeline)
        shared = self._pull_needs(pipeline)
        if shared is not None:
            return shared
        model = model or NeedModel(pipeline)
        model.count_all_as_delta()  # not in the store yet: the next merge publishes it
        return model

    def _pull_needs(self, pipeline: Pipeline) -> NeedModel | None:
        assert self.store is not None
        where = f"store:{self.needs_key}"
        got = self.store.get_state(self.needs_key)
        if got is None:
            return None
        entry = saved.decode_shared(got[1], where).get(pipeline.name)
        if entry is None:
            return None
        model = saved.parse_model(pipeline.name, entry, f"pipelines.{pipeline.name}", where)
        saved.check_agents(model, pipeline, where)
        return model

    def call_counts(self, pipeline: Pipeline) -> CallCounts:
        """How many calls each of ``pipeline``'s agents made per request, so far."""
        with self._state_lock:
            key = (pipeline.name, pipeline.names)
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = self.counts_type(pipeline.names)
                loaded = self._loaded_counts.pop(pipeline.name, None)
                if loaded is not None:
                    counts.restore(loaded)
                after = self._loaded_after.pop(pipeline.name, None)
                if after is not None:
                    counts.restore_after(after)
        return counts

    def _calls_model(self, obs: Observation) -> CallCounts:
        counts: CallCounts | None = obs.memo.get("counts")
        if counts is None:
            counts = obs.memo["counts"] = self.call_counts(obs.pipeline)
        return counts

    def expected_calls(
        self, obs: Observation, agent: Agent, *, calling: bool = False, caller: str | None = None
    ) -> float:
        """Calls ``agent`` is still expected to make in this request (see the module docstring).

        None once an agent that runs after it (``after``, directly or not) has begun: it
        must have finished (for an agent seen to call once in every request, the
        single-call rule stands: held back until it calls).

        Args:
            obs: the request.
            agent: the agent (or kind).
            calling: ``agent`` is about to begin a call not yet counted in the ledger:
                count the calls after that one.
            caller: an agent about to begin a call not yet counted in the ledger (taken
                as begun).
        """
        return self._calls_left(_Ahead(self, obs, caller), agent, calling)

    def calls_ahead(self, obs: Observation, caller: str | None = None) -> Sequence[float]:
        """:meth:`expected_calls` of every agent, in pipeline order, as ``caller`` begins a call.

        ``caller`` (``None``: nobody) is counted as calling for itself and as begun for the
        others, as the held-back rules ask. Memo per epoch (:meth:`_epoch`): the views of
        one epoch (the call about to begin, and nobody) are computed once however many
        rules read them.

        Where every agent is listed and was seen making one call in every request (and
        none is in a team), the rule gives exactly the single-call rule
        (:meth:`CallCounts.fixed`), which needs no look at the counts and no memo.
        """
        if not obs.pipeline.kind_names and self._calls_model(obs).fixed() and not self.teams(obs):
            return single_calls(obs, caller)
        epoch = self._epoch(obs)
        memo: tuple[object, dict[str | None, Sequence[float]]] | None = obs.memo.get("calls_ahead")
        if epoch is None:
            return self._count_ahead(obs, caller)
        if memo is None or memo[0] != epoch:
            memo = obs.memo["calls_ahead"] = (epoch, {})
        found = memo[1].get(caller)
        if found is None:
            found = memo[1][caller] = self._count_ahead(obs, caller)
        return found

    def _count_ahead(self, obs: Observation, caller: str | None) -> Sequence[float]:
        """:meth:`calls_ahead`, computed: for a pipeline of listed agents, as arrays."""
        ahead = _Ahead(self, obs, caller)
        listed = ahead.state is not None and not ahead.kinds and not ahead.teams
        if listed and len(ahead.pipeline) >= _ARRAYS_FROM:
            return self._listed_ahead(ahead)
        return self._each_ahead(ahead)

    def _each_ahead(self, ahead: _Ahead) -> list[float]:
        """:meth:`calls_ahead`, agent by agent (:meth:`_calls_left`)."""
        calls_left = self._calls_left
        caller = ahead.caller
        return [calls_left(ahead, b, b.name == caller) for b in ahead.pipeline.agents]

    def _listed_ahead(self, ahead: _Ahead) -> list[float]:
        """:meth:`_each_ahead` for listed agents in a request under way, in a few array steps.

        The same rule (:meth:`_calls_left`) without a kind or a team: an agent that has
        begun, or is about to, has no calls left, unless its calls come in a row
        (:meth:`~apportion.policies.occurrence.CallCounts.in_a_row`: its own later calls);
        one seen to call other than once in every request has none left once an agent
        after it began (or is about to); any other is expected for its chance to run given
        the line begun last
        (:meth:`~apportion.policies.occurrence.CallCounts.remaining_after_all`).
        """
        pipeline = ahead.pipeline
        calls = ahead.state.calls
        made = np.fromiter(map(calls.__getitem__, pipeline.names), np.int64, len(pipeline))
        caller = ahead.caller
        if caller is not None:
            made[pipeline.index(caller)] += 1
        own = made > 0
        counts = ahead.counts
        moving = counts.moving()
        # after an agent that runs after it began: none left
        stopped = moving & (self._downstream(pipeline) @ own) if moving.any() else moving
        last = None if ahead.loops else ahead.last(None)  # the caller's own entry is 0
        left = np.minimum(counts.remaining_after_all(last, ahead.row), 1.0)
        left[own | stopped] = 0.0
        for i in np.flatnonzero(counts.in_a_row_all() & own & ~stopped):  # a loop's turns
            left[i] = counts.own_remaining(pipeline.names[i], int(made[i]), ahead.row)
        found: list[float] = left.tolist()
        return found

    def _of_pipeline(self, what: str, pipeline: Pipeline, make: Callable[[Pipeline], _T]) -> _T:
        """``make(pipeline)``, kept per pipeline object and ``what`` it is."""
        key = (what, id(pipeline))
        found = self._of_pipelines.get(key)
        if found is None or found[0] is not pipeline:
            found = self._of_pipelines[key] = (pipeline, make(pipeline))
        made: _T = found[1]
        return made

    def _downstream(self, pipeline: Pipeline) -> np.ndarray:
        """``[i, j]``: agent ``j`` runs after agent ``i`` (directly or not); memo per pipeline."""
        return self._of_pipeline("downstream", pipeline, _downstream_matrix)

    def _calls_left(self, ahead: _Ahead, agent: Agent, calling: bool) -> float:
        """The rule of :meth:`expected_calls` for one agent, in the view ``ahead``."""
        state = ahead.state
        counts = ahead.counts
        name = agent.name
        caller = ahead.caller
        if state is None:
            done = 0
        else:
            calls = state.calls
            done = calls[name]
            if not counts.once(name):
                for later in ahead.pipeline.downstream(name):
                    if calls[later] or later == caller:
                        return 0.0
        if calling:
            done += 1
        row = ahead.row
        last = None
        if state is not None and not done and not ahead.loops:
            last = ahead.last(name)
        if name not in ahead.kinds:
            if done:
                if name not in ahead.teams and counts.in_a_row(name):
                    return counts.own_remaining(name, done, row)  # a loop's turns in a row
                return 0.0
            team = ahead.teams.get(name)
            if team is not None and state is not None:
                return self._team_share(ahead.obs, team, caller, row)
            # A listed agent: held back for once until it starts, times its chance to run
            # (given the agents that began before it, when it has been seen after them).
            if last is not None:
                return min(1.0, counts.remaining_after(name, last, row))
            return min(1.0, counts.remaining(name, 0, row))
        if last is not None:
            return counts.remaining_after(name, last, row)
        return counts.remaining(name, done, row)

    def _epoch(self, obs: Observation) -> tuple[object, ...] | None:
        """What :meth:`expected_calls` reads that can change within a request, or ``None``.

        The key of :meth:`_held_parts`'s memo (with the needs' own): the calls begun (the
        ledger's next grant id counts every begin, this process's or another's, and the
        records this process holds), the call counts' versions and the request's
        regression row. ``None`` when the state gives no grant id (a store's view
        without it): nothing is kept then.
        """
        state = obs.state
        begun = getattr(state, "next_grant_id", None)
        if begun is None:
            return None
        teams = self._teams_counted.get((obs.pipeline.name, obs.pipeline.names))
        return (
            begun,
            len(obs.calls),
            self._calls_model(obs).version,
            -1 if teams is None else teams.version,
            obs.memo.get("row"),
        )

    def _listed_loop(self, obs: Observation) -> bool:
        """Whether a listed agent was seen to call more than once, its calls apart (memo).

        One whose calls come in a row is held back for them, as a kind is.
        """
        loops: bool | None = obs.memo.get("listed_loop")
        if loops is None:
            counts = self._calls_model(obs)
            kinds = obs.pipeline.kind_names
            loops = obs.memo["listed_loop"] = any(
                not counts.once(a.name)
                and not counts.at_most_once(a.name)
                and not counts.in_a_row(a.name)
                for a in obs.pipeline.agents
                if a.name not in kinds
            )
        return loops

    def _latest_begun(self, obs: Observation) -> str | None:
        """The line whose first call is the latest of the request's so far.

        Kept per request and brought up to date with the calls begun since (the records
        are only ever added, in grant order).
        """
        memo: tuple[int, set[str], str | None] | None = obs.memo.get("latest_begun")
        seen, latest, known = (set(), None, 0) if memo is None else (memo[1], memo[2], memo[0])
        made = list(obs.calls.values())  # a snapshot, as in needs_now
        if known == len(made):
            return latest
        seen = set(seen)  # a copy: another thread may be bringing the same memo up to date
        for call in made[known:]:
            if call.budgeted_as not in seen:
                seen.add(call.budgeted_as)
                latest = call.budgeted_as
        obs.memo["latest_begun"] = (len(made), seen, latest)
        return latest

    def _team_share(
        self,
        obs: Observation,
        team: tuple[str, ...],
        caller: str | None,
        row: tuple[float, ...] | None,
    ) -> float:
        """A team member that has not called yet: its share of the team's calls to come.

        The team's calls still expected (its calls per request learned as a kind's,
        ``E[n - done | n >= done]``), shared equally among the members yet to call.
        """
        key = (team[0], caller, len(obs.calls))  # a member's begin grows the ledger's calls
        memo: dict[tuple[str, str | None, int], float] = obs.memo.setdefault("team_share", {})
        share = memo.get(key)
        if share is None:
            calls = obs.state.calls
            done = sum(calls[m] for m in team) + (caller in team)
            waiting = sum(1 for m in team if not calls[m] and m != caller)
            left = self._team_counts(obs).remaining(team[0], done, row)
            share = memo[key] = left / max(1, waiting)
        return share

    def teams(self, obs: Observation) -> dict[str, tuple[str, ...]]:
        """The pipeline's teams of alike listed agents (memo per pipeline).

        See :func:`apportion.policies.occurrence.teams`.
        """
        return self._of_pipeline("teams", obs.pipeline, teams)

    def _team_counts(self, obs: Observation) -> CallCounts:
        """Calls per request of each team (on its first member's name), so far."""
        key = (obs.pipeline.name, obs.pipeline.names)
        counts = self._teams_counted.get(key)
        if counts is None:
            with self._state_lock:
                counts = self._teams_counted.get(key)
                if counts is None:
                    leads = sorted({team[0] for team in self.teams(obs).values()})
                    counts = self._teams_counted[key] = self.counts_type(leads)
                    loaded = self._loaded_teams.pop(obs.pipeline.name, None)
                    if loaded is not None:
                        counts.restore(loaded)
        return counts

    def expected_needs(
        self, obs: Observation, *, besides: str | None = None, calling: str | None = None
    ) -> dict[str, int]:
        """Tokens each agent still to call is expected to use: need per call times calls.

        Args:
            obs: the request.
            besides: an agent to leave out.
            calling: an agent about to begin a call (its later calls count).

        Returns:
            Per agent still expected to call, its predicted need for the calls it has left.
        """
        needs = self.needs_now(obs)
        ahead: dict[str, int] = {}
        for b, times in zip(obs.pipeline.agents, self.calls_ahead(obs, calling), strict=True):
            if times > 0 and b.name != besides:
                ahead[b.name] = weighted(needs[b.name], times)
        return ahead

    def _count_calls(self, obs: Observation) -> None:
        """Fold the request's calls per agent into the call counts."""
        refused = [c.budgeted_as for c in obs.refused]
        row = obs.memo.get("row")
        if row is None:
            row = self._model(obs).row(obs.features)
        counted = counts_of(obs.state.calls, refused)
        order = [c.budgeted_as for c in list(obs.calls.values())] + refused
        self._calls_model(obs).observe(counted, row, order)
        alike = set(self.teams(obs).values())
        if alike:
            by_team = {team[0]: sum(counted.get(m, 0) for m in team) for team in alike}
            self._team_counts(obs).observe(by_team, row)

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
            prior_in = self.prior_input(obs)
            priors = self._priors(obs)
            needs = {}
            outputs: dict[str, int] = {}
            for agent in obs.pipeline.agents:
                inp = model.input(agent, row, self.team_prior(obs, agent, 0, prior_in)) or 0.0
                prior_out = priors[agent.name][0]
                out = model.output(agent, features, row, inp, prior_out)
                if out is None:
                    out = prior_out
                # expected, not padded: margins are for the agent's own grant; padding every
                # later agent's need would starve the earlier ones for insurance
                out = max(out, agent.min_output) * min(1.0, self.output_factor)
                needs[agent.name] = round(inp + max(out, agent.min_output))
                outputs[agent.name] = round(max(out, agent.min_output))
            obs.memo["needs"] = needs
            obs.memo["outputs"] = outputs
        return needs

    def needs_now(self, obs: Observation) -> dict[str, int]:
        """:meth:`predicted_needs`, with the inputs of readers of varying lines brought up to date.

        An agent that reads the answers of a line whose calls vary from request to request
        (a team, a fan-out, a loop: its ``after`` names it) reads what they write: its
        predicted input moves by how far the answers written so far and the answers still
        expected (:meth:`expected_calls`) are from what a request's answers are expected
        to add up to. A summarizer after a team of eight is held back for eight answers,
        not the mean team's. Memo per number of calls begun and finished.
        """
        needs = self.predicted_needs(obs)
        state = obs.state
        readers = self._varying_readers(obs)
        if state is None or not readers:
            return needs
        made = list(obs.calls.values())  # a snapshot: other threads may begin calls meanwhile
        key = ("needs_now", len(made), sum(1 for c in made if c.finished))
        found: dict[str, int] | None = obs.memo.get("needs_now")
        if found is not None and obs.memo.get("needs_now_key") == key:
            return found
        counts = self._calls_model(obs)
        outputs = self.predicted_outputs(obs)
        row = obs.memo.get("row")
        written: dict[str, float] = {}
        for call in made:
            line = call.budgeted_as
            wrote = call.output_used if call.finished else None
            written[line] = written.get(line, 0.0) + (
                outputs.get(line, 0) if wrote is None else wrote
            )
        found = dict(needs)
        alike = self.teams(obs)
        for b in readers:
            if state.calls[b.name]:
                continue
            shift = 0.0
            counted: set[str] = set()
            for u in b.after:
                team = alike.get(u)
                if team is not None:  # a team's calls count as one line's, as a kind's
                    if team[0] not in counted:
                        counted.add(team[0])
                        shift += self._team_shift(obs, team, written, row)
                    continue
                if u not in outputs or counts.once(u):
                    continue
                total = counts.per_request(u, row)
                rest = self.calls_ahead(obs)[obs.pipeline.index(u)]
                shift += written.get(u, 0.0) + (rest - total) * outputs[u]
            if shift:
                found[b.name] = max(outputs[b.name], round(needs[b.name] + shift))
        obs.memo["needs_now"] = found
        obs.memo["needs_now_key"] = key
        return found

    def _varying_readers(self, obs: Observation) -> list[Agent]:
        """The agents that read a team or a line whose calls vary (memo per call counts).

        Those whose needs :meth:`needs_now` brings up to date: the others' stay as
        predicted.
        """
        counts = self._calls_model(obs)
        memo: tuple[int, list[Agent]] | None = obs.memo.get("varying_readers")
        if memo is not None and memo[0] == counts.version:
            return memo[1]
        alike = self.teams(obs)
        outputs = self.predicted_outputs(obs)
        readers = [
            b
            for b in obs.pipeline.agents
            if any(u in alike or (u in outputs and not counts.once(u)) for u in b.after)
        ]
        obs.memo["varying_readers"] = (counts.version, readers)
        return readers

    def _team_shift(
        self,
        obs: Observation,
        team: tuple[str, ...],
        written: Mapping[str, float],
        row: tuple[float, ...] | None,
    ) -> float:
        """How far a team's answers, written and still expected, are from its mean's."""
        outputs = self.predicted_outputs(obs)
        calls = obs.state.calls
        each = sum(outputs[m] for m in team) / len(team)
        counts = self._team_counts(obs)
        total = counts.per_request(team[0], row)
        rest = counts.remaining(team[0], sum(calls[m] for m in team), row)
        return sum(written.get(m, 0.0) for m in team) + (rest - total) * each

    def predicted_outputs(self, obs: Observation) -> dict[str, int]:
        """The output part of :meth:`predicted_needs`, per agent."""
        self.predicted_needs(obs)
        outputs: dict[str, int] = obs.memo["outputs"]
        return outputs

    output_factor: float = 1.2
    """What a call's output grant is, as a multiple of its predicted output (``1 + margin``)."""

    def calls_per_request(self, obs: Observation) -> float:
        """How many calls a request is expected to make in all (at least 1; memo).

        The sum over the pipeline's agents of their expected calls: before any history,
        and for a pipeline whose agents each call once, the number of agents.
        """
        found: float | None = obs.memo.get("calls_per_request")
        if found is None:
            counts = self._calls_model(obs)
            total = sum(counts.per_request(a.name) for a in obs.pipeline.agents)
            found = obs.memo["calls_per_request"] = max(1.0, total)
        return found

    def prior_input(self, obs: Observation) -> float:
        """An agent's input before any history, when it declares no ``typical_input``.

        A share of the ceiling per call the request is expected to make
        (:meth:`calls_per_request`: the number of agents, until some are seen to run less
        or more than once).
        """
        return obs.ceiling / self.calls_per_request(obs) * PRIOR_INPUT_SHARE

    def prior_output(self, obs: Observation, agent: Agent, *, cap: bool = False) -> float:
        """An agent's output before any history, when it declares no ``typical_output``.

        Args:
            obs: the request.
            agent: the agent.
            cap: the prior of what its cap must cover (:data:`PRIOR_CAP_SHARE`) rather
                than of what it is expected to write (:data:`PRIOR_OUTPUT_SHARE`).
        """
        share = PRIOR_CAP_SHARE if cap else PRIOR_OUTPUT_SHARE[agent.output_kind]
        guess = obs.ceiling / self.calls_per_request(obs) * share
        return guess if agent.max_output is None else min(guess, agent.max_output)

    def _priors(self, obs: Observation) -> dict[str, tuple[float, float]]:
        """``(expected, cap)`` output priors per agent for this request (memo)."""
        priors: dict[str, tuple[float, float]] | None = obs.memo.get("priors")
        if priors is None:
            share = obs.ceiling / self.calls_per_request(obs)
            cap = share * PRIOR_CAP_SHARE
            priors = obs.memo["priors"] = {}
            for a in obs.pipeline.agents:
                most = math.inf if a.max_output is None else a.max_output
                expected = self.team_prior(obs, a, 1, share * PRIOR_OUTPUT_SHARE[a.output_kind])
                wide = self.team_prior(obs, a, 2, cap)
                priors[a.name] = (min(expected, most), min(wide, most))
        return priors

    def predicted_output(
        self, obs: Observation, agent: Agent, input_tokens: float | None, *, cap: bool = False
    ) -> float:
        """Expected output of one call: the history blended with the prior.

        With ``cap``, blended with the prior of what a cap must cover instead (see
        :meth:`prior_output`, :data:`PRIOR_CAP_SHARE`). Memo per request, until the need
        model changes (:attr:`NeedModel.version`): a policy weighing every agent still to
        come asks for the same ones at each call.
        """
        model = self._model(obs)
        version = model.version  # read before predicting: a change after it drops the memo
        memo: tuple[int, dict[tuple[str, float | None, bool], float]] | None = obs.memo.get(
            "predicted_output"
        )
        if memo is None or memo[0] != version:
            memo = obs.memo["predicted_output"] = (version, {})
        key = (agent.name, input_tokens, cap)
        found = memo[1].get(key)
        if found is None:
            found = memo[1][key] = self._predict_output(obs, model, agent, input_tokens, cap)
        return found

    def _predict_output(
        self,
        obs: Observation,
        model: NeedModel,
        agent: Agent,
        input_tokens: float | None,
        cap: bool,
    ) -> float:
        """:meth:`predicted_output`, computed."""
        row = obs.memo.get("row") or model.row(obs.features)
        prior = self._priors(obs)[agent.name][cap]
        guess = model.output(agent, obs.features, row, input_tokens, prior)
        if (
            guess is not None
            and input_tokens is not None
            and not cap
            and agent.estimator is None  # a declared estimator's own answer stands
            and model.knows_errors(agent)
        ):
            # the output's regression on the input holds where inputs were seen: an input
            # far outside them (a document ten times the usual) must not drive it to
            # nothing (a record capped at 2 tokens) or to a cap that eats the input
            planned = self.predicted_outputs(obs)[agent.name]
            low, high = OUTPUT_BY_INPUT
            guess = min(max(guess, low * planned), high * planned)
        return max(prior if guess is None else guess, float(agent.min_output))

    def least_output(self, obs: Observation, agent: Agent, predicted: float, want: int) -> int:
        """The output a call keeps before its input is cut: from ``predicted`` to ``want``.

        With no history of the agent, its expected output (the margin is a guess, the
        input in hand a count); the margin joins in as the agent is observed, in
        proportion ``seen / (seen + MARGIN_TRUST)``.
        """
        seen = self._model(obs).seen(agent)
        trust = seen / (seen + MARGIN_TRUST)
        return round(predicted + trust * max(0.0, want - predicted))

    def readers(self, obs: Observation, agent: Agent) -> int:
        """How many agents read ``agent``'s output (name it in their ``after``; memo)."""
        found: dict[str, int] | None = obs.memo.get("readers")
        if found is None:
            found = {a.name: 0 for a in obs.pipeline.agents}
            for b in obs.pipeline.agents:
                for u in b.after:
                    if u in found:
                        found[u] += 1
            obs.memo["readers"] = found
        return found.get(agent.name, 0)

    def feeds(self, obs: Observation, agent: Agent) -> bool:
        """Whether a later agent reads ``agent``'s output (names it in ``after``)."""
        return self.readers(obs, agent) > 0

    def call_output(self, obs: Observation, agent: Agent, predicted: float) -> float:
        """Output tokens to grant one call predicted to write ``predicted`` tokens."""
        out = predicted * self.output_factor * self._model(obs).spread(agent)
        return max(out, float(agent.min_output))

    def held_back(
        self, obs: Observation, agent: Agent, *, begun: bool = False
    ) -> tuple[int, float]:
        """What ``agent`` leaves room for: ``(sum of needs, sum of needs times weights)``.

        The agents held back for: those still expected to call (for the calls they are
        expected to make), without a reservation, and of a priority rank at least
        :meth:`held_for` gives; ``agent`` itself for its calls after this one (``begun``:
        this call is already counted in the ledger, an extension). Kept for the request
        while what it reads stays (the key of :meth:`_held_parts`'s memo): a grant asks
        twice, for its budget and for the room its cap may reach.
        """
        self.needs_now(obs)
        epoch = self._epoch(obs)
        if epoch is None:
            return self.holds(obs, agent, begun=begun)
        key = (epoch, obs.memo.get("needs_now_key"), agent.name, begun)
        memo = obs.memo.get("held_back")
        if memo is None or memo[0] != key:
            memo = obs.memo["held_back"] = (key, self.holds(obs, agent, begun=begun))
        return memo[1]

    def holds(self, obs: Observation, agent: Agent, *, begun: bool = False) -> tuple[int, float]:
        """:meth:`held_back`, computed: the rule a policy states (override this)."""
        return self._held_back(obs, agent, self.held_for(agent), self.weights, begun=begun)

    def _held_back(
        self,
        obs: Observation,
        agent: Agent,
        floor: int | None,
        weights: Mapping[int, float] | Sequence[float],
        *,
        begun: bool = False,
    ) -> tuple[int, float]:
        """The loop of :meth:`held_back`, for a priority ``floor`` and rank ``weights``."""
        keep, total, *_ = self._held_parts(obs, agent, floor, weights, begun=begun)
        return keep, total

    def _held_parts(
        self,
        obs: Observation,
        agent: Agent,
        floor: int | None,
        weights: Mapping[int, float] | Sequence[float],
        *,
        begun: bool = False,
    ) -> tuple[int, float, int, int, list[tuple[float, float, float]]]:
        """:meth:`_held_back`, with the inputs' part, the fragile answers, each input.

        Each input: ``(tokens per call, calls, weight)``. Fragile answers: those of structured or
        reasoning agents (worth nothing, or half,
        when cut).
        """
        sizes: list[tuple[float, float, float]] = []
        if floor is None:
            return 0, 0.0, 0, 0, sizes
        self.needs_now(obs)
        epoch = self._epoch(obs)
        if epoch is None:
            return self._count_held(obs, agent, floor, weights, begun)
        # the same within an epoch and for the same needs (needs_now's own key)
        key = (epoch, obs.memo.get("needs_now_key"), agent.name, floor, id(weights), begun)
        memo = obs.memo.get("held_parts")
        if memo is None or memo[0] != key:
            memo = obs.memo["held_parts"] = (
                key,
                self._count_held(obs, agent, floor, weights, begun),
                weights,  # alive while its id is in the key
            )
        keep, total, inputs, fragile, sizes = memo[1]
        return keep, total, inputs, fragile, list(sizes)

    def _count_held(
        self,
        obs: Observation,
        agent: Agent,
        floor: int,
        weights: Mapping[int, float] | Sequence[float],
        begun: bool,
    ) -> tuple[int, float, int, int, list[tuple[float, float, float]]]:
        """:meth:`_held_parts`, computed."""
        sizes: list[tuple[float, float, float]] = []
        reserve = obs.state.reserve
        needs = self.needs_now(obs)
        planned = self.predicted_needs(obs)
        outputs = self.predicted_outputs(obs)
        keep = inputs = fragile = 0
        total = 0.0
        ahead = self.calls_ahead(obs, None if begun else agent.name)
        per_request = self._per_request
        agents = obs.pipeline.agents
        for k, (rank, prose) in enumerate(self._ranks(obs.pipeline)):
            times = ahead[k]
            if times <= 0 or rank < floor:
                continue
            b = agents[k]
            name = b.name
            need_now = needs[name]
            if name in reserve:  # held by its reservation, but for what its readers grew by
                part = max(0, need_now - planned[name])
                need = weighted(part, times)
                inputs += need
            else:
                part = max(0, need_now - outputs[name])
                need = weighted(need_now, times)
                inputs += weighted(part, times)
                if not prose:
                    fragile += weighted(min(outputs[name], need_now), times)
            sizes.append((part, times, weights[rank] / per_request(obs, b)))
            keep += need
            total += need * weights[rank]
        return keep, total, min(inputs, keep), fragile, sizes

    def _ranks(self, pipeline: Pipeline) -> tuple[tuple[int, bool], ...]:
        """Per agent, its priority's rank and whether its answer is prose (memo per pipeline)."""
        return self._of_pipeline(
            "ranks",
            pipeline,
            lambda p: tuple((a.priority.rank, a.output_kind is OutputKind.PROSE) for a in p),
        )

    def _expects_after(self, obs: Observation, agent: Agent) -> bool:
        """Whether ``agent``'s call about to begin leaves room for anyone (itself included).

        That is, whether :meth:`_held_back` of every rank keeps anything, found without
        adding it all up: the latest agents first, as they are the likeliest still to come.
        """
        reserve = obs.state.reserve
        needs = self.needs_now(obs)
        planned = self.predicted_needs(obs)
        ahead = self.calls_ahead(obs, agent.name)
        agents = obs.pipeline.agents
        for k in range(len(agents) - 1, -1, -1):
            times = ahead[k]
            if times <= 0:
                continue
            name = agents[k].name
            need = needs[name] - planned[name] if name in reserve else needs[name]
            if weighted(max(0, need), times) > 0:
                return True
        return False

    def held_inputs(
        self, obs: Observation, agent: Agent
    ) -> tuple[int, int, list[tuple[float, float, float]]]:
        """Of what :meth:`held_back` keeps: the inputs, the fragile answers, each input.

        Each input as ``(tokens per call, calls, weight)``.
        """
        return self._held_parts(obs, agent, self.held_for(agent), self.weights)[2:]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass with its own rule for what is held back has no bound it did not give."""
        super().__init_subclass__(**kwargs)
        if "holds_at_most" not in cls.__dict__ and any(m in cls.__dict__ for m in _BOUND_READS):
            cls.holds_at_most = _unbounded  # type: ignore[method-assign,assignment]

    def held_for(self, agent: Agent) -> int | None:
        """The lowest priority rank ``agent`` leaves room for (``None``: nobody).

        Here: every agent, whatever its priority.
        """
        return 0

    # --------------------------------------------------------------- the hooks

    def plan(self, obs: Observation) -> Plan:
        """Allocate the expected needs, scaled down in proportion when they exceed the ceiling."""
        needs = self.predicted_needs(obs)
        expected = self.expected_needs(obs)
        return Plan(allocation=_fit({a: expected.get(a, 0) for a in needs}, obs.ceiling))

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """Grant the predicted need, or a weighted share when the pool cannot cover all."""
        predicted = self.predicted_output(obs, agent, input_tokens)
        covered = predicted
        if not self._model(obs).knows_errors(agent):  # the cap's prior, until errors are known
            covered = max(predicted, self.predicted_output(obs, agent, input_tokens, cap=True))
        want_out = round(self.call_output(obs, agent, covered))
        if output_tokens is not None:
            want_out = min(want_out, max(output_tokens, agent.min_output))
        want = input_tokens + want_out
        most = max(want_out, agent.min_output)
        if agent.max_output is not None:
            most = min(most, agent.max_output)
        if agent.output_kind is OutputKind.PROSE and not self.feeds(obs, agent):
            least = round(predicted)
        else:
            least = self.least_output(obs, agent, predicted, most)
        least = min(max(least, agent.min_output), most)
        budget = self.budget(obs, agent, want, answer=least)
        if budget >= want and output_tokens is None and obs.ceiling_usd is None:
            # a cap costs only what the answer writes: it may reach the room the agents
            # held back for leave (up to cap_reach times its own)
            reach = int(self.cap_reach * most)
            room = self.spare_room(obs, agent, enough=input_tokens + reach)
            spare = min(room - input_tokens, reach)
            if spare > most:
                most = spare
                budget = input_tokens + spare
        if agent.max_output is not None:
            most = min(most, agent.max_output)
        if budget < input_tokens + least and self.trades_cap:
            least = self.squeezed_cap(obs, agent, predicted, budget, input_tokens, least)
        ctx, out = divide(
            budget,
            input_tokens,
            most,
            least,
            agent,
            feeds=self.feeds(obs, agent),
        )
        return ctx, clip_output(out, output_tokens)

    def squeezed_cap(
        self,
        obs: Observation,
        agent: Agent,
        predicted: float,
        budget: int,
        input_tokens: int,
        least: int,
    ) -> int:
        """The output a squeezed last call keeps before its input: the best trade, up to ``least``.

        The last call of a request (no agent expected after it) whose budget cannot pay for
        its input in hand and ``least`` (its answer with the whole margin) loses either way:
        each output token kept is an input token not read, and the margin it does not write
        goes to nobody. (On an earlier call it goes to the agents after it, so ``least``
        stands there.) Once the agent's output errors are known, the cap is chosen among multiples
        of ``predicted`` (:data:`_CAP_RATIOS`, up to ``least``) by the expected log-quality
        of the call: ``INPUT_WEIGHT * ln(share of the input read)`` plus the log of the
        expected quality of an answer capped there, over the agent's error samples (a cut
        record is worth 0, a cut conclusion half its share, cut prose its share:
        :func:`_cap_values`). Before that, ``least`` stands.
        """
        model = self._model(obs)
        if input_tokens <= 0 or not model.knows_errors(agent):
            return least
        if self._expects_after(obs, agent):
            return least  # not the last call: the margin it does not write goes to the others
        values = self._cap_values(obs, agent, model.errors(agent))
        if values is None:
            return least
        floor = max(1, agent.min_output)
        best, best_score = least, -math.inf
        log = math.log
        for ratio, value in values:
            cap = max(floor, round(predicted * ratio))
            if cap > least:
                break
            read = budget - cap
            if read <= 0:
                continue
            score = value + (
                INPUT_WEIGHT * log(read / input_tokens) if read < input_tokens else 0.0
            )
            if score > best_score:
                best, best_score = cap, score
        return best

    def _cap_values(
        self, obs: Observation, agent: Agent, errors: Any
    ) -> tuple[tuple[float, float], ...] | None:
        """:func:`_cap_values` of ``agent``'s error samples, kept until they change."""
        key = (obs.pipeline.name, agent.name)
        found = self._cap_tables.get(key)
        if found is not None and found[0] is errors:
            return found[1]
        table = _cap_values(agent.output_kind, errors)
        self._cap_tables[key] = (errors, table)
        return table

    def spare_room(self, obs: Observation, agent: Agent, *, enough: int | None = None) -> int:
        """What ``agent``'s cap may reach: the pool less what it holds back for the others.

        ``enough``: when the room is known to be at least that (:meth:`holds_at_most`),
        that is returned, the rest not worked out.

        A cap costs only what the answer writes, and what it leaves returns to the pool at
        finish: a wide cap takes from the agents after it only what their predicted needs
        (with margins) leave over. Before this rule only the last call's cap was widened
        (up to twice its own, once every agent's errors were known), on the grounds that an
        earlier wide cap took from the agents after it when an answer ran long; with the
        room measured after what is held back for them, it does not. Over the generated
        tuning workloads (seeds 1 to 60, 150 requests each) ``elastic`` went from 0.900 to
        0.917 of the oracle and ``estimate`` from 0.905 to 0.924, the cuts of answers
        falling for every kind; on the ChatDev log (``apportion replay``, test split, 80%)
        ``elastic`` from 0.740 to 0.797 and ``estimate`` from 0.716 to 0.786. Not under a
        cost ceiling: the controller judges a grant's cost at its full size.
        """
        available = obs.state.available_for(agent.name)
        if enough is not None and available - self.holds_at_most(obs, agent) >= enough:
            return enough  # at least that: what it holds back for is not worked out
        return available - self.held_back(obs, agent)[0]

    def holds_at_most(self, obs: Observation, agent: Agent) -> float:
        """At least what :meth:`holds` keeps, found without working it out (``inf``: unknown).

        Where every agent makes one call in every request (a fixed pipeline, listed, no
        teams), no rule of this module or of ``elastic`` holds back for more than the
        agents yet to begin need, each with its answer again with its margin (kept per
        request). A call that is covered with that much held back gets what it wants
        without the rest being worked out, a cap reaches as far as it may: the same
        grants. A subclass with rules of its own for :meth:`holds` (or :meth:`held_back`,
        :meth:`calls_ahead`, :meth:`needs_now`) gets ``inf`` unless it gives its own.
        """
        state = obs.state
        if (
            state is None
            or obs.pipeline.kind_names
            or not self._calls_model(obs).fixed()
            or self.teams(obs)
        ):
            return math.inf
        most: dict[str, int] | None = obs.memo.get("holds_at_most")
        if most is None:
            needs, outputs = self.predicted_needs(obs), self.predicted_outputs(obs)
            most = obs.memo["holds_at_most"] = {
                a.name: needs[a.name] + math.ceil(self.call_output(obs, a, float(outputs[a.name])))
                for a in obs.pipeline.agents
            }
        calls = state.calls
        return sum(need for name, need in most.items() if not calls[name])

    def _per_request(self, obs: Observation, agent: Agent) -> float:
        """Calls ``agent`` makes per request, as seen (at least 1; memo per request)."""
        found: dict[str, float] = obs.memo.setdefault("per_request", {})
        calls = found.get(agent.name)
        if calls is None:
            calls = found[agent.name] = max(1.0, self._calls_model(obs).per_request(agent.name))
        return calls

    def _spreads(self, obs: Observation) -> bool:
        """Whether a squeezed call shares the shortfall here (see :meth:`budget`).

        Not before any request was seen (what is held back is a prior, a share of the
        ceiling per agent), and not where a listed agent loops, its calls apart (its own
        later calls are not held back for, so they would not share). On the ChatDev log,
        spreading in the first request alone cost ``elastic`` 0.10 of quality (0.721 to
        0.616).
        """
        return self._calls_model(obs).requests > 0 and not self._listed_loop(obs)

    def budget(
        self, obs: Observation, agent: Agent, want: int, *, answer: int | None = None
    ) -> int:
        """What the agent gets for a call wanting ``want`` tokens.

        It gets what it wants when that leaves the agents it holds back for their predicted
        needs. Otherwise it gets the room they leave; when that room is under half of what
        it wants, it may take more, up to half of what it wants, as its share of the pool in
        proportion to needs times priority weights (eating into theirs). The budget never
        grows when the others need more.

        With ``answer`` (the output the call keeps before its input is cut): a squeezed call
        never eats into the answers of structured or reasoning agents held back for (a cut
        record is worth nothing, a cut conclusion half: one cut formatter zeroes its
        request), and, for a policy that :attr:`spreads_shortfall`, its floor is its answer
        plus its input read up to the level every input held back for is read to once all
        the answers (its own first) are paid (:func:`water_level`; each input's level
        times its priority weight, divided by the calls its line makes per request: a
        call of a team of eight is an eighth of its line), and never past its share of the
        pool by needs and weights: the shortfall is shared by every input expected, not
        borne by the call in hand alone.
        """
        available = obs.state.available_for(agent.name)
        if available - self.holds_at_most(obs, agent) >= want:
            return want  # whatever it holds back for, the room covers it (not worked out)
        keep, others = self.held_back(obs, agent)
        room = available - keep
        if room >= want:
            return want
        mine = want * self.weights[agent.priority.rank]
        weighted = mine + others
        share = int(available * mine / weighted) if weighted else available
        floor = min(share, int(want * _ROOM_ENOUGH))
        if answer is None:
            return min(want, available, max(room, floor))
        inputs, fragile, sizes = self.held_inputs(obs, agent)
        if self.spreads_shortfall and self._spreads(obs):
            # squeezed: the answers first (this one's included), then every input held back
            # for and this call's filled to one level (a read part of an input is worth by
            # its log: each token is worth as much to any input below the level), a line's
            # level shared among the calls it makes per request
            mine_in = max(0, want - answer)
            mine = self.weights[agent.priority.rank] / self._per_request(obs, agent)
            level = water_level(
                [*sizes, (mine_in, 1.0, mine)], available - (keep - inputs) - answer
            )
            floor = answer + int(min(mine_in, mine * level))
            floor = min(floor, share)  # never past its share of the pool by needs
        # a squeezed call never eats into the answers held back for that are worth nothing
        # (structured) or half (reasoning) when cut
        if not self._listed_loop(obs):
            floor = min(floor, available - fragile)
        return max(0, min(want, available, max(room, floor)))

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
        rest = self.expected_needs(obs, besides=grant.agent)
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
        spare -= self.held_back(obs, agent, begun=True)[0]
        return max(0, min(output_tokens, spare))

    def learn(self, obs: Observation, outcome: float | None) -> None:
        """Fold the request's finished calls into the need model and the call counts.

        An expired request's calls are learned; its call counts are not (it may have
        been abandoned halfway).
        """
        usage = obs.usage()
        if usage:
            self._observe(obs, usage)
        if ended_in_full(obs):
            self._count_calls(obs)

    def team_prior(self, obs: Observation, agent: Agent, part: int, otherwise: float) -> float:
        """A team member's prior: the mean of what its team's calls used.

        ``part`` 0: input, 1: output, 2: what a cap must cover (1.5 times the output);
        once the team made :data:`TEAM_PRIOR_AFTER` calls, else ``otherwise``. A member
        of a team (:meth:`teams`) runs in few requests, so its own history stays short;
        its team's is as long as a kind's.
        """
        team = self.teams(obs).get(agent.name)
        if team is None:
            return otherwise
        with self._state_lock:
            n, inputs, outputs = self._team_usage.get((obs.pipeline.name, team[0]), (0, 0.0, 0.0))
        if n < TEAM_PRIOR_AFTER:
            return otherwise
        if part == 0:
            return inputs / n
        return outputs / n * (_TEAM_CAP if part == 2 else 1.0)

    def _observe(self, obs: Observation, calls: Sequence[tuple[str, int, int, bool]]) -> None:
        """Buffer one request's calls in the need model; merge with the store when due."""
        alike = self.teams(obs)
        if alike:
            with self._state_lock:
                for name, inp, out, cut in calls:
                    team = alike.get(name)
                    if team is not None:
                        key = (obs.pipeline.name, team[0])
                        n, inputs, outputs = self._team_usage.get(key, (0, 0.0, 0.0))
                        wrote = out * (_CUT_GUESS if cut else 1.0)
                        self._team_usage[key] = (n + 1, inputs + inp, outputs + wrote)
        self._model(obs).observe(obs.features, calls)
        if self.store is None:
            return
        with self._state_lock:
            self._unsynced += 1
            due = self._unsynced >= self.sync_every
            if due:
                self._unsynced = 0
        if due:
            self.sync_needs()

    # ------------------------------------------------------------ saved and shared state

    def sync_needs(self) -> None:
        """Merge what this worker's need models learned into the store's copy, and adopt it.

        Compare-and-set: read the store's document, add this worker's statistics and error
        samples since its last merge, write it back if no other worker wrote in between
        (else read again). The model then continues from the sum.

        Raises:
            PolicyStateError: the store holds shared state of another format or version.
            ApportionError: too much contention (64 attempts failed).
        """
        store = self.store
        if store is None:
            return
        with self._state_lock:
            models = [(name, names, m) for (name, names), m in self._by_name.items()]
        for name, names, model in models:
            model.share(functools.partial(self._exchange, store, name, names))

    def _exchange(
        self, store: SharedState, name: str, agents: tuple[str, ...], delta: Mapping[str, Any]
    ) -> NeedModel:
        where = f"store:{self.needs_key}"
        pipeline = Pipeline([Agent(a) for a in agents], name=name)

        def update(data: bytes | None) -> tuple[bytes, NeedModel]:
            entries = {} if data is None else saved.decode_shared(data, where)
            shared = None
            if name in entries:
                shared = saved.parse_model(name, entries[name], f"pipelines.{name}", where)
                if shared.agents != agents:
                    shared = None  # another pipeline of the same name: this one replaces it
            merged = NeedModel.merged(pipeline, shared, delta)
            entries[name] = merged.document()
            return saved.encode_shared(entries), merged

        return compare_and_set(store, self.needs_key, update)

    def _state_parts(self) -> dict[str, Any]:
        """The policy's own parts of its saved document, beside the need models."""
        return {}

    def _restore_parts(self, document: Mapping[str, Any], where: str) -> Any:
        """Check the policy's own parts of a saved document; return a function applying them.

        Raises:
            PolicyStateError: a part is malformed (nothing is applied).
        """
        return lambda: None

    def save(self, path: str | Path) -> None:
        """Write everything this policy learned to ``path`` (JSON, versioned, atomic).

        Raises:
            PolicyStateError: the file cannot be written.
        """
        with self._state_lock:
            models = {name: m for (name, _), m in self._by_name.items()}
            pending = dict(self._loaded)
            calls = dict(self._loaded_counts)
            calls.update({name: c.document() for (name, _), c in self._counts.items()})
            after = dict(self._loaded_after)
            after.update({name: c.document_after() for (name, _), c in self._counts.items()})
            teams = self._teams_document()
        needs = {name: m.document() for name, m in {**pending, **models}.items()}
        parts = self._state_parts()
        if calls:  # how often each agent ran: absent from files of older versions
            parts["calls"] = calls
        if any(after.values()):  # what ran after what: absent from older files
            parts["calls_after"] = after
        if teams:  # the listed teams' calls and usage: absent from older files
            parts["teams"] = teams
        saved.write_file(path, saved.file_document(self.name, needs, **parts))

    def _teams_document(self) -> dict[str, dict[str, Any]]:
        """Per pipeline, its listed teams' calls per request and usage (under the lock).

        ``{"calls": CallCounts.document(), "usage": {lead: [calls, input, output]}}``, a
        team named by its first member.
        """
        found: dict[str, dict[str, Any]] = {
            name: {"calls": dict(calls), "usage": {}} for name, calls in self._loaded_teams.items()
        }
        for (name, _), counts in self._teams_counted.items():
            found.setdefault(name, {"calls": {}, "usage": {}})["calls"] = counts.document()
        for (name, lead), (n, inputs, outputs) in self._team_usage.items():
            found.setdefault(name, {"calls": {}, "usage": {}})["usage"][lead] = [
                n,
                inputs,
                outputs,
            ]
        return found

    @classmethod
    def load(cls: type[_P], path: str | Path, **options: Any) -> _P:
        """A new policy that continues from the state saved at ``path``.

        ``PredictingPolicy.load(path)`` builds the policy the file names;
        ``ElasticPolicy.load(path, margin=0.3)`` builds an elastic policy with these
        options (and refuses a file of another policy).

        Raises:
            PolicyStateError: the file cannot be read, is not a policy state of this
                version, is another policy's, or a field is malformed (nothing is loaded).
        """
        where = str(path)
        document = saved.read_file(path)
        name = document.get("policy")
        if cls is PredictingPolicy:
            factory = _named(str(name))
            if factory is None:
                raise PolicyStateError(f"policy {name!r} is no predicting policy", path=where)
            policy: Any = factory(**options)
        else:
            if name != cls.name:
                raise PolicyStateError(
                    f"this is the state of policy {name!r}, not {cls.name!r}", path=where
                )
            policy = cls(**options)
        policy._restore(document, where)
        return policy  # type: ignore[no-any-return]

    def _restore(self, document: Mapping[str, Any], where: str) -> None:
        models = saved.parse_needs(document.get("needs"), "needs", where)
        apply = self._restore_parts(document, where)
        calls: dict[str, dict[str, dict[str, int]]] = {}
        found = document.get("calls", {})
        if not isinstance(found, Mapping):
            raise PolicyStateError(
                "calls: expected a mapping of pipeline name to counts", path=where
            )
        for name, entry in found.items():
            parsed = parse_document(entry)
            if parsed is None:
                raise PolicyStateError(
                    f"calls.{name}: expected calls per request and requests per agent", path=where
                )
            calls[str(name)] = parsed
        team_calls, team_usage = _parse_teams(document.get("teams", {}), where)
        found_after = document.get("calls_after", {})
        if not isinstance(found_after, Mapping):
            raise PolicyStateError(
                "calls_after: expected a mapping of pipeline name to counts", path=where
            )
        after: dict[str, dict[str, dict[str, list[int]]]] = {}
        for name, entry in found_after.items():
            parsed_after = parse_after(entry)
            if parsed_after is None:
                raise PolicyStateError(
                    f"calls_after.{name}: expected [requests, calls] per agent per agent",
                    path=where,
                )
            after[str(name)] = parsed_after
        with self._state_lock:
            self._loaded_counts = calls
            self._loaded_after = after
            self._counts.clear()
            self._loaded_teams = team_calls
            self._teams_counted.clear()
            self._team_usage = team_usage
            self._loaded = models
            self._loaded_from = where
            self._by_name.clear()
            self._needs.clear()
            apply()


def _parse_teams(
    found: object, where: str
) -> tuple[dict[str, dict[str, dict[str, int]]], dict[tuple[str, str], tuple[int, float, float]]]:
    """The ``teams`` part of a saved file, checked: calls per pipeline, usage per team.

    Raises:
        PolicyStateError: a field is malformed (naming it).
    """
    if not isinstance(found, Mapping):
        raise PolicyStateError("teams: expected a mapping of pipeline name to teams", path=where)
    calls: dict[str, dict[str, dict[str, int]]] = {}
    usage: dict[tuple[str, str], tuple[int, float, float]] = {}
    for name, entry in found.items():
        problem = f"teams.{name}: expected calls per request and usage per team"
        if not isinstance(entry, Mapping) or set(entry) - {"calls", "usage"}:
            raise PolicyStateError(problem, path=where)
        parsed = parse_document(entry.get("calls", {}))
        used = entry.get("usage", {})
        if parsed is None or not isinstance(used, Mapping):
            raise PolicyStateError(problem, path=where)
        calls[str(name)] = parsed
        for lead, figures in used.items():
            if (
                not isinstance(figures, list)
                or len(figures) != 3
                or type(figures[0]) is not int
                or figures[0] < 0
                or not all(
                    isinstance(v, int | float)
                    and not isinstance(v, bool)
                    and math.isfinite(v)
                    and v >= 0
                    for v in figures[1:]
                )
            ):
                raise PolicyStateError(
                    f"teams.{name}.usage.{lead}: expected [calls, input tokens, output tokens]",
                    path=where,
                )
            usage[(str(name), str(lead))] = (figures[0], float(figures[1]), float(figures[2]))
    return calls, usage


def _named(name: str) -> type[PredictingPolicy] | None:
    """The predicting policy class called ``name``, or ``None``.

    The first found breadth first, so a policy comes before subclasses of it that kept its
    name. Every shipped one is defined by the time this runs: importing this module runs
    :mod:`apportion.policies` first, which imports them all.
    """
    level: list[type[PredictingPolicy]] = [PredictingPolicy]
    while level:
        for cls in level:
            if cls.name == name and cls is not PredictingPolicy:
                return cls
        level = [sub for cls in level for sub in cls.__subclasses__()]
    return None


def divide(
    budget: int, input_tokens: int, most: int, least: int, agent: Agent, *, feeds: bool = False
) -> tuple[int, int]:
    """Divide one call's budget: the output's ``least``, then the input, then up to ``most``.

    As :func:`~apportion.policies.base.split` (which keeps the whole margin of a structured
    or reasoning answer before its input), with the output's first claim ``least`` for
    every kind: when the budget pays for the input in hand and ``least``, the input is read
    in full and the output gets the rest, up to ``most``; otherwise the output gets
    ``least`` (at most three quarters of the budget, half for prose) and the input what
    remains.

    Returns:
        ``(context_tokens, output_tokens)`` with a sum of at most ``max(budget, 0)``.
    """
    budget = max(budget, 0)
    if input_tokens + least <= budget:
        return input_tokens, min(most, budget - input_tokens)
    share = _OUTPUT_FIRST_SHARE[agent.output_kind]
    if feeds:
        share = max(share, _FEEDER_SHARE)
    out = min(least, int(budget * share))
    ctx = min(input_tokens, budget - out)
    return ctx, min(most, budget - ctx)


def _cap_values(kind: OutputKind, errors: Any) -> tuple[tuple[float, float], ...] | None:
    """``(ratio, ln E[q_out])`` per ratio of :data:`_CAP_RATIOS` and quantile of the samples.

    ``errors`` are samples of need over predicted output; a cap of ``ratio`` times the
    prediction keeps an answer whole where ``ratio >= sample``; cut, a structured answer is
    worth 0, a reasoning one half its share written, prose its share. ``None`` without
    samples.
    """
    ratios = np.asarray(errors, dtype=float)
    if not len(ratios):
        return None
    ratios = np.maximum(ratios, 1e-9)
    levels = np.unique(np.concatenate([_CAP_RATIOS, np.quantile(ratios, _CAP_QUANTILES)]))
    caps = levels[:, None]
    fits = ratios[None, :] <= caps
    if kind is OutputKind.STRUCTURED:
        factor = fits.astype(float)
    else:
        share = np.minimum(caps / ratios[None, :], 1.0)
        factor = np.where(fits, 1.0, share / 2) if kind is OutputKind.REASONING else share
    with np.errstate(divide="ignore"):
        values = np.maximum(np.log(factor.mean(axis=1)), _LOG_FLOOR)
    return tuple(zip(levels.tolist(), values.tolist(), strict=True))


_LOG_FLOOR = -12.0


def water_level(sizes: Sequence[tuple[float, float, float]], pool: float) -> float:
    """The level ``L`` at which ``sum(calls * min(tokens, weight * L))`` fills ``pool``.

    ``sizes`` holds ``(tokens per call, calls, weight)``: each input is read up to its
    weight times the level. ``math.inf`` when every input fits, 0 when the pool is empty.
    """
    if pool <= 0:
        return 0.0
    items = [(t / w, t, c, w) for t, c, w in sizes if c > 0 and w > 0]
    if sum(t * c for _, t, c, _ in items) <= pool:
        return math.inf
    below = 0.0  # tokens of the inputs read whole (under their level)
    slope = sum(c * w for _, _, c, w in items)  # tokens per unit of level, of the others
    for top, tokens, calls, weight in sorted(items):
        if below + top * slope >= pool:
            break
        below += tokens * calls
        slope -= calls * weight
    return (pool - below) / slope if slope > 0 else math.inf


_BOUND_READS = ("holds", "held_back", "calls_ahead", "needs_now")
"""What :meth:`PredictingPolicy.holds_at_most` bounds: a subclass that overrides one of
them gets no bound unless it gives its own."""


def _unbounded(policy: PredictingPolicy, obs: Observation, agent: Agent) -> float:
    """:meth:`PredictingPolicy.holds_at_most` of rules it does not know: unknown."""
    return math.inf


def _downstream_matrix(pipeline: Pipeline) -> np.ndarray:
    """``[i, j]``: agent ``j`` runs after agent ``i`` (directly or not)."""
    matrix = np.zeros((len(pipeline),) * 2, dtype=bool)
    for i, agent in enumerate(pipeline.agents):
        for later in pipeline.downstream(agent.name):
            matrix[i, pipeline.index(later)] = True
    return matrix


def _fit(needs: dict[str, int], total: int) -> dict[str, int]:
    """``needs`` as they are when they fit in ``total``, else scaled down in proportion."""
    asked = sum(needs.values())
    if asked <= total or asked == 0:
        return dict(needs)
    return {a: need * total // asked for a, need in needs.items()}


def single_calls(obs: Observation, caller: str | None) -> list[float]:
    """One call per agent until it begins (or is ``caller``, about to), then none."""
    state = obs.state
    if state is None:
        return [0.0 if b == caller else 1.0 for b in obs.pipeline.names]
    calls = state.calls
    return [0.0 if b == caller or calls[b] else 1.0 for b in obs.pipeline.names]


class _Ahead:
    """What :meth:`PredictingPolicy.expected_calls` reads of a request, looked up once.

    The view as ``caller`` (``None``: nobody) is about to begin a call; the line begun last
    is found on first use.
    """

    __slots__ = (
        "_latest",
        "caller",
        "counts",
        "kinds",
        "loops",
        "obs",
        "pipeline",
        "policy",
        "row",
        "state",
        "teams",
    )

    def __init__(self, policy: PredictingPolicy, obs: Observation, caller: str | None) -> None:
        self.policy = policy
        self.obs = obs
        self.caller = caller
        self.state = obs.state  # None while the request is being planned: nothing called yet
        self.pipeline = obs.pipeline
        self.counts = policy._calls_model(obs)
        self.row: tuple[float, ...] | None = obs.memo.get("row")
        self.kinds = obs.pipeline.kind_names
        self.teams = policy.teams(obs)
        self.loops = self.state is not None and policy._listed_loop(obs)
        self._latest: tuple[str | None] | None = None

    def last(self, name: str | None) -> str | None:
        """The line taken as begun last, seen from agent ``name``.

        The caller, about to begin its first call (unless it is ``name``), else the line
        whose first call is the latest of the request's so far (found on first use).
        """
        caller, state = self.caller, self.state
        fresh = caller is not None and state is not None and not state.calls[caller]
        if fresh and caller != name:
            return caller
        if self._latest is None:
            self._latest = (self.policy._latest_begun(self.obs),)
        return self._latest[0]
