"""Warm start: what a fresh controller does with its first requests (simulated).

For every workload file in ``examples/workloads/`` and every policy, a fresh controller
(memory store, a new policy object) plays the workload's first requests (20 by default,
the workload's seed) and the script counts, per policy:

* ``input_cuts`` / ``critical_input_cuts``: calls whose context grant was below the input
  the agent had in hand (all agents / ``critical`` agents), and among them
  ``..._unspent``: those in requests that ended with 10% or more of the ceiling unspent
  (tokens were there, the policy did not give them), and ``..._unspent_payable``: those
  of them whose input in hand plus the output they needed fitted in what was left of the
  ceiling when they began (the others could not have been read in full whatever the
  policy did);
* ``output_cuts``: calls whose answer was still cut after extensions;
* ``refused``: calls the ledger refused outright (nothing left for the agent);
* ``unspent_mean``: ceiling minus tokens consumed, per request;
* ``quality_mean``: the workload's response model (simulated quality).

``--typical`` adds, for the predicting policies, a run whose pipeline declares typical
sizes (``Agent(typical_input=..., typical_output=...)``): the median input and output needs
of requests disjoint from the measured ones (the workload seed, requests 10,000 onwards),
as a team would read them off an uncapped period of telemetry. Policies never see the
simulator's needs otherwise. ``quickstart`` is the README Quickstart's request (three
agents, ceiling 12,000, inputs 600 / 7,900 / 1,400, outputs needed 60 / 1,300 / 150) on
a fresh controller per policy. ``learned`` is seeded (the workload's seed, 0 for the
Quickstart), so runs repeat.
Prints one JSON document::

    python benchmarks/warm_start.py [--requests N] [--typical] [--policy NAME]...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from apportion import Agent, Controller, Pipeline
from apportion.policies import LearnedPolicy, Policy
from apportion.sim.bench import make_policy
from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.runner import catalog_of, pipeline_of, run_request
from apportion.sim.workload import Workload, load_workload

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("uniform", "static", "estimate", "elastic", "iterative", "learned")
PREDICTING = ("estimate", "elastic", "iterative", "learned")
UNSPENT_SHARE = 0.10
PROFILE_START = 10_000
PROFILE_REQUESTS = 200


def typical_pipeline(workload: Workload) -> Pipeline:
    """The workload's pipeline with typical sizes: median needs of disjoint requests."""
    drawn = [
        draw_needs(workload, workload.seed, r)
        for r in range(PROFILE_START, PROFILE_START + PROFILE_REQUESTS)
    ]
    base = pipeline_of(workload)
    agents: list[Agent] = []
    for index, agent in enumerate(base.agents):
        agents.append(
            dataclasses.replace(
                agent,
                typical_input=round(statistics.median(n.need_in[index] for n in drawn)),
                typical_output=round(statistics.median(n.need_out[index] for n in drawn)),
            )
        )
    return Pipeline(agents, name=base.name)


def fresh_policy(name: str, workload: Workload, requests: int) -> Policy:
    """A new policy object; ``learned`` seeded so that a run repeats."""
    if name == "learned":
        return LearnedPolicy(seed=workload.seed)
    return make_policy(name, workload, workload.seed, requests)


def _calls(
    controller: Controller, workload: Workload, needs: RequestNeeds, request_id: str
) -> list[dict[str, Any]]:
    """Per agent: input in hand, context granted at first, output written (from events)."""
    read: dict[str, int] = {}
    wrote: dict[str, int] = {}
    left: dict[str, int] = {}
    consumed = 0
    for event in controller.store.events(request_id):
        if event.agent is None:
            continue
        if event.kind == "begin" and event.agent not in read:
            read[event.agent] = event.context_tokens
            left[event.agent] = workload.ceiling - consumed
        elif event.kind == "finish":
            wrote[event.agent] = event.output_tokens
            consumed += event.context_tokens + event.output_tokens
    rows = []
    for index, agent in enumerate(workload.agents):
        avail = needs.need_in[index]
        if agent.input.upstream:
            avail -= sum(
                needs.need_out[u] - wrote.get(workload.agents[u].name, 0)
                for u in workload.upstream_indices(index)
            )
        rows.append(
            {
                "agent": agent.name,
                "critical": agent.priority == "critical",
                "in_hand": max(avail, 0),
                "read": read.get(agent.name),
                "wrote": wrote.get(agent.name, 0),
                "need_out": needs.need_out[index],
                "payable": max(avail, 0) + needs.need_out[index] <= left.get(agent.name, 0),
            }
        )
    return rows


def measure(
    workload: Workload, policy: str, requests: int, pipeline: Pipeline | None = None
) -> dict[str, Any]:
    """The first ``requests`` requests of ``workload`` on a fresh controller."""
    ceiling = workload.ceiling
    controller = Controller(
        pipeline or pipeline_of(workload),
        policy=fresh_policy(policy, workload, requests),
        store="memory://",
        catalog=catalog_of(workload),
    )
    figures = {
        "input_cuts": 0,
        "input_cuts_unspent": 0,
        "input_cuts_unspent_payable": 0,
        "critical_input_cuts": 0,
        "critical_input_cuts_unspent": 0,
        "critical_input_cuts_unspent_payable": 0,
        "output_cuts": 0,
        "refused": 0,
        "calls": 0,
        "critical_calls": 0,
    }
    unspent: list[int] = []
    quality: list[float] = []
    first_cuts: list[dict[str, Any]] = []
    for r in range(requests):
        needs = draw_needs(workload, workload.seed, r)
        outcome = run_request(controller, workload, needs, ceiling)
        left = ceiling - outcome.tokens
        unspent.append(left)
        quality.append(outcome.quality)
        slack = left >= UNSPENT_SHARE * ceiling
        for call in _calls(controller, workload, needs, outcome.request_id):
            figures["calls"] += 1
            figures["critical_calls"] += call["critical"]
            if call["read"] is None:
                figures["refused"] += 1
                continue
            if call["wrote"] < call["need_out"]:
                figures["output_cuts"] += 1
            if call["read"] >= call["in_hand"]:
                continue
            figures["input_cuts"] += 1
            payable = slack and call["payable"]
            figures["input_cuts_unspent"] += slack
            figures["input_cuts_unspent_payable"] += payable
            figures["critical_input_cuts"] += call["critical"]
            figures["critical_input_cuts_unspent"] += call["critical"] and slack
            figures["critical_input_cuts_unspent_payable"] += call["critical"] and payable
            if slack and (call["critical"] or len(first_cuts) < 3):
                first_cuts.append(
                    {
                        "request": r,
                        "agent": call["agent"],
                        "critical": call["critical"],
                        "in_hand": call["in_hand"],
                        "read": call["read"],
                        "payable": call["payable"],
                        "unspent": left,
                    }
                )
    figures["unspent_mean"] = round(statistics.fmean(unspent), 1)
    figures["quality_mean"] = round(statistics.fmean(quality), 4)
    figures["cut_while_unspent_examples"] = first_cuts  # type: ignore[assignment]
    return figures


QUICKSTART = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
    ]
)
QUICKSTART_CALLS = [("triage", 600, 60), ("reasoner", 7_900, 1_300), ("formatter", 1_400, 150)]


def quickstart(policy: str) -> dict[str, Any]:
    """The README Quickstart's request on a fresh controller, as the README plays it."""
    controller = Controller(
        QUICKSTART, policy=LearnedPolicy(seed=0) if policy == "learned" else policy
    )
    granted: dict[str, list[int]] = {}
    cut_output: list[str] = []
    with controller.request(ceiling=12_000, features={"messages": 40}) as req:
        for agent, input_tokens, needed in QUICKSTART_CALLS:
            grant = req.begin(agent, input_tokens=input_tokens)
            granted[agent] = [grant.context_tokens, grant.output_tokens]
            written = min(needed, grant.output_tokens)
            if written < needed:
                grant = req.extend(grant, needed - written) or grant
                written = min(needed, grant.output_tokens)
            if written < needed:
                cut_output.append(agent)
            req.finish(
                grant,
                input_tokens=grant.context_tokens,
                output_tokens=written,
                truncated=written < needed,
            )
    return {
        "context_and_cap": granted,
        "input_cut": [a for a, i, _ in QUICKSTART_CALLS if granted[a][0] < i],
        "output_cut": cut_output,
        "unspent": 12_000 - req.summary().consumed,
    }


def totals(results: dict[str, dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Per policy, the counts summed over workloads and the mean of the means."""
    out: dict[str, dict[str, float]] = {}
    for workload in results.values():
        for policy, figures in workload[key].items():
            row = out.setdefault(policy, {"workloads": 0})
            row["workloads"] += 1
            for name, value in figures.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    row[name] = row.get(name, 0) + value
    for row in out.values():
        n = row.pop("workloads")
        for name in ("unspent_mean", "quality_mean"):  # means of the workloads' means
            row[name] = round(row[name] / n, 4 if name == "quality_mean" else 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="first requests (20)")
    parser.add_argument("--policy", action="append", help="default: " + ", ".join(POLICIES))
    parser.add_argument(
        "--typical", action="store_true", help="also run with typical sizes declared"
    )
    args = parser.parse_args()
    policies = args.policy or list(POLICIES)
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for path in sorted((ROOT / "examples" / "workloads").glob("*.yaml")):
        workload = load_workload(path)
        if workload.dynamic:  # trees and teams: docs/workload-trees.md, measured apart
            continue
        entry: dict[str, Any] = {"ceiling": workload.ceiling, "policies": {}}
        for policy in policies:
            entry["policies"][policy] = measure(workload, policy, args.requests)
        if args.typical:
            typical = typical_pipeline(workload)
            entry["with_typical_sizes"] = {
                policy: measure(workload, policy, args.requests, typical)
                for policy in policies
                if policy in PREDICTING
            }
        results[workload.name] = entry
    document: dict[str, Any] = {
        "simulated_quality": True,
        "requests": args.requests,
        "unspent_threshold": UNSPENT_SHARE,
        "workloads": results,
        "totals": totals(results, "policies"),
        "quickstart": {policy: quickstart(policy) for policy in policies if policy != "static"},
    }
    if args.typical:
        document["totals_with_typical_sizes"] = totals(results, "with_typical_sizes")
    document["seconds"] = round(time.perf_counter() - started, 1)
    document["python"] = platform.python_version()
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
