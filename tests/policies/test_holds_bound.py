"""``holds_at_most``: a bound on what a call holds back for, so a covered call skips the rest."""

from __future__ import annotations

import math
from typing import Any

import pytest

from apportion.policies import resolve_policy
from apportion.policies.base import Observation
from apportion.policies.elastic import ElasticPolicy
from apportion.policies.predicting import PredictingPolicy
from apportion.sim.generate import generate_workload
from apportion.sim.needs import draw_needs
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import Workload
from apportion.spec import Agent


@pytest.mark.parametrize("name", ["elastic", "estimate", "iterative"])
@pytest.mark.parametrize("seed", [1, 4, 38])
@pytest.mark.parametrize("ratio", [0.7, 1.5])
def test_no_call_holds_back_for_more_than_the_bound(name: str, seed: int, ratio: float) -> None:
    workload = generate_workload(seed).at_ratio(ratio)
    policy = resolve_policy(name)
    assert isinstance(policy, PredictingPolicy)
    checked = {"finite": 0}
    grant = policy.grant

    def checking(obs: Observation, agent: Agent, *args: Any) -> tuple[int, int]:
        bound = policy.holds_at_most(obs, agent)
        if math.isfinite(bound):
            checked["finite"] += 1
            assert policy.held_back(obs, agent)[0] <= bound
        return grant(obs, agent, *args)

    policy.grant = checking  # type: ignore[method-assign]
    controller = controller_for(workload, policy)
    for r in range(40):
        run_request(controller, workload, draw_needs(workload, seed, r), workload.ceiling or 0)
    assert checked["finite"] > 40  # a fixed pipeline: the bound is known after the first


@pytest.mark.parametrize("method", ["holds", "held_back", "calls_ahead", "needs_now"])
def test_rules_of_its_own_have_no_bound(method: str) -> None:
    base = getattr(ElasticPolicy, method)
    mine = type("Mine", (ElasticPolicy,), {method: lambda self, *a, **k: base(self, *a, **k)})
    workload = generate_workload(1).workload
    policy = mine()
    bounds: list[float] = []
    elastics: list[float] = []  # what elastic's own rules would be bounded by
    grant = policy.grant

    def recording(obs: Observation, agent: Agent, *args: Any) -> tuple[int, int]:
        bounds.append(policy.holds_at_most(obs, agent))
        elastics.append(ElasticPolicy.holds_at_most(policy, obs, agent))
        return grant(obs, agent, *args)

    policy.grant = recording
    controller = controller_for(workload, policy)
    for r in range(5):
        run_request(controller, workload, draw_needs(workload, 1, r), workload.ceiling or 0)
    assert bounds and all(b == math.inf for b in bounds)
    assert any(math.isfinite(b) for b in elastics)


def test_the_bound_counts_the_answers_with_their_margins() -> None:
    """A critical call holds back for the records after it with their margins: above needs."""
    records = [
        {
            "name": f"r{i}",
            "priority": "peripheral",
            "output_kind": "structured",
            "after": ["lead"],
            "input": {"base": 5},
            "output": {"base": 1000, "noise": 0.8},
        }
        for i in range(3)
    ]
    workload = Workload.from_dict(
        {
            "name": "records",
            "seed": 3,
            "ceiling": 30_000,
            "agents": [
                {
                    "name": "lead",
                    "priority": "critical",
                    "input": {"base": 10},
                    "output": {"base": 10},
                },
                *records,
            ],
        }
    )
    policy = ElasticPolicy()
    gaps: list[float] = []
    grant = policy.grant

    def checking(obs: Observation, agent: Agent, *args: Any) -> tuple[int, int]:
        bound = policy.holds_at_most(obs, agent)
        if agent.name == "lead" and math.isfinite(bound):
            held = policy.held_back(obs, agent)[0]
            needs = sum(policy.predicted_needs(obs)[f"r{i}"] for i in range(3))
            assert held <= bound
            gaps.append(held - needs)
        return grant(obs, agent, *args)

    policy.grant = checking  # type: ignore[method-assign]
    controller = controller_for(workload, policy)
    for r in range(30):
        run_request(controller, workload, draw_needs(workload, 3, r), workload.ceiling or 0)
    assert gaps and max(gaps) > 0  # the margins: more than the records' needs alone
