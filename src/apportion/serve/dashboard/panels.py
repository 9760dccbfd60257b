"""The dashboard's panels beyond the live requests: the pools and the budget-fit report.

Rendered like the rest (:mod:`apportion.serve.dashboard.pages`): every name escaped, bars as
SVG sized by attributes, figures in table cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from apportion.pools import PoolStatus
from apportion.serve.dashboard.pages import bar_svg, clock, esc, nav, num, render
from apportion.serve.dashboard.report import ReportPanel
from apportion.serve.gateway import Tenant

__all__ = ["pools_page", "pools_table", "report_page", "report_panel"]

PRIORITY_CLASSES = ("critical", "standard", "peripheral")


def pools_table(statuses: Sequence[tuple[PoolStatus, bool]], show_tenant: bool) -> str:
    """The pools' table: per pool its window and figures, then a row per priority class."""
    if not statuses:
        return '<p id="pools" class="empty">No shared pools are defined.</p>'
    bodies = []
    for status, draining in statuses:
        pool = status.pool
        tenant, _, name = pool.name.partition("/")
        owner = f'<span class="tenant">({esc(tenant)})</span>' if show_tenant else ""
        window = (
            "one window"
            if not math.isfinite(pool.window_seconds)
            else f"{pool.window_seconds:g} s from {clock(status.window_start)}"
        )
        state = "draining" if draining else "open"
        rows = [
            f'<tbody class="pool" data-pool="{esc(pool.name)}" data-drawn="{status.drawn}" '
            f'data-capacity="{pool.capacity}">'
            f'<tr class="req"><th scope="rowgroup">{esc(name)}{owner}</th>'
            f'<td class="barcell">{bar_svg(status.drawn, 0, 0, pool.capacity)}</td>'
            f'<td class="num" data-cell="capacity">{num(pool.capacity)}</td>'
            f'<td class="num" data-cell="drawn">{num(status.drawn)}</td>'
            f'<td class="num" data-cell="returned">{num(status.returned)}</td>'
            f'<td class="num" data-cell="remaining">{num(status.remaining)}</td>'
            f'<td class="num">{num(status.open_draws)}</td>'
            f'<td class="num">{num(status.overflow)}</td>'
            f"<td>{esc(window)}</td>"
            f'<td class="status">{state}</td></tr>'
        ]
        for priority in PRIORITY_CLASSES:
            held = pool.reserve.get(priority, 0)
            free = status.available_to(priority)
            rows.append(
                f'<tr class="agent" data-priority="{priority}"><th scope="row">{priority}</th>'
                f'<td class="barcell">{bar_svg(status.drawn, 0, free, pool.capacity)}</td>'
                f'<td class="num">{num(held)}</td><td></td><td></td>'
                f'<td class="num" data-cell="available">{num(free)}</td>'
                "<td></td><td></td><td></td><td></td>"
                "</tr>"
            )
        rows.append("</tbody>")
        bodies.append("".join(rows))
    return (
        '<table id="pools"><caption>Per pool: tokens drawn in the current window (ceilings of '
        "its open requests and what closed ones used), tokens closed requests returned to it "
        "unspent, then per priority class the reserve held for it and what a request of that "
        "class may draw now</caption>"
        '<thead><tr><th scope="col">Pool / class</th><th scope="col">Window use</th>'
        '<th scope="col" class="num">Capacity / reserve</th>'
        '<th scope="col" class="num">Drawn</th>'
        '<th scope="col" class="num">Returned</th>'
        '<th scope="col" class="num">Remaining / may draw</th>'
        '<th scope="col" class="num">Open draws</th><th scope="col" class="num">Overflow</th>'
        '<th scope="col">Window</th><th scope="col">State</th></tr></thead>'
        f"{''.join(bodies)}</table>"
    )


def pools_page(
    statuses: Sequence[tuple[PoolStatus, bool]],
    *,
    base: str,
    tenant: Tenant,
    open_mode: bool,
    cursor: str,
) -> str:
    """The pools page: each shared pool's current window, per priority class."""
    main = (
        "<h1>Pools</h1>"
        '<p class="live" id="live" data-state="connecting">Live: connecting</p>'
        "<p>Shared pools: what the current window has handed out to requests, and what "
        "each priority class may still draw. The figures refresh as requests open and "
        "close.</p>"
        f'<div id="pools-panel">{pools_table(statuses, tenant.admin)}</div>'
    )
    body = (
        f'data-stream="{esc(base)}/dashboard/events" data-cursor="{esc(cursor)}" '
        f'data-pools="{esc(base)}/dashboard/fragments/pools"'
    )
    return render("Pools", main, base, nav(base, "pools", tenant, open_mode), body)


_NUM = ' class="num"'


def _table(caption: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(
        f'<th scope="col"{_NUM if i else ""}>{esc(c)}</th>' for i, c in enumerate(columns)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<th scope="row">{esc(v)}</th>' if i == 0 else f'<td class="num">{esc(v)}</td>'
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f"<table><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def report_panel(panel: ReportPanel, base: str, show_source: bool = False) -> str:
    """The report panel: the figures of ``apportion report``, or what went wrong.

    The database's address is shown to an admin only (it is the operator's).
    """
    where = f" ({esc(panel.database)})" if panel.database and show_source else ""
    if panel.problem is not None:
        return (
            '<div class="panel error" id="report-panel" role="alert">'
            f"<p><strong>No report{where}:</strong> {esc(panel.problem)}</p>"
            "<p>The live pages do not depend on it and keep working.</p></div>"
        )
    from apportion.analysis.report import (
        REPORT_COLUMNS,
        STATUS_COLUMNS,
        report_caption,
        report_rows,
        status_rows,
    )

    document = panel.document or {}
    if document.get("empty") or not document.get("agents"):
        message = document.get("message") or "no calls in this window"
        return (
            f'<div class="panel" id="report-panel"><p>Nothing to report{where}: '
            f"{esc(message)}.</p></div>"
        )
    summary = (
        f"<p>{num(int(document.get('requests') or 0))} requests, "
        f"{num(int(document.get('calls') or 0))} calls in the last {esc(panel.window)}{where}.</p>"
    )
    download = ""
    if panel.budgets is not None:
        download = (
            f'<p><a href="{esc(base)}/dashboard/report/budgets.yaml?window={esc(panel.window)}" '
            'download="budgets.yaml">Download the recommended budgets file</a> '
            '(load it with <code>policy="static:budgets.yaml"</code>).</p>'
        )
    return (
        f'<div id="report-panel">{summary}'
        + _table(report_caption(document), REPORT_COLUMNS, report_rows(document))
        + _table("How calls ended, per agent", STATUS_COLUMNS, status_rows(document))
        + f"{download}</div>"
    )


def report_page(panel: ReportPanel, *, base: str, tenant: Tenant, open_mode: bool) -> str:
    """The report page: a window to choose, then the panel."""
    options = "".join(
        f'<option value="{w}"{" selected" if w == panel.window else ""}>last {w}</option>'
        for w in ("hour", "day", "week")
    )
    main = (
        "<h1>Budget-fit report</h1>"
        "<p>How well the budgets fit, per agent, from the gateway's telemetry (the figures "
        "of <code>apportion report</code>).</p>"
        f'<form method="get" action="{esc(base)}/dashboard/report" class="window">'
        '<label for="window">Window</label> '
        f'<select id="window" name="window">{options}</select> '
        '<button type="submit">Show</button></form>'
        f"{report_panel(panel, base, tenant.admin)}"
    )
    return render("Report", main, base, nav(base, "report", tenant, open_mode))
