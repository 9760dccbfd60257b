"""A warm start: the prior of a fresh controller, and what predicting policies save and share.

Every request runs through the real :class:`~apportion.Controller` (memory store); the
simulated ones through :func:`~apportion.sim.runner.run_request`, so the policies see only
what a real system sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apportion import (
    Agent,
    Controller,
    ElasticPolicy,
    EstimatePolicy,
    IterativePolicy,
    Pipeline,
    PolicyStateError,
)
from apportion.policies import LearnedPolicy
from apportion.policies.predicting import PredictingPolicy
from apportion.sim.needs import draw_needs
from apportion.sim.runner import controller_for, pipeline_of, run_request
from apportion.sim.workload import Workload, load_workload
from apportion.stores.base import Store
from apportion.stores.memory import MemoryStore

WORKLOADS = Path(__file__).parent.parent / "examples" / "workloads"

QUICKSTART = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
    ]
)
QUICKSTART_CALLS = [("triage", 600, 60), ("reasoner", 7_900, 1_300), ("formatter", 1_400, 150)]


def play_quickstart(policy: Any) -> tuple[dict[str, tuple[int, int]], list[str], int]:
    """The README Quickstart's request: first grants, agents cut, tokens left unspent."""
    controller = Controller(QUICKSTART, policy=policy)
    grants: dict[str, tuple[int, int]] = {}
    cut: list[str] = []
    with controller.request(ceiling=12_000, features={"messages": 40}) as req:
        for agent, input_tokens, needed in QUICKSTART_CALLS:
            grant = req.begin(agent, input_tokens=input_tokens)
            grants[agent] = (grant.context_tokens, grant.output_tokens)
            written = min(needed, grant.output_tokens)
            if written < needed:
                grant = req.extend(grant, needed - written) or grant
                written = min(needed, grant.output_tokens)
            if grant.context_tokens < input_tokens or written < needed:
                cut.append(agent)
            req.finish(
                grant,
                input_tokens=grant.context_tokens,
                output_tokens=written,
                truncated=written < needed,
            )
    return grants, cut, 12_000 - req.summary().consumed


# ----------------------------------------------------------------------- the prior


def test_quickstart_elastic_grants_the_formatter_its_whole_input() -> None:
    grants, cut, unspent = play_quickstart("elastic")
    assert grants["formatter"][0] == 1_400  # was cut to 535 while 1,455 tokens went unspent
    assert cut == []
    assert unspent == 12_000 - (600 + 60 + 7_900 + 1_300 + 1_400 + 150)


@pytest.mark.parametrize("policy", ["estimate", "elastic", "iterative", "learned"])
def test_quickstart_cuts_nothing_while_the_pool_can_pay(policy: str) -> None:
    grants, cut, _ = play_quickstart(LearnedPolicy(seed=1) if policy == "learned" else policy)
    assert {agent: ctx for agent, (ctx, _) in grants.items()} == {
        "triage": 600,
        "reasoner": 7_900,  # estimate read 5,540 of it on a fresh controller
        "formatter": 1_400,
    }
    assert cut == []


def test_typical_sizes_are_the_prior_of_agents_still_to_run() -> None:
    pipeline = Pipeline(
        [
            Agent("a", output_kind="structured"),
            Agent("b", after=["a"], typical_input=3_000, typical_output=700),
        ]
    )
    controller = Controller(pipeline, policy="estimate")
    with controller.request(ceiling=20_000) as req:
        needs = controller.policy.predicted_needs(req._steps.obs)  # type: ignore[attr-defined]
        assert needs["b"] == 3_000 + 700
        # a: no typical sizes: shares of ceiling / agents, by kind (input 35%, structured 15%)
        assert needs["a"] == round(10_000 * 0.35 + 10_000 * 0.15)


def test_the_history_takes_over_from_the_typical_size() -> None:
    pipeline = Pipeline([Agent("a", typical_input=4_000), Agent("b", after=["a"])])
    controller = Controller(pipeline, policy="estimate")
    seen = []
    for _ in range(60):
        with controller.request(ceiling=20_000) as req:
            needs = controller.policy.predicted_needs(req._steps.obs)  # type: ignore[attr-defined]
            seen.append(
                needs["a"]
                - controller.policy.predicted_output(  # type: ignore[attr-defined]
                    req._steps.obs, pipeline["a"], 4_000
                )
            )
            grant = req.begin("a", input_tokens=1_000)
            req.finish(grant, input_tokens=1_000, output_tokens=100)
    assert abs(seen[0] - 4_000) < 1  # the prior alone
    assert seen == sorted(seen, reverse=True)  # pulled towards what is seen, step by step
    assert 1_000 < seen[10] < 2_500 and seen[-1] < 1_300  # a prior, not a switch


def test_a_cold_agent_reads_its_input_before_its_margin() -> None:
    # the budget pays for the input in hand and the expected output, not for the margin
    pipeline = Pipeline([Agent("only", output_kind="reasoning", typical_output=1_000)])
    controller = Controller(pipeline, policy="estimate")
    with controller.request(ceiling=6_000) as req:
        grant = req.begin("only", input_tokens=4_500)
        assert grant.context_tokens == 4_500
        assert grant.output_tokens == 1_500  # the rest: its expected 1,000 and then some


# ----------------------------------------------------------------------- saved state


def workload() -> Workload:
    return load_workload(WORKLOADS / "support-triage.yaml")


def train(policy: PredictingPolicy, requests: int, store: Store | None = None) -> Controller:
    work = workload()
    controller = controller_for(work, policy)
    for r in range(requests):
        run_request(controller, work, draw_needs(work, work.seed, r), work.ceiling)
    return controller


def decisions(controller: Controller, r: int) -> list[tuple[str, str, int, int]]:
    """The grants and extensions of request ``r`` of the workload."""
    work = workload()
    outcome = run_request(controller, work, draw_needs(work, work.seed, r), work.ceiling)
    return [
        (e.kind, str(e.agent), e.context_tokens, e.output_tokens)
        for e in controller.store.events(outcome.request_id)
        if e.kind in ("begin", "extend")
    ]


POLICIES = [
    (EstimatePolicy, {}),
    (ElasticPolicy, {}),
    (IterativePolicy, {}),
    (LearnedPolicy, {"seed": 3, "explore": 0.0}),
]


@pytest.mark.parametrize(("cls", "options"), POLICIES)
def test_a_saved_policy_decides_as_the_trained_one(
    cls: type[PredictingPolicy], options: dict[str, Any], tmp_path: Path
) -> None:
    trained = train(cls(**options), 37)
    path = tmp_path / "policy.json"
    trained.policy.save(path)  # type: ignore[attr-defined]
    if isinstance(trained.policy, LearnedPolicy):
        # its posterior is a cache refreshed every 16 scores; a loaded policy computes it
        # from the statistics, so compare with the trained one's posterior refreshed too
        trained.policy.outcome_model(trained.pipeline)._posterior = None
    loaded = cls.load(path, **options)
    assert type(loaded) is cls
    fresh = controller_for(workload(), loaded)
    cold = controller_for(workload(), cls(**options))
    assert decisions(fresh, 37) == decisions(trained, 37)
    assert decisions(cold, 37) != decisions(fresh, 37)  # the state made the difference


def test_load_builds_the_policy_the_file_names(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    train(IterativePolicy(), 5).policy.save(path)  # type: ignore[attr-defined]
    assert type(PredictingPolicy.load(path)) is IterativePolicy
    with pytest.raises(PolicyStateError) as info:
        ElasticPolicy.load(path)
    assert "'iterative', not 'elastic'" in str(info.value) and info.value.path == str(path)


def test_load_finds_every_predicting_policy_by_its_name(tmp_path: Path) -> None:
    """Without the registry (which imports the policies): by class name, breadth first."""
    from apportion.policies import EstimatePolicy, IterativePolicy, RoutedPolicy

    class Shadow(ElasticPolicy):  # keeps the name "elastic": the shipped one still wins
        pass

    path = tmp_path / "policy.json"
    shipped = (EstimatePolicy, ElasticPolicy, IterativePolicy, LearnedPolicy, RoutedPolicy)
    for factory in shipped:
        factory().save(path)
        assert type(PredictingPolicy.load(path)) is factory
    document = json.loads(path.read_text())
    for name in ("static", "uniform", "nonesuch"):
        path.write_text(json.dumps({**document, "policy": name}))
        with pytest.raises(PolicyStateError, match="no predicting policy"):
            PredictingPolicy.load(path)
    assert Shadow.name == "elastic"


def saved(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "policy.json"
    train(EstimatePolicy(), 12).policy.save(path)  # type: ignore[attr-defined]
    return path, json.loads(path.read_text())


def rewrite(path: Path, change: Any) -> Path:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.update(version=7), "version 7; this apportion reads version 1"),
        (lambda d: d.update(format="something"), "format 'something'"),
        (lambda d: d.pop("needs"), "needs: expected a mapping"),
        (
            lambda d: d["needs"]["support-triage"]["output"]["reasoner"].update(xtx=[[1, 2]]),
            "needs.support-triage.output.reasoner.xtx: expected numbers of shape (4, 4)",
        ),
        (
            lambda d: d["needs"]["support-triage"]["input"]["triage"].update(count=-1),
            "needs.support-triage.input.triage.count: expected a whole number >= 0",
        ),
        (
            lambda d: d["needs"]["support-triage"]["output"]["formatter"].update(spread="wide"),
            "needs.support-triage.output.formatter.spread: expected a finite number",
        ),
        (
            lambda d: d["needs"]["support-triage"]["output"].pop("triage"),
            "needs.support-triage.output: expected one entry per agent",
        ),
    ],
)
def test_a_bad_file_names_itself_and_the_problem(change: Any, problem: str, tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    rewrite(path, change)
    with pytest.raises(PolicyStateError) as info:
        EstimatePolicy.load(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in info.value.problem


def test_a_wrong_version_carries_the_versions(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    rewrite(path, lambda d: d.update(version=2))
    with pytest.raises(PolicyStateError) as info:
        EstimatePolicy.load(path)
    assert (info.value.version, info.value.expected) == (2, 1)


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_a_file_that_is_no_state_is_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(content)
    with pytest.raises(PolicyStateError, match="not a policy state file"):
        ElasticPolicy.load(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyStateError, match="cannot read") as info:
        ElasticPolicy.load(tmp_path / "absent.json")
    assert info.value.path == str(tmp_path / "absent.json")


def test_a_state_of_other_agents_is_refused_when_the_pipeline_is_seen(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    renamed = Pipeline(list(pipeline_of(workload()).agents)[:2], name="support-triage")
    controller = Controller(renamed, policy=EstimatePolicy.load(path))
    with pytest.raises(PolicyStateError, match="learned for agents"):  # noqa: SIM117
        with controller.request(ceiling=20_000):
            pass


def test_a_learned_file_with_bad_statistics_loads_nothing(tmp_path: Path) -> None:
    path = tmp_path / "learned.json"
    train(LearnedPolicy(seed=1), 5).policy.save(path)  # type: ignore[attr-defined]
    rewrite(path, lambda d: d["learned"].update(version=1))
    with pytest.raises(PolicyStateError, match=r"learned: .*version 1") as info:
        LearnedPolicy.load(path)
    assert info.value.version == 1


def test_save_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    policy = train(EstimatePolicy(), 3).policy
    policy.save(path)  # type: ignore[attr-defined]
    first = path.read_bytes()
    policy.save(path)  # type: ignore[attr-defined]
    assert path.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]  # no temporary left
    with pytest.raises(PolicyStateError, match="cannot write"):
        policy.save(tmp_path / "absent" / "policy.json")  # type: ignore[attr-defined]


# ----------------------------------------------------------------------- shared state


def test_workers_share_the_need_model_through_the_store() -> None:
    store = MemoryStore()
    one = ElasticPolicy(store=store, sync_every=1)
    two = ElasticPolicy(store=store, sync_every=1)
    work = workload()
    first = controller_for(work, one)
    second = controller_for(work, two)
    for r in range(10):
        run_request(first if r % 2 else second, work, draw_needs(work, work.seed, r), 20_000)
    one.sync_needs()
    got = store.get_state("elastic.needs")
    assert got is not None
    shared = json.loads(got[1])["pipelines"]["support-triage"]
    assert shared["output"]["reasoner"]["count"] == 10  # both workers' calls, added
    # a third worker starts from the store's model, not from the prior
    third = ElasticPolicy(store=store)
    assert third.needs(pipeline_of(work)).seen(pipeline_of(work)["reasoner"]) == 10


def test_a_restart_through_the_store_decides_as_before() -> None:
    store = MemoryStore()
    trained = train(EstimatePolicy(store=store, sync_every=1), 29)
    restarted = controller_for(workload(), EstimatePolicy(store=store))
    assert decisions(restarted, 29) == decisions(trained, 29)


class ContendedStore(MemoryStore):
    """A memory store where another writer gets in first, ``times`` times."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def put_state(self, key: str, data: bytes, expected_version: int) -> int | None:
        if self.times > 0:
            self.times -= 1
            other = json.loads(data)
            other["pipelines"] = {}
            super().put_state(key, json.dumps(other).encode(), expected_version)
            return None
        return super().put_state(key, data, expected_version)


def test_a_lost_race_reads_again_and_merges() -> None:
    store = ContendedStore(times=2)
    policy = EstimatePolicy(store=store)
    train(policy, 4)
    policy.sync_needs()
    got = store.get_state("estimate.needs")
    assert got is not None and got[0] == 3  # two writes by the other writer, then ours
    assert json.loads(got[1])["pipelines"]["support-triage"]["output"]["triage"]["count"] == 4


def test_a_store_state_of_another_version_is_refused() -> None:
    store = MemoryStore()
    store.put_state(
        "estimate.needs", json.dumps({"format": "apportion.needs", "version": 9}).encode(), 0
    )
    controller = controller_for(workload(), EstimatePolicy(store=store))
    with pytest.raises(PolicyStateError, match="version 9") as info:  # noqa: SIM117
        with controller.request(ceiling=20_000):
            pass
    assert info.value.path == "store:estimate.needs"
