"""Policies told what no running system knows: where their gap to the oracle comes from.

The oracle knows each request's needs exactly (``noise`` included) and the hidden weights
of the response model (``input_sensitivity``, ``influence``). A predicting policy
(``estimate``, ``elastic``, ``iterative``, ``learned``) predicts the needs from the
request's features with its need model, and ``learned`` learns the weights from outcomes.
Three diagnostics (not policies: they read the simulated world) keep a policy's rules and
hand it, in turn, more of what the oracle knows:

- ``hidden-weights`` (``learned`` only; the rules weigh agents by priority): the response
  model's weights, ``influence * input_sensitivity`` on an agent's input and ``influence``
  on its output, instead of weights drawn from what it learned;
- ``needs-before-noise``: a need model told each request's expected needs (``base + coef
  * features``, plus the upstream answers' for an agent that reads them, times the
  noise's mean ``exp(noise ** 2 / 2)``) and the noise's true spread (quantiles of
  ``exp(noise * z)`` over that mean): the best a need model could know (``learned`` keeps
  the hidden weights);
- ``clairvoyant``: a need model told each request's exact needs, noise drawn.

What separates ``needs-before-noise`` from ``clairvoyant`` is the noise: the part of each
need a request's features do not tell, which no policy can know before the call. Only for
workloads with a fixed pipeline (no trees or dynamic teams).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

from apportion.policies import resolve_policy
from apportion.policies.base import Observation, Policy
from apportion.policies.learned import LearnedPolicy
from apportion.policies.needs import NeedModel
from apportion.policies.predicting import PredictingPolicy
from apportion.sim.needs import RequestNeeds
from apportion.sim.runner import pipeline_of
from apportion.sim.workload import Workload
from apportion.spec import Agent, Pipeline

__all__ = ["KNOWS", "ToldNeeds", "informed"]

KNOWS: dict[str, str] = {
    "hidden-weights": "the response model's weights (learned only)",
    "needs-before-noise": "each request's expected needs from its features, and the noise's spread",
    "clairvoyant": "each request's exact needs",
}
"""The diagnostics, from the least told to the most, and what each is told."""

_SPOTS = 64
_Z = np.array([NormalDist().inv_cdf((k + 0.5) / _SPOTS) for k in range(_SPOTS)])
_SEEN = 1_000_000  # as if every agent had been seen for ever: its margin fully trusted


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
        told: dict[str, tuple[float, float]] = {}
        for i, agent in enumerate(self.workload.agents):
            if self.exact:
                told[agent.name] = (float(needs.need_in[i]), float(needs.need_out[i]))
                continue
            # expected needs (a log-normal noise's mean is exp(noise ** 2 / 2) times its median)
            grown_in, grown_out = self._mean[agent.name]
            need_in = agent.input.mean_free(needs.features)
            if agent.input.upstream:
                need_in += sum(told[name][1] for name in agent.after)
            told[agent.name] = (
                need_in * grown_in,
                agent.output.mean_free(needs.features) * grown_out,
            )
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
        return self._samples[agent.name][1]

    def input_errors(self, agent: Agent) -> np.ndarray:
        """The input's noise, as need over the need told (1 when exact)."""
        return self._samples[agent.name][0]

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


class _Told:
    """Mixed into a predicting policy: its need model is told (:class:`ToldNeeds`)."""

    told: ToldNeeds

    def needs(self, pipeline: Pipeline) -> NeedModel:
        return self.told

    def tell(self, needs: RequestNeeds) -> None:
        """The request about to run (call before each)."""
        self.told.tell(needs)


class _HiddenWeights:
    """Mixed into ``learned``: the response model's weights instead of drawn ones."""

    hidden: dict[str, tuple[float, float]]

    def agent_weights(self, obs: Observation) -> dict[str, tuple[float, float]]:
        return self.hidden

    def tell(self, needs: RequestNeeds) -> None:
        """The request about to run (these weights do not change)."""


def informed(policy: str, knows: str, workload: Workload, *, seed: int = 0) -> Policy:
    """``policy`` told what :data:`KNOWS` says of ``knows``, on ``workload``.

    ``learned`` is told the hidden weights at every level and draws nothing (its
    exploration off); ``seed`` seeds its sampler all the same.

    Raises:
        ValueError: an unknown diagnostic, a policy that is not a predicting one (or not
            ``learned`` for ``hidden-weights``), or a workload with trees or dynamic teams.
    """
    if knows not in KNOWS:
        raise ValueError(f"no diagnostic {knows!r} (known: {', '.join(KNOWS)})")
    if workload.dynamic:
        raise ValueError(f"workload {workload.name!r} has trees or dynamic teams")
    base = type(resolve_policy(policy))
    learned = issubclass(base, LearnedPolicy)
    if not issubclass(base, PredictingPolicy) or (knows == "hidden-weights" and not learned):
        raise ValueError(f"{policy!r} cannot be told {KNOWS[knows]}")
    mixins: list[type] = []
    if knows != "hidden-weights":
        mixins.append(_Told)
    if learned:
        mixins.append(_HiddenWeights)
    made: Any = type(f"Informed{base.__name__}", (*mixins, base), {"name": f"{policy}+{knows}"})
    found = made(seed=seed, explore=0.0) if learned else made()
    if knows != "hidden-weights":
        found.told = ToldNeeds(workload, exact=knows == "clairvoyant")
    if learned:
        found.hidden = {
            a.name: (a.influence * a.input_sensitivity, a.influence) for a in workload.agents
        }
    policy_made: Policy = found
    return policy_made
