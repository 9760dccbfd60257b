"""One policy registry: every name the Controller accepts is listed and accepted everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import apportion
from apportion.cli import app
from apportion.controller import Controller
from apportion.errors import UnknownPolicy
from apportion.policies import POLICIES, resolve_policy, rule_policies
from apportion.spec import Agent, Pipeline

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ROOT / "examples" / "workloads"
SUPPORT = WORKLOADS / "support-triage.yaml"
ROUTING = WORKLOADS / "routing.yaml"
EVERY = (
    "uniform",
    "static",
    "estimate",
    "elastic",
    "iterative",
    "learned",
    "routed",
    "learned-routed",
)


def small_pipeline() -> Pipeline:
    return Pipeline(
        [
            Agent("helper", priority="peripheral", output_kind="prose"),
            Agent("writer", priority="critical", output_kind="structured"),
        ],
        name="tiny",
    )


@pytest.fixture
def log_files(tmp_path: Path) -> tuple[Path, Path]:
    rows = [
        "run,split,call,agent,prompt_tokens,completion_tokens\n",
        *(
            f"r{i},train,1,helper,{20 + i},{30 + i}\nr{i},train,2,writer,90,{150 + i}\n"
            for i in range(4)
        ),
        "t1,test,1,helper,25,35\nt1,test,2,writer,80,140\n",
    ]
    calls = tmp_path / "calls.csv"
    calls.write_text("".join(rows), encoding="utf-8")
    pipeline = tmp_path / "pipeline.yaml"
    small_pipeline().to_yaml(pipeline)
    return calls, pipeline


def test_the_registry_holds_every_name_the_controller_accepts() -> None:
    assert set(POLICIES) == set(EVERY)
    assert apportion.POLICIES is POLICIES
    for name in POLICIES:
        if name == "static":  # needs its budgets: static:PATH, tested with the policy
            continue
        assert resolve_policy(name).name == name
        Controller(small_pipeline(), policy=name, store="memory://")
    assert set(rule_policies()) == {"uniform", "static", "estimate", "elastic", "iterative"}


def test_the_unknown_policy_error_lists_learned_and_routed() -> None:
    with pytest.raises(UnknownPolicy) as info:
        resolve_policy("nope")
    for name in EVERY:
        assert name in str(info.value)


def test_policies_command_lists_every_registered_policy() -> None:
    result = runner.invoke(app, ["policies"])
    assert result.exit_code == 0, result.output
    listed = {line.split("│")[1].strip() for line in result.output.splitlines() if "│" in line}
    assert set(POLICIES) <= listed


def test_bench_accepts_learned_and_routed(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", str(SUPPORT), "--requests", "6", "--json", str(out)]
    result = runner.invoke(app, [*args, "--policy", "learned", "--policy", "routed"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(out.read_text())["policies"]) == {"learned", "routed"}


def test_bench_unknown_policy_names_every_policy() -> None:
    result = runner.invoke(app, ["bench", str(SUPPORT), "--policy", "nope"])
    assert result.exit_code == 2
    for name in EVERY:
        assert name in result.output


def test_bench_runs_routed_by_default_with_models_and_shows_cost(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", str(ROUTING), "--requests", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert "routed" in document["policies"]
    assert "USD/req" in result.output
    routed = next(line for line in result.output.splitlines() if line.startswith("│ routed"))
    assert f"{document['policies']['routed']['cost_mean']:.4f}" in routed


def test_bench_without_models_shows_no_cost_and_skips_routed(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", str(SUPPORT), "--requests", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "USD/req" not in result.output
    assert set(json.loads(out.read_text())["policies"]) == set(rule_policies())


def test_replay_accepts_every_policy(log_files: tuple[Path, Path], tmp_path: Path) -> None:
    calls, pipeline = log_files
    out = tmp_path / "replay.json"
    named = [arg for name in EVERY for arg in ("--policy", name)]
    args = ["replay", str(calls), "--pipeline", str(pipeline), *named, "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert set(json.loads(out.read_text())["policies"]) == set(EVERY)


def test_replay_unknown_policy_names_every_policy(log_files: tuple[Path, Path]) -> None:
    calls, pipeline = log_files
    result = runner.invoke(
        app, ["replay", str(calls), "--pipeline", str(pipeline), "--policy", "nope"]
    )
    assert result.exit_code == 2
    for name in EVERY:
        assert name in result.output


def test_learn_compares_with_any_registered_policy(
    log_files: tuple[Path, Path], tmp_path: Path
) -> None:
    calls, pipeline = log_files
    out = tmp_path / "learn.json"
    args = ["learn", str(calls), "--pipeline", str(pipeline), "--requests", "6"]
    result = runner.invoke(
        app, [*args, "--policy", "routed", "--policy", "uniform", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert set(document["rules"]) == {"routed", "uniform"} == set(document["test"]["rules"])
    workload = runner.invoke(
        app, ["learn", str(SUPPORT), "--requests", "5", "--policy", "learned", "--policy", "routed"]
    )
    assert workload.exit_code == 0, workload.output
    bad = runner.invoke(app, [*args, "--policy", "nope"])
    assert bad.exit_code == 2
    for name in EVERY:
        assert name in bad.output


def test_a_policy_made_by_name_takes_its_options_and_refuses_others() -> None:
    from apportion.errors import PolicyConfigError
    from apportion.policies import RoutedPolicy, policy_options, resolve_policy

    routed = resolve_policy("routed", options={"cost_weight": 1.0})
    assert isinstance(routed, RoutedPolicy) and routed.cost_weight == 1.0
    # learned-routed passes what it does not take itself on to learned
    assert {"price", "seed", "cost_weight"} <= policy_options("learned-routed")
    assert policy_options("uniform") == set()
    for options, said in (
        ({"cost_weigth": 1.0}, "routed takes no option 'cost_weigth'"),
        ({"store": None}, "store is not an option here"),
        ([1, 2], "map option names to values"),
        ({1: 2}, "map option names to values"),
    ):
        with pytest.raises(PolicyConfigError, match=said):
            resolve_policy("routed", options=options)  # type: ignore[arg-type]
