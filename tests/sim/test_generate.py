"""Unseen workloads: deterministic per seed, valid per the spec (YAML round trip), shifts."""

from __future__ import annotations

from pathlib import Path

import pytest

from apportion.sim.generate import (
    DEFAULT_RATIO,
    SHIFT_TOTAL,
    generate_shift,
    generate_workload,
    median_need,
    shifted_needs,
)
from apportion.sim.needs import draw_needs
from apportion.sim.workload import load_workload

SEEDS = (0, 1, 17, 9001, 9004)


@pytest.mark.parametrize("seed", SEEDS)
def test_same_seed_same_workload(seed: int) -> None:
    first, second = generate_workload(seed), generate_workload(seed)
    assert first.to_yaml() == second.to_yaml()
    assert first.workload == second.workload
    assert first.median_need == second.median_need


def test_different_seeds_differ() -> None:
    assert len({generate_workload(seed).to_yaml() for seed in SEEDS}) == len(SEEDS)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("models", [False, True])
def test_yaml_round_trip_through_the_loader(tmp_path: Path, seed: int, models: bool) -> None:
    generated = generate_workload(seed, models=models)
    path = tmp_path / "unseen.yaml"
    path.write_text(generated.to_yaml(), encoding="utf-8")
    loaded = load_workload(path)
    assert loaded == generated.workload
    for r in range(3):
        assert draw_needs(loaded, seed, r) == draw_needs(generated.workload, seed, r)


@pytest.mark.parametrize("seed", range(8))
def test_the_pipeline_is_plausible(seed: int) -> None:
    generated = generate_workload(seed)
    workload = generated.workload
    assert 3 <= len(workload.agents) <= 8
    assert any(agent.priority == "critical" for agent in workload.agents)
    seen: set[str] = set()
    for agent in workload.agents:
        assert set(agent.after) <= seen  # a DAG in run order
        assert not agent.input.upstream or agent.after
        assert 0 < agent.input_sensitivity <= 1 and 0 < agent.influence <= 1
        seen.add(agent.name)
    low, high = DEFAULT_RATIO
    assert low <= generated.default_ratio <= high
    assert workload.ceiling == round(generated.median_need * generated.default_ratio)
    assert generated.median_need == median_need(workload, seed)


def test_models_do_not_change_the_pipeline() -> None:
    plain, priced = generate_workload(9002), generate_workload(9002, models=True)
    assert [m.name for m in priced.workload.models] == ["large", "medium", "small"]
    assert priced.workload.ceiling == plain.workload.ceiling
    for a, b in zip(plain.workload.agents, priced.workload.agents, strict=True):
        assert (a.name, a.input, a.output, a.influence) == (b.name, b.input, b.output, b.influence)
        assert b.model == "large"


def test_at_ratio_and_agent_count() -> None:
    generated = generate_workload(5, agents=8)
    assert len(generated.workload.agents) == 8
    assert generated.at_ratio(0.7).ceiling == round(generated.median_need * 0.7)
    assert generated.at_ratio(0.7).agents == generated.workload.agents
    with pytest.raises(ValueError, match="ratio"):
        generated.at_ratio(0)
    with pytest.raises(ValueError, match="agents"):
        generate_workload(5, agents=9)
    with pytest.raises(ValueError, match="seed"):
        generate_workload(-1)


def test_a_shift_changes_needs_not_the_pipeline() -> None:
    shift = generate_shift(9101, 100)
    before, after = shift.before.workload, shift.after
    assert shift.at == 50 and after.ceiling == before.ceiling
    for a, b in zip(before.agents, after.agents, strict=True):
        assert (a.name, a.priority, a.after, a.output_kind) == (
            b.name,
            b.priority,
            b.after,
            b.output_kind,
        )
        assert (a.input_sensitivity, a.influence) == (b.input_sensitivity, b.influence)
    assert any(
        a.output.base != b.output.base for a, b in zip(before.agents, after.agents, strict=True)
    )
    share = median_need(after, 9101) / shift.before.median_need
    assert SHIFT_TOTAL[0] - 0.05 <= share <= SHIFT_TOTAL[1] + 0.05
    needs = shifted_needs(shift, 9101, 100)
    assert needs[49] == draw_needs(before, 9101, 49)
    assert needs[50] == draw_needs(after, 9101, 50)
    assert needs[50] != draw_needs(before, 9101, 50)
    assert generate_shift(9101, 100).after == after
