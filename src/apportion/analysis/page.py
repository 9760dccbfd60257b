"""The self-contained HTML page of a usage report (``apportion report --html``).

One file, opened offline in any browser: the table of :mod:`apportion.analysis.report`,
its figures (inline SVG, from :mod:`apportion.analysis.figures`), the budgets file the
``static`` policy would load, and how each figure is computed. Built with the helpers of
:mod:`apportion.sim.html`; nothing on it is simulated, and its notice says so.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from apportion.analysis.figures import (
    TokenSpreads,
    ceiling_hits_figure,
    children_figure,
    quality_figure,
    token_spreads,
    tokens_figure,
    utilization_figure,
)
from apportion.analysis.report import (
    KIND_CAPTION,
    KIND_COLUMNS,
    QUALITY_CAPTION,
    QUALITY_COLUMNS,
    REPORT_COLUMNS,
    ROLLOUT_CAPTION,
    ROLLOUT_COLUMNS,
    STATUS_CAPTION,
    STATUS_COLUMNS,
    fmt_time,
    kind_rows,
    quality_rows,
    report_caption,
    report_rows,
    rollout_rows,
    status_rows,
)
from apportion.analysis.trees import (
    CHILD_CAPTION,
    CHILD_COLUMNS,
    TREE_CAPTION,
    TREE_COLUMNS,
    child_rows,
    shown_columns,
    tree_rows,
)
from apportion.sim.html import Section, figure, paragraph, render_html, table
from apportion.telemetry.records import CallUsage

__all__ = ["report_page"]


def report_page(
    report: Mapping[str, Any],
    usage: Mapping[str, Sequence[CallUsage]] | None = None,
    *,
    budgets_yaml: str | None = None,
    spreads: TokenSpreads | None = None,
) -> str:
    """The HTML page of a report.

    Args:
        report: a :func:`~apportion.analysis.report.build_report` document.
        usage: the finished calls per agent, for the token distributions (or give
            ``spreads``).
        budgets_yaml: the recommended budgets as a ``static`` budgets file, shown as is.
        spreads: the token distributions already summed up
            (:func:`~apportion.analysis.figures.token_spreads`, or from the database).

    Returns:
        The HTML document, as text.
    """
    period = f" since {fmt_time(report['since'])}" if report["since"] is not None else ""
    scope = f", pipeline {report['pipeline']}" if report["pipeline"] else ""
    notice = (
        f"Measured from the telemetry in {report['source']}{period}{scope}: "
        f"{report['requests']:,} requests, {report['calls']:,} calls. Outcome scores are "
        "those recorded with req.score; nothing on this page is simulated."
    )
    title = "apportion report: token budgets per agent"
    rollouts = rollout_rows(report)
    rollout_section = Section(
        "Rollouts",
        table(ROLLOUT_COLUMNS, rollouts, caption=ROLLOUT_CAPTION, numeric=(2, 3, 4, 5)),
    )
    if report["empty"]:
        body = paragraph(str(report["message"] or "nothing to report"))
        empty = [Section("Nothing to report", body)]
        if rollouts:
            empty.append(rollout_section)
        return render_html(title, empty, notice=notice)
    sections = [
        Section(
            "Per agent",
            table(
                REPORT_COLUMNS,
                report_rows(report),
                caption=report_caption(report),
                numeric=(1, 2, 3, 4, 5, 7),
            ),
        )
    ]
    sections.append(
        Section(
            "How calls ended",
            table(
                STATUS_COLUMNS,
                status_rows(report),
                caption=STATUS_CAPTION,
                numeric=(1, 2, 3, 4, 5, 6),
            ),
        )
    )
    kinds = kind_rows(report)
    if kinds:
        sections.append(
            Section(
                "Per agent kind",
                table(
                    KIND_COLUMNS,
                    kinds,
                    caption=KIND_CAPTION,
                    numeric=tuple(range(1, len(KIND_COLUMNS) - 1)),
                ),
            )
        )
    scored = quality_rows(report)
    if scored:
        sections.append(
            Section(
                "Truncation against quality",
                table(QUALITY_COLUMNS, scored, caption=QUALITY_CAPTION, numeric=(1, 2, 3, 4)),
            )
        )
    sections.extend(_tree_sections(report))
    if spreads is None:
        spreads = token_spreads(usage or {})
    agents = [a for a in report["agents"] if a in spreads]
    figures = [
        figure(
            tokens_figure({a: spreads[a] for a in agents}),
            alt="Box plots of input and output tokens per call for each agent",
            caption="Tokens used per call: where budgets should sit.",
        ),
        figure(
            utilization_figure(report),
            alt="Bar chart of utilization per agent",
            caption="Utilization: tokens used over tokens granted; red: over-budgeted.",
        ),
        figure(
            ceiling_hits_figure(report),
            alt="Bar chart of the share of calls that hit their budget per agent",
            caption="Ceiling hits: calls truncated or with their input cut; red: under-budgeted.",
        ),
    ]
    quality = quality_figure(report)
    if quality is not None:
        figures.append(
            figure(
                quality,
                alt="Mean outcome score with and without cuts per agent, with intervals",
                caption="Truncation against quality: mean outcome when the agent was cut or not.",
            )
        )
    else:
        figures.append(
            paragraph(
                "No request has an outcome score (req.score), so truncation cannot be set "
                "against quality.",
                css_class="muted",
            )
        )
    sections.append(Section("Figures", "".join(figures)))
    if rollouts:
        sections.append(rollout_section)
    if budgets_yaml:
        sections.append(
            Section(
                "Recommended budgets (static policy file)",
                paragraph(
                    "Save as budgets.yaml and load with policy='static:budgets.yaml', "
                    "or write it with: apportion profile DB_URL -o budgets.yaml"
                )
                + f"<pre>{html.escape(budgets_yaml)}</pre>",
            )
        )
    return render_html(
        title,
        sections,
        notice=notice,
        footer=f"apportion report of {report['source']}{period}.",
    )


def _tree_sections(report: Mapping[str, Any]) -> list[Section]:
    """The request trees and the children by name, with their figure; none without trees."""
    trees = report.get("trees") or {}
    if not trees.get("trees"):
        return []
    listed = (
        f"{trees['trees']:,} trees, {trees['requests']:,} requests"
        + (f"; the {trees['shown']} largest listed" if trees["shown"] < trees["trees"] else "")
        + ". "
    )
    columns, rows = shown_columns(CHILD_COLUMNS, child_rows(report))
    body = table(columns, rows, caption=CHILD_CAPTION, numeric=range(1, len(columns)))
    drawn = children_figure(report)
    if drawn is not None:
        body += figure(
            drawn,
            alt="Stacked bars: how the calls of each kind of child request ended",
            caption="Children by name: how their calls ended, and how many ran out.",
        )
    columns, rows = shown_columns(TREE_COLUMNS, tree_rows(report))
    return [
        Section("Children by name", body),
        Section(
            "Request trees",
            table(columns, rows, caption=listed + TREE_CAPTION, numeric=range(1, len(columns))),
        ),
    ]
