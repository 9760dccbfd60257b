"""Long commands draw a progress bar with an estimate, on the terminal, never in the output."""

from __future__ import annotations

import io
import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import apportion.cli.console as cli_console
from apportion.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ROOT / "examples" / "workloads"
SUPPORT = WORKLOADS / "support-triage.yaml"
SEED = WORKLOADS / "seed-scenario.yaml"
CSV = (
    "run,split,call,agent,prompt_tokens,completion_tokens\n"
    + "".join(f"r{i},train,1,helper,{20 + i},30\nr{i},train,2,writer,90,150\n" for i in range(4))
    + "t1,test,1,helper,25,35\nt1,test,2,writer,80,140\n"
)
PIPELINE = """name: tiny
agents:
  - {name: helper, priority: peripheral, output_kind: prose}
  - {name: writer, priority: critical, output_kind: structured}
"""
# steps done/total, then the time elapsed and the time remaining (the estimate)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"(\d+)/(\d+) +\d+:\d\d:\d\d +(\d+:\d\d:\d\d|-:--:--)")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the progress bars draw, on a console that says it is a terminal."""
    screen = io.StringIO()
    monkeypatch.setattr(
        cli_console, "progress_console", Console(file=screen, force_terminal=True, width=160)
    )
    return screen


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "calls.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE, encoding="utf-8")
    return {
        "calls": tmp_path / "calls.csv",
        "pipeline": tmp_path / "pipeline.yaml",
        "db": tmp_path / "t.db",
        "out": tmp_path / "out",
    }


def command(name: str, p: dict[str, Path]) -> list[str]:
    db = f"sqlite:///{p['db']}"
    json_out = ["--json", str(p["out"])]
    return {
        "demo": ["demo", "--requests", "3", "--html", str(p["out"])],
        "bench": ["bench", str(SUPPORT), "--requests", "5", *json_out],
        "replay": ["replay", str(p["calls"]), "--pipeline", str(p["pipeline"]), *json_out],
        "learn": ["learn", str(SUPPORT), "--requests", "10", *json_out],
        "learn-log": [
            "learn", str(p["calls"]), "--pipeline", str(p["pipeline"]), "--requests", "6",
            *json_out,
        ],
        "sweep": [
            "sweep", str(SUPPORT), "--requests", "4", "--fractions", "1,0.5", "--workers", "1",
            "--cache-dir", str(p["out"].parent / "cache"), *json_out,
        ],
        "optimize": [
            "optimize", str(SEED), "--ceiling", "20000", "--trials", "2", "--requests", "4",
            *json_out,
        ],
        "ingest": ["ingest", str(p["calls"]), "--into", db],
        "report": ["report", db, *json_out],
        "profile": ["profile", db, "-o", str(p["out"])],
    }[name]  # fmt: skip


LONG = ["demo", "bench", "replay", "learn", "learn-log", "sweep", "optimize", "ingest"]


@pytest.mark.parametrize("name", [*LONG, "report", "profile"])
def test_long_commands_show_a_bar_with_an_estimate(
    name: str, inputs: dict[str, Path], terminal: io.StringIO
) -> None:
    if name in ("report", "profile"):
        assert runner.invoke(app, command("ingest", inputs)).exit_code == 0
        terminal.seek(0)
        terminal.truncate()
    result = runner.invoke(app, command(name, inputs))
    assert result.exit_code == 0, result.output
    drawn = ANSI.sub("", terminal.getvalue())
    bars = BAR.findall(drawn)
    assert bars, f"{name} drew no progress bar with an estimate: {drawn!r}"
    done, total, _ = bars[-1]
    assert done == total  # the last frame is the finished bar
    # nothing of the bar is in the command's own output, nor in its JSON
    assert not BAR.search(result.stdout)
    if name not in ("demo", "ingest", "profile"):
        json.loads(inputs["out"].read_text())


def test_version_comes_from_the_package_metadata() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"apportion {version('apportion')}"


def test_off_a_terminal_progress_is_a_line_now_and_then(
    inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = io.StringIO()  # a file, not a terminal: a CI log, an output captured
    monkeypatch.setattr(cli_console, "progress_console", Console(file=log, width=160))
    monkeypatch.setattr(cli_console, "LOG_EVERY", 0.0)  # a line at every step
    result = runner.invoke(app, command("learn-log", inputs))
    assert result.exit_code == 0, result.output
    lines = [line for line in log.getvalue().splitlines() if line.strip()]
    assert lines and all("elapsed, time left" in line for line in lines)
    assert lines[-1].startswith("learned + rules on replayed runs: 54/54,")
    assert "\x1b" not in log.getvalue() and "learned + rules" not in result.stdout
