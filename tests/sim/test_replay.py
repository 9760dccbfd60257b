"""Replaying a call log through the controller: parsing, figures, the CLI command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apportion import files as files_module
from apportion.cli import app
from apportion.controller import Controller
from apportion.errors import PolicyConfigError, SpecError
from apportion.files import write_atomic
from apportion.ledger import Grant
from apportion.policies import Observation, Policy
from apportion.sim.replay import (
    load_calls,
    replay_run,
    replay_steps,
    run_replay,
    select_runs,
)
from apportion.spec import Agent, AgentKind, Pipeline

REPO = Path(__file__).resolve().parents[2]
CHATDEV_CALLS = REPO / "examples" / "chatdev" / "calls.csv"
CHATDEV_PIPELINE = REPO / "examples" / "chatdev" / "pipeline.yaml"
JSON_KEYS = {"quality_mean", "cut_rate", "critical_cut_rate", "unused_mean", "extensions_mean"}

HEADER = "run,split,call,agent,prompt_tokens,completion_tokens,max_tokens\n"
TINY = HEADER + "r1,test,1,helper,10,10,10\nr1,test,2,writer,10,10,100\n"


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(
        [
            Agent("helper", priority="peripheral", output_kind="prose"),
            Agent("writer", priority="critical", output_kind="prose"),
        ],
        name="tiny",
    )


@pytest.fixture
def pipeline_file(tmp_path: Path, pipeline: Pipeline) -> Path:
    path = tmp_path / "pipeline.yaml"
    pipeline.to_yaml(path)
    return path


def write(tmp_path: Path, text: str, name: str = "calls.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ parse errors


def parse_error(path: Path, pipeline: Pipeline | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_calls(path, pipeline)
    return info.value


def test_missing_column_names_file_line_1_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "run,call,agent,prompt_tokens\nr1,1,helper,10\n")
    error = parse_error(path)
    assert (error.file, error.line, error.key) == (str(path), 1, "completion_tokens")
    assert "calls.csv, line 1" in str(error)


def test_negative_number_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "r1,test,1,helper,10,10,10\nr1,test,2,writer,-5,10,100\n")
    error = parse_error(path)
    assert (error.file, error.line, error.key) == (str(path), 3, "prompt_tokens")
    assert "non-negative integer" in error.problem and "-5" in error.problem


@pytest.mark.parametrize(
    ("row", "key"),
    [
        ("r1,test,1.5,helper,10,10,10", "call"),
        ("r1,test,1,helper,ten,10,10", "prompt_tokens"),
        ("r1,test,1,helper,10,,10", "completion_tokens"),
        ("r1,test,1,helper,10,10,1e3", "max_tokens"),
        (",test,1,helper,10,10,10", "run"),
    ],
)
def test_bad_value_names_line_and_column(tmp_path: Path, row: str, key: str) -> None:
    error = parse_error(write(tmp_path, HEADER + row + "\n"))
    assert (error.line, error.key) == (2, key)


def test_unknown_agent_names_line_and_agent(tmp_path: Path, pipeline: Pipeline) -> None:
    path = write(tmp_path, TINY + "r1,test,3,Programmer,10,10,100\n")
    error = parse_error(path, pipeline)
    assert (error.file, error.line, error.key) == (str(path), 4, "agent")
    assert "Programmer" in error.problem and "helper" in error.problem


def test_empty_file_and_file_without_calls(tmp_path: Path) -> None:
    empty = parse_error(write(tmp_path, ""))
    assert empty.line == 1 and "empty" in empty.problem
    header_only = parse_error(write(tmp_path, HEADER, "header.csv"))
    assert header_only.line == 1 and "no calls" in header_only.problem


def test_repeated_call_and_split_disagreement(tmp_path: Path) -> None:
    repeated = parse_error(write(tmp_path, TINY + "r1,test,2,helper,1,1,1\n"))
    assert (repeated.line, repeated.key) == (4, "call")
    mixed = parse_error(write(tmp_path, TINY + "r1,train,3,helper,1,1,1\n", "mixed.csv"))
    assert (mixed.line, mixed.key) == (4, "split")


def test_optional_columns(tmp_path: Path) -> None:
    log = load_calls(
        write(
            tmp_path,
            "agent,call,run,completion_tokens,prompt_tokens\nhelper,2,r,5,7\nhelper,1,r,3,4\n",
        )
    )
    assert not log.has_split and not log.has_max_tokens
    assert [c.call for c in log.runs[0].calls] == [1, 2]
    assert log.runs[0].tokens == 19
    reported, fit, in_sample = select_runs(log, "test")  # no split column: filters nothing
    assert reported == fit == list(log.runs) and in_sample


# ------------------------------------------------------------------ replay


def test_tiny_log_replayed_with_known_outcome(tmp_path: Path, pipeline: Pipeline) -> None:
    log = load_calls(write(tmp_path, TINY), pipeline)
    # Ceiling 1000: uniform gives each agent 500 and a call reads its 10 and may write
    # 490: nothing is cut, and each call holds 480 tokens it does not use.
    roomy = run_replay(log, pipeline, policies=["uniform"], ceiling=1000)
    assert roomy["runs"] == 1 and roomy["quality_simulated"] is True
    assert roomy["policies"]["uniform"] == {
        **roomy["policies"]["uniform"],
        "quality_mean": 1.0,
        "cut_rate": 0.0,
        "critical_cut_rate": 0.0,
        "unused_mean": 960.0,
        "extensions_mean": 0.0,
    }
    # Ceiling 30 (ratio 0.75 of the 40 tokens used): a share of 15 each; each call reads
    # its 10 and writes 5 of its 10 (prose: q = 0.5); nothing left unused.
    short = run_replay(log, pipeline, policies=["uniform"], ceiling_ratio=0.75)
    figures = short["policies"]["uniform"]
    assert figures["quality_mean"] == 0.5
    assert figures["cut_rate"] == 1.0 and figures["critical_cut_rate"] == 1.0
    assert figures["unused_mean"] == 0.0
    # The logged caps: helper hit its cap of 10; writer left 90 of its 100 unused.
    assert short["log"] == {
        "cut_rate": 0.5,
        "critical_cut_rate": 0.0,
        "unused_mean": 90.0,
        "calls": 2,
        "calls_total": 2,
        "runs": 1,
    }


class FirstGuess(Policy):
    """Grants the whole input and 300 output tokens, then whatever extension is asked."""

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        return input_tokens, 300

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        return output_tokens


def test_extensions_resend_the_context(tmp_path: Path) -> None:
    pipeline = Pipeline([Agent("writer", priority="critical", output_kind="structured")])
    log = load_calls(write(tmp_path, HEADER + "r,test,1,writer,100,400,\n"), pipeline)
    # The call is cut at 300, asks for 300 more and resends its 100 + 300 tokens: it
    # reads 500, writes 400, and holds 200 output tokens it does not use.
    controller = Controller(pipeline, policy=FirstGuess())
    outcome = replay_run(controller, log.runs[0], 1200)
    assert outcome.extensions == 1 and outcome.quality == 1.0 and outcome.cut_calls == 0
    assert (outcome.granted, outcome.consumed, outcome.unused) == (1100, 900, 200)
    # With a ceiling of 1000 the extension (700) does not fit: the call stays cut, and a
    # cut structured answer is worth nothing.
    short = replay_run(controller, log.runs[0], 1000)
    assert short.extensions == 0 and short.quality == 0.0
    assert short.cut_calls == short.critical_cut_calls == 1


def test_json_keys_and_every_policy(tmp_path: Path, pipeline: Pipeline) -> None:
    text = HEADER + "".join(
        f"{run},{split},{i},{agent},{20 + i},{5 + 3 * i},{200}\n"
        for run, split in (("a", "train"), ("b", "train"), ("c", "test"))
        for i, agent in enumerate(("helper", "writer", "writer", "helper"), start=1)
    )
    log = load_calls(write(tmp_path, text), pipeline)
    assert replay_steps(log, ["uniform", "static", "elastic"], "test") == 3 + 2
    result = run_replay(log, pipeline)
    assert {"runs", "policies", "log"} <= set(result)
    assert set(result["policies"]) == {"uniform", "static", "estimate", "elastic", "iterative"}
    for figures in result["policies"].values():
        assert set(figures) >= JSON_KEYS
    assert {"cut_rate", "critical_cut_rate", "unused_mean"} <= set(result["log"])
    assert result["fit"] == {"split": "train", "runs": 2, "in_sample": False}
    assert result["split"] == "test" and result["runs"] == 1


def test_bad_options(tmp_path: Path, pipeline: Pipeline) -> None:
    log = load_calls(write(tmp_path, TINY), pipeline)
    with pytest.raises(PolicyConfigError):
        run_replay(log, pipeline, ceiling=100, ceiling_ratio=0.5)
    with pytest.raises(PolicyConfigError):
        run_replay(log, pipeline, ceiling_ratio=0.0)
    with pytest.raises(SpecError):
        run_replay(log, pipeline, split="validation")
    with pytest.raises(SpecError):
        run_replay(log, pipeline, split="train")  # no train runs to report on
    with pytest.raises(PolicyConfigError):
        run_replay(log, pipeline, policies=["static"])  # nothing to profile it on


def test_chatdev_best_policy_cuts_fewer_critical_calls_than_uniform() -> None:
    pipeline = Pipeline.from_yaml(CHATDEV_PIPELINE)
    log = load_calls(CHATDEV_CALLS, pipeline)
    result = run_replay(log, pipeline, ceiling_ratio=0.8, split="test")
    policies = result["policies"]
    best = max(policies, key=lambda name: policies[name]["quality_mean"])
    assert best != "uniform"
    assert policies[best]["quality_mean"] > 0.7  # 0.749 (static) as measured on this log
    assert policies[best]["critical_cut_rate"] < policies["uniform"]["critical_cut_rate"]
    assert result["runs"] == 13 and result["fit"]["runs"] == 43


def test_chatdev_log_is_what_its_data_page_says() -> None:
    """examples/chatdev/DATA.md's counts, read from the shipped log."""
    log = load_calls(CHATDEV_CALLS, Pipeline.from_yaml(CHATDEV_PIPELINE))
    calls = [call for run in log.runs for call in run.calls]
    totals = sorted(run.tokens for run in log.runs)
    assert (len(log.runs), len(calls)) == (56, 1_370)
    assert sum(run.split == "test" for run in log.runs) == 13
    assert (totals[0], totals[-1]) == (11_356, 161_341)
    assert sum(call.max_tokens is None for call in calls) == 389
    at_cap = [c for c in calls if c.max_tokens is not None and c.completion_tokens >= c.max_tokens]
    assert len(at_cap) == 57
    page = (CHATDEV_CALLS.parent / "DATA.md").read_text(encoding="utf-8")
    assert all(f in page for f in ("1,370 calls", "11,356", "161,341", "(389 rows)", "57 answers"))


# ------------------------------------------------------------------ CLI and files


def test_cli_writes_whole_json(tmp_path: Path, pipeline_file: Path) -> None:
    calls = write(tmp_path, TINY)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            str(calls),
            "--pipeline",
            str(pipeline_file),
            "--policy",
            "uniform",
            "--ceiling-ratio",
            "0.75",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "log (max_tokens caps)" in result.output and "simulated" in result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["policies"]["uniform"]) >= JSON_KEYS
    assert data["runs"] == 1 and data["log"]["cut_rate"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.csv", "out.json", "pipeline.yaml"]


@pytest.mark.parametrize(
    ("csv_text", "extra", "message"),
    [
        (HEADER + "r1,test,1,helper,-1,10,10\n", [], "line 2"),
        (HEADER + "r1,test,1,Programmer,1,10,10\n", [], "unknown agent"),
        (TINY, ["--ceiling", "10", "--ceiling-ratio", "0.5"], "not both"),
        (TINY, ["--policy", "nope"], "unknown policy"),
    ],
)
def test_cli_failure_leaves_no_json(
    tmp_path: Path, pipeline_file: Path, csv_text: str, extra: list[str], message: str
) -> None:
    calls = write(tmp_path, csv_text)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(
        app,
        ["replay", str(calls), "--pipeline", str(pipeline_file), "--json", str(out), *extra],
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.csv", "pipeline.yaml"]


def test_cli_split_without_split_column(tmp_path: Path, pipeline_file: Path) -> None:
    calls = write(tmp_path, "run,call,agent,prompt_tokens,completion_tokens\nr,1,writer,5,5\n")
    result = CliRunner().invoke(
        app,
        [
            "replay",
            str(calls),
            "--pipeline",
            str(pipeline_file),
            "--policy",
            "uniform",
            "--split",
            "test",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "filters nothing" in result.output and "no caps logged" in result.output


def test_json_write_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.json"
    target.write_text('{"old": true}\n', encoding="utf-8")
    mode = os.stat(target).st_mode & 0o777

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, json.dumps({"new": True}))
    assert json.loads(target.read_text(encoding="utf-8")) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    monkeypatch.undo()
    write_atomic(target, json.dumps({"new": True}))
    assert json.loads(target.read_text(encoding="utf-8")) == {"new": True}
    assert os.stat(target).st_mode & 0o777 == mode  # not mkstemp's 0600


# ------------------------------------------------------------------ agent kinds

TEAM_LOG = HEADER + "".join(
    f"r{r},{'train' if r < 6 else 'test'},{c},{agent},{200 + 10 * c},{60 + c},\n"
    for r in range(8)
    for c, agent in enumerate(
        ["lead", f"expert:{r}", f"expert:{r + 1}", f"expert:{r}", "writer"], start=1
    )
)


def _team(kinds: bool) -> Pipeline:
    return Pipeline(
        [Agent("lead", "critical"), Agent("writer", "critical", after=["lead"])],
        name="team",
        kinds=[AgentKind("expert", "expert:*", after=["lead"])] if kinds else (),
    )


def test_a_log_of_unlisted_agents_needs_kinds(tmp_path: Path) -> None:
    calls = write(tmp_path, TEAM_LOG)
    error = parse_error(calls, _team(kinds=False))
    assert (error.line, error.key) == (3, "agent")
    assert "expert:0" in str(error) and "declares no kinds" in str(error)
    log = load_calls(calls, _team(kinds=True))
    assert log.calls == 40


def test_replay_budgets_unlisted_agents_by_their_kind(tmp_path: Path) -> None:
    calls = write(tmp_path, TEAM_LOG)
    pipeline = _team(kinds=True)
    log = load_calls(calls, pipeline)
    result = run_replay(
        log, pipeline, policies=["static", "elastic", "estimate"], ceiling_ratio=1.0
    )
    assert result["runs"] == 2 and result["calls"] == 10
    for figures in result["policies"].values():
        assert figures["refused_rate"] == 0.0
    controller = Controller(pipeline, policy="estimate", store="memory://")
    outcome = replay_run(controller, log.runs[0], 10_000)
    assert outcome.cut_calls == 0 and outcome.quality == 1.0
    seen = {e.agent for e in controller.store.events(controller_request_id(controller))}
    assert seen == {None, "lead", "expert", "writer"}  # the ledger counts members on the kind


def controller_request_id(controller: Controller) -> str:
    """The id of the only request a memory-store controller served."""
    (request_id,) = controller.store._closed  # type: ignore[attr-defined]
    return str(request_id)


def test_cli_replays_a_team_log_with_kinds(tmp_path: Path) -> None:
    calls = write(tmp_path, TEAM_LOG)
    pipeline_file = tmp_path / "team.yaml"
    _team(kinds=True).to_yaml(pipeline_file)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            str(calls),
            *("--pipeline", str(pipeline_file)),
            *("--policy", "elastic", "--json", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["calls"] == 10
