"""The bench: frontier, oracle disclosure, figures, atomic files, HTML, and the CLI."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from apportion.cli import app
from apportion.files import write_atomic
from apportion.sim import load_workload
from apportion.sim.bench import (
    frontier_document,
    frontier_summary,
    parse_ceilings,
    progress_total,
    run_bench,
    run_frontier,
)
from apportion.sim.figures import bench_figure, figure_format, frontier_figure, render_figure
from apportion.sim.html import SIMULATED_NOTICE, Section, bench_page, render_html

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workloads"
SUPPORT = EXAMPLES / "support-triage.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEC_KEYS = {
    "quality_mean",
    "quality_vs_oracle",
    "tokens_mean",
    "truncation_rate",
    "critical_truncation_rate",
    "unspent_mean",
    "extensions_mean",
}
EPS = 1e-3  # quality_vs_oracle is rounded to 4 decimals

runner = CliRunner()


@pytest.fixture(scope="module")
def frontier_runs() -> dict[int, dict[str, Any]]:
    """Every built-in policy at three ceilings, given out of order, 40 requests."""
    return run_frontier(load_workload(SUPPORT), [9000, 6000, 12000], requests=40)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------- frontier


def test_frontier_runs_every_ceiling_in_ascending_order(
    frontier_runs: dict[int, dict[str, Any]],
) -> None:
    assert list(frontier_runs) == [6000, 9000, 12000]
    for level, result in frontier_runs.items():
        assert result["ceiling"] == level
        assert result["requests"] == 40
        assert result["simulated"] is True
        assert set(result["policies"]) == {"uniform", "static", "estimate", "elastic", "iterative"}


def test_frontier_json_shape(frontier_runs: dict[int, dict[str, Any]]) -> None:
    document = frontier_document(frontier_runs, 9000)
    # The spec's top-level document is that of the headline ceiling, unchanged.
    assert {"workload", "requests", "ceiling", "seed", "oracle", "policies"} <= set(document)
    assert (document["workload"], document["ceiling"], document["seed"]) == (
        "support-triage",
        9000,
        7,
    )
    assert document["policies"] == frontier_runs[9000]["policies"]
    for figures in document["policies"].values():
        assert set(figures) >= SPEC_KEYS
    frontier = document["frontier"]
    assert frontier["ceilings"] == [6000, 9000, 12000]
    assert frontier["simulated"] is True
    assert set(frontier["policies"]) == set(document["policies"])
    for name, values in frontier["policies"].items():
        assert values == [
            frontier_runs[c]["policies"][name]["quality_mean"] for c in (6000, 9000, 12000)
        ]
    assert frontier["oracle"] == [
        frontier_runs[c]["oracle"]["quality_mean"] for c in (6000, 9000, 12000)
    ]
    assert frontier["oracle_step"] == [60, 90, 120]
    assert len(frontier["oracle_relaxed_coupling_rate"]) == 3
    json.dumps(document)  # plain JSON
    assert frontier_document(frontier_runs)["ceiling"] == 6000
    with pytest.raises(ValueError, match="7000"):
        frontier_document(frontier_runs, 7000)


def test_oracle_quality_rises_with_the_ceiling(frontier_runs: dict[int, dict[str, Any]]) -> None:
    oracle = frontier_summary(frontier_runs)["oracle"]
    assert all(low <= high for low, high in itertools.pairwise(oracle))
    assert oracle[0] < oracle[-1]


def test_no_policy_beats_the_oracle(frontier_runs: dict[int, dict[str, Any]]) -> None:
    for result in frontier_runs.values():
        best = result["oracle"]["quality_mean"]
        for name, figures in result["policies"].items():
            assert figures["quality_vs_oracle"] <= 1 + EPS, (result["ceiling"], name)
            assert figures["quality_mean"] <= best + EPS, (result["ceiling"], name)


def test_oracle_states_its_step_and_relaxation(frontier_runs: dict[int, dict[str, Any]]) -> None:
    for level, result in frontier_runs.items():
        oracle = result["oracle"]
        assert oracle["step"] == max(25, level // 100)
        assert str(oracle["step"]) in oracle["discretisation"]
        assert "upstream coupling" in oracle["relaxation"]
        assert 0.0 <= oracle["relaxed_coupling_rate"] <= 1.0
        assert oracle["coupled_quality_mean"] <= oracle["quality_mean"] + 1e-9
        assert oracle["quality_mean"] <= oracle["upper_bound_mean"] + 1e-9


def test_relaxed_coupling_rate_counts_requests_that_rely_on_it() -> None:
    # mispriority's extractor reads the planner's output (upstream: true); at a tight
    # ceiling the oracle cuts upstream outputs and still lets downstream read everything.
    runs = run_frontier(
        load_workload(EXAMPLES / "mispriority.yaml"), [3000], requests=30, policies=["uniform"]
    )
    oracle = runs[3000]["oracle"]
    assert 0.0 < oracle["relaxed_coupling_rate"] <= 1.0
    assert oracle["coupled_quality_mean"] < oracle["quality_mean"]


def test_frontier_equals_single_benches_on_the_same_requests(
    frontier_runs: dict[int, dict[str, Any]],
) -> None:
    single = run_bench(load_workload(SUPPORT), ceiling=9000, requests=40)
    assert single == frontier_runs[9000]


def test_frontier_progress_covers_every_ceiling() -> None:
    ticks: list[int] = []
    seen: list[int] = []
    run_frontier(
        load_workload(SUPPORT),
        [5000, 8000],
        policies=["uniform", "elastic"],
        requests=10,
        progress=ticks.append,
        on_ceiling=seen.append,
    )
    assert sum(ticks) == progress_total(10, 2, 2) == 60
    assert seen == [5000, 8000]


@pytest.mark.parametrize("bad", [[], [0], [5000, 5000], [-1]])
def test_run_frontier_rejects_bad_ceilings(bad: list[int]) -> None:
    with pytest.raises(ValueError):
        run_frontier(load_workload(SUPPORT), bad, requests=5)


def test_parse_ceilings() -> None:
    assert parse_ceilings("6000,9000, 12000") == [6000, 9000, 12000]
    assert parse_ceilings("12000,6000,") == [12000, 6000]
    for bad, word in (("abc", "abc"), ("0", "at least 1"), ("", "at least one"), ("1,,2", "empty")):
        with pytest.raises(ValueError, match=word):
            parse_ceilings(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_ceilings("5000,5000")


# ------------------------------------------------------------------- figures


def test_figures_are_valid_png_and_svg(frontier_runs: dict[int, dict[str, Any]]) -> None:
    frontier = frontier_summary(frontier_runs)
    png = frontier_figure(frontier, "png", workload="support-triage")
    assert png.startswith(PNG_MAGIC)
    svg = frontier_figure(frontier, "svg", workload="support-triage").decode("utf-8")
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert "simulated" in svg  # the title, kept as a comment next to its glyphs
    bars = bench_figure(frontier_runs[9000], "svg").decode("utf-8")
    assert "<svg" in bars and "simulated" in bars
    assert bench_figure(frontier_runs[9000], "png").startswith(PNG_MAGIC)
    document = frontier_document(frontier_runs)
    assert render_figure(document, "svg") == frontier_figure(
        document["frontier"], "svg", workload="support-triage"
    )


def test_figure_format_by_suffix() -> None:
    assert figure_format("a/b.PNG") == "png"
    assert figure_format(Path("x.svg")) == "svg"
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        figure_format("plot.jpg")


# ------------------------------------------------------------------- atomic files


def test_write_atomic_writes_text_and_bytes(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    assert write_atomic(target, "héllo\n") == target
    assert target.read_text(encoding="utf-8") == "héllo\n"
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert files_in(tmp_path) == ["out.json"]


def test_write_atomic_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640


def test_write_atomic_failure_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert files_in(tmp_path) == ["out.json"]


def test_write_atomic_rejects_other_data_and_missing_directories(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "x", 12)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing" / "x", "data")
    assert files_in(tmp_path) == []


# ------------------------------------------------------------------- HTML


def test_bench_page_is_self_contained_and_says_simulated(
    frontier_runs: dict[int, dict[str, Any]],
) -> None:
    document = frontier_document(frontier_runs, 9000)
    figures = {
        "frontier": render_figure(document, "svg"),
        "bars": bench_figure(frontier_runs[9000], "png"),
        "bars again": bench_figure(frontier_runs[9000], "svg"),
    }
    page = bench_page(document, None, figures)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert SIMULATED_NOTICE.split(":")[0] in page
    assert page.count("simulated") >= 3
    assert "data:image/png;base64," in page
    assert page.count("<svg") == 2 and "<?xml" not in page
    assert "<script" not in page and "<link" not in page and 'src="http' not in page
    for name in ("elastic", "uniform", "oracle", "12,000", "90 tokens"):
        assert name in page
    ids = [part.split('"')[0] for part in page.split(' id="')[1:]]
    assert len(ids) == len(set(ids))  # two inline SVGs, no clashing ids
    single = bench_page(frontier_runs[9000])
    assert "against the ceiling" not in single and "simulated" in single


def test_render_html_escapes_and_notices() -> None:
    page = render_html("a <b>", [Section("s & t", "<p>ok</p>"), ("second", "")])
    assert "a &lt;b&gt;" in page and "s &amp; t" in page and "<p>ok</p>" in page
    assert "simulated" in page
    assert "simulated" not in render_html("plain", [], notice=None)


# ------------------------------------------------------------------- CLI


def test_cli_frontier_writes_json_and_png(tmp_path: Path) -> None:
    json_path, png_path = tmp_path / "f.json", tmp_path / "f.png"
    result = runner.invoke(
        app,
        [
            "bench",
            str(SUPPORT),
            "--ceilings",
            "6000,9000,12000",
            "--requests",
            "30",
            "--plot",
            str(png_path),
            "--json",
            str(json_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "simulated" in result.output and "9,000" in result.output
    assert "steps of 60 tokens" in result.output and "coupling relaxed" in result.output
    data = json.loads(json_path.read_text())
    assert data["ceiling"] == 6000 and data["requests"] == 30
    assert data["frontier"]["ceilings"] == [6000, 9000, 12000]
    assert set(data["frontier"]["policies"]) == {
        "uniform",
        "static",
        "estimate",
        "elastic",
        "iterative",
    }
    assert {"step", "discretisation", "relaxed_coupling_rate"} <= set(data["oracle"])
    assert png_path.read_bytes().startswith(PNG_MAGIC)
    assert files_in(tmp_path) == ["f.json", "f.png"]


def test_cli_ceiling_picks_the_headline(tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    args = ["bench", str(SUPPORT), "--policy", "uniform", "--requests", "10", "--json", str(out)]
    ok = runner.invoke(app, [*args, "--ceilings", "6000,9000", "--ceiling", "9000"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["ceiling"] == 9000
    bad = runner.invoke(app, [*args, "--ceilings", "6000,9000", "--ceiling", "7000"])
    assert bad.exit_code == 2 and "7000" in bad.output


def test_cli_bar_chart_as_svg_without_ceilings(tmp_path: Path) -> None:
    svg = tmp_path / "bars.svg"
    args = ["bench", str(SUPPORT), "--policy", "uniform", "--policy", "elastic"]
    result = runner.invoke(app, [*args, "--requests", "20", "--plot", str(svg)])
    assert result.exit_code == 0, result.output
    text = svg.read_text()
    assert "<svg" in text and "simulated quality per policy" in text


def test_cli_rendering_failure_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import apportion.sim.figures as figures

    def broken(document: Any, fmt: str = "png") -> bytes:
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(figures, "render_figure", broken)
    args = ["bench", str(SUPPORT), "--policy", "uniform", "--requests", "10", "--ceilings", "6000"]
    out = [*args, "--plot", str(tmp_path / "f.png"), "--json", str(tmp_path / "f.json")]
    result = runner.invoke(app, out)
    assert result.exit_code == 2
    assert "renderer crashed" in result.output
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("value", "words"),
    [("abc", ["'abc'", "whole number"]), ("0", ["'0'", "at least 1"]), ("6000,x", ["'x'"])],
)
def test_cli_bad_ceilings_are_clear(value: str, words: list[str]) -> None:
    result = runner.invoke(app, ["bench", str(SUPPORT), "--ceilings", value])
    assert result.exit_code == 2
    assert "--ceilings" in result.output
    for word in words:
        assert word in result.output


def test_cli_rejects_a_plot_suffix_before_running(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", str(SUPPORT), "--plot", str(tmp_path / "f.jpg")])
    assert result.exit_code == 2 and ".png or .svg" in result.output
    missing = tmp_path / "nowhere" / "f.json"
    result = runner.invoke(app, ["bench", str(SUPPORT), "--json", str(missing)])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_unknown_workload_key_names_file_line_and_key(tmp_path: Path) -> None:
    text = SUPPORT.read_text().replace(
        "    influence: 0.2\n", "    influence: 0.2\n    colour: red\n", 1
    )
    assert "colour: red" in text
    bad = tmp_path / "bad-workload.yaml"
    bad.write_text(text)
    line = text.splitlines().index("    colour: red") + 1
    result = runner.invoke(app, ["bench", str(bad), "--requests", "5"])
    assert result.exit_code == 2
    assert "bad-workload.yaml" in result.output
    assert f"line {line}" in result.output
    assert "colour" in result.output


def test_cli_runs_a_workload_it_has_never_seen(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(
        "name: fresh\n"
        "features:\n"
        "  pages: {median: 3, p90: 9}\n"
        "agents:\n"
        "  - name: reader\n"
        "    priority: critical\n"
        "    input: {base: 200, per_feature: {pages: 300}, noise: 0.2}\n"
        "    output: {base: 150, noise: 0.3}\n"
        "    output_kind: reasoning\n"
        "  - name: writer\n"
        "    priority: standard\n"
        "    after: [reader]\n"
        "    input: {base: 100, upstream: true}\n"
        "    output: {base: 300, noise: 0.2}\n"
    )
    out = tmp_path / "fresh.json"
    result = runner.invoke(
        app,
        ["bench", str(fresh), "--ceilings", "1500,3000", "--requests", "20", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["workload"] == "fresh" and data["frontier"]["ceilings"] == [1500, 3000]
