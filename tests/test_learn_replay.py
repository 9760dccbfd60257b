"""``apportion learn CALLS.csv``: learning on a replayed call log, and its upper bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from apportion.cli import app
from apportion.controller import Controller
from apportion.errors import SpecError
from apportion.policies.learned import LearnedPolicy
from apportion.sim.learn import (
    RULE_POLICIES,
    progress_steps_replay,
    run_learning_replay,
)
from apportion.sim.replay import (
    LoggedCall,
    LoggedRun,
    _make_policy,
    load_calls,
    replay_run,
    replay_upper_bound,
    run_ceiling,
    select_runs,
)
from apportion.spec import Agent, Pipeline

REPO = Path(__file__).resolve().parents[1]
CHATDEV_CALLS = REPO / "examples" / "chatdev" / "calls.csv"
CHATDEV_PIPELINE = REPO / "examples" / "chatdev" / "pipeline.yaml"

PINNED_KEYS = {
    "final_quality_vs_oracle",
    "best_rule_policy",
    "best_rule_quality_vs_oracle",
    "requests",
    "curve",
    "rules",
    "learned",
    "state",
    "simulated",
    "ceiling",
    "seed",
    "final_window",
    "source",
    "split",
    "test",
}

HEADER = "run,split,call,agent,prompt_tokens,completion_tokens\n"
ROWS = {
    "r1": ("train", [("helper", 40, 30), ("writer", 120, 200), ("checker", 300, 20)]),
    "r2": ("train", [("helper", 60, 10), ("writer", 90, 150), ("checker", 200, 40)]),
    "r3": ("train", [("helper", 10, 50), ("writer", 150, 250)]),
    "r4": ("test", [("helper", 30, 20), ("writer", 100, 180), ("checker", 250, 30)]),
    "r5": ("test", [("writer", 80, 120), ("checker", 220, 25)]),
}


def tiny_pipeline() -> Pipeline:
    return Pipeline(
        [
            Agent("helper", priority="peripheral", output_kind="prose"),
            Agent("writer", priority="critical", output_kind="structured"),
            Agent("checker", priority="standard", output_kind="reasoning"),
        ],
        name="tiny",
    )


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A small call log with train and test runs, and its pipeline file."""
    lines = [
        f"{run},{split},{number},{agent},{prompt},{completion}\n"
        for run, (split, calls) in ROWS.items()
        for number, (agent, prompt, completion) in enumerate(calls, start=1)
    ]
    calls = tmp_path / "calls.csv"
    calls.write_text(HEADER + "".join(lines), encoding="utf-8")
    pipeline = tmp_path / "pipeline.yaml"
    tiny_pipeline().to_yaml(pipeline)
    return calls, pipeline


def make_run(needs: list[tuple[str, int, int]]) -> LoggedRun:
    calls = tuple(
        LoggedCall(number, agent, prompt, completion, None, number + 1)
        for number, (agent, prompt, completion) in enumerate(needs, start=1)
    )
    return LoggedRun("r", "train", calls)


# ------------------------------------------------------------------ the upper bound


def test_upper_bound_fills_the_cheapest_calls_first() -> None:
    run = make_run([("writer", 20, 10), ("helper", 5, 5), ("checker", 0, 0)])
    assert replay_upper_bound(run, 10) == pytest.approx(1.0 * 2 / 3)  # 0-need call is free
    assert replay_upper_bound(run, 25) == pytest.approx((2 + 15 / 30) / 3)
    assert replay_upper_bound(run, 0) == pytest.approx(1 / 3)
    assert replay_upper_bound(LoggedRun("empty", None, ()), 5) == 1.0


def test_upper_bound_is_one_when_the_ceiling_covers_every_token() -> None:
    run = make_run([("writer", 20, 10), ("helper", 5, 5)])
    assert replay_upper_bound(run, run.tokens) == 1.0
    assert replay_upper_bound(run, run.tokens - 1) < 1.0
    log = load_calls(CHATDEV_CALLS)
    assert all(replay_upper_bound(r, run_ceiling(r, ratio=1.0)) == 1.0 for r in log.runs)


def bound_holds(pipeline: Pipeline, runs: list[LoggedRun], ratio: float) -> None:
    names = [*RULE_POLICIES, "learned"]
    for name in names:
        policy = LearnedPolicy(seed=1) if name == "learned" else _make_policy(name, runs)
        controller = Controller(pipeline, policy=policy, store="memory://")
        for run in runs:
            ceiling = run_ceiling(run, ratio=ratio)
            quality = replay_run(controller, run, ceiling).quality
            assert quality <= replay_upper_bound(run, ceiling) + 1e-9, (name, run.name)


@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_upper_bound_dominates_every_policy_on_chatdev(ratio: float) -> None:
    pipeline = Pipeline.from_yaml(CHATDEV_PIPELINE)
    _, train, _ = select_runs(load_calls(CHATDEV_CALLS, pipeline))
    bound_holds(pipeline, train, ratio)


calls_strategy = st.lists(
    st.tuples(
        st.sampled_from(["helper", "writer", "checker"]),
        st.integers(0, 400),
        st.integers(0, 400),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(calls_strategy, min_size=1, max_size=3), st.floats(0.05, 1.2))
def test_upper_bound_dominates_every_policy_on_random_runs(
    runs: list[list[tuple[str, int, int]]], ratio: float
) -> None:
    bound_holds(tiny_pipeline(), [make_run(needs) for needs in runs], ratio)


# ------------------------------------------------------------------ learning on a log


def test_run_learning_replay_document(files: tuple[Path, Path]) -> None:
    calls, pipeline_file = files
    pipeline = Pipeline.from_yaml(pipeline_file)
    log = load_calls(calls, pipeline)
    steps: list[int] = []
    result = run_learning_replay(log, pipeline, 20, ceiling_ratio=0.6, progress=steps.append)
    assert result.keys() >= PINNED_KEYS
    assert result["source"] == "log" and result["simulated"] is True
    assert result["split"] == "test" and result["test"]["runs"] == 2
    assert result["train"]["runs"] == 3 and not result["test"]["in_sample"]
    assert result["requests"] == 20 and result["final_window"] == 4
    assert set(result["rules"]) == set(RULE_POLICIES) == set(result["test"]["rules"])
    assert all(0.0 <= point["quality_vs_oracle"] <= 1.0 for point in result["curve"])
    assert 0.0 <= result["final_quality_vs_oracle"] <= 1.0
    assert sum(steps) == progress_steps_replay(log, 20)
    again = run_learning_replay(log, pipeline, 20, ceiling_ratio=0.6)
    assert again["curve"] == result["curve"]  # seeded: the same run order and draws


def test_run_learning_replay_refuses_bad_input(files: tuple[Path, Path]) -> None:
    calls, pipeline_file = files
    pipeline = Pipeline.from_yaml(pipeline_file)
    log = load_calls(calls, pipeline)
    with pytest.raises(ValueError, match="at least 5"):
        run_learning_replay(log, pipeline, 4)
    with pytest.raises(SpecError):
        run_learning_replay(log, pipeline, 10, split="validation")
    other = Pipeline([Agent("helper"), Agent("writer")], name="other")
    with pytest.raises(SpecError) as info:
        run_learning_replay(log, other, 10)
    assert info.value.key == "agent"


# ------------------------------------------------------------------ the command


def test_cli_learns_on_a_small_log(tmp_path: Path, files: tuple[Path, Path]) -> None:
    calls, pipeline = files
    out, state = tmp_path / "learn.json", tmp_path / "state.json"
    args = ["learn", str(calls), "--pipeline", str(pipeline), "--requests", "15"]
    result = CliRunner().invoke(
        app,
        [
            *args,
            "--ceiling-ratio",
            "0.7",
            "--seed",
            "3",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "curve.svg"),
            "--save-state",
            str(state),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "replayed log" in result.output and "upper bound" in result.output
    document = json.loads(out.read_text())
    assert document.keys() >= PINNED_KEYS
    assert document["ceiling_ratio"] == 0.7 and document["seed"] == 3
    assert "replayed log" in (tmp_path / "curve.svg").read_text()
    warm = CliRunner().invoke(app, [*args, "--warm-start", str(out), "--split", "train"])
    assert warm.exit_code == 0, warm.output
    assert "warm start" in warm.output and "in-sample" in warm.output


# Train and test runs that disagree: static, profiled on the train runs, wins there and
# loses on the test runs, where the equal split wins.
SHIFTED = """run,split,call,agent,prompt_tokens,completion_tokens
r0,train,1,helper,202,220
r0,train,2,writer,25,137
r0,train,3,checker,266,253
r1,train,1,helper,212,160
r1,train,2,writer,249,188
r1,train,3,checker,116,263
r2,train,1,helper,76,149
r2,train,2,writer,76,53
r2,train,3,checker,133,277
r3,train,1,helper,80,163
r3,train,2,writer,55,42
r3,train,3,checker,174,246
r4,test,1,helper,291,56
r4,test,2,writer,186,227
r4,test,3,checker,166,109
r5,test,1,helper,287,249
r5,test,2,writer,231,271
r5,test,3,checker,138,36
"""


def test_cli_names_the_best_rule_of_the_test_runs(tmp_path: Path) -> None:
    calls, pipeline, out = tmp_path / "calls.csv", tmp_path / "p.yaml", tmp_path / "l.json"
    calls.write_text(SHIFTED, encoding="utf-8")
    tiny_pipeline().to_yaml(pipeline)
    result = CliRunner().invoke(
        app,
        ["learn", str(calls), "--pipeline", str(pipeline), "--requests", "8", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    train, test = document["rules"], document["test"]["rules"]
    assert document["best_rule_policy"] == max(train, key=train.__getitem__) == "static"
    assert document["test"]["best_rule_policy"] == max(test, key=test.__getitem__) == "uniform"
    assert document["test"]["best_rule_quality_vs_oracle"] == test["uniform"]


def test_cli_learns_on_the_chatdev_log(tmp_path: Path) -> None:
    out = tmp_path / "learn.json"
    result = CliRunner().invoke(
        app,
        [
            "learn",
            str(CHATDEV_CALLS),
            "--pipeline",
            str(CHATDEV_PIPELINE),
            "--requests",
            "10",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document.keys() >= PINNED_KEYS
    assert document["train"]["runs"] == 43 and document["test"]["runs"] == 13


def test_cli_needs_pipeline_for_a_log(files: tuple[Path, Path]) -> None:
    calls, _ = files
    result = CliRunner().invoke(app, ["learn", str(calls), "--requests", "10"])
    assert result.exit_code != 0
    assert "--pipeline" in result.output and "Traceback" not in result.output


def test_cli_reports_a_malformed_log_with_its_line(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    _, pipeline = files
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "r1,train,1,helper,10,ten\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["learn", str(bad), "--pipeline", str(pipeline)])
    assert result.exit_code == 2
    assert "line 2" in result.output and "completion_tokens" in result.output


def test_cli_log_options_refused_on_a_workload(tmp_path: Path) -> None:
    workload = REPO / "examples" / "workloads" / "support-triage.yaml"
    result = CliRunner().invoke(app, ["learn", str(workload), "--ceiling-ratio", "0.5"])
    assert result.exit_code == 2
    assert "call logs" in result.output
