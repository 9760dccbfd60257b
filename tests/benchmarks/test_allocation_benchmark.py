"""``benchmarks/allocation.py`` prints one JSON document with every section (tiny run)."""

from __future__ import annotations

import json

from script_run import run_script


def test_the_allocation_benchmark_prints_every_section() -> None:
    args = [
        "--requests", "6", "--seeds", "1", "--tight", "0.7", "--learn-requests", "8",
        "--shift-requests", "20", "--shift-seeds", "1", "--shift-width", "5",
        "--only", "support-triage", "--only", "optional-agents", "--no-replay", "--no-progress",
        "--routing-requests", "10",
    ]  # fmt: skip
    document = json.loads(run_script("allocation.py", *args))
    assert set(document["workloads"]) == {"support-triage"}
    optional = document["trees"]["optional-agents"]  # a tree's losses, per line
    assert set(optional["losses"]) == set(optional["policies"])
    rows = optional["losses"]["elastic"]["agents"]
    assert 0 < rows["escalation"]["calls_per_request"] < rows["reasoner"]["calls_per_request"]
    triage = document["workloads"]["support-triage"]
    assert {"uniform", "estimate", "elastic", "learned"} <= set(triage["policies"])
    assert set(triage["losses"]) == set(triage["policies"])
    for name, block in triage["losses"].items():
        gap = triage["oracle"]["quality_mean"] - triage["policies"][name]["quality_mean"]
        assert abs(block["gap"] - gap) < 2e-4
    assert document["options"]["unseen_seeds"] == [9001]
    assert set(document["unseen"]["default"]) == {"unseen-9001"}
    assert set(document["unseen"]["tight"]["0.7"]) == {"unseen-9001"}
    assert document["learned_curves"]["unseen-9001"]["0.7"]["first_20_size"] == 8
    shift = document["shift"]["9101"]
    assert shift["shift_at"] == 10
    assert len(shift["policies"]["learned"]["curve"]) == 4
    routing = document["routing"]["unseen"]["unseen-9001"]
    assert routing["simulated"] and routing["best_non_routing"] in routing["policies"]
    assert set(routing["vs_best_non_routing"]) == {"routed", "learned-routed"}
    assert 0 < routing["cheapest_at_0.97"] <= 1
    capability = document["routing"]["capability"]
    assert capability["width"] == 10
    assert {name: len(q) for name, q in capability["quality_windows"].items()} == {
        "told": 1,
        "learning": 1,
        "truth": 1,
    }
