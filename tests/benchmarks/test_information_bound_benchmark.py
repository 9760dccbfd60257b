"""``benchmarks/information_bound.py``: the policies, and the policies told more."""

from __future__ import annotations

import json

from script_run import run, run_script


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
        "hidden-weights",
        "needs-before-noise",
        "clairvoyant",
    ]
    shares = found["workloads"]["unseen-4"]
    assert set(shares) == {"default", "0.7"}
    for ratio, row in shares.items():
        assert list(row["learned"]) == list(found["knows"])
        assert list(row["estimate"]) == ["shipped", "needs-before-noise", "clairvoyant"]
        for policy, runs in row.items():
            assert all(0 < share <= 1.5 for share in runs.values())
            for name, share in runs.items():
                assert found["summary"][ratio][policy][name] == {"mean": share, "min": share}


def test_bad_ratios_are_refused() -> None:
    done = run("information_bound.py", "--ratios", "0,x")
    assert done.returncode == 2 and "ratios are" in done.stderr and not done.stdout
