"""The ``apportion`` command line: ``demo``, ``bench``, ``policies``, ``validate``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from apportion.errors import ApportionError
from apportion.policies import POLICIES

app = typer.Typer(
    help="Token budgets per agent for multi-agent LLM pipelines.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(width=None if sys.stdout.isatty() else 120)


def main() -> None:
    """Entry point of the ``apportion`` command.

    Last resort: an exception that is not handled (a bug, never bad input: the loaders
    raise ApportionError) prints one ``error:`` line and exits with 2;
    ``APPORTION_DEBUG=1`` shows the traceback instead.
    """
    try:
        app()
    except Exception as exc:
        if os.environ.get("APPORTION_DEBUG"):
            raise
        from apportion.limits import excerpt

        shown = excerpt(str(exc), 120)[1:-1]
        console.print(
            f"error: internal error ({type(exc).__name__}: {escape(shown)}); please report "
            "it (APPORTION_DEBUG=1 shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(2) from None


def _fail(error: Exception) -> typer.Exit:
    # escape: messages hold brackets (``apportion[redis]``, ``agents[2]``) Rich would eat
    console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _load_log(calls: Path, pipeline: Path, split: str | None) -> tuple[Any, Any]:
    """The pipeline and the call log it names (noting a ``--split`` that filters nothing)."""
    from apportion.sim.replay import load_calls
    from apportion.spec import Pipeline

    spec = Pipeline.from_yaml(pipeline)
    log = load_calls(calls, spec)
    if split is not None and not log.has_split:
        console.print(
            f"note: {calls} has no split column: --split filters nothing",
            highlight=False,
            soft_wrap=True,
        )
    return spec, log


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _bench_table(result: dict[str, Any]) -> Table:
    from apportion.sim.bench import policy_cells

    table = Table(
        title=(
            f"{result['workload']}: {result['requests']} requests, ceiling {result['ceiling']}"
            " [dim](simulated quality)[/]"
        )
    )
    for header in ("policy", "quality", "/oracle", "tokens", "cut", "crit.cut", "unspent", "ext."):
        table.add_column(header, justify="left" if header == "policy" else "right", no_wrap=True)
    oracle = result["oracle"]
    rows = sorted(result["policies"].items(), key=lambda kv: -kv[1]["quality_mean"])
    for name, f in rows:
        table.add_row(name, *policy_cells(f))
    table.add_row(
        "[italic]oracle[/]",
        f"{oracle['quality_mean']:.3f}",
        "100.0%",
        f"{oracle['tokens_mean']:,.0f}",
        "",
        "",
        "",
        "",
    )
    relaxed = oracle.get("relaxed_coupling_rate")
    table.caption = (
        "quality: simulated by the workload's response model; cut: calls whose input or output "
        "was cut; crit.cut: the same for critical agents; ext.: extensions per request; "
        f"oracle: knows every need, budgets in steps of {oracle['step']} tokens"
        + (
            ", upstream coupling relaxed (a downstream agent may read its full input even "
            f"when an upstream output was cut; it mattered in {relaxed:.1%} of requests)"
            if relaxed is not None
            else ""
        )
    )
    return table


def _frontier_table(frontier: dict[str, Any], workload: str) -> Table:
    """Simulated quality per policy (rows) at each ceiling (columns), the oracle last."""
    ceilings = frontier["ceilings"]
    table = Table(
        title=f"{workload}: quality against the ceiling [dim](simulated quality)[/]",
        caption=(
            "same requests at every ceiling; oracle budgets in steps of "
            + ", ".join(str(s) for s in frontier["oracle_step"])
            + " tokens"
        ),
    )
    table.add_column("policy", no_wrap=True)
    for level in ceilings:
        table.add_column(f"{level:,}", justify="right", no_wrap=True)
    rows = sorted(frontier["policies"].items(), key=lambda kv: -sum(kv[1]))
    for name, values in rows:
        table.add_row(name, *(f"{q:.3f}" for q in values))
    table.add_row("[italic]oracle[/]", *(f"{q:.3f}" for q in frontier["oracle"]))
    return table


def _cost_frontier_table(frontier: dict[str, Any], workload: str) -> Table:
    """Quality and cost per request per policy (rows) at each cost ceiling (columns)."""
    table = Table(
        title=f"{workload}: quality against cost [dim](simulated quality and prices)[/]",
        caption=f"same requests at every cost ceiling; {frontier['ceiling']:,} tokens; "
        "each cell: quality / USD per request",
    )
    table.add_column("policy", no_wrap=True)
    for level in frontier["ceilings_usd"]:
        table.add_column(f"{level:g} USD", justify="right", no_wrap=True)
    rows = sorted(frontier["policies"].items(), key=lambda kv: -sum(kv[1]["quality"]))
    for name, values in [*rows, ("[italic]oracle[/]", frontier["oracle"])]:
        cells = (
            f"{q:.3f} / {c:.4f}" for q, c in zip(values["quality"], values["cost"], strict=True)
        )
        table.add_row(name, *cells)
    return table


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
    policies = options.get("policies") or list(POLICIES)
    count = options.get("requests") or workload.requests or DEFAULT_REQUESTS
    ceilings: list[int] | None = options.get("ceilings")
    ceilings_usd: list[float] | None = options.get("ceilings_usd")
    with _progress() as bar:
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


@app.command()
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
        run_demo,
        side_by_side_table,
        walkthrough,
    )
    from apportion.files import write_atomic

    workload = _demo_workload()
    seed = workload.seed if seed is None else seed
    try:
        with _progress() as bar:
            task = bar.add_task(
                f"{len(DEMO_CEILINGS)} ceilings x 5 policies + oracle", total=demo_total(requests)
            )
            document = run_demo(workload, requests, seed, lambda n: bar.advance(task, n))
        page = demo_page(document)
        write_atomic(html, page)
    except (ApportionError, OSError) as exc:
        raise _fail(exc) from exc
    best = best_policy(document)
    console.print(walkthrough(workload, workload.ceiling, seed, best))
    console.print(side_by_side_table(document))
    console.print(_bench_table(document))
    console.print(f"HTML page with the frontier figure: [bold]{html}[/]", highlight=False)


@app.command()
def bench(
    workload: Annotated[Path, typer.Argument(help="Workload YAML file.")],
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="Policy to run (repeatable).")
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

    Default: every built-in policy. Output files are written whole or not at all.
    """
    from apportion.files import write_atomic
    from apportion.policies import ROUTING
    from apportion.sim.bench import parse_ceilings, parse_ceilings_usd
    from apportion.sim.figures import figure_format, render_figure

    for name in policy or ():  # NAME@MODEL runs every call on a workload model
        if name.split("@", 1)[0] not in {**POLICIES, **ROUTING}:
            known = ", ".join([*POLICIES, *ROUTING])
            raise _fail(ValueError(f"unknown policy {name!r}; choose from {known}"))
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
        raise _fail(exc) from exc
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
        raise _fail(exc) from exc
    console.print(_bench_table(result))
    if "frontier" in result:
        console.print(_frontier_table(result["frontier"], str(result["workload"])))
    if "frontier_usd" in result:
        console.print(_cost_frontier_table(result["frontier_usd"], str(result["workload"])))
    # Everything is produced in memory first: a failure leaves no file at all.
    document = json.dumps(result, indent=2) + "\n"
    image: bytes | None = None
    if plot is not None and fmt is not None:
        try:
            image = render_figure(result, fmt)
        except Exception as exc:
            raise _fail(RuntimeError(f"cannot draw the figure for {plot}: {exc}")) from exc
    try:
        if json_path is not None:
            write_atomic(json_path, document)
            console.print(f"JSON written to {json_path}")
        if plot is not None and image is not None:
            write_atomic(plot, image)
            console.print(f"figure written to {plot}")
    except OSError as exc:
        raise _fail(exc) from exc


@app.command()
def policies() -> None:
    """List the built-in policies and their rules."""
    import inspect

    table = Table(title="built-in policies")
    table.add_column("name")
    table.add_column("rule")
    for name, factory in POLICIES.items():
        module = inspect.getmodule(factory)
        doc = (module.__doc__ or "").strip().split("\n\n")
        rule = " ".join(doc[1].split()) if len(doc) > 1 else doc[0]
        table.add_row(name, rule)
    console.print(table)


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
) -> None:
    """Check a pipeline file; report the file, line and key of the first mistake."""
    from apportion.spec import Pipeline

    try:
        pipeline = Pipeline.from_yaml(path)
    except ApportionError as exc:
        raise _fail(exc) from exc
    order = " -> ".join(f"{a.name} ({a.priority})" for a in pipeline.agents)
    console.print(f"[green]ok[/]: {len(pipeline)} agents: {order}", highlight=False)


@app.command()
def replay(
    calls: Annotated[
        Path,
        typer.Argument(help="Call log CSV: run, call, agent, prompt_tokens, completion_tokens."),
    ],
    pipeline: Annotated[
        Path, typer.Option("--pipeline", help="Pipeline YAML naming the log's agents.")
    ],
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="Policy to run (repeatable).")
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
    from apportion.files import write_atomic
    from apportion.sim.replay import (
        replay_steps,
        replay_table,
        run_replay,
    )

    names = policy or list(POLICIES)
    for name in names:
        if name not in POLICIES:
            raise _fail(ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}"))
    if ceiling is not None and ceiling_ratio is not None:
        raise _fail(ValueError("give --ceiling or --ceiling-ratio, not both"))
    try:
        spec, log = _load_log(calls, pipeline, split)
        with _progress() as bar:
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
        if json_path is not None:
            write_atomic(json_path, json.dumps(result, indent=2) + "\n")
            console.print(f"JSON written to {json_path}")
    except (ApportionError, OSError) as exc:
        raise _fail(exc) from exc


# Commands kept in modules of their own register themselves on ``app`` when imported.
from apportion import (  # noqa: E402
    cli_learn,  # noqa: F401  (learn)
    cli_sweep,  # noqa: F401  (sweep, optimize)
    cli_telemetry,  # noqa: F401  (report, profile, ingest)
)
