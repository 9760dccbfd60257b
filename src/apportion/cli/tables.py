"""Every Rich table the ``apportion`` commands print, built from their JSON documents.

The documents come from the layers below (``sim``, ``demo``, ``analysis``); only the
command line draws them, so only this module imports ``rich.table``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table


def policies_table() -> Table:
    """The registered policies: name, kind and rule (from each module's docstring)."""
    from apportion.policies.registry import REGISTRY

    table = Table(title="registered policies")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("rule")
    for name, entry in REGISTRY.items():
        module = inspect.getmodule(entry.factory)
        doc = (module.__doc__ if module is not None else None) or ""
        parts = doc.strip().split("\n\n")
        rule = " ".join(parts[1].split()) if len(parts) > 1 else parts[0]
        table.add_row(name, entry.kind, rule)
    return table


def bench_table(result: Mapping[str, Any]) -> Table:
    """A bench result: one row per policy (best first), then the oracle.

    A workload that prices its calls (a ``models`` section) also gets each policy's mean
    cost per request, in USD.
    """
    from apportion.sim.bench import policy_cells

    table = Table(
        title=(
            f"{result['workload']}: {result['requests']} requests, ceiling {result['ceiling']}"
            " [dim](simulated quality)[/]"
        )
    )
    priced = is_priced(result)
    headers = ["policy", "quality", "/oracle", "tokens", "cut", "crit.cut", "unspent", "ext."]
    if priced:
        headers.append("USD/req")
    for header in headers:
        table.add_column(header, justify="left" if header == "policy" else "right", no_wrap=True)
    oracle = result["oracle"]
    rows = sorted(result["policies"].items(), key=lambda kv: -kv[1]["quality_mean"])
    for name, f in rows:
        cost = [f"{f.get('cost_mean', 0.0):.4f}"] if priced else []
        table.add_row(name, *policy_cells(f), *cost)
    oracle_cost = [f"{oracle.get('cost_mean', 0.0):.4f}"] if priced else []
    table.add_row(
        "[italic]oracle[/]",
        f"{oracle['quality_mean']:.3f}",
        "100.0%",
        f"{oracle['tokens_mean']:,.0f}",
        "",
        "",
        "",
        "",
        *oracle_cost,
    )
    relaxed = oracle.get("relaxed_coupling_rate")
    table.caption = (
        "quality: simulated by the workload's response model; cut: calls whose input or output "
        "was cut; crit.cut: the same for critical agents; ext.: extensions per request; "
        + ("USD/req: mean cost per request at the workload's prices; " if priced else "")
        + f"oracle: knows every need, budgets in steps of {oracle['step']} tokens"
        + (
            ", upstream coupling relaxed (a downstream agent may read its full input even "
            f"when an upstream output was cut; it mattered in {relaxed:.1%} of requests)"
            if relaxed is not None
            else ""
        )
    )
    return table


def is_priced(result: Mapping[str, Any]) -> bool:
    """Whether a bench result has costs: its workload prices calls (a ``models`` section)."""
    figures = [result["oracle"], *result["policies"].values()]
    return any(f.get("cost_mean") for f in figures)


def frontier_table(frontier: Mapping[str, Any], workload: str) -> Table:
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


def cost_frontier_table(frontier: Mapping[str, Any], workload: str) -> Table:
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


def learn_table(result: Mapping[str, Any]) -> Table:
    """A learning run: the learned policy against the rules (and on held-out runs, for logs)."""
    if result.get("source") != "log":
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
    test = result["test"]
    held_out = f"{test['split']} runs" if test["split"] else "runs"
    table = Table(
        title=f"{result['pipeline']} (replayed log): learning over {result['requests']} "
        f"requests on {result['train']['runs']} train runs, {limit_text(result)} "
        "[dim](simulated)[/]",
        caption="quality / upper bound: simulated quality over a bound no allocation can "
        "beat (fractional knapsack over each run's calls), so the ratios are conservative; "
        f"final window: the last {result['final_window']} requests; held out: each of the "
        f"{test['runs']} {held_out} once after learning"
        + (" (in-sample)" if test["in_sample"] else ""),
    )
    table.add_column("policy")
    table.add_column("quality / upper bound, final window", justify="right")
    table.add_column(f"held out ({held_out})", justify="right")
    table.add_row(
        "[bold]learned[/]",
        f"{result['final_quality_vs_oracle']:.4f}",
        f"{test['learned_quality_vs_oracle']:.4f}",
    )
    for name, value in sorted(result["rules"].items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{value:.4f}", f"{test['rules'][name]:.4f}")
    return table


def sweep_table(result: Mapping[str, Any]) -> Table:
    """A sweep: the agents ranked by the quality lost when their budget is cut."""
    fractions = [f for f in result["fractions"] if f < 1.0]
    kind = "simulated quality" if result["simulated"] else "metric"
    table = Table(
        title=f"{result['target']}: {kind} lost when one agent's budget is cut "
        f"(baseline {result['baseline_quality']:.3f})"
    )
    for header in ("rank", "agent", "share", *(f"at {f:g}" for f in fractions), "sensitivity"):
        table.add_column(header, justify="left" if header == "agent" else "right", no_wrap=True)
    for row in result["agents"]:
        name = f"[bold]{row['name']}[/] (critical)" if row["critical"] else row["name"]
        table.add_row(
            str(row["rank"]),
            name,
            f"{row['share']:.0%}",
            *(f"{row['loss'][f'{f:g}']:+.3f}" for f in fractions),
            f"{row['sensitivity']:.3f}",
        )
    table.caption = (
        "share: the agent's part of a request's tokens; sensitivity: mean loss per unit of "
        "budget removed; critical: the share of quality lost exceeds the share of tokens "
        "removed"
    )
    return table


def replay_table(result: Mapping[str, Any]) -> Table:
    """A replay (:func:`~apportion.sim.replay.run_replay`): one row per policy, then the log."""
    if result["ceiling"] is not None:
        limit = f"ceiling {result['ceiling']:,} tokens"
    else:
        limit = f"ceiling {result['ceiling_ratio']:.0%} of each run's real tokens"
    where = f"{result['split']} runs" if result["split"] else "runs"
    table = Table(
        title=(
            f"{result['pipeline']}: replay of {result['runs']} {where} ({result['calls']} calls), "
            f"{limit} [dim](simulated quality)[/]"
        )
    )
    for header in ("policy", "quality", "cut", "crit.cut", "unused", "ext."):
        table.add_column(header, justify="left" if header == "policy" else "right", no_wrap=True)
    rows = sorted(result["policies"].items(), key=lambda kv: -kv[1]["quality_mean"])
    for name, f in rows:
        table.add_row(
            name,
            f"{f['quality_mean']:.3f}",
            f"{f['cut_rate']:.1%}",
            f"{f['critical_cut_rate']:.1%}",
            f"{f['unused_mean']:,.0f}",
            f"{f['extensions_mean']:.2f}",
        )
    log = result["log"]
    if log is None:
        table.add_row("[italic]log (max_tokens caps)[/]", "", "no caps logged", "", "", "")
    else:
        unused = "" if log["unused_mean"] is None else f"{log['unused_mean']:,.0f}"
        table.add_row(
            "[italic]log (max_tokens caps)[/]",
            "",
            f"{log['cut_rate']:.1%}",
            f"{log['critical_cut_rate']:.1%}",
            unused,
            "",
        )
    fit = result["fit"]
    fitted = f"learning policies fitted on {fit['runs']} runs" + (
        " (in-sample)" if fit["in_sample"] else f" of split {fit['split']}"
    )
    caption = (
        "quality: simulated (the workload spec's response model, output kinds from the "
        "pipeline file; mean over a run's calls); cut: calls whose input or output "
        "was cut; crit.cut: the same for critical agents; unused: tokens granted but not used "
        f"per run; ext.: extensions per run; {fitted}"
    )
    if log is not None:
        caption += (
            f"; log: calls that hit their logged max_tokens, over the {log['calls']} of "
            f"{log['calls_total']} calls that logged one (unused over the {log['runs']} runs "
            "that logged every cap)"
        )
    table.caption = caption
    return table


def side_by_side_table(result: Mapping[str, Any]) -> Table:
    """The equal split beside the best policy (:func:`~apportion.demo.side_by_side`)."""
    from apportion.demo import side_by_side

    headers, rows = side_by_side(result)
    table = Table(
        title=(
            f"{result['workload']}: {result['requests']} requests at a ceiling of "
            f"{result['ceiling']:,} tokens (simulated quality)"
        )
    )
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def rollout_table(report: Mapping[str, Any]) -> Table | None:
    """The rollouts' decisions, for the terminal; ``None`` without any."""
    from apportion.analysis.report import ROLLOUT_CAPTION, ROLLOUT_COLUMNS, rollout_rows

    rows = rollout_rows(report)
    if not rows:
        return None
    table = Table(title="Rollouts", caption=ROLLOUT_CAPTION + " Times: in the JSON and HTML.")
    at = ROLLOUT_COLUMNS.index("at")  # left out here: the terminal is narrow
    for column in ROLLOUT_COLUMNS:
        if column == "at":
            continue
        if column in ("rollout", "reason"):
            table.add_column(column, overflow="fold", min_width=14 if column == "rollout" else 30)
        else:
            short = {"candidate/1k tok": "cand./1k tok", "baseline/1k tok": "base./1k tok"}
            table.add_column(short.get(column, column), justify="right")
    for row in rows:
        style = "red" if row[1] == "rollback" else "green" if row[1] == "complete" else None
        table.add_row(*row[:at], *row[at + 1 :], style=style)
    return table


def report_table(report: Mapping[str, Any]) -> Table:
    """The report's main table, for the terminal."""
    from apportion.analysis.report import REPORT_COLUMNS, fmt_time, report_caption, report_rows

    period = f" since {fmt_time(report['since'])}" if report["since"] is not None else ""
    table = Table(
        title=f"{report['source']}{period}: {report['requests']:,} requests, "
        f"{report['calls']:,} calls",
        caption=report_caption(report),
    )
    for column in REPORT_COLUMNS:
        if column == "agent":
            table.add_column(column, min_width=12, overflow="fold")
        elif column == "flag":
            table.add_column(column, min_width=13)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in report_rows(report):
        style = "yellow" if "budgeted" in row[6] else None
        table.add_row(*row, style=style)
    return table


def status_table(report: Mapping[str, Any]) -> Table:
    """How calls ended (completed, wrapped up, cut, refused), per agent, for the terminal."""
    from apportion.analysis.report import STATUS_CAPTION, STATUS_COLUMNS, status_rows

    table = Table(title="how calls ended", caption=STATUS_CAPTION)
    for column in STATUS_COLUMNS:
        if column == "agent":
            table.add_column(column, min_width=12, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in status_rows(report):
        table.add_row(*row, style="yellow" if row[3] != "0" else None)
    return table


def kind_table(report: Mapping[str, Any]) -> Table | None:
    """The calls rolled up per agent kind, for the terminal; ``None`` without kinds."""
    from apportion.analysis.report import KIND_CAPTION, KIND_COLUMNS, kind_rows

    return _named_rows("per agent kind", KIND_CAPTION, KIND_COLUMNS, kind_rows(report), 10)


def quality_table(report: Mapping[str, Any]) -> Table | None:
    """Truncation against quality, for the terminal; ``None`` without scored requests."""
    from apportion.analysis.report import QUALITY_CAPTION, QUALITY_COLUMNS, quality_rows

    rows = quality_rows(report)
    return _named_rows("truncation against quality", QUALITY_CAPTION, QUALITY_COLUMNS, rows, 12)


def _named_rows(
    title: str, caption: str, columns: Sequence[str], rows: Sequence[Sequence[str]], width: int
) -> Table | None:
    """A table whose first column names the row (folded) and whose others are figures."""
    if not rows:
        return None
    table = Table(title=title, caption=caption)
    table.add_column(columns[0], min_width=width, overflow="fold")
    for column in columns[1:]:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def limit_text(result: Mapping[str, Any]) -> str:
    """The ceiling of a learning run, in words (a log's may be a share of each run)."""
    if result["ceiling"] is None:
        return f"ceiling {result['ceiling_ratio']:.0%} of each run's real tokens"
    return f"ceiling {result['ceiling']:,}"


def one_request_table(caption: str, headers: list[str], rows: list[list[str]]) -> Table:
    """The one-request table the README opens with (:func:`~apportion.demo.one_request`)."""
    table = Table(title=caption)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index in (0, 2, 3) else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def optimize_tables(result: Mapping[str, Any], ceiling: int) -> tuple[Table, Table]:
    """An allocation search: the best split against the policies, and its budgets per call."""
    kind = "simulated quality" if result["simulated"] else "metric"
    table = Table(title=f"{result['target']}: a fixed total of {ceiling:,} tokens ({kind})")
    table.add_column("split")
    table.add_column("quality", justify="right")
    table.add_row("[bold]best split found[/] (static)", f"{result['best']['quality']:.3f}")
    for name, value in result["compare"].items():
        table.add_row(name, f"{value:.3f}")
    budgets = Table(title="best split, per call")
    for header in ("agent", "context", "output"):
        budgets.add_column(header, justify="left" if header == "agent" else "right")
    for name, budget in result["best"]["budgets"].items():
        budgets.add_row(name, f"{budget['context_tokens']:,}", f"{budget['output_tokens']:,}")
    return table, budgets


def profile_table(
    budgets: Mapping[str, Mapping[str, Any]], source: str, p_in: float, p_out: float, margin: float
) -> Table:
    """The budgets a profile wrote, per agent, with the calls they come from."""
    table = Table(title=f"budgets from {source}: P{p_in:g} input, P{p_out:g} output, +{margin:.0%}")
    columns = ("agent", "calls", "input cut", "output cut", "context_tokens", "output_tokens")
    for column in (*columns, "note"):
        table.add_column(column, justify="left" if column in ("agent", "note") else "right")
    for agent, b in budgets.items():
        note = "raised: many calls were cut" if b["censored"] else ""
        counts = (b["calls"], b["input_cut_calls"], b["truncated_calls"])
        sizes = (b["context_tokens"], b["output_tokens"])
        table.add_row(agent, *map(str, counts), *(f"{n:,}" for n in sizes), note)
    return table


TERMINAL_TREES = 10
"""Request trees the terminal lists (the JSON and HTML list more)."""


def tree_tables(report: Mapping[str, Any]) -> list[Table]:
    """The request trees (the largest few) and the children by name; none without trees."""
    from apportion.analysis.trees import (
        CHILD_CAPTION,
        CHILD_COLUMNS,
        TREE_CAPTION,
        TREE_COLUMNS,
        child_rows,
        tree_rows,
    )

    trees = report.get("trees") or {}
    if not trees.get("trees"):
        return []
    rows = tree_rows(report)[:TERMINAL_TREES]
    more = trees["trees"] - len(rows)
    title = f"request trees: {trees['trees']:,} ({trees['requests']:,} requests)"
    if more > 0:
        title += f", the {len(rows)} largest"
    out = _tree_table(title, TREE_CAPTION, TREE_COLUMNS, rows, flag=-1)
    kids = _tree_table(
        "children by name", CHILD_CAPTION, CHILD_COLUMNS, child_rows(report), flag=-2
    )
    return [out, kids]


def _tree_table(
    title: str, caption: str, columns: tuple[str, ...], rows: list[list[str]], flag: int
) -> Table:
    """A table of trees or children, the cost column left out when no cost is known.

    Rows whose ``flag`` column counts children that ran out are yellow.
    """
    from apportion.analysis.trees import shown_columns

    shown, kept = shown_columns(columns, rows)
    table = Table(title=title, caption=caption)
    for i, column in enumerate(shown):
        if i == 0:
            table.add_column(column, min_width=12, overflow="fold")
        else:
            table.add_column(column, justify="right")
    for row in kept:
        style = "yellow" if not row[flag].startswith("0") else None
        table.add_row(*(escape(cell) for cell in row), style=style)
    return table
