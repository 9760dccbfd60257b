"""``apportion report``, ``profile``, ``ingest`` and ``prune``: usage telemetry.

Registered on the ``apportion`` command by :func:`register` (see :mod:`apportion.cli`).
A database is named by URL (``sqlite:///apportion.db``, ``postgresql://user@host/db``) or
by the path of a SQLite file; every message shows it without its password.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.console import console, fail, progress, stages, write_outputs
from apportion.cli.tables import (
    kind_table,
    profile_table,
    quality_table,
    report_table,
    rollout_table,
    status_table,
    tree_tables,
)
from apportion.errors import ApportionError

_DB_HELP = "Telemetry database: sqlite:///apportion.db, postgresql://user@host/db, or a .db file."
_SINCE_HELP = "Only calls since: a duration (30m, 12h, 7d), an ISO date or time, or epoch seconds."


def _check_outputs(*paths: Path | None) -> None:
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"{path} is a directory")
        if not path.parent.is_dir():
            raise ValueError(f"{path}: directory {path.parent} does not exist")


def _load(db_url: str, since: str | None, pipeline: str | None) -> tuple[Any, float | None]:
    """The dataset of a database for a period, and the period's start."""
    from apportion.analysis.report import parse_since
    from apportion.telemetry.sql import open_database

    start = parse_since(since) if since is not None else None
    with open_database(db_url) as db:
        return db.load(since=start, pipeline=pipeline), start


def _source(db: str, start: float | None, pipeline: str | None, **extra: Any) -> dict[str, Any]:
    from apportion.analysis.report import fmt_time

    source: dict[str, Any] = {"database": db}
    if start is not None:
        source["since"] = fmt_time(start)
    if pipeline is not None:
        source["pipeline"] = pipeline
    source.update(extra)
    return source


def report(
    db_url: Annotated[str, typer.Argument(metavar="DB_URL", help=_DB_HELP)],
    since: Annotated[str | None, typer.Option(help=_SINCE_HELP)] = None,
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline-name", metavar="NAME", help="Only the calls of this pipeline."),
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write the HTML page with figures here.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the JSON here.")] = None,
    percentile: Annotated[
        float, typer.Option(min=0, max=100, help="Percentile the recommended budgets cover.")
    ] = 90.0,
    margin: Annotated[
        float, typer.Option(min=0, help="Margin on top of the recommended budgets (0.1 = 10%).")
    ] = 0.1,
    until: Annotated[
        str | None,
        typer.Option(help="Only calls before: a duration back from now, an ISO date or time."),
    ] = None,
    rollups: Annotated[
        str,
        typer.Option(
            help="Days read from the daily rollups: auto (every whole past day, exact; "
            "percentiles from them only for pruned days), always (percentiles too: fastest, "
            "within 1%), never."
        ),
    ] = "auto",
) -> None:
    """How well budgets fit, per agent: percentiles, utilization, ceiling hits, flags.

    Over-budgeted: utilization (tokens used / granted) under 50%. Under-budgeted: more
    than 10% of calls hit their budget (output truncated or input cut). Also the mean
    outcome (req.score) with and without cuts, and a recommended static budget. The
    figures are aggregated in the database; days pruned with apportion prune come from
    its daily rollups.
    """
    from apportion.analysis.page import report_page
    from apportion.analysis.profile import budgets_yaml
    from apportion.analysis.report import Thresholds, parse_since
    from apportion.analysis.window_report import report_database

    thresholds = Thresholds(percentile=percentile, margin=margin)
    steps = ["reading the telemetry"]
    if html is not None:
        steps.append("drawing the page")
    page = None
    try:
        _check_outputs(html, json_path)
        start = parse_since(since) if since is not None else None
        end = parse_since(until, option="--until") if until is not None else None
        with stages(*steps) as done:
            found = report_database(
                db_url,
                since=start,
                until=end,
                pipeline=pipeline,
                thresholds=thresholds,
                rollups=rollups,
            )
            document = found.document
            done()
            if html is not None:
                source = _source(
                    document["source"], start, pipeline, percentile=percentile, margin=margin
                )
                page = report_page(
                    document,
                    spreads=found.spreads,
                    budgets_yaml=budgets_yaml(found.budgets, source) if found.budgets else None,
                )
                done()
    except (ApportionError, ValueError, OSError) as exc:
        raise fail(exc) from exc
    lost = document.get("telemetry_lost")
    if lost:
        console.print(
            f"[yellow]warning:[/] {lost['total']:,} telemetry record(s) never reached this "
            f"database ({lost['dropped_full']:,} dropped, the oldest, by writers that fell "
            f"behind or could not reach it; {lost['dropped_failed']:,} refused; "
            f"{lost['discarded']:,} given up on): the figures below undercount",
            highlight=False,
        )
    if document["empty"]:
        console.print(f"nothing to report: {document['message']}", highlight=False)
    else:
        console.print(report_table(document))
        console.print(status_table(document))
        kinds = kind_table(document)
        if kinds is not None:
            console.print(kinds)
        scored = quality_table(document)
        if scored is not None:
            console.print(scored)
        for table in tree_tables(document):
            console.print(table)
    rollouts = rollout_table(document)
    if rollouts is not None:
        console.print(rollouts)
    # Everything is produced in memory first: a failure leaves no file at all.
    text = json.dumps(document, indent=2) + "\n"
    write_outputs(("JSON", json_path, text), ("HTML page", html, page))


def profile(
    db_url: Annotated[str, typer.Argument(metavar="DB_URL", help=_DB_HELP)],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The budgets file to write (YAML).")
    ],
    since: Annotated[str | None, typer.Option(help=_SINCE_HELP)] = None,
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline-name", metavar="NAME", help="Only the calls of this pipeline."),
    ] = None,
    percentile: Annotated[
        float, typer.Option(min=0, max=100, help="Percentile of input and output to cover.")
    ] = 90.0,
    input_percentile: Annotated[
        float | None, typer.Option(min=0, max=100, help="Percentile for input (context).")
    ] = None,
    output_percentile: Annotated[
        float | None, typer.Option(min=0, max=100, help="Percentile for output.")
    ] = None,
    margin: Annotated[float, typer.Option(min=0, help="Margin on top (0.1 = 10%).")] = 0.1,
    min_calls: Annotated[
        int, typer.Option(min=1, help="Leave out agents with fewer finished calls.")
    ] = 1,
) -> None:
    """Write a budgets file for the static policy from observed usage.

    Each agent gets the percentile of its input and output tokens plus the margin (and at
    least the largest usage of a cut call plus the margin, when more than 10% of its calls
    hit their budget). Load it with policy="static:budgets.yaml".
    """
    from apportion.analysis.profile import budgets_yaml, profile_budgets
    from apportion.files import write_atomic

    p_in = percentile if input_percentile is None else input_percentile
    p_out = percentile if output_percentile is None else output_percentile
    try:
        _check_outputs(output)
        with stages("reading the telemetry", "profiling the budgets") as done:
            dataset, start = _load(db_url, since, pipeline)
            done()
            budgets = profile_budgets(
                dataset,
                input_percentile=p_in,
                output_percentile=p_out,
                margin=margin,
                min_calls=min_calls,
            )
            done()
        if not budgets:
            if dataset.empty:
                raise ValueError(f"no budgets to write: {dataset.url} holds no telemetry")
            raise ValueError(
                f"no budgets to write: no agent has {min_calls} finished call(s) in "
                f"{dataset.url}" + (" in the period" if start is not None else "")
            )
        source = _source(
            dataset.url,
            start,
            pipeline,
            input_percentile=p_in,
            output_percentile=p_out,
            margin=margin,
            calls={agent: b["calls"] for agent, b in budgets.items()},
        )
        write_atomic(output, budgets_yaml(budgets, source))
    except (ApportionError, ValueError, OSError) as exc:
        raise fail(exc) from exc
    table = profile_table(budgets, dataset.url, p_in, p_out, margin)
    console.print(table)
    console.print(f"budgets written to {output} (load with policy='static:{output}')")


def ingest(
    files: Annotated[
        list[Path], typer.Argument(help="ChatDev call logs (CSV) or OTLP JSON span exports.")
    ],
    into: Annotated[
        str, typer.Option("--into", help="The telemetry database to write to.")
    ] = "sqlite:///apportion.db",
    fmt: Annotated[
        str, typer.Option("--format", help="auto (by suffix or content), chatdev or otlp.")
    ] = "auto",
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline-name",
            metavar="NAME",
            help="Pipeline name to record (default: from the file).",
        ),
    ] = None,
) -> None:
    """Load calls logged before apportion, so report and profile can use them.

    Every file is read and checked first; a malformed one (file, line and field are named)
    leaves the database untouched. A request ingested again replaces its earlier rows.
    """
    from apportion.analysis.ingest import read_records
    from apportion.telemetry.sql import Database

    try:
        with progress() as bar:
            task = bar.add_task(f"reading {len(files)} file(s)", total=len(files) + 1)
            found = read_records(
                files, fmt=fmt, pipeline=pipeline, progress=lambda n: bar.advance(task, n)
            )
            bar.update(task, description=f"writing {len(found.records):,} requests")
            with Database(into, create=True) as db:
                db.write(found.records)
                where = db.shown
            bar.advance(task, 1)
    except (ApportionError, ValueError) as exc:
        raise fail(exc) from exc
    console.print(
        f"ingested {len(found.records):,} requests, {found.calls:,} calls from "
        f"{len(found.files)} file(s) into {where}",
        highlight=False,
    )
    for reason, count in found.skipped.items():
        console.print(f"skipped {count:,} span(s): {reason}", highlight=False)


def prune(
    db_url: Annotated[str, typer.Argument(metavar="DB_URL", help=_DB_HELP)],
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Delete raw calls and requests older than this (30d, 12h, 2w), by whole UTC days.",
        ),
    ],
) -> None:
    """Delete old raw telemetry; its figures stay in the daily rollups.

    Calls and requests older than the UTC midnight before now minus DURATION are deleted
    with their events; the daily rollups per agent are kept (built first if the database
    predates them), so apportion report over those days still gives their figures (from
    the rollups: percentiles within 1%). Rows without a time are kept.
    """
    import time

    from apportion.analysis.report import fmt_time, parse_duration
    from apportion.telemetry.sql import Database

    try:
        seconds = parse_duration(older_than)
        with Database(db_url, create=True) as db:
            done = db.prune(time.time() - seconds)
            where = db.shown
    except (ApportionError, ValueError) as exc:
        raise fail(exc) from exc
    console.print(
        f"pruned {done.calls:,} calls, {done.requests:,} requests and {done.events:,} events "
        f"from before {fmt_time(done.before)} in {where}; their figures stay in the daily "
        "rollups",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``report``, ``profile``, ``ingest``, ``prune`` to ``app``."""
    for command in (
        report,
        profile,
        ingest,
        prune,
    ):
        app.command()(command)
