"""The cost-against-quality frontier: ``run_cost_frontier``, its JSON block, figure, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apportion.cli import app
from apportion.sim.bench import (
    cost_frontier_document,
    parse_ceilings_usd,
    run_cost_frontier,
)
from apportion.sim.figures import render_figure
from apportion.sim.workload import load_workload

ROOT = Path(__file__).resolve().parents[2]
ROUTING = ROOT / "examples" / "workloads" / "routing.yaml"
POLICIES = ["routed", "uniform@small", "elastic@large"]


def test_parse_ceilings_usd():
    assert parse_ceilings_usd("0.02, 0.1,") == [0.02, 0.1]
    for bad, words in (("", "at least one"), ("x", "not a number"), ("-1", "positive")):
        with pytest.raises(ValueError, match=words):
            parse_ceilings_usd(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_ceilings_usd("0.1,0.1")


def test_cost_frontier_runs_each_cost_ceiling_on_the_same_requests():
    workload = load_workload(ROUTING)
    runs = run_cost_frontier(workload, [0.1, 0.02], policies=POLICIES, requests=30)
    assert list(runs) == [0.02, 0.1]
    assert runs[0.02]["ceiling_usd"] == 0.02
    document = cost_frontier_document(runs)
    block = document["frontier_usd"]
    assert block["simulated"] is True
    assert block["ceilings_usd"] == [0.02, 0.1]
    assert block["ceiling"] == workload.ceiling
    routed = block["policies"]["routed"]
    assert len(routed["quality"]) == len(routed["cost"]) == 2
    # more money buys the routed policy more quality, and it stays under each ceiling
    assert routed["quality"][1] > routed["quality"][0]
    assert routed["cost"][0] <= 0.02 and routed["cost"][1] <= 0.1
    # the small model's uniform policy does not care about the cost ceiling
    small = block["policies"]["uniform@small"]
    assert small["quality"][0] == small["quality"][1]
    assert len(block["oracle"]["relaxed_cost_rate"]) == 2
    assert render_figure(document, "svg").startswith(b"<?xml")


def test_cost_frontier_needs_models():
    workload = load_workload(ROOT / "examples" / "workloads" / "support-triage.yaml")
    with pytest.raises(ValueError, match="no models section"):
        run_cost_frontier(workload, [0.1], policies=["elastic"], requests=2)


def test_bench_cli_ceilings_usd(tmp_path: Path):
    out, plot = tmp_path / "f.json", tmp_path / "f.png"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(ROUTING),
            "--policy",
            "routed",
            "--policy",
            "uniform@small",
            "--requests",
            "10",
            "--ceilings-usd",
            "0.05,0.1",
            "--json",
            str(out),
            "--plot",
            str(plot),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "quality against cost" in result.output
    document = json.loads(out.read_text())
    assert document["frontier_usd"]["ceilings_usd"] == [0.05, 0.1]
    assert document["ceiling_usd"] == 0.05
    assert plot.read_bytes().startswith(b"\x89PNG")
    both = CliRunner().invoke(
        app, ["bench", str(ROUTING), "--ceilings", "8000", "--ceilings-usd", "0.1"]
    )
    assert both.exit_code != 0 and "not both" in both.output


def test_the_oracle_can_honour_the_cost_ceiling():
    from apportion.sim.needs import draw_needs
    from apportion.sim.oracle import Oracle

    workload = load_workload(ROUTING)
    oracle = Oracle(workload)
    needs = [draw_needs(workload, 5, r) for r in range(12)]
    for usd in (0.02, 0.05):
        relaxed = [oracle.solve(n, 24_000, ceiling_usd=usd) for n in needs]
        honoured = [oracle.solve(n, 24_000, ceiling_usd=usd, honour_cost=True) for n in needs]
        assert any(r.relaxed_cost for r in relaxed)
        for r, h in zip(relaxed, honoured, strict=True):
            assert not h.relaxed_cost and h.cost <= usd + 1e-12
            assert h.quality <= r.quality + 1e-9 <= h.upper_bound + 1e-9
            assert h.tokens <= 24_000
    # more money buys the honouring oracle more quality
    cheap = sum(oracle.solve(n, 24_000, ceiling_usd=0.02, honour_cost=True).quality for n in needs)
    dear = sum(oracle.solve(n, 24_000, ceiling_usd=0.05, honour_cost=True).quality for n in needs)
    assert dear > cheap
    # the multiplier is reset: a later relaxed solve is unchanged
    assert oracle.solve(needs[0], 24_000).quality == relaxed[0].quality
