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
from importlib import resources
from typing import Any, Final

from apportion.sim.bench import (
    AgentTrace,
    frontier_document,
    progress_total,
    run_frontier,
    trace_request,
)
from apportion.sim.needs import RequestNeeds, draw_needs
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


def traced_request(
    workload: Workload, ceiling: int, seed: int, policy: str
) -> tuple[RequestNeeds, dict[str, tuple[RequestOutcome, list[AgentTrace]]]]:
    """The demo's one request, played through ``uniform`` and ``policy``.

    The request is the one of a stream disjoint from the measured one (``seed + 1``) that
    reads the most while fitting the ceiling; each policy first sees 150 other requests of
    that stream, as a running service would have.

    Returns:
        The request's needs, and the outcome and per-agent trace under each policy.
    """
    pool = [draw_needs(workload, seed + 1, r) for r in range(200)]
    fits = [n for n in pool if n.total <= ceiling * 0.9] or pool
    needs = max(fits, key=lambda n: max(n.need_in))
    warmup = [n for n in pool if n is not needs][:150]
    traces = {
        name: trace_request(workload, name, needs, ceiling, warmup=warmup, seed=seed)
        for name in ("uniform", policy)
    }
    return needs, traces


_QUARTERS: Final = {0.25: "a quarter", 0.5: "half", 0.75: "three quarters", 1.0: "all"}


def _share_words(share: float) -> str:
    """A share in words when it is near a quarter ("three quarters"), else a percentage."""
    nearest = round(share * 4) / 4
    if nearest in _QUARTERS and abs(share - nearest) <= 0.05:
        return _QUARTERS[nearest]
    return f"{share:.0%}"


def one_request(
    workload: Workload, ceiling: int, seed: int, policy: str
) -> tuple[str, list[str], list[list[str]]]:
    """The one-request table the README opens with: needs, and grants under each policy.

    Cells are read / write tokens. A grant is annotated when the agent's input was cut
    (how much of it went unread), when its output was cut, when ``policy`` serves in full
    an agent the equal split cut ("reads it all"), and when at least three quarters of an
    equal share of output tokens were never used.

    Returns:
        The caption, the headers and the rows (the last one: the request's quality).
    """
    needs, traces = traced_request(workload, ceiling, seed, policy)
    share = ceiling // len(workload.agents)
    headers = ["agent (priority)", "needs", f"equal split ({share:,} each)", f"apportion {policy}"]
    rows = []
    for index, agent in enumerate(workload.agents):
        equal = traces["uniform"][1][index]
        chosen = traces[policy][1][index]
        cells = [f"{agent.name} ({agent.priority})", f"{equal.need_in:,} / {equal.need_out:,}"]
        for trace in (equal, chosen):
            notes = []
            if trace.read < trace.need_in:
                unread = _share_words(1 - trace.read / trace.need_in)
                notes.append(f"{unread} of its input unread")
            elif trace.wrote < trace.need_out:
                notes.append("output cut")
            elif trace is chosen and equal.read < equal.need_in:
                notes.append("reads it all")
            elif trace is chosen and equal.wrote < equal.need_out:
                notes.append("writes it all")
            unused = trace.granted_out - trace.wrote
            if unused >= share * 3 // 4:
                notes.append(f"{unused // 100 * 100:,} never used")
            grant = f"{trace.granted_in:,} / {trace.granted_out:,}"
            cells.append(": ".join([grant, *notes]))
        rows.append(cells)
    rows.append(
        [
            "request quality (simulated)",
            "",
            f"{traces['uniform'][0].quality:.3f}",
            f"{traces[policy][0].quality:.3f}",
        ]
    )
    caption = (
        f"One request of {workload.name} ({needs.total:,} tokens needed of the {ceiling:,} "
        "ceiling), agent by agent: read / write tokens needed and granted (simulated)."
    )
    return caption, headers, rows


def demo_page(document: Mapping[str, Any], workload: Workload | None = None) -> str:
    """The demo's HTML page: one request, the side-by-side table, every policy, the frontier.

    It opens with the table the README opens with (:func:`one_request`).

    Args:
        document: the :func:`run_demo` document.
        workload: the workload it ran (default: the packaged seed scenario).
    """
    from apportion.sim.figures import frontier_figure
    from apportion.sim.html import Section, bench_page, table

    workload = workload or demo_workload()
    best = best_policy(document)
    ceiling, seed = int(document["ceiling"]), int(document["seed"])
    caption, request_headers, request_rows = one_request(workload, ceiling, seed, best)
    opening = Section(
        f"One request: the equal split against apportion {best}",
        table(request_headers, request_rows, caption=caption, numeric=(1,)),
    )
    frontier = document["frontier"]
    figure = frontier_figure(frontier, "svg", workload=str(document["workload"]))
    headers, rows = side_by_side(document)
    overall = Section(
        f"The equal split against the best policy ({int(document['requests']):,} requests)",
        table(
            headers, rows, caption="the same simulated requests at the same ceiling", numeric=(1, 2)
        ),
    )
    return bench_page(
        document,
        frontier,
        {"Simulated quality against the ceiling": figure},
        leading=[opening, overall],
    )
