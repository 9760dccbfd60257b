"""``routed`` learns each model's capability from outcome scores (simulated quality).

The simulated world follows the workload's capability tables; the policy is told other
tables (``catalog_of(workload, declared=...)``) and must find out from the scores.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from apportion.catalog import Catalog, ModelInfo
from apportion.errors import PolicyConfigError, PolicyStateError
from apportion.policies.capability import (
    PRIOR_SD,
    CapabilityModel,
    clean_calls,
)
from apportion.policies.routed import LearnedRoutedPolicy, RoutedPolicy
from apportion.sim.bench import make_policy
from apportion.sim.generate import generate_workload
from apportion.sim.runner import catalog_of, controller_for, run_requests
from apportion.sim.workload import Workload, load_workload
from apportion.stores.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
ROUTING = ROOT / "examples" / "workloads" / "routing.yaml"
WRONG = {  # the truth: small writes reasoning at 0.55 and prose at 0.88
    "small": {"structured": 0.97, "prose": 1.0, "reasoning": 0.95},
}


def _play(
    workload: Workload, policy: RoutedPolicy, requests: int, catalog: Catalog | None = None
) -> list[float]:
    return [o.quality for o in run_requests(workload, policy, requests, catalog=catalog)]


def test_routed_corrects_a_wrong_capability_table_from_the_scores() -> None:
    workload = load_workload(ROUTING)
    wrong = catalog_of(workload, declared=WRONG)
    told = _play(workload, RoutedPolicy(learn_capability=False), 200, wrong)
    truth = _play(workload, RoutedPolicy(learn_capability=False), 200)
    learner = RoutedPolicy()
    learning = _play(workload, learner, 200, wrong)
    late = slice(100, None)
    told_q, truth_q, learned_q = (statistics.fmean(q[late]) for q in (told, truth, learning))
    # the wrong table sends the critical reasoner to the small model: a real loss to win back
    assert truth_q - told_q > 0.2
    # learning wins back at least 80% of it over the last 100 requests
    assert learned_q >= told_q + 0.8 * (truth_q - told_q), (told_q, truth_q, learned_q)
    capability = learner.capabilities(wrong.routable())
    assert capability["small", "reasoning"] < 0.75  # told 0.95, the world's 0.55
    assert capability["large", "reasoning"] > 0.95  # told and true 1.0
    assert learner.capability.observed > 100


def test_what_routed_learned_survives_a_restart(tmp_path: Path) -> None:
    workload = load_workload(ROUTING)
    wrong = catalog_of(workload, declared=WRONG)
    learner = RoutedPolicy()
    _play(workload, learner, 60, wrong)
    path = tmp_path / "routed.json"
    learner.save(path)
    restored = RoutedPolicy.load(path)
    assert restored.capability.observed == learner.capability.observed > 0
    assert restored.capabilities(wrong.routable()) == learner.capabilities(wrong.routable())
    document = json.loads(path.read_text())
    assert document["capability"]["requests"] == learner.capability.observed
    # a restarted policy goes on from there: it does not send the reasoner back to small
    assert statistics.fmean(_play(workload, restored, 20, wrong)) > 0.8


@pytest.mark.parametrize(
    ("part", "problem"),
    [
        ([], "expected a mapping"),
        ({"keys": [["a"]], "xtx": [], "xty": [], "requests": 1}, "keys"),
        ({"keys": [["a", "prose"]], "xtx": [[1.0]], "xty": [1.0], "requests": -1}, "requests"),
        ({"keys": [["a", "prose"]], "xtx": [[1.0, 2.0]], "xty": [1.0], "requests": 1}, "xtx"),
        ({"keys": [["a", "prose"]], "xtx": [[None]], "xty": [1.0], "requests": 1}, "finite"),
        (
            {"keys": [["a", "prose"], ["a", "prose"]], "xtx": [], "xty": [], "requests": 1},
            "repeated",
        ),
    ],
)
def test_a_malformed_capability_state_is_refused_and_nothing_is_loaded(
    tmp_path: Path, part: Any, problem: str
) -> None:
    workload = load_workload(ROUTING)
    learner = RoutedPolicy()
    _play(workload, learner, 10)
    path = tmp_path / "routed.json"
    learner.save(path)
    document = json.loads(path.read_text())
    document["capability"] = part
    path.write_text(json.dumps(document))
    with pytest.raises(PolicyStateError, match=problem) as caught:
        RoutedPolicy.load(path)
    assert caught.value.path == str(path)


def test_a_model_without_a_table_is_routed_from_a_neutral_prior_and_learned() -> None:
    workload = load_workload(ROUTING)
    undeclared = catalog_of(workload, declared={"small": None})
    assert [m.name for m in undeclared.routable()] == ["large"]
    assert [m.name for m in undeclared.routable(undeclared=True)] == ["large", "small"]
    learner = RoutedPolicy()
    quality = _play(workload, learner, 200, undeclared)
    capability = learner.capabilities(undeclared.routable(undeclared=True))
    assert capability["small", "reasoning"] < 0.75  # the world's 0.55 (prior: 0.85)
    truth = _play(workload, RoutedPolicy(learn_capability=False), 200)
    assert statistics.fmean(quality[100:]) >= 0.95 * statistics.fmean(truth[100:])


def test_a_policy_that_does_not_learn_offers_only_declared_models() -> None:
    workload = load_workload(ROUTING)
    undeclared = catalog_of(workload, declared={"small": None})
    policy = RoutedPolicy(learn_capability=False)
    controller = controller_for(workload, policy, undeclared)
    with controller.request(24_000, {"messages": 30, "doc_tokens": 1500}) as req:
        assert req.begin("intake", input_tokens=600).model == "large"
    assert policy.capability.observed == 0


def test_the_capability_model_moves_only_what_it_observed() -> None:
    model = CapabilityModel()
    priors = {("m", "prose"): (0.9, PRIOR_SD), ("m", "reasoning"): (0.8, PRIOR_SD)}
    assert model.capabilities(priors) == pytest.approx(
        {("m", "prose"): 0.9, ("m", "reasoning"): 0.8}
    )
    assert not model.observe([], 0.5)  # nothing ran in full
    assert not model.observe([(("m", "prose"), 1.0)], 0.0)  # no finite log
    for _ in range(200):
        assert model.observe([(("m", "prose"), 1.0)], 0.6)
    found = model.capabilities(priors)
    assert found["m", "prose"] == pytest.approx(0.6, abs=0.01)
    assert found["m", "reasoning"] == pytest.approx(0.8)  # never observed: its prior
    # statistics add: two halves merged equal one model that saw everything
    halves = [CapabilityModel(), CapabilityModel()]
    whole = CapabilityModel()
    for i in range(40):
        rows = [(("m", "prose"), 1.0), (("n", "reasoning"), 0.5 + (i % 3) / 4)]
        halves[i % 2].observe(rows, 0.5 + i / 100)
        whole.observe(rows, 0.5 + i / 100)
    merged = CapabilityModel()
    for half in halves:
        merged.merge(CapabilityModel.parse(half.document(), "test"))
    both = {**priors, ("n", "reasoning"): (0.7, PRIOR_SD)}
    assert merged.capabilities(both) == pytest.approx(whole.capabilities(both))
    assert merged.observed == whole.observed == 40


def test_only_requests_that_ran_in_full_are_observed() -> None:
    workload = load_workload(ROUTING)
    policy = RoutedPolicy()
    controller = controller_for(workload, policy)
    with controller.request(24_000, {"messages": 30, "doc_tokens": 1500}) as req:
        grant = req.begin("intake", input_tokens=600)
        req.finish(grant, input_tokens=600, output_tokens=grant.output_tokens, truncated=True)
        req.score(0.5)
    assert policy.capability.observed == 0
    with controller.request(24_000, {"messages": 30, "doc_tokens": 1500}) as req:
        grant = req.begin("intake", input_tokens=600)
        req.finish(grant, input_tokens=600, output_tokens=50)
        assert clean_calls(controller.pipeline, req.calls.values()) == [
            ((grant.model, "structured"), 1 / 3)
        ]
        req.score(0.9)
    assert policy.capability.observed == 1


def test_learn_capability_must_be_a_flag() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        RoutedPolicy(learn_capability="yes")  # type: ignore[arg-type]
    assert caught.value.fields["learn_capability"] == "yes"
    with pytest.raises(PolicyConfigError):
        RoutedPolicy(uncapped_cost_weight=-1)
    with pytest.raises(PolicyConfigError, match="catalog models") as caught:
        RoutedPolicy().capabilities(["large"])
    assert caught.value.fields["model"] == "'large'"


def test_routable_catalog_models_are_unchanged_by_default() -> None:
    catalog = Catalog([ModelInfo("m", input_price=1.0, output_price=2.0)], litellm=False)
    assert catalog.routable() == []
    assert [m.name for m in catalog.routable(undeclared=True)] == ["m"]


def test_learned_routed_learns_budgets_and_models_together(tmp_path: Path) -> None:
    # a generated tuning workload (seed 3: not one of the unseen seeds of the benchmark)
    workload = generate_workload(3, models=True).workload
    plain = make_policy("learned", workload, 3, 200)
    routing = make_policy("learned-routed", workload, 3, 200)
    assert isinstance(routing, LearnedRoutedPolicy) and routing.routes and not plain.routes
    got = {}
    for name, policy in (("learned", plain), ("learned-routed", routing)):
        outcomes = run_requests(workload, policy, 200)  # the workload's seed: 3
        got[name] = (
            statistics.fmean(o.quality for o in outcomes),
            statistics.fmean(o.cost for o in outcomes),
        )
    (quality, cost), (routed_quality, routed_cost) = got["learned"], got["learned-routed"]
    assert routed_quality >= 0.95 * quality and routed_cost <= 0.9 * cost, got
    assert routing.scored == 200 and routing.capability.observed > 0
    path = tmp_path / "learned-routed.json"
    routing.save(path)
    document = json.loads(path.read_text())
    assert document["policy"] == "learned-routed"
    assert {"learned", "capability"} <= set(document)
    restored = LearnedRoutedPolicy.load(path)
    assert restored.capability.observed == routing.capability.observed
    stats = [json.loads(p.state())["pipelines"]["unseen-3"]["stats"] for p in (restored, routing)]
    assert stats[0] == stats[1]  # what learned learned, beside the capabilities


def test_workers_share_what_they_learned_of_capability_through_a_store() -> None:
    workload = load_workload(ROUTING)
    wrong = catalog_of(workload, declared=WRONG)
    store = MemoryStore()
    first = RoutedPolicy(store=store, sync_every=10)
    _play(workload, first, 40, wrong)
    assert first.capability.observed >= 30 and first.capability.unshared < 10
    shared = json.loads(store.get_state("routed.capability")[1])  # type: ignore[index]
    assert shared["format"] == "apportion.capability"
    assert shared["requests"] == first.capability.observed - first.capability.unshared
    # a new worker starts from what the first learned: it routes the reasoner to large at once
    second = RoutedPolicy(store=store, sync_every=10)
    assert second.capabilities(wrong.routable())["small", "reasoning"] < 0.8
    assert second.capability.observed == shared["requests"]
    assert statistics.fmean(_play(workload, second, 10, wrong)) > 0.8
    # both go on learning; after both merge, each holds the sum of what both observed
    _play(workload, first, 25, wrong)
    first.share_capability()
    second.share_capability()
    first.share_capability()
    assert first.capability.observed == second.capability.observed
    total = json.loads(store.get_state("routed.capability")[1])["requests"]  # type: ignore[index]
    assert total == first.capability.observed > shared["requests"]


def test_a_store_holding_another_format_is_refused_by_name() -> None:
    store = MemoryStore()
    store.put_state("routed.capability", b'{"format": "other"}', 0)
    policy = RoutedPolicy(store=store)
    with pytest.raises(PolicyStateError, match=r"apportion\.capability") as caught:
        policy.share_capability()
    assert caught.value.path == "store:routed.capability"
    assert LearnedRoutedPolicy(store=store).capability_key == "learned-routed.capability"
