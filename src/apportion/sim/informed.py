"""Policies told what no running system knows: where their gap to the oracle comes from.

The oracle knows each request's needs exactly (``noise`` included) and the hidden weights
of the response model (``input_sensitivity``, ``influence``); on a workload with trees or
dynamic teams (``docs/workload-trees.md``) it also knows which agents run and how many
calls each makes. A predicting policy (``estimate``, ``elastic``, ``iterative``,
``learned``) predicts the needs from the request's features with its need model, the
calls from the requests it has served, and ``learned`` learns the weights from outcomes.
These diagnostics (not policies: they read the simulated world) keep a policy's rules and
hand it, in turn, more of what the oracle knows:

- ``calls`` (trees and dynamic teams only): how many calls each agent or kind makes in
  the request (none for one that does not run), instead of what past requests suggest;
- ``hidden-weights`` (``learned`` only; the rules weigh agents by priority): the response
  model's weights, ``influence * input_sensitivity`` on an agent's input and ``influence``
  on its output (per call: over the calls its line makes in the request), instead of
  weights drawn from what it learned;
- ``needs-before-noise``: a need model told each request's expected needs (``base + coef
  * features``, plus the upstream answers' for an agent that reads them, times the
  noise's mean ``exp(noise ** 2 / 2)``) and the noise's true spread (quantiles of
  ``exp(noise * z)`` over that mean): the best a need model could know (``learned`` keeps
  the hidden weights);
- ``clairvoyant``: a need model told each request's exact needs, noise drawn (a line
  that calls more than once: the mean of its calls' needs).

Each level keeps what the levels before it tell (on a workload without trees, ``calls``
is not a level: every agent calls once). What separates ``needs-before-noise`` from
``clairvoyant`` is the noise: the part of each need a request's features do not tell,
which no policy can know before the call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

from apportion.policies import resolve_policy
from apportion.policies.base import Observation, Policy
from apportion.policies.learned import LearnedPolicy
from apportion.policies.needs import NeedModel
from apportion.policies.occurrence import CallCounts, teams
from apportion.policies.predicting import PredictingPolicy
from apportion.sim.needs import RequestNeeds
from apportion.sim.runner import pipeline_of
from apportion.sim.workload import AgentSpec, Workload
from apportion.spec import Agent, Pipeline

__all__ = ["KNOWS", "ToldCalls", "ToldNeeds", "informed"]

KNOWS: dict[str, str] = {
    "calls": "how many calls each agent makes in each request (trees and dynamic teams)",
    "hidden-weights": "the response model's weights (learned only)",
    "needs-before-noise": "each request's expected needs from its features, and the noise's spread",
    "clairvoyant": "each request's exact needs",
}
"""The diagnostics, from the least told to the most, and what each is told."""

_SPOTS = 64
_Z = np.array([NormalDist().inv_cdf((k + 0.5) / _SPOTS) for k in range(_SPOTS)])
_SEEN = 1_000_000  # as if every agent had been seen for ever: its margin fully trusted


def lines_of(workload: Workload) -> dict[str, AgentSpec]:
    """Per line of the pipeline a policy sees (:func:`pipeline_of`), its workload agent."""
    found: dict[str, AgentSpec] = {}
    for a in workload.agents:
        if a.pool is not None and not a.is_kind:  # a listed pool: every name is a line
            found.update(dict.fromkeys(a.pool.names(a.name), a))
        else:
            found[a.name] = a
    return found


class ToldNeeds(NeedModel):
    """A need model that predicts what it is told of each request (see the module docstring).

    Call :meth:`tell` before each request. It answers what a policy asks of a need model
    (:class:`~apportion.policies.needs.NeedModel`) and learns nothing.

    Args:
        workload: the simulated workload.
        exact: told the exact needs (``clairvoyant``), else the needs before noise.
    """

    def __init__(self, workload: Workload, *, exact: bool) -> None:
        super().__init__(pipeline_of(workload))
        self.workload = workload
        self.exact = exact
        self._spec = lines_of(workload)
        self._told: dict[str, tuple[float, float]] = {}
        self._samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._mean: dict[str, tuple[float, float]] = {}  # E[exp(noise * z)]
        for a in workload.agents:
            noise = (0.0, 0.0) if exact else (a.input.noise, a.output.noise)
            mean = (np.exp(noise[0] ** 2 / 2), np.exp(noise[1] ** 2 / 2))
            self._mean[a.name] = (float(mean[0]), float(mean[1]))
            self._samples[a.name] = (
                np.exp(noise[0] * _Z) / mean[0],
                np.exp(noise[1] * _Z) / mean[1],
            )

    def tell(self, needs: RequestNeeds) -> None:
        """The request about to run."""
        realized = needs.realized
        # per workload agent: its calls in the request and their positions among the needs
        calls: Mapping[str, int]
        at: dict[str, list[int]] = {}
        if realized is None:
            calls = dict.fromkeys(self.workload.agent_names, 1)
            at = {a.name: [i] for i, a in enumerate(self.workload.agents)}
        else:
            calls = Counter(realized.lines)
            for k, name in enumerate(realized.names):
                at.setdefault(self._pipeline.resolve(name).name, []).append(k)
        expected: dict[str, tuple[float, float]] = {}
        for a in self.workload.agents:
            # a log-normal noise's mean is exp(noise ** 2 / 2) times its median
            grown_in, grown_out = self._mean[a.name]
            need_in = a.input.mean_free(needs.features)
            if a.input.upstream:
                need_in += sum(calls.get(u, 0) * expected[u][1] for u in a.after)
            expected[a.name] = (
                need_in * grown_in,
                a.output.mean_free(needs.features) * grown_out,
            )
        told: dict[str, tuple[float, float]] = {}
        for line, a in self._spec.items():
            positions = at.get(line)
            if self.exact and positions:
                told[line] = (
                    float(np.mean([needs.need_in[k] for k in positions])),
                    float(np.mean([needs.need_out[k] for k in positions])),
                )
            else:
                told[line] = expected[a.name]
        self._told = told

    def told(self, agent: str) -> tuple[float, float]:
        """``(input, output)`` told of ``agent`` for the request about to run."""
        return self._told[agent]

    def row(self, features: Mapping[str, float]) -> tuple[float, ...]:
        """Nothing to regress on."""
        return ()

    def input(self, agent: Agent, row: tuple[float, ...], prior: float | None = None) -> float:
        """The input told."""
        return self._told[agent.name][0]

    def output(
        self,
        agent: Agent,
        features: Mapping[str, float],
        row: tuple[float, ...],
        input_tokens: float | None,
        prior: float | None = None,
    ) -> float:
        """The output told."""
        return self._told[agent.name][1]

    def errors(self, agent: Agent) -> np.ndarray:
        """The output's noise, as need over the need told (quantiles; 1 when exact)."""
        return self._samples[self._spec[agent.name].name][1]

    def input_errors(self, agent: Agent) -> np.ndarray:
        """The input's noise, as need over the need told (1 when exact)."""
        return self._samples[self._spec[agent.name].name][0]

    def knows_errors(self, agent: Agent) -> bool:
        """Always: the noise is told."""
        return True

    def seen(self, agent: Agent) -> int:
        """As if seen for ever (a margin told is trusted)."""
        return _SEEN

    def spread(self, agent: Agent) -> float:
        """The 90th percentile of the output's noise (at least 1)."""
        return max(1.0, float(np.quantile(self.errors(agent), 0.9)))

    def observe(self, features: Mapping[str, float], calls: Iterable[Any]) -> None:
        """Learns nothing: it is told."""


class ToldCalls(CallCounts):
    """Call counts told how many calls each line makes in the request about to run.

    They learn from the requests served as :class:`CallCounts` do (whether a line loops,
    what ran after what); what is still to come is what they are told (:meth:`tell`).
    """

    __slots__ = ("_told",)

    def __init__(self, lines: Iterable[str]) -> None:
        super().__init__(lines)
        self._told: Mapping[str, int] = {}

    def tell(self, calls: Mapping[str, int]) -> None:
        """Calls per line in the request about to run (the same mapping again: nothing new)."""
        if calls is self._told:
            return
        with self._lock:
            self._forget()
            self._told = calls

    def remaining(self, line: str, done: int, row: Iterable[float] | None = None) -> float:
        """The calls told, less ``done``."""
        return float(max(0, self._told.get(line, 0) - done))

    def own_remaining(self, line: str, done: int, row: Iterable[float] | None = None) -> float:
        """The calls told, less ``done`` (the count known, each weighs the same)."""
        return self.remaining(line, done, row)

    def remaining_after(self, line: str, last: str, row: Iterable[float] | None = None) -> float:
        """Every call told (``line`` has not begun)."""
        return float(self._told.get(line, 0))

    def remaining_after_all(
        self, last: str | None, row: tuple[float, ...] | None = None
    ) -> np.ndarray:
        """Every call told, per line."""
        return np.array([self._told.get(x, 0) for x in self.lines], dtype=float)

    def chance(self, line: str) -> float:
        """1 for a line told to call, else 0."""
        return 1.0 if self._told.get(line, 0) else 0.0


def _then(mixin: type, policy: object, needs: RequestNeeds) -> None:
    """The next ``tell`` after ``mixin``'s in ``policy``'s classes, if any."""
    after = getattr(super(mixin, policy), "tell", None)
    if after is not None:
        after(needs)


class _ToldCalls:
    """Mixed into a predicting policy: its call counts are told (:class:`ToldCalls`)."""

    counts_type = ToldCalls
    lines_seen: Pipeline
    alike: set[tuple[str, ...]]
    told_calls: dict[str, int]
    told_teams: dict[str, int]

    def call_counts(self, pipeline: Pipeline) -> CallCounts:
        parent: Any = super()
        counts: ToldCalls = parent.call_counts(pipeline)
        counts.tell(self.told_calls)
        return counts

    def _team_counts(self, obs: Observation) -> CallCounts:
        parent: Any = super()
        counts: ToldCalls = parent._team_counts(obs)
        counts.tell(self.told_teams)
        return counts

    def tell(self, needs: RequestNeeds) -> None:
        """The request about to run (call before each)."""
        assert needs.realized is not None
        calls = Counter(self.lines_seen.resolve(name).name for name in needs.realized.names)
        self.told_calls = dict(calls)
        self.told_teams = {team[0]: sum(calls[m] for m in team) for team in self.alike}
        _then(_ToldCalls, self, needs)


class _Told:
    """Mixed into a predicting policy: its need model is told (:class:`ToldNeeds`)."""

    told: ToldNeeds

    def needs(self, pipeline: Pipeline) -> NeedModel:
        return self.told

    def tell(self, needs: RequestNeeds) -> None:
        """The request about to run (call before each)."""
        self.told.tell(needs)
        _then(_Told, self, needs)


class _HiddenWeights:
    """Mixed into ``learned``: the response model's weights instead of drawn ones.

    A line's weights are its influence shared over the calls it makes in the request, as
    the response model shares it (a line that calls once: its own).
    """

    hidden: dict[str, tuple[float, float]]
    spec_of: dict[str, AgentSpec]

    def agent_weights(self, obs: Observation) -> dict[str, tuple[float, float]]:
        return self.hidden

    def tell(self, needs: RequestNeeds) -> None:
        """The request about to run."""
        calls = Counter(needs.realized.lines) if needs.realized is not None else Counter()
        self.hidden = {
            line: (
                a.influence * a.input_sensitivity / max(1, calls[a.name]),
                a.influence / max(1, calls[a.name]),
            )
            for line, a in self.spec_of.items()
        }
        _then(_HiddenWeights, self, needs)


def informed(policy: str, knows: str, workload: Workload, *, seed: int = 0) -> Policy:
    """``policy`` told what :data:`KNOWS` says of ``knows`` and of the levels before it.

    On a workload with trees or dynamic teams, every level tells the calls. ``learned``
    is told the hidden weights at every level after ``calls`` and then draws nothing (its
    exploration off); ``seed`` seeds its sampler all the same. Call the policy's ``tell``
    with each request's needs before playing it.

    Raises:
        ValueError: an unknown diagnostic, a policy that is not a predicting one (or not
            ``learned`` for ``hidden-weights``), or ``calls`` on a workload without trees
            or dynamic teams.
    """
    if knows not in KNOWS:
        raise ValueError(f"no diagnostic {knows!r} (known: {', '.join(KNOWS)})")
    if knows == "calls" and not workload.dynamic:
        raise ValueError(f"workload {workload.name!r} has no trees or dynamic teams to tell")
    base = type(resolve_policy(policy))
    learned = issubclass(base, LearnedPolicy)
    if not issubclass(base, PredictingPolicy) or (knows == "hidden-weights" and not learned):
        raise ValueError(f"{policy!r} cannot be told {KNOWS[knows]}")
    weights = learned and knows != "calls"
    needs = knows in ("needs-before-noise", "clairvoyant")
    mixins: list[type] = []
    if workload.dynamic:
        mixins.append(_ToldCalls)
    if needs:
        mixins.append(_Told)
    if weights:
        mixins.append(_HiddenWeights)
    made: Any = type(f"Informed{base.__name__}", (*mixins, base), {"name": f"{policy}+{knows}"})
    options: dict[str, Any] = {"seed": seed} if learned else {}
    if weights:
        options["explore"] = 0.0
    found = made(**options)
    found.spec_of = lines_of(workload)
    found.lines_seen = pipeline_of(workload)
    found.alike = set(teams(found.lines_seen).values())
    found.told_calls = found.told_teams = {}
    if needs:
        found.told = ToldNeeds(workload, exact=knows == "clairvoyant")
    policy_made: Policy = found
    return policy_made
