"""The diagnostics told what no system knows (``apportion.sim.informed``)."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest

from apportion.sim.generate import generate_workload
from apportion.sim.informed import KNOWS, ToldNeeds, informed
from apportion.sim.losses import solve
from apportion.sim.needs import draw_needs
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import load_workload

EXAMPLES = Path(__file__).parents[2] / "examples" / "workloads"


def _share(knows: str, seed: int, ratio: float, requests: int) -> float:
    workload = generate_workload(seed).at_ratio(ratio)
    policy = informed("learned", knows, workload, seed=seed)
    controller = controller_for(workload, policy)
    needs = [draw_needs(workload, seed, r) for r in range(requests)]
    got = []
    for item in needs:
        policy.tell(item)  # type: ignore[attr-defined]
        got.append(run_request(controller, workload, item, workload.ceiling or 0).quality)
    best = [b.quality for b in solve(workload, needs, workload.ceiling or 0)]
    return statistics.fmean(got) / statistics.fmean(best)


def test_told_every_need_learned_comes_near_the_oracle() -> None:
    # a tight ceiling, where the noise the others cannot know costs them most
    clairvoyant = _share("clairvoyant", 4, 0.7, 60)
    before_noise = _share("needs-before-noise", 4, 0.7, 60)
    assert clairvoyant >= 0.97
    assert clairvoyant > before_noise + 0.02


def test_needs_before_noise_are_the_needs_where_there_is_no_noise() -> None:
    generated = generate_workload(7)
    quiet = [
        dataclasses.replace(
            a,
            input=dataclasses.replace(a.input, noise=0.0),
            output=dataclasses.replace(a.output, noise=0.0),
        )
        for a in generated.workload.agents
    ]
    workload = dataclasses.replace(generated.workload, agents=tuple(quiet))
    told = ToldNeeds(workload, exact=False)
    for r in range(5):
        needs = draw_needs(workload, 7, r)
        told.tell(needs)
        for i, agent in enumerate(workload.agents):
            need_in, need_out = told.told(agent.name)
            assert need_out == pytest.approx(needs.need_out[i], abs=0.5)
            assert need_in == pytest.approx(needs.need_in[i], abs=0.5 * (1 + len(agent.after)))
            assert told.errors(agent).tolist() == [1.0] * 64  # no noise: no spread


def test_what_cannot_be_told_is_refused() -> None:
    workload = generate_workload(7).workload
    with pytest.raises(ValueError, match="no diagnostic"):
        informed("learned", "everything", workload)
    with pytest.raises(ValueError, match="cannot be told"):
        informed("elastic", "hidden-weights", workload)  # the rules weigh by priority
    with pytest.raises(ValueError, match="cannot be told"):
        informed("uniform", "clairvoyant", workload)
    trees = load_workload(EXAMPLES / "expert-team.yaml")
    for knows in KNOWS:
        with pytest.raises(ValueError, match="dynamic teams"):
            informed("learned", knows, trees)


def test_the_needs_told_before_noise_are_expected_needs() -> None:
    """Told the median, a rule would hold back too little: the noise's mean is above 1."""
    workload = generate_workload(7).workload
    told = ToldNeeds(workload, exact=False)
    drawn_out: list[list[int]] = [[] for _ in workload.agents]
    told_out: list[list[float]] = [[] for _ in workload.agents]
    for r in range(3000):
        needs = draw_needs(workload, 7, r)
        told.tell(needs)
        for i, agent in enumerate(workload.agents):
            drawn_out[i].append(needs.need_out[i])
            told_out[i].append(told.told(agent.name)[1])
    for i, agent in enumerate(workload.agents):
        ratio = statistics.fmean(drawn_out[i]) / statistics.fmean(told_out[i])
        assert ratio == pytest.approx(1.0, abs=0.03), agent.name
        assert float(told.errors(agent).mean()) == pytest.approx(1.0, abs=0.02)
