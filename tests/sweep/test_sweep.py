"""Critical-path sweep, priority rewriting and the allocation search."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from apportion import Agent, Controller, Pipeline
from apportion.analysis.optimize import optimize
from apportion.analysis.rewrite import write_priorities
from apportion.analysis.sweep import parse_fractions, priorities_from, sweep
from apportion.analysis.targets import PipelineTarget, WorkloadTarget
from apportion.cli import app
from apportion.errors import PolicyConfigError, SpecError
from apportion.policies import StaticPolicy, UniformPolicy
from apportion.policies.constrained import Constrained

ROOT = Path(__file__).resolve().parents[2]
MISPRIORITY = ROOT / "examples" / "workloads" / "mispriority.yaml"
SEED = ROOT / "examples" / "workloads" / "seed-scenario.yaml"
runner = CliRunner()


@pytest.mark.parametrize("text", ["0", "1.5", "-0.5", "abc", "nan", ""])
def test_bad_fractions(text: str) -> None:
    with pytest.raises(PolicyConfigError):
        parse_fractions(text)


def test_fractions_always_include_the_baseline() -> None:
    assert parse_fractions("0.5,0.75") == [1.0, 0.75, 0.5]


def test_constrained_scales_only_its_agent() -> None:
    pipeline = Pipeline([Agent("a"), Agent("b")])
    with pytest.raises(PolicyConfigError):
        Constrained(UniformPolicy(), "a", 0.0)
    controller = Controller(pipeline, policy=Constrained(UniformPolicy(), "a", 0.5))
    plain = Controller(pipeline, policy="uniform")
    for c in (controller, plain):
        with c.request(10_000) as req:
            grants = [req.begin(n, input_tokens=1_000) for n in ("a", "b")]
        c.grants = grants  # type: ignore[attr-defined]
    starved, full = controller.grants[0], plain.grants[0]  # type: ignore[attr-defined]
    assert starved.context_tokens == full.context_tokens // 2
    assert starved.output_tokens == full.output_tokens // 2
    other, same = controller.grants[1], plain.grants[1]  # type: ignore[attr-defined]
    assert (other.context_tokens, other.output_tokens) == (same.context_tokens, same.output_tokens)


@pytest.fixture(scope="module")
def mispriority_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("cache")
    target = WorkloadTarget(MISPRIORITY, policy="estimate", requests=120)
    return sweep(target, (1.0, 0.75, 0.5), cache_dir=cache) | {"_cache": cache}


def test_sweep_finds_the_mislabelled_agent(mispriority_sweep: dict[str, Any]) -> None:
    rows = mispriority_sweep["agents"]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["sensitivity"] for r in rows] == sorted(
        (r["sensitivity"] for r in rows), reverse=True
    )
    top = rows[0]
    assert top["name"] == "fact_checker"  # labelled peripheral, most influential
    assert top["critical"] and "fact_checker" in mispriority_sweep["critical_path"]
    assert set(top["loss"]) == {"0.75", "0.5"}
    assert top["loss"]["0.5"] > top["loss"]["0.75"] > 0
    assert priorities_from(mispriority_sweep)["fact_checker"] == "critical"


def test_sweep_resumes_from_its_cache(
    mispriority_sweep: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_run(self: Any, agent: Any, fraction: Any) -> Any:
        raise AssertionError("every cell should come from the cache")

    monkeypatch.setattr(WorkloadTarget, "run_cell", no_run)
    target = WorkloadTarget(MISPRIORITY, policy="estimate", requests=120)
    again = sweep(target, (1.0, 0.75, 0.5), cache_dir=mispriority_sweep["_cache"])
    assert again["agents"] == mispriority_sweep["agents"]


@pytest.mark.parametrize(
    "garbage",
    [
        b"[1, 2]",
        b"null",
        b'{"*@1": 5}',
        b'{"*@1": {"quality": "x", "tokens_by_agent": {}}}',
        b"\xff[",
    ],
)
def test_a_broken_sweep_cache_is_computed_again(garbage: bytes, tmp_path: Path) -> None:
    """The cache is only a cache: whatever its file holds, the sweep runs (and rewrites it)."""
    target = WorkloadTarget(MISPRIORITY, policy="estimate", requests=3)
    (tmp_path / f"sweep-{target.fingerprint()}.json").write_bytes(garbage)
    result = sweep(target, (1.0,), cache_dir=tmp_path)
    assert {row["name"] for row in result["agents"]}


def test_priorities_rewrite_raises_elastic(
    mispriority_sweep: dict[str, Any], tmp_path: Path
) -> None:
    from apportion.sim.bench import run_bench
    from apportion.sim.workload import load_workload

    fixed = tmp_path / "fixed.yaml"
    write_priorities(MISPRIORITY, priorities_from(mispriority_sweep), fixed)
    data = yaml.safe_load(fixed.read_text())
    assert {a["name"]: a["priority"] for a in data["agents"]}["fact_checker"] == "critical"
    before = run_bench(load_workload(MISPRIORITY), policies=["elastic"], requests=300)
    after = run_bench(load_workload(fixed), policies=["elastic"], requests=300)
    assert (
        after["policies"]["elastic"]["quality_mean"] > before["policies"]["elastic"]["quality_mean"]
    )


def test_priorities_from_margin() -> None:
    result = {
        "fractions": [1.0, 0.75],
        "baseline_quality": 0.8,
        "agents": [
            {"name": "a", "critical": True, "loss": {"0.75": 0.3}},
            {"name": "b", "critical": True, "loss": {"0.75": 0.1}},
            {"name": "c", "critical": False, "loss": {"0.75": 0.05}},
            {"name": "d", "critical": False, "loss": {"0.75": -0.02}},
        ],
    }
    assert priorities_from(result) == {
        "a": "critical",
        "b": "standard",
        "c": "standard",
        "d": "peripheral",
    }


def test_write_priorities_on_a_pipeline_file(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    write_priorities(ROOT / "examples" / "pipeline.yaml", {"formatter": "critical"}, out)
    assert Pipeline.from_yaml(out)["formatter"].priority == "critical"


# ------------------------------------------------------------------ user pipelines

PIPELINE_MODULE = """
from apportion import Agent, Pipeline

PIPELINE = Pipeline([Agent("draft"), Agent("check", after=["draft"])])


def run(controller, example):
    with controller.request(ceiling=4000) as req:
        written = {}
        for agent, need in (("draft", example["draft"]), ("check", example["check"])):
            grant = req.begin(agent, input_tokens=200)
            written[agent] = min(need, grant.output_tokens)
            req.finish(grant, input_tokens=200, output_tokens=written[agent])
    return written


def metric(example, output):
    return 1.0 if output["check"] >= example["check"] else 0.0


def bad_metric(example, output):
    return 2.0


def wrong(controller):
    return None
"""


@pytest.fixture
def user_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mypipe.py").write_text(textwrap.dedent(PIPELINE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mypipe", None)
    examples = tmp_path / "eval.jsonl"
    examples.write_text("\n".join(json.dumps({"draft": 400, "check": 1000}) for _ in range(5)))
    return examples


def test_user_pipeline_is_swept(user_pipeline: Path) -> None:
    target = PipelineTarget("mypipe:run", user_pipeline, "mypipe:metric", policy="uniform")
    result = sweep(target, (1.0, 0.25))
    assert result["simulated"] is False and result["baseline_quality"] == 1.0
    loss = {row["name"]: row["loss"]["0.25"] for row in result["agents"]}
    assert loss["check"] == 1.0 and loss["draft"] == 0.0
    assert result["agents"][0]["name"] == "check"


def test_user_pipeline_bad_input(user_pipeline: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError, match="expected"):
        PipelineTarget("mypipe:wrong", user_pipeline, "mypipe:metric")
    with pytest.raises(PolicyConfigError, match="cannot import"):
        PipelineTarget("nosuchmodule:run", user_pipeline, "mypipe:metric")
    with pytest.raises(PolicyConfigError, match="no function"):
        PipelineTarget("mypipe:nothere", user_pipeline, "mypipe:metric")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"draft": 1, "check": 1}\n{not json}\n')
    with pytest.raises(SpecError) as info:
        PipelineTarget("mypipe:run", bad, "mypipe:metric")
    assert info.value.line == 2 and info.value.file == str(bad)
    target = PipelineTarget("mypipe:run", user_pipeline, "mypipe:bad_metric", policy="uniform")
    with pytest.raises(SpecError, match=r"number in \[0, 1\]") as info:
        sweep(target, (1.0, 0.5))
    assert info.value.line == 1


# ------------------------------------------------------------------ allocation search


def test_optimize_splits_the_total_and_loads_as_static() -> None:
    target = WorkloadTarget(SEED, requests=40)
    result = optimize(target, 20_000, trials=6)
    budgets = result["best"]["budgets"]
    assert set(budgets) == set(target.agents)
    assert sum(b["context_tokens"] + b["output_tokens"] for b in budgets.values()) <= 20_000
    assert 0.0 <= result["best"]["quality"] <= 1.0
    policy = result["policy"]
    assert isinstance(policy, StaticPolicy)
    path = Path(__import__("tempfile").mkdtemp()) / "b.yaml"
    policy.to_yaml(path)
    assert StaticPolicy.from_yaml(path).budgets == policy.budgets


# ------------------------------------------------------------------ command line


def test_cli_sweep_and_write_priorities(tmp_path: Path) -> None:
    out, fixed, figure = tmp_path / "s.json", tmp_path / "fixed.yaml", tmp_path / "s.png"
    result = runner.invoke(
        app,
        [
            "sweep",
            str(MISPRIORITY),
            "--requests",
            "40",
            "--fractions",
            "1,0.5",
            "--workers",
            "1",
            "--cache-dir",
            str(tmp_path / "c"),
            "--json",
            str(out),
            "--plot",
            str(figure),
            "--write-priorities",
            str(fixed),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for row in data["agents"]:
        assert {"name", "rank", "sensitivity", "critical", "loss"} <= set(row)
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert yaml.safe_load(fixed.read_text())["agents"]


def test_cli_sweep_bad_fractions(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", str(MISPRIORITY), "--fractions", "1,2"])
    assert result.exit_code == 2 and "(0, 1]" in result.output


def test_cli_optimize_writes_a_budgets_file(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    result = runner.invoke(
        app,
        [
            "optimize",
            str(SEED),
            "--ceiling",
            "20000",
            "--trials",
            "4",
            "--requests",
            "30",
            "-o",
            str(budgets),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "oracle" in result.output and "uniform" in result.output
    assert set(StaticPolicy.from_yaml(budgets).budgets) == {
        "intake",
        "retriever",
        "reasoner",
        "critic",
        "formatter",
    }
