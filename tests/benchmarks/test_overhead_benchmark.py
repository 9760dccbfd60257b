"""``benchmarks/overhead.py``: per call, every policy against the floors, as JSON."""

from __future__ import annotations

import json

from script_run import run_script


def test_it_prints_the_floor_and_each_policys_time_per_call() -> None:
    args = ("--agents", "3", "--rounds", "4", "--block", "2", "--warmup", "2")
    found = json.loads(run_script("overhead.py", *args, "--ceiling-share", "0.8"))
    assert found["pipeline_agents"] == 3 and found["ceiling_share"] == 0.8
    assert found["floor_us_median"] > 0 and found["ratio_to_floor"] > 0
    assert set(found["policies"]) == {
        "uniform",
        "elastic",
        "estimate",
        "iterative",
        "static",
        "learned",
    }
    for figures in found["policies"].values():
        assert figures["per_call_us_median"] > 0
        assert figures["lifecycle_us_median"] >= figures["per_call_us_median"]
