"""Overhead of one request lifecycle on the memory store, against a plain-dict baseline.

One lifecycle: open, five begin/finish pairs (a five-agent pipeline), close. The baseline
does the same bookkeeping on a plain dict (no validation, no policy, no events) in the same
run. Each is timed lifecycle by lifecycle, in blocks of ``--block`` consecutive lifecycles
(as a process serving one pipeline runs them), the blocks of the baseline and of every
policy taking turns so that machine noise hits all of them alike. Prints JSON: medians in
microseconds and their ratio to the baseline, per policy, and headline figures for the
first policy named (``uniform`` by default: the controller's own overhead, with the
simplest policy).

    python benchmarks/overhead.py [--rounds N] [--block N] [--policy NAME]...
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time

from apportion import Agent, Budget, Controller, Pipeline, StaticPolicy

AGENTS = [
    Agent("intake", priority="peripheral", output_kind="structured"),
    Agent("retriever", priority="standard", after=["intake"]),
    Agent("reasoner", priority="critical", after=["retriever"], output_kind="reasoning"),
    Agent("critic", priority="standard", after=["reasoner"]),
    Agent("formatter", priority="peripheral", after=["critic"], output_kind="structured"),
]
USAGE = [(300, 40), (1200, 300), (2500, 900), (1500, 200), (900, 150)]
CEILING = 20_000


def lifecycle(controller: Controller) -> None:
    with controller.request(ceiling=CEILING, features={"messages": 12}) as req:
        for agent, (inp, out) in zip(AGENTS, USAGE, strict=True):
            grant = req.begin(agent.name, input_tokens=inp)
            req.finish(
                grant,
                input_tokens=grant.context_tokens,
                output_tokens=min(out, grant.output_tokens),
            )


def baseline() -> None:
    ledger = {"ceiling": CEILING, "reserved": 0, "consumed": 0, "grants": {}}
    for i, (agent, (inp, out)) in enumerate(zip(AGENTS, USAGE, strict=True)):
        want = inp + out * 2
        if ledger["ceiling"] - ledger["reserved"] - ledger["consumed"] < want:
            raise RuntimeError("over budget")
        ledger["reserved"] += want
        ledger["grants"][i] = (agent.name, want)
        _, granted = ledger["grants"].pop(i)
        ledger["reserved"] -= granted
        ledger["consumed"] += inp + out
    ledger["closed"] = True


def timed(fn, *args) -> float:
    start = time.perf_counter_ns()
    fn(*args)
    return (time.perf_counter_ns() - start) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--policy", action="append", default=None)
    args = parser.parse_args()
    policies = args.policy or ["uniform", "elastic", "estimate", "iterative", "static"]
    pipeline = Pipeline(AGENTS)
    static = StaticPolicy(
        {a.name: Budget(i, o * 2) for a, (i, o) in zip(AGENTS, USAGE, strict=True)}
    )
    controllers = {p: Controller(pipeline, policy=static if p == "static" else p) for p in policies}
    for controller in controllers.values():  # warm up (and let predicting policies learn)
        for _ in range(500):
            lifecycle(controller)
    samples: dict[str, list[float]] = {p: [] for p in policies}
    base: list[float] = []
    gc.disable()
    for _ in range(max(1, args.rounds // args.block)):
        base.extend(timed(baseline) for _ in range(args.block))
        for policy, controller in controllers.items():
            samples[policy].extend(timed(lifecycle, controller) for _ in range(args.block))
        gc.collect()
    gc.enable()
    base_median = statistics.median(base)
    per_policy = {
        p: {
            "lifecycle_us_median": round(statistics.median(s), 2),
            "ratio_to_baseline": round(statistics.median(s) / base_median, 1),
        }
        for p, s in samples.items()
    }
    head = policies[0]
    print(
        json.dumps(
            {
                "pipeline_agents": len(AGENTS),
                "store": "memory://",
                "policy": head,
                "rounds": args.rounds,
                "block": args.block,
                "lifecycle_us_median": per_policy[head]["lifecycle_us_median"],
                "baseline_us_median": round(base_median, 2),
                "ratio": per_policy[head]["ratio_to_baseline"],
                "policies": per_policy,
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
