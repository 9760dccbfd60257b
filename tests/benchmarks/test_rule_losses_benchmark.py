"""``benchmarks/rule_losses.py``: the rules' losses on tuning seeds, never on held-out ones."""

from __future__ import annotations

import json

from script_run import run, run_script


def test_it_prints_each_policys_share_and_losses_on_the_tuning_seeds() -> None:
    found = json.loads(run_script("rule_losses.py", "--seeds", "2-3", "--requests", "6"))
    assert found["simulated"] is True and found["seeds"] == [2, 3]
    assert set(found["per_seed"]) == {"2", "3"}
    for name in ("estimate", "elastic"):
        figures = found["policies"][name]
        shares = [found["per_seed"][s][name] for s in ("2", "3")]
        assert figures["quality_vs_oracle_mean"] == round(sum(shares) / 2, 4)
        assert figures["at_aim"] == sum(s >= 0.92 for s in shares)
        assert {"input_grant", "output_structured"} <= set(figures["by_cut"])


def test_held_out_seeds_are_refused() -> None:
    done = run("rule_losses.py", "--seeds", "9000-9001")
    assert done.returncode == 2 and "held out" in done.stderr and not done.stdout
