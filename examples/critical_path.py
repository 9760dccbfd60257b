"""Critical-path sweep on a pipeline whose priorities are wrong, and what fixing them buys.

`examples/workloads/mispriority.yaml` labels its fact checker `peripheral`, yet the fact
checker has the largest (hidden) influence on the final quality. This example:

1. sweeps the workload (starving one agent at a time under the `estimate` policy),
2. writes a copy of the workload with the priorities the sweep found,
3. benches `elastic` on both files (same requests), and
4. saves the sweep's figure and the before/after frontier to docs/images/.

Run from the repository root:  python examples/critical_path.py
Quality is simulated (the workload's response model); the bench numbers say so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from apportion.analysis.rewrite import write_priorities
from apportion.analysis.sweep import priorities_from, sweep
from apportion.analysis.sweep_plot import sweep_figure
from apportion.analysis.targets import WorkloadTarget
from apportion.files import write_atomic
from apportion.sim.bench import run_frontier
from apportion.sim.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "examples" / "workloads" / "mispriority.yaml"
IMAGES = ROOT / "docs" / "images"
CEILINGS = (12_000, 14_000, 16_000, 20_000, 24_000)


def frontier_figure(before: dict[int, dict], after: dict[int, dict]) -> bytes:
    from apportion.sim.figures import encode_figure, new_figure

    fig = new_figure()
    ax = fig.add_subplot()
    xs = sorted(before)
    ax.plot(
        xs,
        [before[c]["oracle"]["quality_mean"] for c in xs],
        "k--",
        marker="s",
        label="oracle (upper bound)",
    )
    ax.plot(
        xs,
        [after[c]["policies"]["elastic"]["quality_mean"] for c in xs],
        "-",
        marker="o",
        label="elastic, priorities from the sweep",
    )
    ax.plot(
        xs,
        [before[c]["policies"]["elastic"]["quality_mean"] for c in xs],
        "-",
        marker="o",
        label="elastic, priorities as labelled",
    )
    ax.plot(
        xs,
        [before[c]["policies"]["uniform"]["quality_mean"] for c in xs],
        ":",
        marker="o",
        label="uniform (equal split)",
    )
    ax.set_xlabel("token ceiling per request")
    ax.set_ylabel("mean request quality (simulated)")
    ax.set_title("mispriority: elastic before and after the sweep's priorities (simulated)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return encode_figure(fig, "png")


def main() -> None:
    result = sweep(WorkloadTarget(WORKLOAD, policy="estimate", requests=300), workers=2)
    priorities = priorities_from(result)
    print("ranking:", [(row["name"], row["sensitivity"]) for row in result["agents"]])
    print("critical path:", result["critical_path"])
    print("priorities from the sweep:", priorities)
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "mispriority-fixed.yaml"
        write_priorities(WORKLOAD, priorities, fixed)
        policies = ["uniform", "elastic"]
        before = run_frontier(load_workload(WORKLOAD), CEILINGS, policies=policies, requests=600)
        after = run_frontier(load_workload(fixed), CEILINGS, policies=policies, requests=600)
    print(f"{'ceiling':>8} {'elastic before':>15} {'elastic after':>14} {'oracle':>7}  (simulated)")
    for c in CEILINGS:
        print(
            f"{c:>8} {before[c]['policies']['elastic']['quality_mean']:>15.3f} "
            f"{after[c]['policies']['elastic']['quality_mean']:>14.3f} "
            f"{before[c]['oracle']['quality_mean']:>7.3f}"
        )
    IMAGES.mkdir(parents=True, exist_ok=True)
    write_atomic(IMAGES / "sweep-mispriority.png", sweep_figure(result, "png"))
    write_atomic(IMAGES / "priorities-before-after.png", frontier_figure(before, after))
    print(f"figures written to {IMAGES}")


if __name__ == "__main__":
    main()
