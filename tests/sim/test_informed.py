"""The diagnostics told what no system knows (``apportion.sim.informed``)."""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from apportion.sim.generate import generate_workload
from apportion.sim.informed import ToldNeeds, informed
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
    with pytest.raises(ValueError, match="no trees or dynamic teams"):
        informed("learned", "calls", workload)  # every agent calls once: nothing to tell


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


def test_told_calls_answer_the_request_s_calls_and_still_learn() -> None:
    workload = load_workload(EXAMPLES / "research-fanout.yaml")
    policy: Any = informed("elastic", "calls", workload)
    controller = controller_for(workload, policy)
    pipeline = controller.pipeline
    seen = set()
    for r in range(12):
        needs = draw_needs(workload, 0, r)
        assert needs.realized is not None
        policy.tell(needs)
        counts = policy.call_counts(pipeline)
        told = Counter(pipeline.resolve(name).name for name in needs.realized.names)
        seen.add((told["researcher"], told["fact-checker"]))
        for line in counts.lines:
            assert counts.remaining(line, 0) == told[line]
            assert counts.remaining(line, 1) == max(0, told[line] - 1)
            assert counts.own_remaining(line, 1) == max(0, told[line] - 1)
            assert counts.remaining_after(line, "planner") == told[line]
            assert counts.chance(line) == (1.0 if told[line] else 0.0)
        assert counts.remaining_after_all(None).tolist() == [told[x] for x in counts.lines]
        run_request(controller, workload, needs, workload.ceiling or 0)
    assert len(seen) > 2  # the requests differ: what is told follows them
    assert counts.requests == 12  # and the counts learn from every request served
    assert counts.once("planner") and not counts.once("researcher")


def test_a_listed_team_is_told_its_calls_in_all() -> None:
    workload = load_workload(EXAMPLES / "expert-team-listed.yaml")
    policy: Any = informed("learned", "calls", workload)
    needs = draw_needs(workload, 0, 1)
    assert needs.realized is not None
    policy.tell(needs)
    experts = [n for n in needs.realized.names if n.startswith("expert:")]
    assert len(experts) > 1
    assert policy.told_teams == {"expert:000": len(experts)}
    assert sum(policy.told_calls.values()) == len(needs.realized.names)


def test_on_trees_the_needs_before_noise_follow_the_calls_told() -> None:
    """Without noise, a line called once is told its need; a reader, its upstream calls'."""
    trees = load_workload(EXAMPLES / "research-fanout.yaml")
    quiet = [
        dataclasses.replace(
            a,
            input=dataclasses.replace(a.input, noise=0.0),
            output=dataclasses.replace(a.output, noise=0.0),
        )
        for a in trees.agents
    ]
    workload = dataclasses.replace(trees, agents=tuple(quiet))
    told = ToldNeeds(workload, exact=False)
    exact = ToldNeeds(workload, exact=True)
    for r in range(6):
        needs = draw_needs(workload, 2, r)
        assert needs.realized is not None
        told.tell(needs)
        exact.tell(needs)
        for k, line in enumerate(needs.realized.lines):
            need = (needs.need_in[k], needs.need_out[k])
            assert told.told(line) == pytest.approx(need, abs=0.5 * (1 + len(needs.realized.names)))
            assert exact.told(line) == pytest.approx(need)  # no noise: every call alike


def test_told_where_agents_run_learned_comes_near_the_oracle() -> None:
    workload = load_workload(EXAMPLES / "optional-agents.yaml")
    needs = [draw_needs(workload, 0, r) for r in range(45)]
    best = statistics.fmean(b.quality for b in solve(workload, needs, workload.ceiling or 0))
    shares = {}
    for knows in ("calls", "clairvoyant"):
        policy: Any = informed("learned", knows, workload)
        controller = controller_for(workload, policy)
        got = []
        for item in needs:
            policy.tell(item)
            got.append(run_request(controller, workload, item, workload.ceiling or 0).quality)
        shares[knows] = statistics.fmean(got) / best
    assert shares["clairvoyant"] >= 0.97
    assert shares["clairvoyant"] > shares["calls"] + 0.03
