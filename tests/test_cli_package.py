"""The command line is a package: explicit registration, no import back, one tables module."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any

import typer

import apportion.cli
from apportion.cli import build_app

SRC = Path(__file__).resolve().parents[1] / "src" / "apportion"
COMMANDS = {
    "demo", "bench", "replay", "policies", "validate", "learn", "sweep", "optimize",
    "report", "profile", "ingest", "prune", "serve",
}  # fmt: skip


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of each import in a file (``import x`` gives ``(x, [])``)."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def test_cli_is_a_package_and_the_entry_point_resolves() -> None:
    assert hasattr(apportion.cli, "__path__")
    assert not (SRC / "cli.py").exists()
    assert not list(SRC.glob("cli_*.py"))
    pyproject = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["apportion"] == "apportion.cli:main"
    assert callable(apportion.cli.main)


def test_each_command_module_registers_itself_explicitly() -> None:
    group: Any = typer.main.get_command(build_app())
    assert set(group.commands) == COMMANDS
    # two apps built are two apps: registration is a call, not an import side effect
    assert build_app() is not build_app()


def test_command_modules_do_not_import_the_app_back() -> None:
    for path in (SRC / "cli").glob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):  # the package itself, and its runner
            continue
        for module, names in imports(path):
            assert module != "apportion.cli", (path.name, names)
            assert not module.startswith("apportion.cli_"), path.name


def test_rich_tables_live_in_one_module() -> None:
    users = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if any(module == "rich.table" for module, _ in imports(path))
    )
    assert users == ["cli/tables.py"]
