"""How close to the oracle the policies could come, told what a system cannot know.

On generated workloads (``apportion.sim.generate``; by default the held-out seeds of
``allocation.py``, which nothing here tunes), at each workload's default ceiling and at
shares of its median need, runs each policy as shipped and told more of what the oracle
knows (:mod:`apportion.sim.informed`): ``hidden-weights`` (``learned`` only: the
response model's weights), ``needs-before-noise`` (each request's needs before noise and
the noise's spread: a perfect need model) and ``clairvoyant`` (the exact needs). Each
run plays the same requests online, one fresh controller per run; quality is simulated.
Prints JSON: per workload, ceiling and policy, each run's share of the oracle over the
requests after the first third (the policies have learned by then), and per ceiling
their means and least. Progress on standard error.

    python benchmarks/information_bound.py [--seeds 9001-9010] [--ratios default,0.7]
        [--requests 300] [--policy learned --policy elastic ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from allocation import TIGHT, UNSEEN_SEEDS
from rule_losses import seeds_of

from apportion.cli.console import progress
from apportion.policies.base import Policy
from apportion.sim.bench import make_policy
from apportion.sim.generate import generate_workload
from apportion.sim.informed import KNOWS, informed
from apportion.sim.losses import solve
from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import Workload


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


def runs_of(policy: str) -> list[str]:
    """What ``policy`` is run as: shipped, then told more and more."""
    return ["shipped", *(k for k in KNOWS if policy == "learned" or k != "hidden-weights")]


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
    policies = args.policy or ["learned", "elastic", "estimate"]
    started = time.monotonic()
    rows: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    with progress() as bar:
        task = bar.add_task("workloads x ceilings", total=len(args.seeds) * len(args.ratios))
        for seed in args.seeds:
            generated = generate_workload(seed)
            for ratio in args.ratios:
                workload = (
                    generated.workload if ratio == "default" else generated.at_ratio(float(ratio))
                )
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
                        for run in runs_of(policy)
                    }
                    for policy in policies
                }
                bar.update(task, advance=1)
    summary: dict[str, Any] = {
        ratio: {
            policy: {
                run: {
                    "mean": round(statistics.fmean(rows[w][ratio][policy][run] for w in rows), 4),
                    "min": min(rows[w][ratio][policy][run] for w in rows),
                }
                for run in runs_of(policy)
            }
            for policy in policies
        }
        for ratio in args.ratios
    }
    json.dump(
        {
            "simulated": True,
            "seeds": [args.seeds.start, args.seeds.stop - 1],
            "requests": args.requests,
            "measured": "share of the oracle's quality over the requests after the first third",
            "knows": {"shipped": "what it learned", **KNOWS},
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
