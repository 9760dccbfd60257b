"""``apportion learn``: the learned policy's learning curve against the oracle and the rules.

Registered on the ``apportion`` command by :func:`register` (see :mod:`apportion.cli`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.console import console, fail, progress, write_outputs
from apportion.cli.logs import load_log
from apportion.cli.tables import learn_table, limit_text
from apportion.errors import ApportionError


def learning_figure(result: dict[str, Any], fmt: Any = "png") -> bytes:
    """Quality over the oracle's against requests seen, with the best rule as a line."""
    from apportion.sim.figures import encode_figure, literal, new_figure

    fig = new_figure()
    ax = fig.add_subplot()
    xs = [p["requests"] for p in result["curve"]]
    ax.plot(xs, [p["quality_vs_oracle"] for p in result["curve"]], marker="o", label="learned")
    ax.axhline(
        1.0,
        color="#222222",
        label="upper bound" if result.get("source") == "log" else "oracle",
    )
    if result["best_rule_policy"]:
        ax.axhline(
            result["best_rule_quality_vs_oracle"],
            linestyle="--",
            color="#888888",
            label=literal(f"best rule ({result['best_rule_policy']}, final window)"),
        )
    ax.set_xlabel("requests seen")
    if result.get("source") == "log":
        ax.set_ylabel("quality / upper bound (simulated)")
        title = f"{result['pipeline']} (replayed log): learned policy, {limit_text(result)}"
    else:
        ax.set_ylabel("quality / oracle quality (simulated)")
        title = f"{result['workload']}: learned policy at ceiling {result['ceiling']}"
    ax.set_title(literal(title))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return encode_figure(fig, fmt)


def learn(
    target: Annotated[
        Path, typer.Argument(help="Workload YAML file, or a call log CSV (with --pipeline).")
    ],
    requests: Annotated[int, typer.Option(help="Requests to learn over.", min=5)] = 2000,
    pipeline: Annotated[
        Path | None,
        typer.Option("--pipeline", help="Pipeline YAML naming the log's agents (call logs)."),
    ] = None,
    ceiling: Annotated[int | None, typer.Option(help="Token ceiling.", min=1)] = None,
    ceiling_ratio: Annotated[
        float | None,
        typer.Option(
            help="Call logs: ceiling per run, share of the tokens it really used (default 0.8)."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Call logs: held-out runs to report on, train or test (default test)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", min=0)] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="Policy to compare with (repeatable; see 'apportion policies'). Default: "
            "the rule-based ones.",
        ),
    ] = None,
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
    """Run the learned policy online on a workload or a replayed call log; show its curve.

    On a workload, quality is over the hindsight oracle's. On a call log (a .csv file, with
    --pipeline), each request replays a train run at its own ceiling, and quality is over
    an upper bound no allocation can beat, so the ratios are conservative; the held-out
    runs of --split are then played once each.
    """
    from apportion.files import load_json, read_text
    from apportion.policies.learned import LearnedPolicy
    from apportion.sim.figures import figure_format
    from apportion.sim.learn import (
        RULE_POLICIES,
        compared,
        progress_steps,
        progress_steps_replay,
        run_learning,
        run_learning_replay,
    )
    from apportion.sim.workload import load_workload

    is_log = pipeline is not None or target.suffix.lower() == ".csv"
    if is_log and pipeline is None:
        raise fail(
            ValueError(
                f"{target} is a call log: give --pipeline PIPELINE.yaml, the pipeline "
                "naming its agents"
            )
        )
    if not is_log and (ceiling_ratio is not None or split is not None):
        raise fail(ValueError("--ceiling-ratio and --split apply to call logs (.csv) only"))
    if ceiling is not None and ceiling_ratio is not None:
        raise fail(ValueError("give --ceiling or --ceiling-ratio, not both"))
    try:
        rules = compared(compare or RULE_POLICIES)
        fmt = figure_format(plot) if plot is not None else None
        if pipeline is not None:
            spec, log = load_log(target, pipeline, split)
            policy = LearnedPolicy(price=price, seed=seed if seed is not None else 0)
        else:
            workload = load_workload(target)
            policy = LearnedPolicy(price=price, seed=seed if seed is not None else workload.seed)
        if warm_start is not None:
            earlier = load_json(read_text(warm_start), str(warm_start))
            if isinstance(earlier, dict) and "state" in earlier:
                got = policy.warm_start(earlier, weight=warm_weight)
            else:
                got = policy.warm_start(warm_start, weight=warm_weight)
            console.print(
                f"warm start: {got['requests']:,} weighted requests from {warm_start}",
                highlight=False,
            )
        # sized before the bar opens, so that a bad --split fails without one
        steps = (
            progress_steps_replay(log, requests, split, rules)
            if pipeline is not None
            else progress_steps(requests, len(rules))
        )
        with progress() as bar:
            if pipeline is not None:
                task = bar.add_task("learned + rules on replayed runs", total=steps)
                result = run_learning_replay(
                    log,
                    spec,
                    requests,
                    ceiling=ceiling,
                    ceiling_ratio=ceiling_ratio,
                    split=split,
                    seed=seed,
                    policy=policy,
                    rules=rules,
                    progress=lambda n: bar.advance(task, n),
                )
            else:
                task = bar.add_task("oracle + learned + rules", total=steps)
                result = run_learning(
                    workload,
                    requests,
                    ceiling=ceiling,
                    seed=seed,
                    policy=policy,
                    rules=rules,
                    progress=lambda n: bar.advance(task, n),
                )
        console.print(learn_table(result))
        write_outputs(
            ("JSON", json_path, json.dumps(result, indent=2) + "\n"),
            ("figure", plot, None if fmt is None else learning_figure(result, fmt)),
            ("state", save_state, None if save_state is None else policy.state()),
        )
    except (ApportionError, OSError, ValueError) as exc:
        raise fail(exc) from exc


def register(app: typer.Typer) -> None:
    """Add ``learn`` to ``app``."""
    for command in (learn,):
        app.command()(command)
