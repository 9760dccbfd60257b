"""Where the rule policies lose against the oracle, on generated tuning workloads.

The seeds given here are tuning seeds: the rules of ``estimate`` and ``elastic`` were
changed by what this prints (seeds 1 to 60). The held-out seeds of ``allocation.py``
(9001-9010 and 9101-9103) are refused: they measure, they never tune. Each seed's
workload (``apportion.sim.generate``) runs at its default ceiling for ``--requests``
requests, every policy fresh; the oracle solves the same requests. Prints JSON
(simulated quality): per policy the mean share of the oracle, how many workloads reach
``--aim``, and the mean loss per kind of cut (``apportion.sim.losses``, in units of
quality per request); per seed, each policy's share. Progress on standard error.

    python benchmarks/rule_losses.py [--seeds 1-60] [--requests 150] [--policy NAME]...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from allocation import SHIFT_SEEDS, UNSEEN_SEEDS, measure

from apportion.cli.console import progress
from apportion.sim.generate import generate_workload

HELD_OUT = frozenset((*UNSEEN_SEEDS, *SHIFT_SEEDS))


def seeds_of(text: str) -> range:
    """``"1-60"`` (or ``"7"``) as the seeds it names."""
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are FIRST-LAST, not {text!r}") from None
    if not 0 <= first <= last:
        raise argparse.ArgumentTypeError(f"seeds are FIRST-LAST with FIRST <= LAST, not {text!r}")
    return range(first, last + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seeds_of, default=seeds_of("1-60"))
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--policy", action="append", help="default: estimate and elastic")
    parser.add_argument("--aim", type=float, default=0.92, help="share of the oracle")
    args = parser.parse_args()
    held = sorted(HELD_OUT.intersection(args.seeds))
    if held:
        parser.error(f"seeds {held[0]}... are held out (allocation.py measures them)")
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    policies = args.policy or ["estimate", "elastic"]
    per_seed: dict[int, dict[str, float]] = {}
    cuts: dict[str, dict[str, float]] = {p: {} for p in policies}
    with progress() as bar:
        task = bar.add_task("tuning workloads", total=len(args.seeds))
        for seed in args.seeds:
            result = measure(
                generate_workload(seed).workload, args.requests, lambda _: None, policies=policies
            )
            per_seed[seed] = {p: result["policies"][p]["quality_vs_oracle"] for p in policies}
            for p in policies:
                for cut, loss in result["losses"][p]["by_cut"].items():
                    cuts[p][cut] = cuts[p].get(cut, 0.0) + loss / len(args.seeds)
            bar.update(task, advance=1)
    summary: dict[str, Any] = {
        p: {
            "quality_vs_oracle_mean": round(statistics.fmean(s[p] for s in per_seed.values()), 4),
            "at_aim": sum(s[p] >= args.aim for s in per_seed.values()),
            "by_cut": {cut: round(loss, 4) for cut, loss in cuts[p].items()},
        }
        for p in policies
    }
    json.dump(
        {
            "simulated": True,
            "seeds": [args.seeds.start, args.seeds.stop - 1],
            "requests": args.requests,
            "aim": args.aim,
            "policies": summary,
            "per_seed": per_seed,
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
