"""Workload trees and dynamic teams (docs/workload-trees.md): format, requests, oracle, bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apportion.errors import SpecError
from apportion.policies.registry import bench_policies
from apportion.sim.bench import make_policy, run_bench
from apportion.sim.needs import draw_needs
from apportion.sim.oracle import Oracle
from apportion.sim.runner import controller_for, pipeline_of, run_request
from apportion.sim.workload import Workload, load_workload

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "workloads"
BEFORE = Path(__file__).parent / "data" / "bench_before_trees.json"
POLICY_FIGURES = Path(__file__).parent / "data" / "bench_policy_figures.json"


def _workload(agents: list[dict[str, Any]], **top: Any) -> Workload:
    return Workload.from_dict(
        {
            "name": "t",
            "seed": 1,
            "ceiling": 10_000,
            "features": {"f": {"median": 10, "p90": 20}},
            "agents": agents,
            **top,
        }
    )


def _agent(name: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "priority": "standard",
        "input": {"base": 100},
        "output": {"base": 50},
        **more,
    }


def _predicts(name: str) -> bool:
    """Whether the bench's policy ``name`` predicts needs (its figures follow its rules).

    All but ``static`` (fixed budgets profiled on requests after the measured ones) and
    ``uniform`` (an even split): their figures depend on the requests drawn alone.
    """
    return name not in {"static", "uniform"}


def _shipped_bench(name: str) -> dict[str, Any]:
    workload = load_workload(EXAMPLES / name)
    assert not workload.dynamic
    policies = bench_policies(priced=bool(workload.models))
    got = run_bench(workload, requests=30, policies=policies)
    return dict(json.loads(json.dumps(got, sort_keys=True)))


def test_shipped_workloads_keep_their_bench_figures() -> None:
    """Files of the normative format mean what they meant: the same requests are drawn.

    The oracle's figures (which see every request's needs) and those of the policies
    that do not predict needs (static, profiled on the same draws, and uniform) are those
    of before the tree extension, to the last digit, but for one change of the controller
    (issue 21): a grant's output cap is lowered to what the cost ceiling leaves instead of
    the grant being refused, so on ``routing`` uniform went 0.0 -> 0.7458 (its formatter
    was refused in every request) and static 0.8404 -> 0.8887. The predicting policies' figures
    follow their rules, which change: they are held in a separate record
    (:data:`POLICY_FIGURES`, :func:`test_shipped_workloads_policy_figures`).
    """
    before = json.loads(BEFORE.read_text())
    assert len(before) == 7
    for name, expected in before.items():
        got = _shipped_bench(name)
        for document in (got, expected):
            document["policies"] = {
                p: figures for p, figures in document["policies"].items() if not _predicts(p)
            }
        assert set(got["policies"]) >= {"static", "uniform"}
        assert got == expected, name


def test_shipped_workloads_policy_figures() -> None:
    """The predicting policies' figures on the shipped workloads (30 requests each).

    Updated with each change of their rules; the note says what moved. Last: issue 21,
    "rule policies worth their name", a cap that reaches the room the others leave (up to
    twice its own; before, only the last call's): 8 of 23 cells moved, mispriority
    estimate 0.7551 -> 0.8170, elastic 0.7005 -> 0.7616, support-triage elastic 0.9473 ->
    0.9676, estimate 0.9232 -> 0.9423, document-review and fanout-research elastic up
    0.003 and 0.006, fanout-research estimate down 0.9348 -> 0.9028 on these 30 requests
    (0.944 -> 0.946 at 300); then a fitted prediction kept at a quarter of the mean
    observed or more: document-review estimate 0.9083 -> 0.9084. Before that: issue 21,
    "routing that learns what each model can do": ``routed`` takes ``elastic``'s budgets
    on the models it chose, prices cost when there is no cost ceiling, and learns
    capability from the scores (routing: routed 0.9171 -> 0.9261 at 0.0355 USD instead
    of 0.0376; formatter-models, no cost ceiling: routed 1.0 -> 0.97 at 0.0017 USD
    instead of 0.0401, the small model writing the record almost as well at 4% of the
    price); ``learned-routed`` (``learned``'s budgets on the models the knapsack
    chose) joins them: routing 0.9106 at 0.0368 USD, formatter-models as ``routed``.
    Before that: issue 21, "rule policies worth their name": the cost-ceiling
    fix of the controller (routing:
    estimate and elastic 0.8667 -> 0.9333, iterative 0.8152 -> 0.9307), a squeezed last
    call trading its margin for input, a predicted output kept within 0.75-2x of the
    request's when the input is unusual, elastic reserving a critical answer's margin and
    a standard agent leaving room for lower-priority records: 14 of 23 cells moved, up
    to +0.026 elsewhere (seed-scenario elastic 0.9559 -> 0.9817, fanout-research elastic
    0.9076 -> 0.9283), down on mispriority (estimate 0.7675 -> 0.7551, elastic 0.7393 ->
    0.7005, on these 30 requests; at 200 requests estimate 0.834 -> 0.840 of the oracle)
    and by under 0.001 on support-triage. Before that: issue 17, "0.9
    of the oracle on dynamic teams", second pass: a squeezed call never eats into the
    structured or reasoning answers held back for, and ``estimate`` and ``elastic`` share a
    shortfall among the inputs to come (water-filled to one level, weighted by priority for
    ``elastic`` and by the calls a line makes per request, and never past the call's share
    of the pool) instead of the call in hand bearing it. On these 30 requests, 9 of the 23
    cells changed: fanout-research estimate 0.8724 -> 0.9229, elastic 0.8865 -> 0.9076,
    mispriority estimate 0.7456 -> 0.7675, document-review estimate 0.8939 -> 0.9070; down
    at most 0.0014 (support-triage estimate 0.9253 -> 0.9239, mispriority elastic 0.7402 ->
    0.7393). At 300 requests every policy of the shipped workloads stays within 0.002 of
    before or gains (docs/workload-trees.md, "Figures"). The previous pass (an agent not
    begun held back for what it did after the agent now running, a reader for the answers
    its team wrote, a squeezed feeder keeping 3/4 of its budget for its answer, elastic's
    critical agents leaving a structured answer its margin, the calls left following the
    features after the first) moved 10 cells by at most 0.004 down and 0.010 up. The figures
    before both are those of
    ``bench_before_trees.json``.
    """
    record = json.loads(POLICY_FIGURES.read_text())
    assert set(record) == set(json.loads(BEFORE.read_text()))
    for name, expected in record.items():
        got = _shipped_bench(name)
        figures = {p: f for p, f in got["policies"].items() if _predicts(p)}
        assert figures == expected, name


def test_a_plain_workload_is_not_realized() -> None:
    workload = load_workload(EXAMPLES / "support-triage.yaml")
    needs = draw_needs(workload, 7, 3)
    assert needs.realized is None
    assert needs.workload_of(workload) is workload
    assert needs.names_of(workload) == workload.agent_names


def test_fixed_calls_fan_out_and_probability() -> None:
    workload = _workload(
        [
            _agent("planner"),
            _agent("child", after=["planner"], fan_out=3, output={"base": 40}),
            _agent("never", probability=0.0),
            _agent(
                "merge",
                after=["child"],
                calls=2,
                influence=0.5,
                input={"base": 10, "upstream": True},
            ),
        ]
    )
    assert workload.dynamic
    needs = draw_needs(workload, 1, 0)
    assert needs.realized is not None
    flat = needs.realized.workload
    assert needs.realized.names == ("planner", "child:1", "child:2", "child:3", "merge", "merge")
    assert [a.name for a in flat.agents] == [
        "planner",
        "child:1",
        "child:2",
        "child:3",
        "merge#1",
        "merge#2",
    ]
    assert needs.realized.lines == ("planner", "child", "child", "child", "merge", "merge")
    assert [a.influence for a in flat.agents] == [1.0, 1 / 3, 1 / 3, 1 / 3, 0.25, 0.25]
    assert flat.agents[4].after == ("child:1", "child:2", "child:3")
    assert needs.need_out[1:4] == (40, 40, 40)
    assert needs.need_in[4:] == (130, 130)  # its base plus what the three children wrote
    assert draw_needs(workload, 1, 0) == needs  # common random numbers


def test_pool_draws_distinct_names_and_probability_thins_them() -> None:
    workload = _workload(
        [
            _agent(
                "expert",
                pool={"size": 150, "draw": {"median": 6, "p90": 12}},
                probability=0.5,
                calls={"median": 2, "p90": 5},
            )
        ]
    )
    names: set[str] = set()
    ran: list[int] = []
    for r in range(200):
        realized = draw_needs(workload, 1, r).realized
        assert realized is not None
        distinct = list(dict.fromkeys(realized.names))
        assert all(n.startswith("expert:") and len(n) == len("expert:000") for n in distinct)
        names.update(distinct)
        ran.append(len(distinct))
    assert len(names) > 100  # drawn from the whole pool
    assert 0 in ran  # sometimes nobody runs
    assert 2 <= sum(ran) / len(ran) <= 4.5  # about half of ~6 drawn


def test_an_empty_request_plays_and_scores_one() -> None:
    workload = _workload([_agent("maybe", probability=0.0)])
    needs = draw_needs(workload, 1, 0)
    assert needs.need_in == ()
    result = Oracle(workload).solve(needs)
    assert result.quality == 1.0
    controller = controller_for(workload, make_policy("elastic", workload, 1, 1))
    assert run_request(controller, workload, needs, 10_000).quality == 1.0


def test_pipeline_of_declares_a_kind_or_lists_the_pool() -> None:
    team = load_workload(EXAMPLES / "expert-team.yaml")
    pipeline = pipeline_of(team)
    assert [k.name for k in pipeline.kinds] == ["expert"]
    assert pipeline.resolve("expert:042").name == "expert"
    assert pipeline["summarizer"].after == ("expert",)
    listed = pipeline_of(load_workload(EXAMPLES / "expert-team-listed.yaml"))
    assert not listed.kinds
    assert len(listed) == 122
    assert len(listed["summarizer"].after) == 120


@pytest.mark.parametrize(
    ("agent", "key", "fragment"),
    [
        (_agent("a", probability=1.5), "agents[0].probability", "at most 1"),
        (_agent("a", calls={"median": 3, "p90": 2}), "agents[0].calls.p90", "at least"),
        (_agent("a", calls=0), "agents[0].calls", "at least 1"),
        (_agent("a", fan_out={"median": 2, "p90": 3, "per": 1}), "agents[0].fan_out.per", ""),
        (
            _agent("a", fan_out=2, pool={"size": 3, "draw": 1}),
            "agents[0].pool",
            "not both",
        ),
        (_agent("a", pool={"size": 3}), "agents[0].pool", "draw"),
        (_agent("a", pool={"size": 3, "draw": 1, "listed": "no"}), "agents[0].pool.listed", ""),
        (
            _agent("a", calls={"median": 3, "p90": 4, "per_feature": {"g": 1}}),
            "agents[0].calls.per_feature.g",
            "unknown feature",
        ),
    ],
)
def test_bad_tree_keys_are_located(agent: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        _workload([agent])
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_counts_follow_features() -> None:
    workload = _workload(
        [_agent("c", fan_out={"median": 1, "p90": 1, "per_feature": {"f": 0.5}})],
        features={"f": {"median": 10, "p90": 40}},
    )
    for r in range(30):
        needs = draw_needs(workload, 1, r)
        assert needs.realized is not None
        assert len(needs.realized.names) == max(1, round(1 + 0.5 * needs.features["f"]))


@pytest.mark.parametrize("name", ["expert-team.yaml", "review-loop.yaml", "research-fanout.yaml"])
def test_the_oracle_bounds_every_policy_on_trees(name: str) -> None:
    workload = load_workload(EXAMPLES / name)
    assert workload.dynamic
    oracle = Oracle(workload)
    ceiling = workload.ceiling
    assert ceiling is not None
    for policy in ("static", "elastic", "learned"):
        controller = controller_for(workload, make_policy(policy, workload, 5, 30))
        for r in range(30):
            needs = draw_needs(workload, 5, r)
            quality = run_request(controller, workload, needs, ceiling).quality
            assert quality <= oracle.solve(needs, ceiling).upper_bound + 1e-9


# Shares of the oracle reached on the first 150 requests (docs/workload-trees.md), less a
# margin of about 0.03: expert-team 0.78 / 0.74 / 0.82; listed, each above static.
_TEAM_SHARES = {"elastic": 0.75, "estimate": 0.71, "learned": 0.78}


def test_dynamic_team_relation() -> None:
    """On a team drawn per request from a pool of 120 names, each expert running with
    probability 0.7, the policies that learn how often each agent runs beat fixed budgets
    and reach most of the oracle."""
    workload = load_workload(EXAMPLES / "expert-team.yaml")
    result = run_bench(
        workload, requests=150, policies=["static", "elastic", "estimate", "learned"]
    )
    figures = result["policies"]
    static = figures["static"]["quality_mean"]
    for name, share in _TEAM_SHARES.items():
        assert figures[name]["quality_mean"] >= static + 0.08, name
        assert figures[name]["quality_vs_oracle"] >= share, name


def test_listed_team_relation() -> None:
    """The same team with its 120 experts listed as agents: the experts are one team of
    alike agents (their calls, needs and weights learned together), so no policy falls
    below fixed budgets (before: learned 0.46 of the oracle, static 0.63)."""
    workload = load_workload(EXAMPLES / "expert-team-listed.yaml")
    result = run_bench(
        workload, requests=150, policies=["static", "elastic", "estimate", "learned"]
    )
    figures = result["policies"]
    static = figures["static"]["quality_mean"]
    for name in ("elastic", "estimate", "learned"):
        assert figures[name]["quality_mean"] >= static + 0.02, name


def test_optional_agents_relation() -> None:
    """A pipeline whose agents run in some requests only (a translator in 20%, an
    escalation in a third, a lookup in 60%), each listed once: once an agent began
    without them, they are no longer held back for, so every predicting policy beats
    fixed budgets (before: estimate 0.431 against static's 0.473, learned 0.81 of the
    oracle)."""
    workload = load_workload(EXAMPLES / "optional-agents.yaml")
    result = run_bench(
        workload, requests=300, policies=["static", "elastic", "estimate", "learned"]
    )
    figures = result["policies"]
    static = figures["static"]["quality_mean"]
    for name in ("elastic", "estimate", "learned"):
        assert figures[name]["quality_mean"] >= static + 0.02, name
    assert figures["learned"]["quality_vs_oracle"] >= 0.85
