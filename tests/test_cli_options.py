"""One meaning per option name: the same option means the same thing in every command."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import typing
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperOption
from typer.testing import CliRunner

from apportion.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    return dict(group.commands)


def meaning(param: TyperOption) -> str:
    """What an option takes: its Python type (a path, a string, a number...), one or many."""
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:  # repeatable: each value means the same
        (annotation,) = typing.get_args(annotation)
    return getattr(annotation, "__name__", str(annotation))


def options(command: Any) -> list[TyperOption]:
    return [param for param in command.params if isinstance(param, TyperOption)]


def test_each_option_name_has_one_meaning_in_every_command() -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    where: dict[str, list[str]] = defaultdict(list)
    for name, command in commands().items():
        for param in options(command):
            for flag in param.opts:
                seen[flag].add(meaning(param))
                where[flag].append(name)
    mixed = {flag: sorted(kinds) for flag, kinds in seen.items() if len(kinds) > 1}
    assert not mixed, f"options meaning different things in {dict(where)}: {mixed}"


def test_pipeline_is_a_yaml_file_wherever_it_is_taken() -> None:
    takers = set()
    for name, command in commands().items():
        for param in options(command):
            if "--pipeline" in param.opts:
                takers.add(name)
                assert meaning(param) == "Path", name
                assert "YAML" in (param.help or ""), name
    assert takers == {"replay", "learn"}
    runners = {n for n, c in commands().items() if any("--runner" in p.opts for p in options(c))}
    names = {
        n for n, c in commands().items() if any("--pipeline-name" in p.opts for p in options(c))
    }
    assert runners == {"sweep", "optimize"}
    assert names == {"report", "profile", "ingest"}


MODULE = """
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
"""


def test_sweep_takes_the_users_function_as_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cli_options_pipe.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("cli_options_pipe", None)
    examples = tmp_path / "eval.jsonl"
    examples.write_text("\n".join(json.dumps({"draft": 400, "check": 1000}) for _ in range(3)))
    out = tmp_path / "sweep.json"
    given = ["--eval", str(examples), "--metric", "cli_options_pipe:metric"]
    args = ["sweep", "--runner", "cli_options_pipe:run", *given, "--fractions", "1,0.25"]
    result = runner.invoke(
        app, [*args, "--workers", "1", "--cache-dir", str(tmp_path / "c"), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["agents"][0]["name"] == "check"
    old = runner.invoke(app, ["sweep", "--pipeline", "cli_options_pipe:run", *given])
    assert old.exit_code == 2 and "--pipeline" in old.output


def shell_lines(text: str) -> list[str]:
    """The ``apportion ...`` command lines of a Markdown text (code blocks and spans)."""
    lines = re.findall(r"^(apportion [a-z].*)$", text, flags=re.M)
    lines += re.findall(r"`(apportion [a-z][^`]*)`", text)
    return lines


def test_documented_options_exist_on_their_command() -> None:
    known = {name: command for name, command in commands().items()}
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    checked = 0
    for path in texts:
        for line in shell_lines(path.read_text(encoding="utf-8")):
            words = line.split()
            if len(words) < 2 or words[1] not in known:
                continue
            flags = {f for p in options(known[words[1]]) for f in p.opts}
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line):
                assert option in flags, f"{path.name}: {line!r}: {words[1]} has no {option}"
                checked += 1
    assert checked > 20
