"""``apportion learn``: the learned policy's learning curve against the oracle and the rules.

Registered on the ``apportion`` command (:mod:`apportion.cli`) when that module loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from apportion.cli import _fail, _progress, app, console
from apportion.errors import ApportionError


def learning_figure(result: dict[str, Any], fmt: Any = "png") -> bytes:
    """Quality over the oracle's against requests seen, with the best rule as a line."""
    from apportion.sim.figures import encode_figure, new_figure

    fig = new_figure()
    ax = fig.add_subplot()
    xs = [p["requests"] for p in result["curve"]]
    ax.plot(xs, [p["quality_vs_oracle"] for p in result["curve"]], marker="o", label="learned")
    ax.axhline(1.0, color="#222222", label="oracle")
    if result["best_rule_policy"]:
        ax.axhline(
            result["best_rule_quality_vs_oracle"],
            linestyle="--",
            color="#888888",
            label=f"best rule ({result['best_rule_policy']}, final window)",
        )
    ax.set_xlabel("requests seen")
    ax.set_ylabel("quality / oracle quality (simulated)")
    ax.set_title(f"{result['workload']}: learned policy at ceiling {result['ceiling']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return encode_figure(fig, fmt)


def _learn_table(result: dict[str, Any]) -> Table:
    table = Table(
        title=f"{result['workload']}: learning over {result['requests']} requests, "
        f"ceiling {result['ceiling']} (simulated; last {result['final_window']} requests)"
    )
    table.add_column("policy")
    table.add_column("quality / oracle", justify="right")
    table.add_row("[bold]learned[/]", f"{result['final_quality_vs_oracle']:.4f}")
    for name, value in sorted(result["rules"].items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{value:.4f}")
    return table


@app.command()
def learn(
    target: Annotated[Path, typer.Argument(help="Workload YAML file.")],
    requests: Annotated[int, typer.Option(help="Requests to learn over.", min=5)] = 2000,
    ceiling: Annotated[int | None, typer.Option(help="Token ceiling.", min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", min=0)] = None,
    price: Annotated[float, typer.Option(help="Price of the whole ceiling.", min=0.0)] = 0.02,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the figure (.png or .svg).")] = None,
    save_state: Annotated[
        Path | None, typer.Option(help="Write the learned state here (to warm-start).")
    ] = None,
    warm_start: Annotated[
        Path | None,
        typer.Option(help="Start from a saved state, or the JSON of an earlier learn run."),
    ] = None,
    warm_weight: Annotated[
        float, typer.Option(help="How much each warm-start request counts.", min=0.0)
    ] = 1.0,
) -> None:
    """Run the learned policy online on a workload; show its curve against the oracle."""
    from apportion.files import write_atomic
    from apportion.policies.learned import LearnedPolicy
    from apportion.sim.figures import figure_format
    from apportion.sim.learn import progress_steps, run_learning
    from apportion.sim.workload import load_workload

    try:
        fmt = figure_format(plot) if plot is not None else None
        workload = load_workload(target)
        policy = LearnedPolicy(price=price, seed=seed if seed is not None else workload.seed)
        if warm_start is not None:
            earlier = json.loads(warm_start.read_text(encoding="utf-8"))
            if isinstance(earlier, dict) and "state" in earlier:
                got = policy.warm_start(earlier, weight=warm_weight)
            else:
                got = policy.warm_start(warm_start, weight=warm_weight)
            console.print(
                f"warm start: {got['requests']:,} weighted requests from {warm_start}",
                highlight=False,
            )
        with _progress() as bar:
            task = bar.add_task("oracle + learned + rules", total=progress_steps(requests))
            result = run_learning(
                workload,
                requests,
                ceiling=ceiling,
                seed=seed,
                policy=policy,
                progress=lambda n: bar.advance(task, n),
            )
        console.print(_learn_table(result))
        if json_path is not None:
            write_atomic(json_path, json.dumps(result, indent=2) + "\n")
            console.print(f"JSON written to {json_path}", highlight=False)
        if plot is not None and fmt is not None:
            write_atomic(plot, learning_figure(result, fmt))
            console.print(f"figure written to {plot}", highlight=False)
        if save_state is not None:
            write_atomic(save_state, policy.state())
            console.print(f"state written to {save_state}", highlight=False)
    except (ApportionError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
