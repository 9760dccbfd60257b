"""The learned policy, its shared state, ``apportion learn`` and the rollout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apportion import Agent, Controller, Pipeline, PolicyConfigError, PolicyStateError
from apportion.cli import app
from apportion.policies import EstimatePolicy, LearnedPolicy, resolve_policy
from apportion.policies.learned import StateVersionError, check_outcome
from apportion.policies.outcome_model import CRITICAL_LEAST, OutcomeModel
from apportion.policies.rollout import Rollout, confidence_bounds
from apportion.policies.tradeoff import divide, input_curve
from apportion.sim.learn import run_learning
from apportion.sim.needs import draw_needs
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import load_workload
from apportion.stores.memory import MemoryStore

WORKLOADS = Path(__file__).parent.parent / "examples" / "workloads"


def pipeline() -> Pipeline:
    return Pipeline(
        [
            Agent("triage", priority="peripheral", output_kind="structured"),
            Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        ]
    )


def close(controller: Controller, score: float | None) -> None:
    with controller.request(ceiling=4000, features={"messages": 4}) as req:
        grant = req.begin("triage", input_tokens=100)
        req.finish(grant, input_tokens=100, output_tokens=20)
        grant = req.begin("reasoner", input_tokens=300)
        req.finish(grant, input_tokens=300, output_tokens=200)
        if score is not None:
            req.score(score)


def test_resolves_by_name() -> None:
    assert isinstance(resolve_policy("learned"), LearnedPolicy)


def test_bad_scores_refused_and_counted() -> None:
    policy = LearnedPolicy(seed=1)
    controller = Controller(pipeline(), policy=policy)
    close(controller, 0.8)
    close(controller, None)
    close(controller, 1.5)
    close(controller, -0.1)
    assert (policy.scored, policy.unscored, policy.refused) == (1, 1, 2)
    with pytest.raises(ValueError):  # NaN is refused when it is told
        close(controller, math.nan)
    with pytest.raises(ValueError):
        check_outcome(math.nan)
    assert check_outcome(1) == 1.0


def _row(p: Pipeline) -> np.ndarray:
    return np.ones(2 * len(p.agents) + 1)


def test_state_round_trip_and_version_refused() -> None:
    policy = LearnedPolicy(seed=1)
    p = pipeline()
    policy.record(p, _row(p), 0.7)
    fresh = LearnedPolicy(seed=2)
    fresh.load_state(policy.state())
    assert fresh.outcome_model(p).stats.tolist() == policy.outcome_model(p).stats.tolist()
    assert fresh.summary()["pipelines"][p.name]["requests"] == 1
    document = json.loads(policy.state())
    document["version"] = 99
    with pytest.raises(StateVersionError) as info:
        fresh.load_state(json.dumps(document))
    assert info.value.version == 99 and "99" in str(info.value)
    assert info.value.expected == 2 and info.value.fields["version"] == 99


def test_state_version_error_is_one_of_the_errors() -> None:
    """It lives with the others (and is still importable where it was)."""
    import apportion
    from apportion import errors

    assert errors.StateVersionError is StateVersionError is apportion.StateVersionError
    assert issubclass(StateVersionError, errors.PolicyStateError)
    with pytest.raises(StateVersionError) as info:
        LearnedPolicy().load_state(b"[1, 2]")
    assert info.value.version is None and info.value.problem == "not a learned policy state"


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{}", b'{"format": 1e999}', b"9" * 5000],
    ids=["deep", "not-utf8", "inf", "huge-int"],
)
def test_a_malformed_state_is_a_state_error(data: bytes, tmp_path: Path) -> None:
    """Learned and shared need-model states are read as any input file: nothing else raised."""
    with pytest.raises(StateVersionError):
        LearnedPolicy().load_state(data)
    path = tmp_path / "state.json"
    path.write_bytes(data)
    with pytest.raises(PolicyStateError):
        EstimatePolicy.load(path)


def test_workers_learn_together_through_the_store() -> None:
    store = MemoryStore()
    one = LearnedPolicy(store=store, sync_every=1, seed=1)
    two = LearnedPolicy(store=store, sync_every=1, seed=2)
    p = pipeline()
    one.record(p, _row(p), 0.1)
    one.sync()
    two.record(p, _row(p), 0.9)
    two.sync()
    one.sync()
    assert one.summary()["pipelines"][p.name]["requests"] == 2
    got = store.get_state("learned")
    assert got is not None and got[0] == 3


def test_learns_above_the_rules_on_seed_scenario() -> None:
    workload = load_workload(WORKLOADS / "seed-scenario.yaml")
    result = run_learning(workload, 1000, rules=("estimate", "elastic"))
    assert result["final_quality_vs_oracle"] >= 0.97
    assert result["final_quality_vs_oracle"] >= result["best_rule_quality_vs_oracle"] - 0.005
    assert result["requests"] == 1000 and len(result["curve"]) == 20


def test_learn_command_json(tmp_path: Path) -> None:
    out = tmp_path / "learn.json"
    result = CliRunner().invoke(
        app,
        [
            "learn",
            str(WORKLOADS / "support-triage.yaml"),
            "--requests",
            "60",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "curve.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    for key in (
        "final_quality_vs_oracle",
        "best_rule_policy",
        "best_rule_quality_vs_oracle",
        "requests",
        "curve",
    ):
        assert key in document
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_rollout_refuses_candidate_equal_to_baseline() -> None:
    with pytest.raises(PolicyConfigError):
        Rollout("elastic", "elastic")
    policy = resolve_policy("estimate")
    with pytest.raises(PolicyConfigError):
        Rollout(policy, policy)


def test_rollout_assignment_is_deterministic() -> None:
    rollout = Rollout("estimate", "elastic")
    assert rollout.bucket("r-1") == Rollout("uniform", "elastic").bucket("r-1")
    inside = sum(rollout.bucket(f"r{i}") < 0.01 for i in range(20_000))
    assert 120 < inside < 280


def test_confidence_bounds_shrink() -> None:
    wide = confidence_bounds(1.0, 1.0, 10, 0.0, 1.0, 10, 0.05, 0.5)
    narrow = confidence_bounds(1.0, 1.0, 1000, 0.0, 1.0, 1000, 0.05, 0.5)
    assert wide[0] < narrow[0] < 1.0 < narrow[1] < wide[1]


def _roll(candidate: str) -> Rollout:
    workload = load_workload(WORKLOADS / "seed-scenario.yaml")
    policies = {}
    for name in (candidate, "iterative"):
        policies[name] = resolve_policy(name)
        warm = controller_for(workload, policies[name])
        for r in range(300):
            run_request(warm, workload, draw_needs(workload, 2, r), 20_000)
    events: list[str] = []
    rollout = Rollout(
        policies[candidate],
        policies["iterative"],
        min_requests=30,
        on_event=lambda e: events.append(e.kind),
    )
    controller = controller_for(workload, rollout)
    for r in range(6000):
        # fixed ids: the traffic split (a hash of the id) is the same every run
        run_request(
            controller, workload, draw_needs(workload, 1, r), 20_000, request_id=f"request-{r}"
        )
        if rollout.status != "running":
            break
    assert events == [e.kind for e in rollout.events]
    return rollout


def test_worse_candidate_rolled_back_better_promoted() -> None:
    worse = _roll("uniform")
    assert worse.status == "rolled_back" and worse.share == 0.0
    better = _roll("estimate")
    assert better.status == "complete" and better.share == 1.0
    assert [e.kind for e in better.events].count("promote") == 4


def test_warm_start_from_a_learning_run() -> None:
    workload = load_workload(WORKLOADS / "seed-scenario.yaml")
    result = run_learning(workload, 60, rules=("uniform",))
    json.dumps(result, allow_nan=False)
    counted = sum(c["requests"] for c in result["learned"]["pipelines"].values())
    assert counted > 0
    policy = LearnedPolicy(seed=3)
    got = policy.warm_start(result, weight=0.5)
    assert got == {"requests": round(counted * 0.5), "calls": 0}
    assert json.loads(policy.state())["pipelines"].keys() == result["state"]["pipelines"].keys()
    assert LearnedPolicy().warm_start(json.dumps(result["state"]).encode())["requests"] == counted
    with pytest.raises(ValueError, match="no learned state"):
        policy.warm_start({"requests": 60})
    with pytest.raises(PolicyConfigError):
        policy.warm_start(result, weight=0.0)


def test_warm_start_from_telemetry(tmp_path: Path) -> None:
    from apportion.analysis.warm_start import warm_from_telemetry
    from apportion.telemetry import flush

    url = f"sqlite:///{tmp_path / 't.db'}"
    recorded = pipeline()
    controller = Controller(recorded, policy="estimate", telemetry=url)
    for _ in range(40):
        close(controller, 0.9)
    assert flush(30)
    live = pipeline()
    policy = LearnedPolicy(seed=1)
    with pytest.raises(PolicyConfigError, match="warm_from_telemetry"):
        policy.warm_start(url)  # the policy reads no telemetry itself
    assert warm_from_telemetry(policy, url, pipeline=live) == {"requests": 0, "calls": 80}
    reasoner = live.agents[1]
    model = policy.needs(live)
    row = model.row({"messages": 4})
    assert model.input(reasoner, row) == pytest.approx(300, rel=0.01)
    assert model.output(reasoner, {"messages": 4}, row, 300) == pytest.approx(200, rel=0.01)
    assert policy.summary()["scored"] == 0  # no weights from telemetry (no outcomes in it)


def test_rollout_holds_at_doubling_counts_without_a_confident_difference() -> None:
    seen: list[float] = []
    rollout = Rollout("estimate", "elastic", min_requests=10, guard_requests=5)
    rollout.on_event = lambda e: seen.append(e.at)
    for i in range(40):
        rollout._sides["candidate"].add(1.0 + (i % 2) * 0.01, 0.9, 1000, False)
        rollout._sides["baseline"].add(1.0 + ((i + 1) % 2) * 0.01, 0.9, 1000, False)
        rollout._decide()
    assert [e.kind for e in rollout.events] == ["start", "hold", "hold", "hold"]
    assert [e.seen for e in rollout.events] == [0, 0, 0, 0]  # _decide alone counts nothing
    hold = rollout.events[1]
    assert hold.lower < 0 < hold.upper and rollout.status == "running"
    assert len(seen) == 3 and all(math.isfinite(t) for t in seen)


def test_learn_command_warm_starts_from_an_earlier_run(tmp_path: Path) -> None:
    first, state = tmp_path / "first.json", tmp_path / "state.json"
    args = ["learn", str(WORKLOADS / "support-triage.yaml"), "--requests", "40"]
    result = CliRunner().invoke(app, [*args, "--json", str(first), "--save-state", str(state)])
    assert result.exit_code == 0, result.output
    for source, expected in ((first, "20 weighted"), (state, "40 weighted")):
        weight = "0.5" if source == first else "1"
        result = CliRunner().invoke(
            app, [*args, "--warm-start", str(source), "--warm-weight", weight]
        )
        assert result.exit_code == 0, result.output
        assert expected in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "apportion.learned", "version": 99}')
    result = CliRunner().invoke(app, [*args, "--warm-start", str(bad)])
    assert result.exit_code != 0 and "version 99" in result.output


@pytest.mark.parametrize("explore", [-1.0, math.nan, math.inf])
def test_explore_must_be_positive(explore: float) -> None:
    with pytest.raises(PolicyConfigError, match="explore"):
        LearnedPolicy(explore=explore)


def test_a_cut_structured_answer_teaches_no_weights() -> None:
    policy = LearnedPolicy(seed=1)
    controller = Controller(pipeline(), policy=policy)
    with controller.request(ceiling=4000, features={"messages": 4}) as req:
        grant = req.begin("triage", input_tokens=100)
        req.finish(grant, input_tokens=100, output_tokens=grant.output_tokens, truncated=True)
        grant = req.begin("reasoner", input_tokens=300)
        req.finish(grant, input_tokens=300, output_tokens=20)
        req.score(0.0)
    close(controller, 0.7)
    assert policy.scored == 2
    assert policy.summary()["pipelines"]["pipeline"]["requests"] == 1


def test_exploring_never_draws_a_critical_weight_below_its_floor() -> None:
    model = OutcomeModel(pipeline())
    rng = np.random.default_rng(0)
    for _ in range(200):
        w_in, w_out = model.draw(rng, 5.0)
        assert w_in[1] >= CRITICAL_LEAST and w_out[1] >= CRITICAL_LEAST
        assert min(w_in[0], w_out[0]) > 0


def test_divide_is_optimal_on_concave_curves() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        curves = [
            input_curve(float(rng.integers(100, 2000)), float(rng.uniform(0.1, 2)))
            for _ in range(3)
        ]
        pool = float(rng.integers(50, 5000))
        got, value = divide(curves, pool)
        assert sum(got) <= pool
        best = (
            max(
                a + b + c
                for i, a in enumerate(curves[0].values)
                for j, b in enumerate(curves[1].values)
                for k, c in enumerate(curves[2].values)
                if curves[0].levels[i] + curves[1].levels[j] + curves[2].levels[k] <= pool
            )
            if pool >= 0
            else None
        )
        assert best is not None and value >= best - 1e-9


def test_learns_that_a_peripheral_agent_matters_most() -> None:
    workload = load_workload(WORKLOADS / "mispriority.yaml")
    policy = LearnedPolicy(seed=1)
    controller = controller_for(workload, policy)
    for r in range(600):
        run_request(controller, workload, draw_needs(workload, 11, r), workload.ceiling or 0)
    weights = policy.summary()["pipelines"]["mispriority"]["weights"]
    # hidden truth: fact_checker influence 1.6 x sensitivity 0.9; citer 0.1 x 0.2
    assert weights["fact_checker"]["input"] > 0.8 > 0.3 > weights["citer"]["input"]


def test_an_answer_is_worth_more_when_others_read_it() -> None:
    from apportion.policies.tradeoff import output_curve

    ratios = np.exp(np.random.default_rng(0).normal(0, 0.3, 100))
    alone = output_curve("prose", 500, ratios, 0.5)
    read = output_curve("prose", 500, ratios, 0.5, readers=[(800.0, 1.5)])
    assert (read.values <= alone.values + 1e-12).all()
    assert read.values[2] < alone.values[2]  # cut at half: the reader lacks what it lacks
    assert read.values[-1] == pytest.approx(0.0)  # nothing cut: nothing lacking


def test_each_settlement_is_paired_with_its_own_grant() -> None:
    """A released grant then a finished one: the need model learns the finished call's input.

    (Paired by position, the released grant's 5,000 input tokens were learned for a call
    that had 100.)
    """
    seen: list[list[tuple[str, int, int, bool]]] = []

    class Watching(LearnedPolicy):
        def learn(self, obs, outcome):  # type: ignore[no-untyped-def]
            seen.append(self._usage(obs))
            super().learn(obs, outcome)

    pipeline = Pipeline([Agent("a", priority="critical"), Agent("b", after=["a"])])
    controller = Controller(pipeline, policy=Watching())
    with controller.request(20_000) as req:
        failed = req.begin("a", 5_000)
        req.release(failed)  # the API call failed before using tokens
        grant = req.begin("a", 100)
        req.finish(grant, input_tokens=100, output_tokens=40)
        calls = req.calls
        assert [c.status for c in calls.values()] == ["released", "completed"]
        assert calls[grant.grant_id].predicted_output is not None  # kept on its own record
    assert seen == [[("a", 100, 40, False)]]
