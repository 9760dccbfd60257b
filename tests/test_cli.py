"""The command line, run as a user would (Typer's runner, real files)."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apportion.cli import app

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_demo_runs_offline_and_says_simulated(tmp_path: Path) -> None:
    page = tmp_path / "demo.html"
    result = runner.invoke(app, ["demo", "--requests", "40", "--html", str(page)])
    assert result.exit_code == 0, result.output
    for name in ("uniform", "static", "estimate", "elastic", "iterative", "oracle"):
        assert name in result.output
    assert "simulated" in result.output
    assert "uniform (equal split)" in result.output and "(best policy)" in result.output
    # it opens with the README's one-request table (tests/sim/test_demo_page.py checks cells)
    opening = result.output.split("uniform (equal split)")[0]
    for cell in ("equal split (4,000 each)", "3,200 never used", "12,334 / 2,440: reads it all"):
        assert cell in opening
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text
    assert "simulated" in text and "The equal split against the best policy" in text
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing is fetched


def test_demo_unwritable_html_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["demo", "--requests", "5", "--html", str(tmp_path / "missing" / "demo.html")]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "missing").exists()


def test_bench_writes_the_spec_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        [
            "bench",
            str(EXAMPLES / "workloads" / "support-triage.yaml"),
            "--policy",
            "uniform",
            "--policy",
            "elastic",
            "--requests",
            "30",
            "--ceiling",
            "9000",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert (data["requests"], data["ceiling"], data["seed"]) == (30, 9000, 7)
    assert set(data["policies"]) == {"uniform", "elastic"}
    keys = {
        "quality_mean",
        "quality_vs_oracle",
        "tokens_mean",
        "truncation_rate",
        "critical_truncation_rate",
        "unspent_mean",
        "extensions_mean",
    }
    for figures in data["policies"].values():
        assert keys <= set(figures)
        assert 0 <= figures["quality_mean"] <= data["oracle"]["quality_mean"] + 1e-9
        assert figures["tokens_mean"] <= 9000
    assert {"quality_mean", "tokens_mean"} <= set(data["oracle"])


def test_bench_unknown_policy_lists_the_known() -> None:
    result = runner.invoke(
        app, ["bench", str(EXAMPLES / "workloads" / "support-triage.yaml"), "--policy", "nope"]
    )
    assert result.exit_code == 2
    assert "elastic" in result.output and "nope" in result.output


def test_policies_lists_every_rule() -> None:
    result = runner.invoke(app, ["policies"])
    assert result.exit_code == 0
    for name in ("uniform", "static", "estimate", "elastic", "iterative"):
        assert name in result.output


def test_validate_good_and_bad(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate", str(EXAMPLES / "pipeline.yaml")])
    assert ok.exit_code == 0 and "reasoner" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  - name: a\n    priority: urgent\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "line 3" in result.output
    assert "priority" in result.output


def test_errors_keep_their_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_optuna(name: str, *args: object, **kwargs: object) -> object:
        if name == "optuna":
            raise ImportError("no optuna here")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    result = runner.invoke(
        app,
        [
            "optimize",
            str(EXAMPLES / "workloads" / "seed-scenario.yaml"),
            "--ceiling",
            "20000",
            "--trials",
            "1",
            "--requests",
            "5",
        ],
    )
    assert result.exit_code == 2
    assert "apportion[optimize]" in result.output
