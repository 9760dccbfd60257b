"""Token needs drawn per request, with common random numbers.

Implements "Needs" of ``/work/shared/spec/workload.md``. The generator of request ``r`` is
``numpy.random.default_rng([seed, r])``: it depends on ``(seed, r)`` alone, so every policy
and the oracle face exactly the same requests.

Order of draws (part of the contract: changing it changes every simulated request). One
vector of ``F + 2 * A`` standard normals is drawn, ``F`` features and ``A`` agents:

1. one normal per feature, in declaration order;
2. then, for each agent in run order, two normals: first the one for its **output**
   noise, then the one for its **input** noise.

A normal is drawn even when its sigma or noise is 0, so that positions never shift. The
values are then::

    feature   = round(exp(ln(median) + sigma * z))      sigma = ln(p90 / median) / 1.2816
    need_out  = max(1, round((base + sum(coef * feature)) * exp(noise * z_out)))
    need_in   = max(1, round((base + sum(coef * feature) + U) * exp(noise * z_in)))

where ``U`` is the sum of ``need_out`` of the agents listed in ``after`` when the input
has ``upstream: true`` (else 0). ``round`` is Python's (half to even), which matters only
for exact ``.5`` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from apportion.sim.workload import Workload

__all__ = ["RequestNeeds", "draw_needs"]


@dataclass(frozen=True)
class RequestNeeds:
    """What one simulated request needs.

    Attributes:
        features: each feature's drawn value (visible to policies when the request opens).
        need_in: each agent's context-token need, in agent order (hidden).
        need_out: each agent's unconstrained output-token need, in agent order (hidden).
    """

    features: dict[str, int]
    need_in: tuple[int, ...]
    need_out: tuple[int, ...]

    @property
    def total(self) -> int:
        """Tokens the request would consume if nothing were cut: ``sum(need_in + need_out)``."""
        return sum(self.need_in) + sum(self.need_out)


def draw_needs(workload: Workload, seed: int, r: int) -> RequestNeeds:
    """Draw the features and token needs of request ``r``.

    Args:
        workload: the workload.
        seed: the run's seed (non-negative).
        r: the request's index (non-negative).

    Returns:
        The request's features and needs; the same ``(workload, seed, r)`` always gives
        the same result.

    Raises:
        ValueError: ``seed`` or ``r`` is negative.
    """
    if seed < 0 or r < 0:
        raise ValueError(f"seed and request index must be non-negative, got {seed}, {r}")
    rng = np.random.default_rng([seed, r])
    z = rng.standard_normal(len(workload.features) + 2 * len(workload.agents)).tolist()

    features: dict[str, int] = {}
    for position, feature in enumerate(workload.features):
        value = math.exp(math.log(feature.median) + feature.sigma * z[position])
        features[feature.name] = round(value)

    offset = len(workload.features)
    need_in: list[int] = []
    need_out: list[int] = []
    index_of = {agent.name: index for index, agent in enumerate(workload.agents)}
    for index, agent in enumerate(workload.agents):
        z_out, z_in = z[offset + 2 * index], z[offset + 2 * index + 1]
        out_mean = agent.output.mean_free(features)
        need_out.append(max(1, round(out_mean * math.exp(agent.output.noise * z_out))))
        in_mean = agent.input.mean_free(features)
        if agent.input.upstream:
            in_mean += sum(need_out[index_of[name]] for name in agent.after)
        need_in.append(max(1, round(in_mean * math.exp(agent.input.noise * z_in))))
    return RequestNeeds(features=features, need_in=tuple(need_in), need_out=tuple(need_out))
