"""Comparing policies on a workload, against the hindsight oracle (simulated quality).

:func:`run_bench` plays the same requests (common random numbers) through every policy and
through the oracle, and aggregates the figures named in the workload spec's bench output:
``quality_mean``, ``quality_vs_oracle``, ``tokens_mean``, ``truncation_rate``,
``critical_truncation_rate``, ``unspent_mean``, ``extensions_mean``.

The ``static`` policy is given budgets profiled the way a team would profile them from
telemetry of an uncapped period: the 90th percentile of each agent's input and output
needs, plus 10%, over requests disjoint from the ones measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from apportion.errors import PolicyConfigError
from apportion.policies import POLICIES, Policy, StaticPolicy, resolve_policy
from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.oracle import Oracle, default_step
from apportion.sim.runner import RequestOutcome, controller_for, run_request
from apportion.sim.workload import Workload

DEFAULT_REQUESTS = 1000
"""Requests simulated when neither the workload nor the caller says how many."""

PROFILE_REQUESTS = 200
"""Requests (disjoint from the measured ones) used to profile the static policy."""

Progress = Callable[[int], None]


@dataclass
class PolicyFigures:
    """Aggregates of one policy (or the oracle) over the measured requests."""

    outcomes: list[RequestOutcome] = field(default_factory=list)

    def summary(self, ceiling: int, oracle_quality: float | None) -> dict[str, float]:
        """The bench JSON figures of the workload spec."""
        n = len(self.outcomes)
        calls = sum(o.calls + o.refused for o in self.outcomes) or 1
        critical = sum(o.critical_calls for o in self.outcomes)
        quality = statistics.fmean(o.quality for o in self.outcomes) if n else 0.0
        tokens = statistics.fmean(o.tokens for o in self.outcomes) if n else 0.0
        return {
            "quality_mean": round(quality, 4),
            "quality_vs_oracle": round(quality / oracle_quality, 4) if oracle_quality else 0.0,
            "tokens_mean": round(tokens, 1),
            "truncation_rate": round(sum(o.cut_calls for o in self.outcomes) / calls, 4),
            "critical_truncation_rate": round(
                sum(o.critical_cut_calls for o in self.outcomes) / critical, 4
            )
            if critical
            else 0.0,
            "unspent_mean": round(ceiling - tokens, 1),
            "extensions_mean": round(statistics.fmean(o.extensions for o in self.outcomes), 3)
            if n
            else 0.0,
        }


def profiled_static(workload: Workload, seed: int, start: int) -> StaticPolicy:
    """Static budgets from P90 (+10%) of needs over requests ``start .. start+200``."""
    usage: dict[str, list[tuple[int, int]]] = {a.name: [] for a in workload.agents}
    for r in range(start, start + PROFILE_REQUESTS):
        needs = draw_needs(workload, seed, r)
        for index, agent in enumerate(workload.agents):
            usage[agent.name].append((needs.need_in[index], needs.need_out[index]))
    return StaticPolicy.from_usage(usage, percentile=90.0, margin=0.1)


def make_policy(name: str, workload: Workload, seed: int, requests: int) -> Policy:
    """A fresh policy by name; ``static`` is profiled on requests after the measured ones."""
    if name == "static":
        return profiled_static(workload, seed, requests)
    return resolve_policy(name)


def run_bench(
    workload: Workload,
    *,
    policies: Sequence[str] | None = None,
    ceiling: int | None = None,
    requests: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Play ``requests`` requests through each policy and the oracle.

    Args:
        workload: the workload.
        policies: policy names (default: every built-in policy).
        ceiling: per-request token ceiling (default: the workload's).
        requests: how many requests (default: the workload's).
        seed: the seed (default: the workload's).
        progress: called with the number of requests just completed (for progress bars).

    Returns:
        The bench result, shaped as the workload spec's JSON output.
    """
    names = list(policies or POLICIES)
    ceiling = ceiling or workload.ceiling
    if ceiling is None:
        raise PolicyConfigError(f"workload {workload.name!r} sets no ceiling: give one")
    count = requests if requests is not None else (workload.requests or DEFAULT_REQUESTS)
    seed = seed if seed is not None else (workload.seed or 0)
    all_needs = [draw_needs(workload, seed, r) for r in range(count)]
    oracle = Oracle(workload)
    best = PolicyFigures()
    oracle_tokens: list[int] = []
    for needs in all_needs:
        result = oracle.solve(needs, ceiling)
        best.outcomes.append(_oracle_outcome(result.quality, result.tokens))
        oracle_tokens.append(result.tokens)
        if progress:
            progress(1)
    oracle_quality = statistics.fmean(o.quality for o in best.outcomes) if count else 0.0
    figures: dict[str, dict[str, float]] = {}
    for name in names:
        controller = controller_for(workload, make_policy(name, workload, seed, count))
        measured = PolicyFigures()
        for needs in _with_progress(all_needs, progress):
            measured.outcomes.append(run_request(controller, workload, needs, ceiling))
        figures[name] = measured.summary(ceiling, oracle_quality)
    return {
        "workload": workload.name,
        "requests": count,
        "ceiling": ceiling,
        "seed": seed,
        "simulated": True,
        "oracle": {
            "quality_mean": round(oracle_quality, 4),
            "tokens_mean": round(statistics.fmean(oracle_tokens), 1) if count else 0.0,
            "step": default_step(ceiling),
        },
        "policies": figures,
    }


def _oracle_outcome(quality: float, tokens: int) -> RequestOutcome:
    return RequestOutcome(quality, tokens, 0, 0, 0, 0, 0, 0)


def _with_progress(
    items: Iterable[RequestNeeds], progress: Progress | None
) -> Iterable[RequestNeeds]:
    for item in items:
        yield item
        if progress:
            progress(1)


@dataclass(frozen=True, slots=True)
class AgentTrace:
    """What one agent needed and got in a traced request (tokens)."""

    agent: str
    priority: str
    need_in: int
    need_out: int
    granted_in: int
    granted_out: int
    read: int
    wrote: int


def trace_request(
    workload: Workload,
    policy: str,
    needs: RequestNeeds,
    ceiling: int,
    *,
    warmup: Sequence[RequestNeeds] = (),
    seed: int = 0,
) -> tuple[RequestOutcome, list[AgentTrace]]:
    """Play one request through ``policy`` (after ``warmup`` requests) and trace its grants."""
    controller = controller_for(workload, make_policy(policy, workload, seed, len(warmup) + 1))
    for earlier in warmup:
        run_request(controller, workload, earlier, ceiling)
    outcome = run_request(controller, workload, needs, ceiling)
    granted: dict[str, list[int]] = {}
    used: dict[str, list[int]] = {}
    for event in controller.store.events(outcome.request_id):
        if event.agent is None:
            continue
        if event.kind in ("begin", "extend"):
            row = granted.setdefault(event.agent, [0, 0])
            row[0] += event.context_tokens
            row[1] += event.output_tokens
        elif event.kind == "finish":
            used[event.agent] = [event.context_tokens, event.output_tokens]
    traces = []
    for index, agent in enumerate(workload.agents):
        g = granted.get(agent.name, [0, 0])
        u = used.get(agent.name, [0, 0])
        traces.append(
            AgentTrace(
                agent.name,
                agent.priority,
                needs.need_in[index],
                needs.need_out[index],
                g[0],
                g[1],
                u[0],
                u[1],
            )
        )
    return outcome, traces
