"""``apportion demo``, ``bench``, ``replay``, ``policies`` and ``validate``: simulated runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.console import console, fail, progress, write_outputs
from apportion.cli.logs import load_log
from apportion.cli.tables import (
    bench_table,
    cost_frontier_table,
    frontier_table,
    one_request_table,
    policies_table,
    replay_table,
    side_by_side_table,
)
from apportion.errors import ApportionError
from apportion.policies import bench_policies, check_policy_names, rule_policies


def _run_bench(workload_path: Path | None, **options: Any) -> dict[str, Any]:
    """Run the bench (the demo's workload when ``workload_path`` is None) under a progress bar.

    Options: ``policies``, ``ceiling``, ``requests``, ``seed``, and ``ceilings`` (a list):
    with ``ceilings``, the result is :func:`~apportion.sim.bench.frontier_document` with
    ``ceiling`` (default: the first of ``ceilings``) as the headline ceiling. With
    ``ceilings_usd`` (a list), it is :func:`~apportion.sim.bench.cost_frontier_document`
    at the token ceiling ``ceiling`` (default: the workload's).
    """
    from apportion.sim.bench import (
        DEFAULT_REQUESTS,
        cost_frontier_document,
        frontier_document,
        progress_total,
        run_bench,
        run_cost_frontier,
        run_frontier,
    )
    from apportion.sim.workload import load_workload

    workload = _demo_workload() if workload_path is None else load_workload(workload_path)
    policies = options.get("policies") or bench_policies(priced=bool(workload.models))
    count = options.get("requests") or workload.requests or DEFAULT_REQUESTS
    ceilings: list[int] | None = options.get("ceilings")
    ceilings_usd: list[float] | None = options.get("ceilings_usd")
    with progress() as bar:
        if ceilings_usd:
            total = progress_total(count, len(policies), len(ceilings_usd))
            task = bar.add_task("oracle + policies", total=total)
            usd_runs = run_cost_frontier(
                workload,
                ceilings_usd,
                policies=policies,
                ceiling=options.get("ceiling"),
                requests=count,
                seed=options.get("seed"),
                progress=lambda n: bar.advance(task, n),
                on_ceiling=lambda c: bar.update(
                    task, description=f"cost ceiling {c:g} USD: oracle + policies"
                ),
            )
            return cost_frontier_document(usd_runs)
        if not ceilings:
            task = bar.add_task("oracle + policies", total=progress_total(count, len(policies)))
            return run_bench(
                workload,
                policies=policies,
                ceiling=options.get("ceiling"),
                requests=count,
                seed=options.get("seed"),
                progress=lambda n: bar.advance(task, n),
            )
        total = progress_total(count, len(policies), len(ceilings))
        task = bar.add_task("oracle + policies", total=total)
        runs = run_frontier(
            workload,
            ceilings,
            policies=policies,
            requests=count,
            seed=options.get("seed"),
            progress=lambda n: bar.advance(task, n),
            on_ceiling=lambda c: bar.update(task, description=f"ceiling {c:,}: oracle + policies"),
        )
    return frontier_document(runs, options.get("ceiling") or ceilings[0])


def _demo_workload() -> Any:
    from apportion.demo import demo_workload

    return demo_workload()


def demo(
    requests: Annotated[int, typer.Option(help="Requests to simulate per ceiling.", min=1)] = 300,
    seed: Annotated[int | None, typer.Option(help="Random seed.", min=0)] = None,
    html: Annotated[
        Path, typer.Option("--html", help="Where to write the HTML page with the figure.")
    ] = Path("apportion-demo.html"),
) -> None:
    """The seed scenario: the equal split against the best policy, and a frontier page.

    No network, no API key: the model is simulated (token needs and quality come from the
    workload's declared response model), while budgets run through the real controller.
    """
    from apportion.demo import (
        DEMO_CEILINGS,
        best_policy,
        demo_page,
        demo_total,
        one_request,
        run_demo,
    )
    from apportion.files import write_atomic

    workload = _demo_workload()
    seed = workload.seed if seed is None else seed
    try:
        with progress() as bar:
            task = bar.add_task(
                f"{len(DEMO_CEILINGS)} ceilings x 5 policies + oracle", total=demo_total(requests)
            )
            document = run_demo(workload, requests, seed, lambda n: bar.advance(task, n))
        page = demo_page(document)
        write_atomic(html, page)
    except (ApportionError, OSError) as exc:
        raise fail(exc) from exc
    best = best_policy(document)
    console.print(one_request_table(*one_request(workload, workload.ceiling, seed, best)))
    console.print(side_by_side_table(document))
    console.print(bench_table(document))
    console.print(f"HTML page with the frontier figure: [bold]{html}[/]", highlight=False)


def bench(
    workload: Annotated[Path, typer.Argument(help="Workload YAML file.")],
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="Policy to run (repeatable; see 'apportion policies'; NAME@MODEL pins a "
            "workload model). Default: the rule-based ones, and routed with models.",
        ),
    ] = None,
    ceiling: Annotated[int | None, typer.Option(help="Token ceiling per request.", min=1)] = None,
    requests: Annotated[int | None, typer.Option(help="Requests to simulate.", min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", min=0)] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON here.")] = None,
    ceilings: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated ceilings (e.g. 8000,12000,16000): the quality-ceiling "
            "frontier. The JSON's top level is for --ceiling (one of them) or the first."
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a figure here (.png or .svg): the frontier with --ceilings, "
            "quality against cost with --ceilings-usd, else quality per policy."
        ),
    ] = None,
    ceilings_usd: Annotated[
        str | None,
        typer.Option(
            "--ceilings-usd",
            help="Comma-separated cost ceilings in USD (e.g. 0.02,0.05,0.1), for a workload "
            "with models: the cost-quality frontier (JSON 'frontier_usd'). The JSON's top "
            "level is for the lowest.",
        ),
    ] = None,
) -> None:
    """Compare policies on a workload file against the hindsight oracle (simulated quality).

    Default: the rule-based policies, and ``routed`` on a workload with a ``models``
    section (the table then shows each policy's cost per request). Output files are
    written whole or not at all.
    """
    from apportion.sim.bench import parse_ceilings, parse_ceilings_usd
    from apportion.sim.figures import figure_format, render_figure

    try:  # NAME@MODEL runs every call on a workload model
        check_policy_names([name.split("@", 1)[0] for name in policy or ()])
    except ApportionError as exc:
        raise fail(exc) from exc
    levels: list[int] | None = None
    usd_levels: list[float] | None = None
    try:
        if ceilings_usd is not None:
            if ceilings is not None:
                raise ValueError("give --ceilings or --ceilings-usd, not both")
            usd_levels = parse_ceilings_usd(ceilings_usd)
        if ceilings is not None:
            levels = parse_ceilings(ceilings)
            if ceiling is not None and ceiling not in levels:
                raise ValueError(
                    f"--ceiling {ceiling} must be one of --ceilings ({', '.join(map(str, levels))})"
                    ": it picks which ceiling the JSON's top level reports"
                )
        fmt = figure_format(plot) if plot is not None else None
        for path in (json_path, plot):
            if path is not None and not path.parent.is_dir():
                raise ValueError(f"{path}: directory {path.parent} does not exist")
            if path is not None and path.is_dir():
                raise ValueError(f"{path} is a directory")
    except ValueError as exc:
        raise fail(exc) from exc
    try:
        result = _run_bench(
            workload,
            policies=policy,
            ceiling=ceiling,
            requests=requests,
            seed=seed,
            ceilings=levels,
            ceilings_usd=usd_levels,
        )
    except (ApportionError, NotImplementedError, ValueError) as exc:
        raise fail(exc) from exc
    console.print(bench_table(result))
    if "frontier" in result:
        console.print(frontier_table(result["frontier"], str(result["workload"])))
    if "frontier_usd" in result:
        console.print(cost_frontier_table(result["frontier_usd"], str(result["workload"])))
    # Everything is produced in memory first: a failure leaves no file at all.
    document = json.dumps(result, indent=2) + "\n"
    image: bytes | None = None
    if plot is not None and fmt is not None:
        try:
            image = render_figure(result, fmt)
        except Exception as exc:
            raise fail(RuntimeError(f"cannot draw the figure for {plot}: {exc}")) from exc
    write_outputs(("JSON", json_path, document), ("figure", plot, image))


def policies() -> None:
    """List the registered policies: every name a Controller, bench, replay or learn takes."""
    console.print(policies_table())


def validate(
    path: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
) -> None:
    """Check a pipeline file; report the file, line and key of the first mistake."""
    from apportion.spec import Pipeline

    try:
        pipeline = Pipeline.from_yaml(path)
    except ApportionError as exc:
        raise fail(exc) from exc
    kinds = {k.name: ", ".join(k.match) or "default" for k in pipeline.kinds}
    order = " -> ".join(
        f"{a.name} ({a.priority}" + (f"; kind: {kinds[a.name]})" if a.name in kinds else ")")
        for a in pipeline.agents
    )
    console.print(f"[green]ok[/]: {len(pipeline)} agents: {order}", highlight=False)


def replay(
    calls: Annotated[
        Path,
        typer.Argument(help="Call log CSV: run, call, agent, prompt_tokens, completion_tokens."),
    ],
    pipeline: Annotated[
        Path, typer.Option("--pipeline", help="Pipeline YAML naming the log's agents.")
    ],
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="Policy to run (repeatable; see 'apportion policies'). Default: the "
            "rule-based ones.",
        ),
    ] = None,
    ceiling: Annotated[int | None, typer.Option(help="Fixed token ceiling per run.", min=1)] = None,
    ceiling_ratio: Annotated[
        float | None,
        typer.Option(help="Ceiling per run, share of the tokens it really used (default 0.8)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Runs to report on: train or test (default test).")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON here.")] = None,
) -> None:
    """Replay logged calls through the controller, one run per request (simulated quality).

    The logged prompt is each call's available input and the logged completion its output
    need. Policies that learn are fitted on the train runs and reported on --split.
    """
    from apportion.sim.replay import replay_steps, run_replay

    names = policy or rule_policies()
    try:
        check_policy_names(names)
    except ApportionError as exc:
        raise fail(exc) from exc
    if ceiling is not None and ceiling_ratio is not None:
        raise fail(ValueError("give --ceiling or --ceiling-ratio, not both"))
    try:
        spec, log = load_log(calls, pipeline, split)
        with progress() as bar:
            task = bar.add_task("replaying runs", total=replay_steps(log, names, split))
            result = run_replay(
                log,
                spec,
                policies=names,
                ceiling=ceiling,
                ceiling_ratio=ceiling_ratio,
                split=split,
                progress=lambda n: bar.advance(task, n),
            )
        console.print(replay_table(result))
        write_outputs(("JSON", json_path, json.dumps(result, indent=2) + "\n"))
    except (ApportionError, OSError) as exc:
        raise fail(exc) from exc


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``bench``, ``policies``, ``validate`` and ``replay`` to ``app``."""
    for command in (demo, bench, policies, validate, replay):
        app.command()(command)
