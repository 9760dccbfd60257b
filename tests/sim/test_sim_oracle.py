"""The hindsight oracle: feasible, optimal against brute force, an upper bound, monotone."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.sim import (
    OUTPUT_KINDS,
    Oracle,
    OracleResult,
    RequestNeeds,
    Workload,
    agent_quality,
    default_step,
    draw_needs,
    load_workload,
    request_quality,
    solve_oracle,
)


def tiny_workload(agents: list[dict[str, Any]], **top: Any) -> Workload:
    """A workload without features whose agents take the given extra keys."""
    entries = []
    for index, extra in enumerate(agents):
        entry: dict[str, Any] = {
            "name": f"a{index}",
            "priority": "standard",
            "input": {"base": 10},
            "output": {"base": 10},
        }
        entry.update(extra)
        entries.append(entry)
    data: dict[str, Any] = {"name": "tiny", "ceiling": 100, "agents": entries}
    data.update(top)
    return Workload.from_dict(data)


def best_by_consumption(workload: Workload, needs: RequestNeeds, index: int) -> np.ndarray:
    """g[c]: the best agent quality using at most c tokens, by enumerating every split."""
    agent = workload.agents[index]
    n, m = needs.need_in[index], needs.need_out[index]
    g = np.zeros(n + m + 1)
    for ctx in range(n + 1):
        for out in range(m + 1):
            q = agent_quality(agent.output_kind, ctx, n, out, m, agent.input_sensitivity)
            g[ctx + out] = max(g[ctx + out], q)
    return np.maximum.accumulate(g)


def brute_force(workload: Workload, needs: RequestNeeds, ceiling: int) -> float:
    """The exact optimum of Q over integer allocations (coupling relaxed, no models)."""
    total = np.zeros(ceiling + 1)  # best log Q using at most c tokens, agents so far
    for index, agent in enumerate(workload.agents):
        g = best_by_consumption(workload, needs, index)
        g = np.concatenate((g, np.full(max(0, ceiling + 1 - len(g)), g[-1])))[: ceiling + 1]
        with np.errstate(divide="ignore"):
            value = agent.influence * np.log(g) if agent.influence > 0 else np.zeros_like(g)
        combined = np.full(ceiling + 1, -np.inf)
        for c in range(ceiling + 1):
            combined[c] = np.max(total[: c + 1][::-1] + value[: c + 1])
        total = combined
    return float(np.exp(total[ceiling]))


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workloads"


def recomputed(workload: Workload, needs: RequestNeeds, result: OracleResult) -> float:
    """Q of the oracle's allocation, from the public quality functions (coupling relaxed)."""
    qualities = [
        agent_quality(
            agent.output_kind,
            ctx,
            needs.need_in[i],
            min(cap, needs.need_out[i]),
            needs.need_out[i],
            agent.input_sensitivity,
        )
        for i, (agent, (ctx, cap)) in enumerate(
            zip(workload.agents, result.allocation, strict=True)
        )
    ]
    return request_quality(qualities, [agent.influence for agent in workload.agents])


agent_strategy = st.fixed_dictionaries(
    {
        "output_kind": st.sampled_from(OUTPUT_KINDS),
        "input_sensitivity": st.sampled_from([0.0, 0.3, 1.0, 2.0]),
        "influence": st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    }
)


@st.composite
def small_problems(draw: st.DrawFn) -> tuple[Workload, RequestNeeds, int]:
    agents = draw(st.lists(agent_strategy, min_size=1, max_size=3))
    count = len(agents)
    need_in = tuple(draw(st.integers(1, 14)) for _ in range(count))
    need_out = tuple(draw(st.integers(1, 14)) for _ in range(count))
    ceiling = draw(st.integers(1, 2 * (sum(need_in) + sum(need_out))))
    return tiny_workload(agents), RequestNeeds({}, need_in, need_out), ceiling


@settings(max_examples=60, deadline=None)
@given(problem=small_problems(), step=st.sampled_from([1, 4, 25]))
def test_oracle_against_brute_force(problem: tuple[Workload, RequestNeeds, int], step: int) -> None:
    workload, needs, ceiling = problem
    exact = brute_force(workload, needs, ceiling)
    result = solve_oracle(workload, needs, ceiling, step=step)
    assert result.step == step
    assert result.tokens <= ceiling
    assert result.tokens == sum(ctx + cap for ctx, cap in result.allocation)
    for (ctx, cap), n, m in zip(result.allocation, needs.need_in, needs.need_out, strict=True):
        assert 0 <= ctx <= n and 0 <= cap <= m
    assert result.quality == pytest.approx(recomputed(workload, needs, result), abs=1e-12)
    assert result.quality <= exact + 1e-9
    assert result.upper_bound >= exact - 1e-9
    if step == 1:
        assert result.quality == pytest.approx(exact, abs=1e-9)


def random_allocation(
    rng: random.Random, needs: RequestNeeds, ceiling: int
) -> list[tuple[int, int]]:
    """A random allocation within the ceiling (most of them spending it all)."""
    allocation = []
    left = ceiling
    for n, m in zip(needs.need_in, needs.need_out, strict=True):
        ctx = rng.randint(0, min(n, left))
        out = rng.randint(0, min(m, left - ctx))
        left -= ctx + out
        allocation.append((ctx, out))
    return allocation


def test_oracle_beats_random_allocations() -> None:
    rng = random.Random(5)
    workload = tiny_workload(
        [
            {"output_kind": "structured", "input_sensitivity": 0.3, "influence": 0.5},
            {"output_kind": "reasoning", "input_sensitivity": 1.0, "influence": 1.0},
            {"output_kind": "prose", "input_sensitivity": 0.5, "influence": 0.8},
        ]
    )
    oracle = Oracle(workload)
    for _ in range(30):
        needs = RequestNeeds(
            {},
            tuple(rng.randint(20, 400) for _ in range(3)),
            tuple(rng.randint(5, 200) for _ in range(3)),
        )
        ceiling = rng.randint(50, needs.total)
        result = oracle.solve(needs, ceiling)
        assert result.tokens <= ceiling
        for _ in range(200):
            allocation = random_allocation(rng, needs, ceiling)
            q = request_quality(
                [
                    agent_quality(
                        a.output_kind,
                        ctx,
                        needs.need_in[i],
                        out,
                        needs.need_out[i],
                        a.input_sensitivity,
                    )
                    for i, (a, (ctx, out)) in enumerate(
                        zip(workload.agents, allocation, strict=True)
                    )
                ],
                [a.influence for a in workload.agents],
            )
            assert q <= result.quality + 1e-12
            assert q <= result.upper_bound + 1e-12


def test_full_quality_when_the_ceiling_covers_every_need() -> None:
    workload = load_workload(EXAMPLES / "mispriority.yaml")
    oracle = Oracle(workload)
    for r in range(20):
        needs = draw_needs(workload, 1, r)
        result = oracle.solve(needs, needs.total)
        assert result.quality == 1.0 and result.upper_bound == 1.0
        assert result.allocation == tuple(zip(needs.need_in, needs.need_out, strict=True))
        assert result.tokens == needs.total
        assert not result.relaxed_coupling and result.coupled_quality == 1.0
        assert result.models == (None,) * 5 and result.cost == 0.0


def test_monotone_in_the_ceiling() -> None:
    workload = load_workload(EXAMPLES / "mispriority.yaml")
    oracle = Oracle(workload)
    for r in range(4):
        needs = draw_needs(workload, 11, r)
        ceilings = np.linspace(needs.total // 5, needs.total, 25).astype(int)
        for step in (25, None):
            results = [oracle.solve(needs, int(c), step=step) for c in ceilings]
            qualities = [x.quality for x in results]
            bounds = [x.upper_bound for x in results]
            assert all(b >= a for a, b in itertools.pairwise(qualities))
            if step is not None:
                assert all(b >= a for a, b in itertools.pairwise(bounds))
            assert all(x.tokens <= c for x, c in zip(results, ceilings, strict=True))
            assert all(x.quality <= x.upper_bound for x in results)


def test_example_requests_are_feasible_and_bounded() -> None:
    workload = load_workload(EXAMPLES / "support-triage.yaml")
    oracle = Oracle(workload)
    for r in range(150):
        needs = draw_needs(workload, 7, r)
        result = oracle.solve(needs)  # the workload's ceiling
        assert result.tokens <= 20000 and result.step == default_step(20000) == 200
        assert 0 <= result.coupled_quality <= result.quality <= result.upper_bound <= 1
        assert result.quality == pytest.approx(recomputed(workload, needs, result), abs=1e-12)
        if needs.total <= 20000:
            assert result.quality == 1.0


def coupled(upstream_influence: float) -> Workload:
    return tiny_workload(
        [
            {
                "name": "writer",
                "output_kind": "prose",
                "input_sensitivity": 0.2,
                "influence": upstream_influence,
                "input": {"base": 10},
                "output": {"base": 1000},
            },
            {
                "name": "reader",
                "after": ["writer"],
                "output_kind": "prose",
                "input_sensitivity": 1.0,
                "influence": 1.0,
                "input": {"base": 10, "upstream": True},
                "output": {"base": 100},
            },
        ]
    )


def test_relaxed_coupling_is_reported() -> None:
    workload = coupled(0.1)
    needs = RequestNeeds({}, (10, 1010), (1000, 100))
    result = solve_oracle(workload, needs, 1200, step=25)
    ctx_reader = result.allocation[1][0]
    cut = needs.need_out[0] - result.allocation[0][1]
    assert cut > 0  # the writer's long output is cut...
    assert ctx_reader > needs.need_in[1] - cut  # ...and the reader reads what it lost
    assert result.relaxed_coupling
    assert result.coupled_quality < result.quality

    no_coupling = tiny_workload(
        [
            {
                "output_kind": "prose",
                "input_sensitivity": 0.2,
                "influence": 0.1,
                "input": {"base": 10},
                "output": {"base": 1000},
            },
            {
                "after": ["a0"],
                "output_kind": "prose",
                "input": {"base": 1010},
                "output": {"base": 100},
            },
        ]
    )
    result = solve_oracle(no_coupling, needs, 1200, step=25)
    assert not result.relaxed_coupling and result.coupled_quality == result.quality


def test_agents_without_influence_get_nothing() -> None:
    workload = tiny_workload([{"influence": 0.0}, {"influence": 1.0}])
    needs = RequestNeeds({}, (50, 50), (50, 50))
    result = solve_oracle(workload, needs, 120)
    assert result.allocation[0] == (0, 0)
    assert result.allocation[1] == (50, 50)
    assert result.quality == 1.0


def test_zero_quality_when_nothing_positive_fits() -> None:
    workload = tiny_workload([{"output_kind": "structured"}])
    needs = RequestNeeds({}, (10,), (30,))
    result = solve_oracle(workload, needs, 30)  # the JSON fits but no context is left
    assert result.quality == 0.0 and result.tokens == 0
    assert result.allocation == ((0, 0),)
    result = solve_oracle(workload, needs, 31)
    assert result.allocation == ((1, 30),) and result.quality == pytest.approx(0.1)


def test_arguments_are_checked() -> None:
    workload = tiny_workload([{}])
    needs = RequestNeeds({}, (10,), (10,))
    with pytest.raises(ValueError, match="step"):
        solve_oracle(workload, needs, 1000, step=26)
    with pytest.raises(ValueError, match="step"):
        solve_oracle(workload, needs, 1000, step=0)
    with pytest.raises(ValueError, match="ceiling"):
        solve_oracle(workload, needs, 0)
    with pytest.raises(ValueError, match="agents"):
        solve_oracle(workload, RequestNeeds({}, (1, 1), (1, 1)), 100)
    no_ceiling = Workload.from_dict(
        {
            "name": "x",
            "agents": [
                {"name": "a", "priority": "critical", "input": {"base": 1}, "output": {"base": 1}}
            ],
        }
    )
    with pytest.raises(ValueError, match="no ceiling"):
        solve_oracle(no_ceiling, needs)
    assert solve_oracle(workload, needs).step == 25  # the workload's ceiling, 100


MODELS: list[dict[str, Any]] = [
    {
        "name": "large",
        "input_price": 3.0,
        "output_price": 15.0,
        "context_window": 200000,
        "max_output": 64,
        "capability": {"structured": 1.0, "prose": 1.0, "reasoning": 1.0},
    },
    {
        "name": "small",
        "input_price": 0.15,
        "output_price": 0.6,
        "context_window": 128000,
        "max_output": 4096,
        "capability": {"structured": 0.97, "prose": 0.85, "reasoning": 0.5},
    },
]


def test_model_choice() -> None:
    workload = tiny_workload(
        [
            {"output_kind": "reasoning"},
            {"output_kind": "structured"},
            {"output_kind": "prose", "influence": 0.0},
        ],
        models=MODELS,
    )
    needs = RequestNeeds({}, (100, 100, 100), (50, 100, 10))
    result = solve_oracle(workload, needs, 10_000)
    # The reasoner fits the large model's output limit; the formatter's JSON does not.
    assert result.models == ("large", "small", None)
    assert result.quality == pytest.approx(0.97)
    assert result.cost == pytest.approx((100 * 3.0 + 50 * 15.0 + 100 * 0.15 + 100 * 0.6) / 1e6)

    with_cost_ceiling = Workload.from_dict(
        {
            "name": "usd",
            "ceiling": 1000,
            "ceiling_usd": 0.01,
            "models": MODELS,
            "agents": [
                {"name": "a", "priority": "critical", "input": {"base": 1}, "output": {"base": 1}}
            ],
        }
    )
    relaxed = solve_oracle(with_cost_ceiling, RequestNeeds({}, (1,), (1,)))
    assert not relaxed.relaxed_cost  # its plan fits the cost ceiling: exact
    tight = Oracle(with_cost_ceiling).solve(RequestNeeds({}, (1,), (1,)), ceiling_usd=1e-9)
    assert tight.relaxed_cost and tight.quality >= relaxed.quality - 1e-12  # an upper bound
    result = Oracle(with_cost_ceiling).solve(RequestNeeds({}, (1,), (1,)), ceiling_usd=math.inf)
    assert result.models == ("large",)
