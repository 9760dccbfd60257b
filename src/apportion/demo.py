"""``apportion demo``: the seed scenario, the equal split against the best policy.

The seed scenario (``sim/workloads/seed-scenario.yaml``) is a five-agent support pipeline
under a 20,000-token ceiling: the equal 4,000-token share starves a reasoning agent that
must read a ~40-message thread (about 8,000 tokens), while a formatter needing about 200
tokens leaves most of its share unused. The demo plays the same simulated requests through
every built-in policy, at the default ceiling and along a range of ceilings (the
quality-ceiling frontier), through the real controller and memory store; the model's
part (token needs, quality) is simulated by the workload's declared response model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from apportion.sim.bench import (
    AgentTrace,
    frontier_document,
    progress_total,
    run_frontier,
    trace_request,
)
from apportion.sim.needs import draw_needs
from apportion.sim.runner import RequestOutcome
from apportion.sim.workload import Workload, load_workload

DEMO_WORKLOAD = "seed-scenario.yaml"
DEMO_CEILINGS = (10_000, 15_000, 20_000, 25_000, 30_000)
"""The frontier's ceilings; the seed scenario's own ceiling (20,000) is among them."""


def demo_workload() -> Workload:
    """The packaged seed scenario."""
    source = resources.files("apportion.sim").joinpath("workloads", DEMO_WORKLOAD)
    with resources.as_file(source) as path:
        return load_workload(path)


def demo_total(requests: int) -> int:
    """How many progress steps :func:`run_demo` reports."""
    return progress_total(requests, 5, len(DEMO_CEILINGS))


def run_demo(
    workload: Workload, requests: int, seed: int, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """The frontier over :data:`DEMO_CEILINGS`, headed by the workload's own ceiling."""
    runs = run_frontier(workload, DEMO_CEILINGS, requests=requests, seed=seed, progress=progress)
    return frontier_document(runs, headline=workload.ceiling)


def best_policy(result: Mapping[str, Any]) -> str:
    """The policy with the highest simulated quality."""
    policies: Mapping[str, Mapping[str, float]] = result["policies"]
    return max(policies, key=lambda name: policies[name]["quality_mean"])


def side_by_side(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: the equal split beside the best policy."""
    best = best_policy(result)
    uniform, chosen = result["policies"]["uniform"], result["policies"][best]
    figures = (
        ("quality (simulated)", "quality_mean", "{:.3f}"),
        ("share of the oracle's quality", "quality_vs_oracle", "{:.1%}"),
        ("tokens used per request", "tokens_mean", "{:,.0f}"),
        ("calls cut", "truncation_rate", "{:.1%}"),
        ("critical calls cut", "critical_truncation_rate", "{:.1%}"),
        ("tokens unspent per request", "unspent_mean", "{:,.0f}"),
    )
    rows = [
        [label, fmt.format(uniform[key]), fmt.format(chosen[key])] for label, key, fmt in figures
    ]
    return ["", "uniform (equal split)", f"{best} (best policy)"], rows


@dataclass(frozen=True)
class Walkthrough:
    """One request traced agent by agent under several policies (:func:`walkthrough`).

    Attributes:
        needed: the tokens the request needs in all.
        ceiling: its ceiling.
        agents: ``(name, priority)`` of each agent, in order.
        traces: per policy, the request's outcome and each agent's trace (in order).
    """

    needed: int
    ceiling: int
    agents: list[tuple[str, str]]
    traces: dict[str, tuple[RequestOutcome, list[AgentTrace]]]


def walkthrough(workload: Workload, ceiling: int, seed: int, policy: str) -> Walkthrough:
    """One long request that fits the ceiling, agent by agent, under uniform and ``policy``.

    The request is drawn from a stream disjoint from the measured one (``seed + 1``); each
    policy first sees 150 other requests of that stream, as a running service would have.
    """
    pool = [draw_needs(workload, seed + 1, r) for r in range(200)]
    fits = [n for n in pool if n.total <= ceiling * 0.9] or pool
    needs = max(fits, key=lambda n: max(n.need_in))
    warmup = [n for n in pool if n is not needs][:150]
    traces = {
        name: trace_request(workload, name, needs, ceiling, warmup=warmup, seed=seed)
        for name in ("uniform", policy)
    }
    agents = [(agent.name, str(agent.priority)) for agent in workload.agents]
    return Walkthrough(needs.total, ceiling, agents, traces)


def demo_page(document: Mapping[str, Any]) -> str:
    """The demo's HTML page: the side-by-side table, every policy, the frontier figure."""
    from apportion.sim.figures import frontier_figure
    from apportion.sim.html import Section, bench_page, table

    frontier = document["frontier"]
    figure = frontier_figure(frontier, "svg", workload=str(document["workload"]))
    headers, rows = side_by_side(document)
    first = Section(
        "The equal split against the best policy",
        table(headers, rows, caption="the same simulated requests at the same ceiling"),
    )
    return bench_page(
        document, frontier, {"Simulated quality against the ceiling": figure}, leading=[first]
    )
