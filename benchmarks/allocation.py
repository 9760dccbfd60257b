"""Allocation quality against the oracle: example workloads, unseen workloads, learning, shift.

Prints one JSON document on standard output (simulated quality: the workload spec's
response model; progress on standard error). Sections:

``workloads``
    Every workload of ``examples/workloads/`` in the base format at its default ceiling:
    per policy (every rule policy, ``learned`` from a fresh start, ``routed`` when the
    workload has models) the bench figures of the workload spec, the best policy and the
    best rule policy, the learned policy's windows, and ``losses`` (per policy: where the
    gap to the oracle comes from, per agent and per kind of cut; ``apportion.sim.losses``).
``trees``
    The same for the workloads with trees and teams (``docs/workload-trees.md``: agents
    that may not run, fan-out, teams drawn per request, loops); their losses are per
    line (a realized call is charged to the agent or kind it is a call of), per call, with
    ``calls_per_request`` beside them.
``unseen``
    Workloads drawn by ``apportion.sim.generate`` from the seeds of :data:`UNSEEN_SEEDS`
    (9001-9010), which were never used to tune a policy, a default or the generator: at
    each workload's default ceiling (``default``) and at :data:`TIGHT` shares of its
    median need (``tight``), with the same figures and losses; ``summary`` gives the best
    rule policy's and the learned policy's quality over the oracle, min / mean / max.
``learned_curves``
    The learned policy's quality over the oracle on the first 20, the first 500 and the
    last 400 requests of ``--learn-requests`` requests (online from nothing), on each
    unseen workload at its default and tight ceilings.
``shift``
    Generated workloads (seeds :data:`SHIFT_SEEDS`) whose needs change at the middle of
    ``--shift-requests`` requests (``docs/workload-shift.md``): per policy, the curve as
    consecutive windows of ``--shift-width`` requests and the recovery (requests after
    the shift until the rolling mean is back within ``--shift-tolerance`` of its
    pre-shift level; ``apportion.sim.curves.recovery``).
``routing``
    ``unseen``: the unseen workloads of ``--seeds`` drawn with models (``large``,
    ``medium``, ``small``; no cost ceiling), ``--routing-requests`` each: every rule
    policy and ``learned`` (each call on ``large``) and every routing policy, their
    quality and cost, each routing policy's over the best non-routing one's
    (``vs_best_non_routing``), and ``cheapest_at_0.97``: the least
    cost, as a share of running every agent on ``large``, of any fixed choice of model
    per agent whose capabilities keep 0.97 of the quality (from the hidden world: each
    agent's capability to the power of its influence, full needs; a bound on what routing
    can save at that quality, not a policy). ``capability``: ``routing`` with a declared
    capability table that is wrong (:data:`WRONG_TABLE`), per window of 50 requests (or
    of them all, when fewer):
    ``routed`` told the wrong table without learning (``told``), learning from the scores
    (``learning``), and told the world's table (``truth``).
``chatdev_replay``
    The real ChatDev call log on its test split at 80% of each run's real tokens.

    python benchmarks/allocation.py [--requests N] [--seeds N] [--quick] [...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from apportion.catalog import Catalog
from apportion.policies import Policy, bench_policies, policies_of, rule_policies
from apportion.policies.routed import RoutedPolicy
from apportion.sim.bench import PolicyFigures, make_policy
from apportion.sim.curves import learning_windows, recovery, rolling
from apportion.sim.generate import Generated, generate_shift, generate_workload
from apportion.sim.losses import WorkloadAt, diagnose, play, solve
from apportion.sim.needs import draw_needs
from apportion.sim.oracle import DISCRETISATION_NOTE, RELAXATION_NOTE, default_step
from apportion.sim.runner import catalog_of, run_requests
from apportion.sim.workload import Workload, load_workload

ROOT = Path(__file__).resolve().parents[1]
CALLS = ROOT / "examples" / "chatdev" / "calls.csv"

UNSEEN_SEEDS = tuple(range(9001, 9011))
"""Seeds of the unseen workloads: never used to tune anything (policies, defaults, generator)."""

UNSEEN_NOTE = "9001-9010 and 9101-9103: never used to tune a policy, a default or the generator"

SHIFT_SEEDS = (9101, 9102, 9103)
"""Seeds of the shifted workloads: never used to tune anything either."""

TIGHT = (0.7, 0.9, 1.1)
"""Tight ceilings, as shares of the median total need."""

Step = Callable[[int], None]


def policies_for(workload: Workload) -> list[str]:
    """Every rule policy, ``learned``, and ``routed`` with models."""
    names = bench_policies(priced=bool(workload.models))
    return [*names[: len(rule_policies())], "learned", *names[len(rule_policies()) :]]


def measure(
    workload: Workload,
    requests: int,
    step: Step,
    *,
    policies: Sequence[str] | None = None,
    losses: bool = True,
) -> dict[str, Any]:
    """The bench figures, the learned windows and the losses of one workload at its ceiling."""
    ceiling = workload.ceiling
    assert ceiling is not None
    seed = workload.seed or 0
    needs = [draw_needs(workload, seed, r) for r in range(requests)]
    best = solve(workload, needs, ceiling, progress=step)
    oracle_quality = statistics.fmean(b.quality for b in best)
    figures: dict[str, Any] = {}
    blocks: dict[str, Any] = {}
    windows = None
    for name in policies or policies_for(workload):
        played = play(workload, name, needs, ceiling, seed=seed, progress=step)
        figures[name] = PolicyFigures([p.outcome for p in played]).summary(ceiling, oracle_quality)
        if name == "learned":
            windows = learning_windows(
                [p.outcome.quality for p in played], [b.quality for b in best]
            )
        if losses:
            blocks[name] = diagnose(workload, played, best, needs, ceiling)
    rules = [n for n in figures if n in rule_policies()]
    step_tokens = default_step(ceiling)
    return {
        "workload": workload.name,
        "requests": requests,
        "ceiling": ceiling,
        "seed": seed,
        "simulated": True,
        "oracle": {
            "quality_mean": round(oracle_quality, 4),
            "tokens_mean": round(statistics.fmean(b.tokens for b in best), 1),
            "step": step_tokens,
            "discretisation": DISCRETISATION_NOTE.format(step=step_tokens),
            "relaxation": RELAXATION_NOTE,
            "relaxed_coupling_rate": round(statistics.fmean(b.relaxed_coupling for b in best), 4),
            "coupled_quality_mean": round(statistics.fmean(b.coupled_quality for b in best), 4),
            "upper_bound_mean": round(statistics.fmean(b.upper_bound for b in best), 4),
        },
        "policies": figures,
        "best_policy": max(figures, key=lambda n: figures[n]["quality_mean"]),
        "best_rule_policy": max(rules, key=lambda n: figures[n]["quality_mean"]) if rules else None,
        "learned_windows": windows,
        "losses": blocks,
    }


def learned_curve(workload: Workload, requests: int, step: Step) -> dict[str, Any]:
    """The learned policy's windows over ``requests`` requests, online from nothing."""
    ceiling = workload.ceiling
    assert ceiling is not None
    seed = workload.seed or 0
    needs = [draw_needs(workload, seed, r) for r in range(requests)]
    best = [b.quality for b in solve(workload, needs, ceiling, progress=step)]
    got = [
        p.outcome.quality
        for p in play(workload, "learned", needs, ceiling, seed=seed, progress=step)
    ]
    return {"ceiling": ceiling, **learning_windows(got, best)}


def shift_test(
    seed: int, requests: int, width: int, tolerance: float, step: Step
) -> dict[str, Any]:
    """One shifted workload: per policy its rolling curve and its recovery."""
    shift = generate_shift(seed, requests)
    workload = shift.before.workload
    ceiling = workload.ceiling
    assert ceiling is not None
    at: WorkloadAt = shift.workload_at
    needs = [draw_needs(at(r), seed, r) for r in range(requests)]
    best = [b.quality for b in solve(workload, needs, ceiling, workload_at=at, progress=step)]
    result: dict[str, Any] = {
        "workload": workload.name,
        "ceiling": ceiling,
        "requests": requests,
        "shift_at": shift.at,
        "factors": {name: list(pair) for name, pair in shift.factors.items()},
        "oracle_quality_before": round(statistics.fmean(best[: shift.at]), 4),
        "oracle_quality_after": round(statistics.fmean(best[shift.at :]), 4),
        "policies": {},
    }
    for name in SHIFT_POLICIES:
        got = [
            p.outcome.quality
            for p in play(workload, name, needs, ceiling, seed=seed, workload_at=at, progress=step)
        ]
        result["policies"][name] = {
            **recovery(got, best, shift.at, width=width, tolerance=tolerance),
            "curve": rolling(got, best, width),
        }
    return result


SHIFT_POLICIES = ("learned", "estimate", "elastic", "static")

WRONG_TABLE = {"small": {"structured": 0.97, "prose": 1.0, "reasoning": 0.95}}
"""The capability table declared for ``routing``'s small model in the ``capability`` test
(the world's: structured 0.97, prose 0.88, reasoning 0.55)."""

ROUTING_SHARE = 0.97
"""The quality share of ``cheapest_at_0.97``."""


def _qualities(
    workload: Workload, policy: Policy, requests: int, step: Step, catalog: Catalog | None = None
) -> tuple[list[float], list[float]]:
    """Quality and cost of ``requests`` requests played online through one policy."""
    played = run_requests(workload, policy, requests, catalog=catalog, progress=step)
    return [o.quality for o in played], [o.cost for o in played]


def cheapest_share(workload: Workload, requests: int, share: float = ROUTING_SHARE) -> float:
    """The least cost share of a fixed model per agent keeping ``share`` of the quality.

    From the hidden world: the capability factor of a choice is the product of each
    agent's capability to the power of its influence (1 with every agent on the most
    capable model), its cost that of every agent's full needs; over ``requests`` drawn
    requests, relative to the dearest choice.
    """
    seed = workload.seed or 0
    drawn = [draw_needs(workload, seed, r) for r in range(requests)]
    models = list(workload.models)
    logs = np.array(
        [
            [a.influence * math.log(max(m.capability[a.output_kind], 1e-9)) for m in models]
            for a in workload.agents
        ]
    )
    costs = np.array(
        [
            [statistics.fmean(m.cost(n.need_in[i], n.need_out[i]) for n in drawn) for m in models]
            for i in range(len(workload.agents))
        ]
    )
    choices = np.array(list(itertools.product(range(len(models)), repeat=len(workload.agents))))
    rows = np.arange(len(workload.agents))
    quality = logs[rows, choices].sum(axis=1)
    cost = costs[rows, choices].sum(axis=1)
    best = quality.max()
    keep = quality >= best + math.log(share)
    return round(float(cost[keep].min() / cost.max()), 4)


NON_ROUTING = ("learned",)
"""Beside the rule policies, what the routing section compares the routing policies with."""


def routing_unseen(generated: Generated, requests: int, step: Step) -> dict[str, Any]:
    """Every policy on one unseen workload with models (``large`` unless it routes)."""
    workload = generated.workload
    seed = workload.seed or 0
    plain = [*rule_policies(), *NON_ROUTING]
    figures = {}
    for name in [*plain, *policies_of("routing")]:
        policy = make_policy(name, workload, seed, requests)
        quality, cost = _qualities(workload, policy, requests, step)
        figures[name] = {
            "quality_mean": round(statistics.fmean(quality), 4),
            "cost_mean": round(statistics.fmean(cost), 6),
        }
    best = max(plain, key=lambda n: figures[n]["quality_mean"])
    rule = figures[best]
    return {
        "workload": workload.name,
        "requests": requests,
        "simulated": True,
        "policies": figures,
        "best_non_routing": best,
        "vs_best_non_routing": {
            name: {
                "quality": round(figures[name]["quality_mean"] / rule["quality_mean"], 4),
                "cost": round(figures[name]["cost_mean"] / rule["cost_mean"], 4),
            }
            for name in policies_of("routing")
        },
        "cheapest_at_0.97": cheapest_share(workload, requests),
    }


def capability_test(requests: int, width: int, step: Step) -> dict[str, Any]:
    """``routing`` told a wrong capability table: not learning, learning, told the truth."""
    workload = load_workload(ROOT / "examples" / "workloads" / "routing.yaml")
    wrong = catalog_of(workload, declared=WRONG_TABLE)
    runs = {
        "told": _qualities(workload, RoutedPolicy(learn_capability=False), requests, step, wrong),
        "learning": _qualities(workload, RoutedPolicy(), requests, step, wrong),
        "truth": _qualities(workload, RoutedPolicy(learn_capability=False), requests, step),
    }

    def windows(values: list[float]) -> list[float]:
        return [
            round(statistics.fmean(values[i : i + width]), 4)
            for i in range(0, len(values) - width + 1, width)
        ]

    return {
        "workload": workload.name,
        "requests": requests,
        "width": width,
        "simulated": True,
        "declared": WRONG_TABLE,
        "world": {m.name: dict(m.capability) for m in workload.models},
        "quality_windows": {name: windows(q) for name, (q, _) in runs.items()},
        "cost_windows": {name: windows(c) for name, (_, c) in runs.items()},
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"min", "mean", "max"}`` of ``values`` (rounded)."""
    return {
        "min": round(min(values), 4),
        "mean": round(statistics.fmean(values), 4),
        "max": round(max(values), 4),
    }


def unseen_summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Best rule and learned quality over the oracle across the unseen workloads of one ceiling."""
    best_rule = [r["policies"][r["best_rule_policy"]]["quality_vs_oracle"] for r in runs.values()]
    learned = [r["policies"]["learned"]["quality_vs_oracle"] for r in runs.values()]
    return {
        "best_rule_quality_vs_oracle": spread(best_rule),
        "learned_quality_vs_oracle": spread(learned),
        "best_rule_policies": {n: r["best_rule_policy"] for n, r in runs.items()},
    }


def commit() -> str | None:
    """The short commit of the working tree, if git is at hand."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per workload (default 1000)")
    parser.add_argument("--seeds", type=int, default=len(UNSEEN_SEEDS), help="unseen seeds used")
    parser.add_argument("--tight", default=",".join(map(str, TIGHT)), help="ceiling shares")
    parser.add_argument("--learn-requests", type=int, default=2000, help="0: no learned curves")
    parser.add_argument("--shift-requests", type=int, default=2000, help="0: no shift test")
    parser.add_argument("--shift-seeds", type=int, default=len(SHIFT_SEEDS))
    parser.add_argument("--shift-width", type=int, default=50)
    parser.add_argument("--shift-tolerance", type=float, default=0.02)
    parser.add_argument("--only", action="append", default=None, help="example workload name")
    parser.add_argument("--no-examples", action="store_true")
    parser.add_argument("--no-replay", action="store_true")
    parser.add_argument(
        "--routing-only", action="store_true", help="only the routing section (and its seeds)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 requests, 3 unseen seeds, tight 0.7 only, 600 learning, 1 shift of 600",
    )
    parser.add_argument("--routing-requests", type=int, default=300, help="0: no routing")
    parser.add_argument("--calls", type=Path, default=CALLS, help="ChatDev calls.csv")
    args = parser.parse_args()
    if args.routing_only:
        args.no_examples = args.no_replay = True
        args.learn_requests = args.shift_requests = 0
    if args.quick:
        args.requests, args.seeds, args.tight = 200, min(args.seeds, 3), "0.7"
        args.learn_requests, args.shift_requests, args.shift_seeds = 600, 600, 1
        args.routing_requests = 150
    args.tight = [float(part) for part in args.tight.split(",") if part.strip()]
    if args.requests < 1 or not 0 <= args.seeds <= len(UNSEEN_SEEDS):
        parser.error(f"--requests must be >= 1 and --seeds in 0..{len(UNSEEN_SEEDS)}")
    if args.shift_requests and args.shift_requests < 2 * args.shift_width:
        parser.error("--shift-requests must be at least twice --shift-width")
    if not args.no_replay and not args.calls.is_file():
        parser.error(f"--calls {args.calls}: no such file (or --no-replay)")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    revision = commit()  # at the start: the code that runs, whatever is committed meanwhile
    examples: list[Workload] = []
    trees: list[Workload] = []  # trees and teams: docs/workload-trees.md
    if not args.no_examples:
        for path in sorted((ROOT / "examples" / "workloads").glob("*.yaml")):
            workload = load_workload(path)
            if args.only and workload.name not in args.only:
                continue
            (trees if workload.dynamic else examples).append(workload)
    unseen: list[Generated] = [generate_workload(seed) for seed in UNSEEN_SEEDS[: args.seeds]]
    shift_seeds = SHIFT_SEEDS[: args.shift_seeds] if args.shift_requests else ()

    def per_bench(workload: Workload) -> int:
        return int(args.requests) * (len(policies_for(workload)) + 1)

    total = sum(per_bench(w) for w in [*examples, *trees])
    if not args.routing_only:
        total += sum(per_bench(g.workload) * (1 + len(args.tight)) for g in unseen)
    total += args.learn_requests * 2 * len(unseen) * (1 + len(args.tight))
    total += args.shift_requests * (len(SHIFT_POLICIES) + 1) * len(shift_seeds)
    per_routing = len(rule_policies()) + len(NON_ROUTING) + len(policies_of("routing"))
    total += args.routing_requests * (per_routing * len(unseen) + 3)
    context: Any = nullcontext(None)
    if not args.no_progress:
        from apportion.cli.console import progress

        context = progress()
    with context as bar:
        task = bar.add_task("allocation", total=total) if bar is not None else None

        def step(done: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, advance=done)

        def label(text: str) -> None:
            if bar is not None and task is not None:
                bar.update(task, description=text)

        workloads, tree_workloads = {}, {}
        for workload in [*examples, *trees]:
            label(workload.name)
            found = tree_workloads if workload.dynamic else workloads
            found[workload.name] = measure(workload, args.requests, step)
        default: dict[str, Any] = {}
        tight: dict[str, dict[str, Any]] = {str(r): {} for r in args.tight}
        curves: dict[str, Any] = {}
        for generated in [] if args.routing_only else unseen:
            name = generated.workload.name
            label(name)
            default[name] = measure(generated.workload, args.requests, step)
            default[name]["median_need"] = generated.median_need
            default[name]["ceiling_ratio"] = generated.default_ratio
            default[name]["agents"] = [
                f"{a.name}:{role}:{a.priority}:{a.output_kind}"
                for a, role in zip(generated.workload.agents, generated.roles, strict=True)
            ]
            variants = {"default": generated.workload}
            for share in args.tight:
                variant = generated.at_ratio(share)
                variants[str(share)] = variant
                tight[str(share)][name] = measure(variant, args.requests, step)
            if args.learn_requests:
                curves[name] = {
                    key: learned_curve(variant, args.learn_requests, step)
                    for key, variant in variants.items()
                }
        shifts = {}
        for seed in shift_seeds:
            label(f"shift {seed}")
            shifts[str(seed)] = shift_test(
                seed, args.shift_requests, args.shift_width, args.shift_tolerance, step
            )
        routing: dict[str, Any] = {}
        if args.routing_requests:
            label("routing")
            routing["unseen"] = {
                f"unseen-{g.seed}": routing_unseen(
                    generate_workload(g.seed, models=True), args.routing_requests, step
                )
                for g in unseen
            }
            width = min(50, args.routing_requests)
            routing["capability"] = capability_test(args.routing_requests, width, step)
    replay = None
    if not args.no_replay:
        from apportion.sim.replay import load_calls, run_replay
        from apportion.spec import Pipeline

        pipeline = Pipeline.from_yaml(ROOT / "examples" / "chatdev" / "pipeline.yaml")
        replay = run_replay(
            load_calls(args.calls, pipeline), pipeline, ceiling_ratio=0.8, split="test"
        )
    document = {
        "simulated_quality": True,
        "commit": revision,
        "options": {
            "requests": args.requests,
            "unseen_seeds": list(UNSEEN_SEEDS[: args.seeds]),
            "unseen_seeds_note": UNSEEN_NOTE,
            "tight_ratios": args.tight,
            "learn_requests": args.learn_requests,
            "shift_requests": args.shift_requests,
            "shift_seeds": list(shift_seeds),
            "routing_requests": args.routing_requests,
        },
        "workloads": workloads,
        "trees": tree_workloads,
        "unseen": {
            "default": default,
            "tight": tight,
            "summary": {
                "default": unseen_summary(default) if default else None,
                **{f"tight_{k}": unseen_summary(v) for k, v in tight.items() if v},
            },
        },
        "learned_curves": curves,
        "shift": shifts,
        "routing": routing,
        "chatdev_replay": replay,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
