"""``apportion sweep`` and ``apportion optimize``: which budgets matter, and the best split.

Registered on the ``apportion`` command by :func:`register` (see :mod:`apportion.cli`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from apportion.cli.console import console, fail, progress
from apportion.cli.tables import optimize_tables, sweep_table
from apportion.errors import ApportionError

RunnerOption = Annotated[
    str | None,
    typer.Option(
        "--runner",
        metavar="MODULE:FUNCTION",
        help="Your pipeline: a function(controller, example) running one example.",
    ),
]
"""``--runner``: your pipeline's code, the same option in ``sweep`` and ``optimize``."""


def _target(
    target: Path | None,
    runner: str | None,
    eval_path: Path | None,
    metric: str | None,
    policy: str,
    ceiling: int | None,
    requests: int,
    seed: int | None,
) -> Any:
    from apportion.analysis.targets import PipelineTarget, WorkloadTarget

    if runner or eval_path or metric:
        if target is not None or not (runner and eval_path and metric):
            raise typer.BadParameter(
                "give a workload file, or all three of --runner, --eval and --metric"
            )
        return PipelineTarget(runner, eval_path, metric, policy=policy)
    if target is None:
        raise typer.BadParameter("give a workload file, or --runner, --eval and --metric")
    return WorkloadTarget(target, policy=policy, ceiling=ceiling, requests=requests, seed=seed)


def sweep(
    target: Annotated[Path | None, typer.Argument(help="Workload YAML file.")] = None,
    fractions: Annotated[
        str, typer.Option(help="Fractions of the budget kept.")
    ] = "1,0.75,0.5,0.25",
    requests: Annotated[int, typer.Option(help="Requests per cell (workloads).", min=1)] = 300,
    policy: Annotated[str, typer.Option(help="Base policy.")] = "estimate",
    ceiling: Annotated[int | None, typer.Option(help="Token ceiling (workloads).", min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (workloads).", min=0)] = None,
    runner: RunnerOption = None,
    eval_path: Annotated[
        Path | None, typer.Option("--eval", help="JSON Lines file of examples.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="module:function scoring (example, output) in [0, 1].")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 2,
    cache_dir: Annotated[Path, typer.Option(help="Where finished cells are kept (resume).")] = Path(
        ".apportion-cache"
    ),
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the figure (.png or .svg).")] = None,
    write_priorities: Annotated[
        Path | None,
        typer.Option(help="Write a copy of the workload/pipeline with priorities set here."),
    ] = None,
) -> None:
    """Starve each agent in turn and rank them by what their budget is worth."""
    from apportion.analysis.rewrite import write_priorities as rewrite
    from apportion.analysis.sweep import parse_fractions, priorities_from
    from apportion.analysis.sweep import sweep as run_sweep
    from apportion.files import write_atomic
    from apportion.sim.figures import figure_format

    try:
        levels = parse_fractions(fractions)
        fmt = figure_format(plot) if plot is not None else None
        goal = _target(target, runner, eval_path, metric, policy, ceiling, requests, seed)
        cells = 1 + len(goal.agents) * (len(levels) - 1)
        with progress() as bar:
            task = bar.add_task(f"sweep: {cells} cells", total=cells)
            result = run_sweep(
                goal,
                levels,
                workers=workers,
                cache_dir=cache_dir,
                progress=lambda n: bar.advance(task, n),
            )
        image = None
        if fmt is not None:
            from apportion.analysis.sweep_plot import sweep_figure

            image = sweep_figure(result, fmt)
        priorities = priorities_from(result)
        result["priorities"] = priorities
        if json_path is not None:
            write_atomic(json_path, json.dumps(result, indent=2) + "\n")
        if plot is not None and image is not None:
            write_atomic(plot, image)
        if write_priorities is not None:
            source = target if target is not None else None
            if source is None:
                raise typer.BadParameter("--write-priorities needs a workload or pipeline file")
            rewrite(source, priorities, write_priorities)
    except (ApportionError, OSError, ValueError) as exc:
        raise fail(exc) from exc
    console.print(sweep_table(result))
    path = ", ".join(result["critical_path"]) or "none"
    console.print(f"critical path: [bold]{path}[/]", highlight=False)
    console.print(
        "priorities from the sweep: "
        + ", ".join(f"{name} {level}" for name, level in priorities.items()),
        highlight=False,
    )
    for label, path_written in (
        ("JSON", json_path),
        ("figure", plot),
        ("pipeline", write_priorities),
    ):
        if path_written is not None:
            console.print(f"{label} written to {path_written}", highlight=False)


def optimize(
    target: Annotated[Path | None, typer.Argument(help="Workload YAML file.")] = None,
    ceiling: Annotated[int, typer.Option(help="The fixed total to split.", min=1)] = ...,  # type: ignore[assignment]
    trials: Annotated[int, typer.Option(help="Optuna trials.", min=1)] = 60,
    requests: Annotated[int, typer.Option(help="Requests per trial (workloads).", min=1)] = 200,
    policy: Annotated[str, typer.Option(help="Policy whose usage seeds the search.")] = "estimate",
    seed: Annotated[int | None, typer.Option(help="Random seed.", min=0)] = None,
    runner: RunnerOption = None,
    eval_path: Annotated[Path | None, typer.Option("--eval", help="JSON Lines examples.")] = None,
    metric: Annotated[str | None, typer.Option(help="module:function metric.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the budgets file here.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON here.")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Share one study with other workers: sqlite:///FILE, postgresql://..., "
            "journal:///FILE (--trials is then the study's total).",
        ),
    ] = None,
    study_name: Annotated[str | None, typer.Option(help="The study's name in --storage.")] = None,
    compare: Annotated[
        bool, typer.Option(help="Measure uniform, the built-in policies and the oracle too.")
    ] = True,
) -> None:
    """Search the best per-agent split of a fixed total; write a budgets file for static.

    With --storage, run the same command from as many workers (processes, machines) as
    you like: they share one Optuna study and stop when it holds --trials trials.
    """
    from apportion.analysis.optimize import optimize as run_optimize
    from apportion.files import write_atomic

    try:
        goal = _target(target, runner, eval_path, metric, policy, ceiling, requests, seed)
        with progress() as bar:
            task = bar.add_task(f"optimize: {trials} trials", total=trials)
            result = run_optimize(
                goal,
                ceiling,
                trials=trials,
                seed=seed or 0,
                progress=lambda n: bar.advance(task, n),
                storage=storage,
                study_name=study_name,
            )
            best_policy = result.pop("policy")
            comparison = _compare(goal, target, ceiling, requests, seed, bar) if compare else {}
        result["compare"] = comparison
        if output is not None:
            write_atomic(output, best_policy.to_yaml())
        if json_path is not None:
            write_atomic(json_path, json.dumps(result, indent=2) + "\n")
    except (ApportionError, OSError, ValueError) as exc:
        raise fail(exc) from exc
    table, budgets = optimize_tables(result, ceiling)
    console.print(table)
    console.print(budgets)
    if storage is not None:
        console.print(
            f"study {result['study']!r} in {result['storage']}: {result['trials']} trials "
            "finished over all its workers; the best of them is above",
            highlight=False,
        )
    if output is not None:
        console.print(f"budgets written to {output} (load with policy='static:{output}')")


def _compare(
    goal: Any, target: Path | None, ceiling: int, requests: int, seed: int | None, bar: Progress
) -> dict[str, float]:
    """Quality of uniform, the best built-in policy and (workloads) the oracle.

    The comparison is a task of its own on ``bar``: a bench of every default policy on a
    workload, one measure per rule-based policy on a user's pipeline.
    """
    from apportion.policies import bench_policies, resolve_policy, rule_policies

    label = "comparing with the built-in policies"
    scores: dict[str, float] = {}
    if target is not None and goal.simulated:
        from apportion.sim.bench import progress_total, run_bench
        from apportion.sim.workload import load_workload

        workload = load_workload(target)
        names = bench_policies(priced=bool(workload.models))
        task = bar.add_task(label, total=progress_total(requests, len(names)))
        bench = run_bench(
            workload,
            policies=names,
            ceiling=ceiling,
            requests=requests,
            seed=seed,
            progress=lambda n: bar.advance(task, n),
        )
        policies = bench["policies"]
        scores["uniform (equal split)"] = policies["uniform"]["quality_mean"]
        best = max(
            (p for p in policies if p != "uniform"), key=lambda p: policies[p]["quality_mean"]
        )
        scores[f"best built-in policy ({best})"] = policies[best]["quality_mean"]
        scores["oracle (upper bound)"] = bench["oracle"]["quality_mean"]
        return scores
    names = [name for name in rule_policies() if name != "static"]  # static needs budgets
    task = bar.add_task(label, total=len(names))
    for name in names:
        scores[name] = goal.measure(resolve_policy(name)).quality
        bar.advance(task, 1)
    return scores


def register(app: typer.Typer) -> None:
    """Add ``sweep``, ``optimize`` to ``app``."""
    for command in (
        sweep,
        optimize,
    ):
        app.command()(command)
