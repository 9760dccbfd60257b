"""Token needs drawn per request, with common random numbers.

Implements "Needs" of ``docs/workload-spec.md``. The generator of request ``r`` is
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

Trees and dynamic teams (``docs/workload-trees.md``). When an agent uses ``probability``,
``calls``, ``fan_out`` or ``pool``, the request is *realized* first: which instances
run, how many calls each makes, and every call's needs. The features come from the draws
above, unchanged; everything else from a second generator, ``default_rng([seed, r, 1])``,
drawn agent by agent in run order: one normal for the number of instances (``fan_out``
or ``pool.draw``; drawn even when unused), the pool's names (a permutation of the pool,
only when there is a pool), then per instance one uniform (does it run, against
``probability``) and one normal (its number of calls), then per call of an instance that
runs two normals (output, then input noise). The request is then a flat list of calls,
:class:`Realized`, played in order: the needs of call ``k`` are at position ``k`` of
``need_in`` / ``need_out``; ``U`` of a call is the sum of the output needs of every call
of its upstream agents that ran. A workload without those keys is never realized: its
requests are exactly the ones above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from apportion.sim.workload import AgentSpec, Workload

__all__ = ["Realized", "RequestNeeds", "draw_needs"]


@dataclass(frozen=True)
class Realized:
    """The calls of one request of a workload with trees or dynamic teams, in run order.

    Attributes:
        workload: the request as a plain workload: one agent per call (named
            ``INSTANCE`` or ``INSTANCE#k`` for call ``k`` of an instance that calls more
            than once), ``after`` naming the calls of its upstream agents, the agent's
            influence shared out equally over its calls (so an agent's quality is the
            geometric mean of its calls' qualities), and no tree keys left.
        names: per call, the agent name the call is made as (the instance's name: the
            agent's own, ``NAME:3`` of a fan-out, ``NAME:017`` of a pool).
        lines: per call, the workload agent it is an instance of.
    """

    workload: Workload
    names: tuple[str, ...]
    lines: tuple[str, ...]


@dataclass(frozen=True)
class RequestNeeds:
    """What one simulated request needs.

    Attributes:
        features: each feature's drawn value (visible to policies when the request opens).
        need_in: each agent's context-token need, in agent order (hidden).
        need_out: each agent's unconstrained output-token need, in agent order (hidden).
        realized: for a workload with trees or dynamic teams, the request's calls (then
            ``need_in`` and ``need_out`` are per call, in the order of its ``workload``);
            ``None`` otherwise.
    """

    features: dict[str, int]
    need_in: tuple[int, ...]
    need_out: tuple[int, ...]
    realized: Realized | None = None

    def workload_of(self, workload: Workload) -> Workload:
        """The workload these needs are positions of: the realized one, else ``workload``."""
        return workload if self.realized is None else self.realized.workload

    def names_of(self, workload: Workload) -> tuple[str, ...]:
        """The agent name each position calls as."""
        return workload.agent_names if self.realized is None else self.realized.names

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
    if workload.dynamic:
        return _realize(workload, features, np.random.default_rng([seed, r, 1]))
    return RequestNeeds(features=features, need_in=tuple(need_in), need_out=tuple(need_out))


def _realize(
    workload: Workload, features: dict[str, int], rng: np.random.Generator
) -> RequestNeeds:
    """Draw which instances run, their calls and every call's needs (module docstring)."""
    agents: list[AgentSpec] = []
    names: list[str] = []
    lines: list[str] = []
    need_in: list[int] = []
    need_out: list[int] = []
    calls_of: dict[str, list[int]] = {}
    for agent in workload.agents:
        z_count = float(rng.standard_normal())
        if agent.fan_out is not None:
            count = agent.fan_out.draw(features, z_count)
            instances = [f"{agent.name}:{i + 1}" for i in range(count)]
        elif agent.pool is not None:
            pool = agent.pool.names(agent.name)
            count = min(len(pool), agent.pool.draw.draw(features, z_count))
            order = rng.permutation(len(pool))[:count]
            instances = [pool[i] for i in sorted(order.tolist())]
        else:
            instances = [agent.name]
        runs: list[tuple[str, int]] = []
        for instance in instances:
            runs_now = float(rng.random()) < agent.probability
            z_calls = float(rng.standard_normal())
            if runs_now:
                calls = 1 if agent.calls is None else agent.calls.draw(features, z_calls)
                runs.append((instance, calls))
        total = sum(calls for _, calls in runs)
        upstream = [k for name in agent.after for k in calls_of.get(name, [])]
        extra = sum(need_out[k] for k in upstream) if agent.input.upstream else 0
        after = tuple(agents[k].name for k in upstream) if agent.input.upstream else ()
        mine: list[int] = []
        out_mean = agent.output.mean_free(features)
        in_mean = agent.input.mean_free(features) + extra
        for instance, calls in runs:
            for k in range(calls):
                z_out, z_in = rng.standard_normal(2).tolist()
                need_out.append(max(1, round(out_mean * math.exp(agent.output.noise * z_out))))
                need_in.append(max(1, round(in_mean * math.exp(agent.input.noise * z_in))))
                mine.append(len(agents))
                agents.append(
                    replace(
                        agent,
                        name=instance if calls == 1 else f"{instance}#{k + 1}",
                        after=after,
                        influence=agent.influence / total,
                        probability=1.0,
                        calls=None,
                        fan_out=None,
                        pool=None,
                    )
                )
                names.append(instance)
                lines.append(agent.name)
        calls_of[agent.name] = mine
    flat = replace(workload, agents=tuple(agents))
    return RequestNeeds(
        features=features,
        need_in=tuple(need_in),
        need_out=tuple(need_out),
        realized=Realized(flat, tuple(names), tuple(lines)),
    )
