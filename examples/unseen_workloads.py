"""The learned policy on workloads it has never seen: random pipelines, measured.

Each workload is drawn from a seed: 3 to 6 agents in a random DAG (each reads one or two
earlier agents), random priorities (at least one critical), output kinds, token needs,
input sensitivities and influences, and a ceiling at 70% to 110% of the median total
need (so some requests fit and some must be cut; ``--slack 1.1 1.5`` for roomier ones).
For each, ``run_learning`` plays the same requests through the learned policy (online,
from nothing), every rule-based policy and the oracle.

    python examples/unseen_workloads.py --workloads 8 --requests 2000 [--json out.json]

Everything is simulated (the workload spec's response model).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from typing import Any

from apportion.sim.learn import run_learning
from apportion.sim.needs import draw_needs
from apportion.sim.workload import Workload

KINDS = ("structured", "prose", "reasoning")


def random_workload(seed: int, slack: tuple[float, float] = (0.7, 1.1)) -> Workload:
    """A random pipeline with its features and needs (see the module docstring)."""
    rng = random.Random(seed)
    count = rng.randint(3, 6)
    critical = rng.randrange(count)
    agents: list[dict[str, Any]] = []
    for i in range(count):
        priority = "critical" if i == critical else rng.choice(("standard", "peripheral"))
        agent: dict[str, Any] = {
            "name": f"a{i}",
            "priority": priority,
            "input": {
                "base": rng.randint(100, 600),
                "per_feature": {"messages": rng.randint(5, 150), "doc_tokens": rng.uniform(0, 0.6)},
                "upstream": bool(i) and rng.random() < 0.7,
                "noise": rng.uniform(0.05, 0.3),
            },
            "output": {"base": rng.randint(50, 1000), "noise": rng.uniform(0.1, 0.35)},
            "output_kind": rng.choice(KINDS),
            "input_sensitivity": round(rng.uniform(0.2, 0.95), 2),
            "influence": round(rng.uniform(0.2, 1.0), 2),
        }
        if i:
            agent["after"] = sorted({f"a{rng.randrange(i)}" for _ in range(rng.randint(1, 2))})
        agents.append(agent)
    spec = {
        "name": f"random-{seed}",
        "seed": seed,
        "requests": 1000,
        "ceiling": 1000,
        "features": {
            "messages": {"median": rng.randint(10, 50), "p90": rng.randint(55, 90)},
            "doc_tokens": {"median": rng.randint(300, 1500), "p90": rng.randint(1600, 4000)},
        },
        "agents": agents,
    }
    probe = Workload.from_dict(spec)
    totals = [draw_needs(probe, seed, r).total for r in range(400)]
    spec["ceiling"] = int(statistics.median(totals) * rng.uniform(*slack))
    return Workload.from_dict(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--slack",
        type=float,
        nargs=2,
        default=(0.7, 1.1),
        metavar=("LOW", "HIGH"),
        help="ceiling as a share of the median total need, drawn between LOW and HIGH",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.workloads):
        workload = random_workload(seed, (args.slack[0], args.slack[1]))
        result = run_learning(workload, args.requests)
        rows.append(
            {
                "workload": workload.name,
                "agents": len(workload.agents),
                "ceiling": workload.ceiling,
                "learned": result["final_quality_vs_oracle"],
                "best_rule": result["best_rule_policy"],
                "best_rule_quality": result["best_rule_quality_vs_oracle"],
                "rules": result["rules"],
            }
        )
        r = rows[-1]
        print(
            f"{r['workload']}: {r['agents']} agents, ceiling {r['ceiling']}: learned "
            f"{r['learned']:.3f}, best rule {r['best_rule']} {r['best_rule_quality']:.3f}",
            flush=True,
        )
    learned = [r["learned"] for r in rows]
    margin = [r["learned"] - r["best_rule_quality"] for r in rows]
    print(
        f"mean learned/oracle {statistics.fmean(learned):.3f}; learned minus best rule: mean "
        f"{statistics.fmean(margin):+.3f}, min {min(margin):+.3f}, max {max(margin):+.3f}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
