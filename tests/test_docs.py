"""The README's quickstart and the DESIGN.md API example run as written; the scripts, options
and files the documents name exist."""

import ast
import asyncio
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT.parent / "shared" / "DESIGN.md"
SPEC = ROOT.parent / "shared" / "spec" / "workload.md"


def python_blocks(text: str) -> list[str]:
    """The ```` ```python ```` blocks, which run; a ```` ```py ```` block is a fragment (the lines
    a user adds to their own framework code), shown highlighted but not run here."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_with_top_level_await(source: str) -> dict[str, object]:
    """Run a snippet that may use `async with` at top level, as a notebook would."""
    code = compile(source, "<snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, object] = {}
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        asyncio.run(result)
    return namespace


def test_readme_quickstart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no python block"
    namespaces = [run_with_top_level_await(block) for block in blocks]
    summary = namespaces[0]["req"].summary()  # type: ignore[attr-defined]  # the quickstart
    assert summary.agents["reasoner"].consumed >= 7_900 + 1_300
    assert summary.agents["reasoner"].truncated_calls == 0
    assert summary.consumed <= summary.ceiling
    assert "formatter" in capsys.readouterr().out


@pytest.mark.skipif(not DESIGN.exists(), reason="shared/DESIGN.md is not beside the checkout")
def test_design_example_runs() -> None:
    blocks = [b for b in python_blocks(DESIGN.read_text()) if "Controller(" in b]
    assert len(blocks) == 1
    literal = run_with_top_level_await(blocks[0])  # exactly as written
    assert literal["req"].summary().status == "closed"  # type: ignore[attr-defined]
    # `async with ...: ...` ends the example: give its body something to do
    source = blocks[0].replace(
        "async with controller.arequest(ceiling=20_000) as req: ...",
        "async with controller.arequest(ceiling=20_000) as areq:\n"
        "    g = await areq.begin('formatter', input_tokens=100)\n"
        "    await areq.finish(g, input_tokens=100, output_tokens=10)",
    )
    namespace = run_with_top_level_await(source)
    summary = namespace["req"].summary()  # type: ignore[attr-defined]
    assert summary.agents["reasoner"].consumed == 7_900 + 1_312
    assert namespace["areq"].summary().agents["formatter"].consumed == 110  # type: ignore[attr-defined]


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented(pattern: str) -> list[tuple[str, str]]:
    """``(document, match)`` of ``pattern`` in every document.

    A command continued with a backslash, or a code span wrapped over two lines, is one line.
    """
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        text = re.sub(r"`[^`\n]+\n[^`\n]+`", lambda m: m[0].replace("\n", " "), text)
        found += [(path.name, m) for m in re.findall(pattern, text, flags=re.M)]
    return found


def test_documented_scripts_exist_with_the_options_shown() -> None:
    """``python benchmarks/X.py --opt`` and ``python examples/X.py --opt``, as written."""
    commands = documented(r"python ((?:benchmarks|examples)/[\w/]+\.py)([^`\n|;]*)")
    assert len(commands) > 20
    for document, (script, rest) in commands:
        path = ROOT / script
        assert path.is_file(), f"{document}: {script} does not exist"
        source = path.read_text(encoding="utf-8")
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert f'"{option}"' in source, f"{document}: {script} takes no {option}"


def test_documented_paths_exist() -> None:
    """Every file or folder of the project that a document names in backticks."""
    named = documented(r"`((?:examples|docs|benchmarks|tests|src)/[\w./*-]+)`")
    assert len(named) > 30
    for document, name in named:
        name = name.rstrip(".")
        assert list(ROOT.glob(name)), f"{document}: {name} does not exist"


@pytest.mark.skipif(not SPEC.exists(), reason="shared/spec is not beside the checkout")
def test_the_shipped_workload_spec_is_the_projects() -> None:
    """docs/workload-spec.md is a copy of the normative spec, word for word."""
    shipped = (ROOT / "docs" / "workload-spec.md").read_text(encoding="utf-8")
    assert shipped == SPEC.read_text(encoding="utf-8")
