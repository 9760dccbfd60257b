"""The losses block: where a policy's gap to the oracle comes from, and that it adds up."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from apportion.sim.bench import AgentTrace, run_bench
from apportion.sim.losses import COMPONENTS, Played, diagnose, play, solve
from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.oracle import OracleResult
from apportion.sim.quality import agent_quality, request_quality
from apportion.sim.runner import RequestOutcome
from apportion.sim.workload import Workload, load_workload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workloads"
NEEDS = RequestNeeds(features={}, need_in=(100, 200, 50), need_out=(100, 100, 20))
SENSITIVITY = 0.5


def workload(influence: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Workload:
    agent = {"input": {"base": 10}, "output": {"base": 10}, "input_sensitivity": SENSITIVITY}
    return Workload.from_dict(
        {
            "name": "three",
            "agents": [
                {**agent, "name": "a", "priority": "standard", "influence": influence[0]},
                {
                    **agent,
                    "name": "b",
                    "priority": "critical",
                    "after": ["a"],
                    "input": {"base": 10, "upstream": True},
                    "influence": influence[1],
                },
                {
                    **agent,
                    "name": "c",
                    "priority": "peripheral",
                    "output_kind": "structured",
                    "influence": influence[2],
                },
            ],
        }
    )


def quality(w: Workload, got: list[tuple[int, int]]) -> float:
    qualities = [
        agent_quality(a.output_kind, ctx, NEEDS.need_in[i], out, NEEDS.need_out[i], SENSITIVITY)
        for i, (a, (ctx, out)) in enumerate(zip(w.agents, got, strict=True))
    ]
    return request_quality(qualities, [a.influence for a in w.agents])


def played(w: Workload, got: list[tuple[int, int]]) -> Played:
    traces = [
        AgentTrace(
            a.name, a.priority, NEEDS.need_in[i], NEEDS.need_out[i], ctx, out, ctx, out, ctx, True
        )
        for i, (a, (ctx, out)) in enumerate(zip(w.agents, got, strict=True))
    ]
    outcome = RequestOutcome(quality(w, got), sum(c + o for c, o in got), 3, 0, 1, 0, 0, 0)
    return Played(outcome, traces)


def oracle(w: Workload, allocation: list[tuple[int, int]]) -> OracleResult:
    q = quality(w, allocation)
    tokens = sum(c + o for c, o in allocation)
    return OracleResult(q, tokens, tuple(allocation), 25, False, q, q, (None,) * 3, 0.0)


FULL = [(100, 100), (200, 100), (50, 20)]


def losses(w: Workload, got: list[tuple[int, int]], best: list[tuple[int, int]] = FULL) -> dict:
    return diagnose(w, [played(w, got)], [oracle(w, best)], [NEEDS], 1000)


def test_a_cut_prose_output_is_charged_to_its_agent() -> None:
    w = workload()
    block = losses(w, [(100, 100), (200, 50), (50, 20)])
    assert block["gap"] == pytest.approx(0.5, abs=1e-5)
    assert block["agents"]["b"]["by_cut"] == {"output_prose": pytest.approx(0.5, abs=1e-5)}
    assert block["agents"]["a"]["loss"] == block["agents"]["c"]["loss"] == 0
    assert block["top"] == [{"agent": "b", "cut": "output_prose", "loss": 0.5}]


def test_an_upstream_cut_is_charged_to_the_downstream_input() -> None:
    w = workload()
    # a writes 60 of 100: b has 160 of its 200 input tokens, and reads them all
    block = losses(w, [(100, 60), (160, 100), (50, 20)])
    gap = 1 - 0.6 * 0.8**SENSITIVITY
    a_term, b_term = math.log(1 / 0.6), SENSITIVITY * math.log(200 / 160)
    assert block["gap"] == pytest.approx(gap, abs=1e-5)
    assert block["agents"]["a"]["by_cut"]["output_prose"] == pytest.approx(
        gap * a_term / (a_term + b_term), abs=1e-5
    )
    assert block["agents"]["b"]["by_cut"] == {
        "input_upstream": pytest.approx(gap * b_term / (a_term + b_term), abs=1e-5)
    }


def test_a_cut_structured_output_takes_the_whole_gap() -> None:
    w = workload()
    block = losses(w, [(100, 100), (200, 100), (50, 19)])
    assert block["gap"] == pytest.approx(1.0)
    assert block["by_cut"]["output_structured"] == pytest.approx(1.0, abs=1e-5)
    assert block["unattributed"] == 0


def test_an_agent_served_better_than_by_the_oracle_is_a_negative_loss() -> None:
    w = workload()
    # the oracle halves a's output; the policy serves a fully but quarters b's output
    block = losses(w, [(100, 100), (200, 25), (50, 20)], best=[(100, 50), (200, 100), (50, 20)])
    assert block["gap"] == pytest.approx(0.25, abs=1e-5)
    assert block["agents"]["a"]["loss"] == pytest.approx(-0.25, abs=1e-5)
    assert block["agents"]["b"]["loss"] == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "policy", "ceiling"),
    [
        ("seed-scenario", "uniform", 12_000),
        ("seed-scenario", "elastic", 12_000),
        ("optional-agents", "elastic", 4_500),  # agents that run in some requests only
        ("expert-team", "estimate", 11_000),  # a team drawn per request, each member often
    ],
)
def test_losses_add_up_to_the_bench_gap(name: str, policy: str, ceiling: int) -> None:
    w = load_workload(EXAMPLES / f"{name}.yaml")
    count = 12
    needs = [draw_needs(w, 7, r) for r in range(count)]
    block = diagnose(
        w, play(w, policy, needs, ceiling, seed=7), solve(w, needs, ceiling), needs, ceiling
    )
    bench = run_bench(w, policies=[policy], ceiling=ceiling, requests=count, seed=7)
    gap = bench["oracle"]["quality_mean"] - bench["policies"][policy]["quality_mean"]
    assert block["gap"] == pytest.approx(gap, abs=2e-4)
    agents = sum(row["loss"] for row in block["agents"].values())
    assert agents + block["unattributed"] == pytest.approx(block["gap"], abs=1e-4)
    assert sum(block["by_cut"].values()) + block["unattributed"] == pytest.approx(
        block["gap"], abs=1e-4
    )
    assert set(block["by_cut"]) == set(COMPONENTS)
    for row in block["agents"].values():
        assert sum(row["by_cut"].values()) == pytest.approx(row["loss"], abs=1e-4)
    assert block["unspent"]["unspent_mean"] == pytest.approx(
        bench["policies"][policy]["unspent_mean"], abs=0.1
    )
    calls = {agent: row["calls_per_request"] for agent, row in block["agents"].items()}
    assert set(calls) == set(w.agent_names)  # a tree's calls are charged to their lines
    if name == "seed-scenario":
        assert set(calls.values()) == {1.0}
    else:
        assert min(calls.values()) < 1.0 or max(calls.values()) > 1.0


def test_diagnose_refuses_mismatched_lengths() -> None:
    w = workload()
    with pytest.raises(ValueError, match="as many"):
        diagnose(w, [played(w, FULL)], [], [NEEDS], 1000)
