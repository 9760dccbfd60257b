"""A simulated progressive rollout: a worse candidate is rolled back, a better one promoted.

Plays requests of the seed scenario (simulated model: needs and quality come from the
workload's response model) through two rollouts with ``iterative`` as the baseline:

* candidate ``uniform`` (the equal split, much worse there): rolled back by a guardrail;
* candidate ``estimate`` (better there): promoted step by step to all traffic.

Run: ``python examples/rollout.py [--plot docs/images/rollout.png]``; prints each decision.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from apportion.policies import resolve_policy
from apportion.policies.rollout import Rollout
from apportion.sim.needs import draw_needs
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import load_workload

WORKLOAD = Path(__file__).parent / "workloads" / "seed-scenario.yaml"


def simulate(candidate: str, requests: int = 12_000) -> tuple[Rollout, list[float]]:
    """Play ``requests`` requests through a rollout of ``candidate`` over ``iterative``."""
    workload = load_workload(WORKLOAD)
    policies = {}
    for name in (candidate, "iterative"):  # both trained on 300 earlier requests (warm start)
        policies[name] = resolve_policy(name)
        warm = controller_for(workload, policies[name])
        for r in range(300):
            run_request(warm, workload, draw_needs(workload, 2, r), workload.ceiling or 20_000)
    rollout = Rollout(policies[candidate], policies["iterative"], min_requests=30)
    controller = controller_for(workload, rollout)
    shares = []
    for r in range(requests):
        run_request(controller, workload, draw_needs(workload, 1, r), workload.ceiling or 20_000)
        shares.append(rollout.share)
        if rollout.status != "running":
            break
    return rollout, shares


MARKERS = {"promote": ("^", 48), "hold": ("o", 30), "complete": ("*", 260), "rollback": ("X", 60)}
"""How each kind of decision is marked, and how large (``start`` is where a line begins).

The completion's star is large and drawn behind: it shares its point with the last
promotion."""


def figure(runs: dict[str, tuple[Rollout, list[float]]]) -> Any:
    """Candidate share of traffic against requests, one line per rollout.

    Decisions are marked on the lines by kind and named once in the legend, never by a
    text at each point: decisions close together (a last promotion and the completion)
    would write over each other.
    """
    from matplotlib.lines import Line2D

    from apportion.sim.figures import literal, new_figure

    fig = new_figure()
    ax = fig.add_subplot()
    handles = []
    for label, (rollout, shares) in runs.items():
        (line,) = ax.plot(
            range(1, len(shares) + 1), shares, label=literal(f"{label}: {rollout.status}")
        )
        handles.append(line)
        for kind, (marker, size) in MARKERS.items():
            points = [(e.seen, e.share) for e in rollout.events[1:] if e.kind == kind]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(
                    xs,
                    ys,
                    marker=marker,
                    s=size,
                    color=line.get_color(),
                    edgecolor="white",
                    linewidth=0.6,
                    zorder=2.5 if kind == "complete" else 3,
                )
    for kind, (marker, _) in MARKERS.items():
        if any(e.kind == kind for rollout, _ in runs.values() for e in rollout.events[1:]):
            handles.append(
                Line2D(
                    [], [], linestyle="", marker=marker, markersize=7, color="#444444", label=kind
                )
            )
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("requests")
    ax.set_ylabel("candidate's share of traffic")
    ax.set_title("seed scenario, baseline iterative: rollouts (simulated)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fig


def main() -> None:
    """Run both rollouts, print their decisions, optionally draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plot", type=Path, help="write the figure here (.png or .svg)")
    args = parser.parse_args()
    runs = {
        "uniform (worse)": simulate("uniform"),
        "estimate (better)": simulate("estimate"),
    }
    for label, (rollout, shares) in runs.items():
        print(f"{label}: {rollout.status} after {len(shares)} requests")
        for event in rollout.events:
            print(f"  {event.seen:>6} {event.kind:<9} share {event.share:>4.0%}  {event.reason}")
    if args.plot:
        from apportion.sim.figures import encode_figure, figure_format

        args.plot.write_bytes(encode_figure(figure(runs), figure_format(args.plot)))
        print(f"figure written to {args.plot}")


if __name__ == "__main__":
    main()
