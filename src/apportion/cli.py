"""The ``apportion`` command line: ``demo``, ``bench``, ``policies``, ``validate``."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
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
DEMO_WORKLOAD = "support-triage.yaml"


def main() -> None:
    """Entry point of the ``apportion`` command."""
    app()


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


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
        table.add_row(
            name,
            f"{f['quality_mean']:.3f}",
            f"{f['quality_vs_oracle']:.1%}",
            f"{f['tokens_mean']:,.0f}",
            f"{f['truncation_rate']:.1%}",
            f"{f['critical_truncation_rate']:.1%}",
            f"{f['unspent_mean']:,.0f}",
            f"{f['extensions_mean']:.2f}",
        )
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
    table.caption = (
        "quality: simulated by the workload's response model; cut: calls whose input or output "
        "was cut; crit.cut: the same for critical agents; ext.: extensions per request; "
        f"oracle: knows every need, budgets in steps of {oracle['step']} tokens"
    )
    return table


def _run_bench(workload_path: Path | None, **options: Any) -> dict[str, Any]:
    from apportion.sim.bench import run_bench
    from apportion.sim.workload import load_workload

    workload = _demo_workload() if workload_path is None else load_workload(workload_path)
    policies = options.get("policies") or list(POLICIES)
    count = options.get("requests") or workload.requests or 1000
    with _progress() as bar:
        task = bar.add_task("oracle + policies", total=count * (len(policies) + 1))
        return run_bench(
            workload,
            policies=policies,
            ceiling=options.get("ceiling"),
            requests=count,
            seed=options.get("seed"),
            progress=lambda n: bar.advance(task, n),
        )


def _demo_workload() -> Any:
    from apportion.sim.workload import load_workload

    source = resources.files("apportion.sim").joinpath("workloads", DEMO_WORKLOAD)
    with resources.as_file(source) as path:
        return load_workload(path)


def _walkthrough(ceiling: int, seed: int) -> Table:
    """A long request that fits the ceiling, under the equal split and under elastic."""
    from apportion.sim.bench import trace_request
    from apportion.sim.needs import draw_needs

    workload = _demo_workload()
    pool = [draw_needs(workload, seed + 1, r) for r in range(200)]
    fits = [n for n in pool if n.total <= ceiling * 0.9] or pool
    needs = max(fits, key=lambda n: max(n.need_in))
    warmup = [n for n in pool if n is not needs][:150]
    traces = {
        name: trace_request(workload, name, needs, ceiling, warmup=warmup, seed=seed)
        for name in ("uniform", "elastic")
    }
    table = Table(
        title=(
            f"one request ({needs.features.get('messages')} messages, needs {needs.total:,} of "
            f"the {ceiling:,} ceiling): needs vs grants, read / write tokens"
        )
    )
    for header in ("agent", "needs", "uniform grant", "elastic grant"):
        table.add_column(header, no_wrap=True)
    for index, agent in enumerate(workload.agents):
        cells = []
        for name in ("uniform", "elastic"):
            t = traces[name][1][index]
            cut = t.read < t.need_in or t.wrote < t.need_out
            mark = "[red]cut[/]" if cut else "[green]ok[/]"
            cells.append(f"{t.granted_in:,} / {t.granted_out:,} {mark}")
        t = traces["uniform"][1][index]
        table.add_row(f"{agent.name} ({agent.priority})", f"{t.need_in:,} / {t.need_out:,}", *cells)
    table.add_row(
        "request quality (simulated)",
        "",
        *(f"{traces[name][0].quality:.3f}" for name in ("uniform", "elastic")),
    )
    return table


@app.command()
def demo(
    requests: Annotated[int, typer.Option(help="Requests to simulate.", min=1)] = 300,
    ceiling: Annotated[int, typer.Option(help="Token ceiling per request.", min=1)] = 12_000,
    seed: Annotated[int, typer.Option(help="Random seed.", min=0)] = 7,
) -> None:
    """Show the equal-budget problem and the five policies on a simulated support pipeline.

    No network, no API key: the model is simulated (token needs and quality come from the
    workload's declared response model), while budgets run through the real controller.
    """
    try:
        result = _run_bench(None, requests=requests, ceiling=ceiling, seed=seed)
    except ApportionError as exc:
        raise _fail(exc) from exc
    console.print(_walkthrough(ceiling, seed))
    console.print(_bench_table(result))
    uniform = result["policies"]["uniform"]
    best_name, best = max(result["policies"].items(), key=lambda kv: kv[1]["quality_mean"])
    console.print(
        f"\nEqual split ([bold]uniform[/]): simulated quality {uniform['quality_mean']:.3f}, "
        f"critical agent cut in {uniform['critical_truncation_rate']:.0%} of calls, "
        f"{uniform['unspent_mean']:,.0f} tokens left unspent per request.\n"
        f"Best policy ([bold]{best_name}[/]): {best['quality_mean']:.3f} "
        f"({best['quality_vs_oracle']:.0%} of the oracle), critical agent cut in "
        f"{best['critical_truncation_rate']:.0%} of calls.",
        highlight=False,
    )


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
) -> None:
    """Compare policies on a workload file against the hindsight oracle (simulated quality)."""
    for name in policy or ():
        if name not in POLICIES:
            raise _fail(ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}"))
    try:
        result = _run_bench(
            workload, policies=policy, ceiling=ceiling, requests=requests, seed=seed
        )
    except ApportionError as exc:
        raise _fail(exc) from exc
    console.print(_bench_table(result))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"JSON written to {json_path}")


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
