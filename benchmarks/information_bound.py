"""How close to the oracle the policies could come, told what a system cannot know.

On generated workloads (``apportion.sim.generate``; by default the held-out seeds of
``allocation.py``, which nothing here tunes), or on workload files (``--workload``, seed
``--seed``), at each workload's default ceiling and at shares of its median need, runs
each policy as shipped and told more of what the oracle knows
(:mod:`apportion.sim.informed`): ``calls`` (trees and dynamic teams only: how many calls
each agent makes in the request), ``hidden-weights`` (``learned`` only: the response
model's weights), ``needs-before-noise`` (each request's needs before noise and the
noise's spread: a perfect need model) and ``clairvoyant`` (the exact needs), each level
with what the ones before it tell. Each run plays the same requests online, one fresh
controller per run; quality is simulated. Prints JSON: per workload, ceiling and policy,
each run's share of the oracle over the requests after the first third (the policies
have learned by then), and per ceiling their means and least. Progress on standard
error.

    python benchmarks/information_bound.py [--seeds 9001-9010 | --workload FILE ...
        [--seed 0]] [--ratios default,0.7] [--requests 300] [--policy learned ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

from allocation import TIGHT, UNSEEN_SEEDS
from rule_losses import seeds_of

from apportion.cli.console import progress
from apportion.errors import ApportionError
from apportion.policies.base import Policy
from apportion.sim.bench import make_policy
from apportion.sim.generate import generate_workload, median_need
from apportion.sim.informed import KNOWS, informed
from apportion.sim.losses import solve
from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import Workload, load_workload


def ratios_of(text: str) -> list[str]:
    """``"default,0.7"``: the workload's default ceiling and shares of its median need."""
    found = []
    for part in text.split(","):
        if part != "default":
            try:
                if not 0 < float(part) < 100:
                    raise ValueError
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"ratios are 'default' or numbers above 0, not {part!r}"
                ) from None
        found.append(part)
    return found


def share_after_warmup(
    workload: Workload, policy: Policy, needs: list[RequestNeeds], best: list[float]
) -> float:
    """``policy``'s share of the oracle over the requests after the first third."""
    controller = controller_for(workload, policy)
    tell = getattr(policy, "tell", None)
    got = []
    for item in needs:
        if tell is not None:
            tell(item)
        got.append(run_request(controller, workload, item, workload.ceiling or 0).quality)
    start = len(needs) // 3
    return statistics.fmean(got[start:]) / statistics.fmean(best[start:])


def runs_of(policy: str, workload: Workload) -> list[str]:
    """What ``policy`` is run as on ``workload``: shipped, then told more and more."""
    return [
        "shipped",
        *(
            k
            for k in KNOWS
            if (policy == "learned" or k != "hidden-weights") and (workload.dynamic or k != "calls")
        ),
    ]


def cases(args: argparse.Namespace) -> list[tuple[int, str, Workload]]:
    """``(seed, ratio, workload)``: each file named (else each generated seed) at each ratio."""
    if args.workload:
        bases = [(args.seed, load_workload(path)) for path in args.workload]
    else:
        bases = [(seed, generate_workload(seed).workload) for seed in args.seeds]
    found = []
    for seed, base in bases:
        median = median_need(base, seed) if set(args.ratios) - {"default"} else 0
        for ratio in args.ratios:
            ceiling = max(1, round(median * float(ratio))) if ratio != "default" else None
            found.append((seed, ratio, base if ceiling is None else replace(base, ceiling=ceiling)))
    return found


def made(policy: str, run: str, workload: Workload, seed: int, requests: int) -> Policy:
    """``policy`` as shipped (as a bench makes it: seeded), or told what ``run`` says."""
    if run != "shipped":
        return informed(policy, run, workload, seed=seed)
    return make_policy(policy, workload, seed, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=seeds_of, default=range(UNSEEN_SEEDS[0], UNSEEN_SEEDS[-1] + 1)
    )
    parser.add_argument("--workload", action="append", help="a workload file (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of --workload runs")
    parser.add_argument("--ratios", type=ratios_of, default=["default", *map(str, TIGHT)])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--policy",
        action="append",
        choices=["learned", "elastic", "estimate", "iterative"],
        help="default: learned, elastic and estimate",
    )
    args = parser.parse_args()
    if args.requests < 3:
        parser.error("--requests must be at least 3")
    if args.seed < 0:
        parser.error("--seed must be at least 0")
    try:
        runs = cases(args)
    except ApportionError as exc:
        parser.error(str(exc))
    policies = args.policy or ["learned", "elastic", "estimate"]
    started = time.monotonic()
    rows: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    with progress() as bar:
        task = bar.add_task("workloads x ceilings", total=len(runs))
        for seed, ratio, workload in runs:
            needs = [draw_needs(workload, seed, r) for r in range(args.requests)]
            best = [b.quality for b in solve(workload, needs, workload.ceiling or 0)]
            rows.setdefault(workload.name, {})[ratio] = {
                policy: {
                    run: round(
                        share_after_warmup(
                            workload,
                            made(policy, run, workload, seed, args.requests),
                            needs,
                            best,
                        ),
                        4,
                    )
                    for run in runs_of(policy, workload)
                }
                for policy in policies
            }
            bar.update(task, advance=1)
    summary: dict[str, Any] = {
        ratio: {
            policy: {
                run: {
                    "mean": round(statistics.fmean(values), 4),
                    "min": min(values),
                }
                for run in ["shipped", *KNOWS]
                if (values := [got[run] for w in rows if run in (got := rows[w][ratio][policy])])
            }
            for policy in policies
        }
        for ratio in args.ratios
    }
    json.dump(
        {
            "simulated": True,
            "seeds": [args.seed] if args.workload else [args.seeds.start, args.seeds.stop - 1],
            "workloads_from": args.workload or "generated",
            "requests": args.requests,
            "measured": "share of the oracle's quality over the requests after the first third",
            "knows": {"shipped": "what it learned", **KNOWS},
            "levels": "each level is also told what the levels before it are",
            "summary": summary,
            "workloads": rows,
            "seconds": round(time.monotonic() - started, 1),
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
