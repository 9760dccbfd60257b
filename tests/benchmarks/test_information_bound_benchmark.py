"""``benchmarks/information_bound.py``: the policies, and the policies told more."""

from __future__ import annotations

import json
from pathlib import Path

from script_run import run, run_script

EXAMPLES = Path(__file__).parents[2] / "examples" / "workloads"


def test_it_prints_each_runs_share_per_workload_ceiling_and_policy() -> None:
    found = json.loads(
        run_script(
            "information_bound.py",
            *("--seeds", "4", "--ratios", "default,0.7", "--requests", "9"),
            *("--policy", "learned", "--policy", "estimate"),
        )
    )
    assert found["simulated"] is True and found["seeds"] == [4, 4]
    assert list(found["knows"]) == [
        "shipped",
        "calls",
        "hidden-weights",
        "needs-before-noise",
        "clairvoyant",
    ]
    shares = found["workloads"]["unseen-4"]
    assert set(shares) == {"default", "0.7"}
    for ratio, row in shares.items():
        # no trees: every agent calls once, there are no calls to tell
        assert list(row["learned"]) == [k for k in found["knows"] if k != "calls"]
        assert list(row["estimate"]) == ["shipped", "needs-before-noise", "clairvoyant"]
        for policy, runs in row.items():
            assert all(0 < share <= 1.5 for share in runs.values())
            for name, share in runs.items():
                assert found["summary"][ratio][policy][name] == {"mean": share, "min": share}


def test_bad_ratios_are_refused() -> None:
    done = run("information_bound.py", "--ratios", "0,x")
    assert done.returncode == 2 and "ratios are" in done.stderr and not done.stdout


def test_workload_files_with_trees_are_told_their_calls() -> None:
    found = json.loads(
        run_script(
            "information_bound.py",
            *("--workload", str(EXAMPLES / "optional-agents.yaml"), "--seed", "3"),
            *("--ratios", "default,0.8", "--requests", "6", "--policy", "estimate"),
        )
    )
    assert found["seeds"] == [3] and found["workloads_from"][0].endswith("optional-agents.yaml")
    row = found["workloads"]["optional-agents"]
    assert set(row) == {"default", "0.8"}
    assert list(row["0.8"]["estimate"]) == [
        "shipped",
        "calls",
        "needs-before-noise",
        "clairvoyant",
    ]


def test_a_bad_workload_file_is_one_line() -> None:
    done = run("information_bound.py", "--workload", "no-such-file.yaml")
    assert done.returncode == 2 and "no-such-file.yaml" in done.stderr and not done.stdout
    assert "Traceback" not in done.stderr
