"""Overhead of one request lifecycle on the memory store, against hand-written floors.

One lifecycle: open, one begin/finish pair per agent (the five-agent pipeline below, or a
generated one with ``--agents N``), close with a score. Two floors run in the same
process: a plain-dict ``baseline`` (no validation, no policy, no events, no lock) and a
hand-written locked ledger (``floor``: one ``threading.Lock``, the ceiling checked, each
token count validated, a grant refused beyond what is free, settled once, released or
closed), doing what the ledger, store and controller do with ``uniform``'s equal split.
Each is timed lifecycle by lifecycle, in blocks of ``--block`` consecutive lifecycles (as
a process serving one pipeline runs them), the blocks of the floors and of every policy
taking turns so that machine noise hits all of them alike. Prints JSON: medians in
microseconds per lifecycle and per call (``per_call_us_median``: a lifecycle's median over
its agents), their ratios to the baseline and to the floor, per policy, the same in
process CPU time (``per_call_cpu_us_median``, ``cpu_ratio_to_floor``: on a loaded machine
a long lifecycle's wall clock counts the time other processes held the core), headline
figures for the first policy named (``uniform`` by default: the controller's own
overhead, with the simplest policy).

    python benchmarks/overhead.py [--agents N] [--rounds N] [--block N] [--policy NAME]...
        [--ceiling-share S]

``--ceiling-share``: the ceiling as a share of the tokens the pipeline's calls use (by
default about 2.5: every call gets what it asks); under 1, calls are cut and policies
weigh the agents after each call against it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

from apportion import Agent, Budget, BudgetExceeded, Controller, Pipeline, StaticPolicy

AGENTS = [
    Agent("intake", priority="peripheral", output_kind="structured"),
    Agent("retriever", priority="standard", after=["intake"]),
    Agent("reasoner", priority="critical", after=["retriever"], output_kind="reasoning"),
    Agent("critic", priority="standard", after=["reasoner"]),
    Agent("formatter", priority="peripheral", after=["critic"], output_kind="structured"),
]
USAGE = [(300, 40), (1200, 300), (2500, 900), (1500, 200), (900, 150)]
CEILING = 20_000
POLICIES = ["uniform", "elastic", "estimate", "iterative", "static", "learned"]


def pipeline_of(n: int) -> tuple[list[Agent], list[tuple[int, int]], int]:
    """The agents, their usage and the ceiling of an ``n``-agent pipeline.

    Five agents: the pipeline above. Otherwise a generated chain in which every third agent
    also reads the one two steps back, with the five agents' priorities, output kinds and
    usage in turn, and a ceiling growing with the agents (the five-agent one per five).
    """
    if n == len(AGENTS):
        return AGENTS, USAGE, CEILING
    agents = []
    for i in range(n):
        model = AGENTS[i % len(AGENTS)]
        after = [f"a{i - 1:03d}"] if i else []
        if i >= 2 and i % 3 == 0:
            after.append(f"a{i - 2:03d}")
        agents.append(
            Agent(f"a{i:03d}", priority=model.priority, after=after, output_kind=model.output_kind)
        )
    usage = [USAGE[i % len(USAGE)] for i in range(n)]
    return agents, usage, CEILING * n // len(AGENTS)


class FloorLedger:
    """A hand-written locked ledger: the least a thread-safe budget with the same checks does.

    Checks: a positive integer ceiling; token counts are non-negative ints; an agent is one
    of the pipeline's; a grant beyond what is free is refused; a grant is settled once
    (finish or release); nothing after close. Conservation: free + reserved + consumed ==
    ceiling.
    """

    def __init__(self, agents: frozenset[str], ceiling: int) -> None:
        if type(ceiling) is not int or ceiling <= 0:
            raise ValueError("ceiling")
        self.agents = agents
        self.ceiling = ceiling
        self.lock = threading.Lock()
        self.reserved = 0
        self.consumed = 0
        self.used_by: dict[str, int] = dict.fromkeys(agents, 0)
        self.grants: dict[int, tuple[str, int, int]] = {}
        self.next_id = 1
        self.closed = False

    @staticmethod
    def _tokens(value: object) -> int:
        if type(value) is not int or value < 0:
            raise ValueError("tokens")
        return value

    def begin(self, agent: str, context: int, output: int) -> int:
        if agent not in self.agents:
            raise KeyError(agent)
        context, output = self._tokens(context), self._tokens(output)
        with self.lock:
            if self.closed:
                raise RuntimeError("closed")
            if context + output > self.ceiling - self.reserved - self.consumed:
                raise RuntimeError("over budget")
            grant_id = self.next_id
            self.next_id += 1
            self.grants[grant_id] = (agent, context, output)
            self.reserved += context + output
            return grant_id

    def finish(self, grant_id: int, used_input: int, used_output: int) -> None:
        used_input, used_output = self._tokens(used_input), self._tokens(used_output)
        with self.lock:
            if self.closed:
                raise RuntimeError("closed")
            agent, context, output = self.grants.pop(grant_id)  # KeyError: settled already
            self.reserved -= context + output
            used = min(used_input + used_output, self.ceiling - self.reserved - self.consumed)
            self.consumed += used
            self.used_by[agent] += used

    def release(self, grant_id: int) -> None:
        with self.lock:
            if self.closed:
                raise RuntimeError("closed")
            _, context, output = self.grants.pop(grant_id)
            self.reserved -= context + output

    def close(self) -> None:
        with self.lock:
            if self.closed:
                raise RuntimeError("closed")
            for grant_id in list(self.grants):
                self.release(grant_id)
            self.closed = True


def make_floor(
    agents: list[Agent], usage: list[tuple[int, int]], ceiling: int
) -> Callable[[], None]:
    """A lifecycle on :class:`FloorLedger` with ``uniform``'s equal split."""
    names = frozenset(a.name for a in agents)
    order = [a.name for a in agents]
    pairs = list(zip(order, usage, strict=True))

    def floor() -> None:
        ledger = FloorLedger(names, ceiling)
        share = ceiling // len(order)
        for name, (inp, out) in pairs:
            context = min(inp, share - share // 4)
            cap = share - context
            grant_id = ledger.begin(name, context, cap)
            ledger.finish(grant_id, context, min(out, cap))
        ledger.close()

    return floor


def make_baseline(
    agents: list[Agent], usage: list[tuple[int, int]], ceiling: int
) -> Callable[[], None]:
    """The same bookkeeping on a plain dict: no validation, no lock, no policy."""
    pairs = list(zip(agents, usage, strict=True))

    def baseline() -> None:
        ledger = {"ceiling": ceiling, "reserved": 0, "consumed": 0, "grants": {}}
        for i, (agent, (inp, out)) in enumerate(pairs):
            want = min(inp + out * 2, ledger["ceiling"] - ledger["reserved"] - ledger["consumed"])
            ledger["reserved"] += want
            ledger["grants"][i] = (agent.name, want)
            _, granted = ledger["grants"].pop(i)
            ledger["reserved"] -= granted
            ledger["consumed"] += min(inp + out, granted)
        ledger["closed"] = True

    return baseline


def make_lifecycle(
    controller: Controller, usage: list[tuple[int, int]], ceiling: int
) -> Callable[[], None]:
    """One request through ``controller``: a begin/finish per agent, a score, close."""
    pairs = list(zip(controller.pipeline.names, usage, strict=True))

    def lifecycle() -> None:
        with controller.request(ceiling=ceiling, features={"messages": 12}) as req:
            cut = 0
            for name, (inp, out) in pairs:
                try:
                    grant = req.begin(name, input_tokens=inp)
                except BudgetExceeded:  # under a tight ceiling: nothing left for it
                    cut += 1
                    continue
                cut += out > grant.output_tokens
                req.finish(
                    grant,
                    input_tokens=grant.context_tokens,
                    output_tokens=min(out, grant.output_tokens),
                    truncated=out > grant.output_tokens,
                )
            req.score(1.0 - cut / len(pairs))

    return lifecycle


CPU: dict[Callable[[], None], list[float]] = {}
"""Per lifecycle function, the process CPU time of each timed run (µs)."""


def timed(fn: Callable[[], None]) -> float:
    """Wall-clock µs of one run of ``fn`` (its CPU µs go to :data:`CPU`)."""
    cpu = time.process_time_ns()
    start = time.perf_counter_ns()
    fn()
    end = time.perf_counter_ns()
    CPU.setdefault(fn, []).append((time.process_time_ns() - cpu) / 1000)
    return (end - start) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=len(AGENTS))
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--policy", action="append", default=None)
    parser.add_argument(
        "--ceiling-share",
        type=float,
        default=None,
        help="the ceiling as a share of what the pipeline uses (default: about 2.5)",
    )
    args = parser.parse_args()
    if args.agents < 1:
        parser.error("--agents is at least 1")
    if args.ceiling_share is not None and not 0.1 <= args.ceiling_share <= 100:
        parser.error("--ceiling-share is between 0.1 and 100")
    policies = args.policy or POLICIES
    agents, usage, ceiling = pipeline_of(args.agents)
    if args.ceiling_share is not None:
        ceiling = round(args.ceiling_share * sum(i + o for i, o in usage))
    pipeline = Pipeline(agents)
    static = StaticPolicy(
        {a.name: Budget(i, o * 2) for a, (i, o) in zip(agents, usage, strict=True)}
    )
    runs = {
        p: make_lifecycle(
            Controller(pipeline, policy=static if p == "static" else p), usage, ceiling
        )
        for p in policies
    }
    for run in runs.values():  # warm up (and let predicting policies learn)
        for _ in range(args.warmup):
            run()
    base_run = make_baseline(agents, usage, ceiling)
    floor_run = make_floor(agents, usage, ceiling)
    samples: dict[str, list[float]] = {p: [] for p in policies}
    base: list[float] = []
    floor: list[float] = []
    gc.disable()
    for _ in range(max(1, args.rounds // args.block)):
        base.extend(timed(base_run) for _ in range(args.block))
        floor.extend(timed(floor_run) for _ in range(args.block))
        for policy, run in runs.items():
            samples[policy].extend(timed(run) for _ in range(args.block))
        gc.collect()
    gc.enable()
    base_median = statistics.median(base)
    floor_median = statistics.median(floor)
    n = len(agents)
    per_policy = {}
    floor_cpu = statistics.median(CPU[floor_run])
    for p, s in samples.items():
        median = statistics.median(s)
        cpu = statistics.median(CPU[runs[p]])
        per_policy[p] = {
            "lifecycle_us_median": round(median, 2),
            "per_call_us_median": round(median / n, 2),
            "per_call_cpu_us_median": round(cpu / n, 2),
            "cpu_ratio_to_floor": round(cpu / floor_cpu, 2),
            "ratio_to_baseline": round(median / base_median, 1),
            "ratio_to_floor": round(median / floor_median, 2),
        }
    head = policies[0]
    print(
        json.dumps(
            {
                "pipeline_agents": n,
                "ceiling": ceiling,
                "ceiling_share": round(ceiling / sum(i + o for i, o in usage), 3),
                "store": "memory://",
                "policy": head,
                "rounds": args.rounds,
                "block": args.block,
                "lifecycle_us_median": per_policy[head]["lifecycle_us_median"],
                "per_call_us_median": per_policy[head]["per_call_us_median"],
                "baseline_us_median": round(base_median, 2),
                "ratio": per_policy[head]["ratio_to_baseline"],
                "floor_us_median": round(floor_median, 2),
                "floor_per_call_us_median": round(floor_median / n, 2),
                "floor_cpu_us_median": round(floor_cpu, 2),
                "ratio_to_floor": per_policy[head]["ratio_to_floor"],
                "policies": per_policy,
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
