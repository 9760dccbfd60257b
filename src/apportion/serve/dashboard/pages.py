"""The dashboard's pages, rendered on the server: every name and id escaped, no inline script.

Bars are SVG rectangles sized by attributes (no inline style, so the page's
Content-Security-Policy allows no inline code at all); the numbers beside each bar are in
table cells, so a screen reader reads the figures, not the picture. The page's skeleton,
style sheet and script are package data (``assets/``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from html import escape
from importlib import resources
from string import Template
from urllib.parse import quote

from apportion.ledger import Event
from apportion.pools import PoolStatus
from apportion.serve.dashboard.report import ReportPanel
from apportion.serve.gateway import Tenant
from apportion.stores import LedgerView

__all__ = [
    "AgentView",
    "RequestView",
    "asset",
    "call_outcomes",
    "live_page",
    "login_page",
    "message_page",
    "pools_page",
    "pools_table",
    "report_page",
    "report_panel",
    "request_page",
    "request_tbody",
    "request_views",
]

ENDINGS = ("completed", "wrapped_up", "cut", "late", "refused")
"""How calls ended, as the pages count them (``refused``: begins the store refused)."""


@cache
def asset(name: str) -> bytes:
    """A file of the dashboard's ``assets`` folder (package data)."""
    return (resources.files("apportion.serve.dashboard") / "assets" / name).read_bytes()


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


def clock(at: float) -> str:
    """A clock time as ``HH:MM:SS.mmm`` (UTC), or the number when it is no date."""
    if not math.isfinite(at) or not 0 <= at < 4e9:
        return f"{at:g}"
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def request_url(base: str, store_id: str) -> str:
    """The request page's address."""
    return f"{base}/dashboard/requests/{quote(store_id, safe='')}"


@dataclass
class AgentView:
    """One agent's figures in one request."""

    name: str
    allocation: int
    used: int
    held: int
    calls: int
    outcomes: dict[str, int] = field(default_factory=dict)
    status: str = "waiting"

    @property
    def plan_left(self) -> int:
        """What is left of its planned allocation (never below 0)."""
        return max(0, self.allocation - self.used - self.held)


@dataclass
class RequestView:
    """One request's figures, as the live page shows them."""

    store_id: str
    tenant: str
    public_id: str
    parent_id: str | None
    depth: int
    status: str
    ceiling: int
    consumed: int
    reserved: int
    free: int
    agents: list[AgentView]


def call_outcomes(events: Iterable[Event]) -> dict[str, tuple[dict[str, int], str]]:
    """Per agent: how many calls ended each way, and how its latest call stands.

    Reads a ledger's events, and the feed's ``refused`` events when given: a begin refused
    counts as ``refused``; after an extension refused, an answer not cut is ``wrapped_up``.
    """
    counts: dict[str, dict[str, int]] = {}
    last: dict[str, str] = {}
    wrapping: set[str] = set()
    for event in events:
        agent = event.agent
        if agent is None:
            continue
        status = None
        if event.kind == "refused" and event.note == "extend":
            wrapping.add(agent)
            last[agent] = "wrapping up"
        elif event.kind == "refused":
            status = "refused"
        elif event.kind in ("begin", "extend"):
            if event.kind == "begin":
                wrapping.discard(agent)
            last[agent] = "running"
        elif event.kind == "finish":
            if event.note == "late":
                status = "late"
            elif event.truncated:
                status = "cut"
            else:
                status = "wrapped_up" if agent in wrapping else "completed"
            wrapping.discard(agent)
        elif event.kind == "release":
            status = "released"
        elif event.kind == "expire":
            status = "expired"
        if status is not None:
            last[agent] = status
            if status in ENDINGS:
                tally = counts.setdefault(agent, {})
                tally[status] = tally.get(status, 0) + 1
    return {a: (counts.get(a, {}), last.get(a, "waiting")) for a in set(counts) | set(last)}


def request_views(
    states: Sequence[LedgerView], events: Mapping[str, Sequence[Event]]
) -> list[RequestView]:
    """The requests as the live page shows them: each parent followed by its children."""
    views: dict[str, RequestView] = {}
    for state in states:
        outcomes = call_outcomes(events.get(state.request_id, ()))
        agents = []
        for name in state.ranks:
            tally, status = outcomes.get(name, ({}, "waiting"))
            agents.append(
                AgentView(
                    name,
                    state.allocation.get(name, 0),
                    state.consumed_by.get(name, 0),
                    state.reserved_by.get(name, 0),
                    state.calls.get(name, 0),
                    dict(tally),
                    status,
                )
            )
        tenant, _, public = state.request_id.partition("/")
        views[state.request_id] = RequestView(
            state.request_id,
            tenant,
            public,
            state.parent_id,
            state.depth,
            state.status,
            state.ceiling,
            state.consumed,
            state.reserved,
            state.free,
            agents,
        )
    children: dict[str | None, list[str]] = {}
    for view in views.values():
        parent = view.parent_id if view.parent_id in views else None
        children.setdefault(parent, []).append(view.store_id)
    ordered: list[RequestView] = []

    def walk(parent: str | None) -> None:
        for store_id in sorted(children.get(parent, ())):
            ordered.append(views[store_id])
            walk(store_id)

    walk(None)
    return ordered


def _bar(used: int, held: int, plan: int, ceiling: int) -> str:
    scale = 1000 / ceiling if ceiling > 0 else 0.0
    x = 0.0
    rects = []
    for name, tokens in (("used", used), ("held", held), ("plan", plan)):
        width = max(0.0, min(1000 - x, tokens * scale))
        rects.append(f'<rect class="{name}" x="{x:.2f}" y="0" width="{width:.2f}" height="10"/>')
        x += width
    return (
        '<svg class="bar" viewBox="0 0 1000 10" preserveAspectRatio="none" '
        f'aria-hidden="true" focusable="false">{"".join(rects)}</svg>'
    )


def _outcomes_text(outcomes: Mapping[str, int]) -> str:
    return " · ".join(f"{s} {outcomes[s]}" for s in ENDINGS if outcomes.get(s))


def request_tbody(view: RequestView, base: str, show_tenant: bool, cursor: str = "") -> str:
    """One request's rows: its totals, then a bar per agent (a ``<tbody>``).

    ``cursor``: the feed's cursor read before the request (a fragment fetched live says
    which changes it already shows).
    """
    name = _e(view.public_id)
    tenant = f'<span class="tenant">({_e(view.tenant)})</span>' if show_tenant else ""
    tree = '<span class="tree" aria-hidden="true">↳ </span>' if view.depth else ""
    child = (
        f'<span class="visually-hidden">child budget of '
        f"{_e(view.parent_id.partition('/')[2])}, </span>"
        if view.parent_id
        else ""
    )
    closed = "" if view.status == "open" else " closed"
    rows = [
        f'<tbody class="request{closed}" data-request="{_e(view.store_id)}" '
        f'data-parent="{_e(view.parent_id or "")}" data-depth="{view.depth}" '
        f'data-ceiling="{view.ceiling}" data-free="{view.free}" '
        f'data-consumed="{view.consumed}" data-status="{_e(view.status)}" '
        f'data-cursor="{_e(cursor)}">',
        '<tr class="req">'
        f'<th scope="rowgroup">{tree}{child}<a href="{_e(request_url(base, view.store_id))}">'
        f"{name}</a>{tenant}</th>"
        f'<td class="barcell">{_bar(view.consumed, view.reserved, 0, view.ceiling)}</td>'
        f'<td class="num" data-cell="used">{_n(view.consumed)}</td>'
        f'<td class="num" data-cell="held">{_n(view.reserved)}</td>'
        f'<td class="num" data-cell="free">{_n(view.free)}</td>'
        f'<td class="num">{_n(view.ceiling)}</td>'
        '<td class="num"></td>'
        f'<td class="status" data-cell="status">{_e(view.status)}</td>'
        '<td data-cell="outcomes"></td></tr>',
    ]
    for agent in view.agents:
        cut = " is-cut" if agent.outcomes.get("cut") else ""
        tallies = "".join(f' data-{s}="{agent.outcomes[s]}"' for s in agent.outcomes)
        rows.append(
            f'<tr class="agent{cut}" data-agent="{_e(agent.name)}" '
            f'data-allocation="{agent.allocation}" data-used="{agent.used}" '
            f'data-held="{agent.held}" data-calls="{agent.calls}" '
            f'data-status="{_e(agent.status)}"{tallies}>'
            f'<th scope="row">{_e(agent.name)}</th>'
            f'<td class="barcell">{_bar(agent.used, agent.held, agent.plan_left, view.ceiling)}'
            "</td>"
            f'<td class="num" data-cell="used">{_n(agent.used)}</td>'
            f'<td class="num" data-cell="held">{_n(agent.held)}</td>'
            f'<td class="num" data-cell="plan">{_n(agent.plan_left)}</td>'
            f'<td class="num">{_n(agent.allocation)}</td>'
            f'<td class="num" data-cell="calls">{_n(agent.calls)}</td>'
            f'<td class="status" data-cell="status">{_e(agent.status)}</td>'
            f'<td data-cell="outcomes">{_e(_outcomes_text(agent.outcomes))}</td></tr>'
        )
    rows.append("</tbody>")
    return "".join(rows)


_LEGEND = (
    '<p class="legend" aria-hidden="true"><span><span class="key used"></span>used</span>'
    '<span><span class="key held"></span>held by open grants</span>'
    '<span><span class="key plan"></span>left of the agent\'s plan</span>'
    '<span><span class="key free"></span>rest of the ceiling</span></p>'
)


def nav(base: str, current: str, tenant: Tenant | None, open_mode: bool) -> str:
    """The header's navigation and who is signed in."""
    links = [
        ("live", "Live requests", "/"),
        ("pools", "Pools", "/dashboard/pools"),
        ("report", "Report", "/dashboard/report"),
    ]
    items = "".join(
        f'<li><a href="{_e(base + path)}"'
        + (' aria-current="page"' if key == current else "")
        + f">{label}</a></li>"
        for key, label, path in links
    )
    who = ""
    if tenant is not None:
        role = " (admin)" if tenant.admin else ""
        out = (
            ""
            if open_mode
            else f'<form method="post" action="{_e(base)}/dashboard/logout">'
            '<button type="submit">Sign out</button></form>'
        )
        who = (
            f'<div class="who"><span>Tenant <strong>{_e(tenant.name)}</strong>{role}</span>'
            f"{out}</div>"
        )
    return f'<nav aria-label="Dashboard"><ul>{items}</ul></nav>{who}' if tenant else who


def render(title: str, main: str, base: str, navigation: str, body: str = "") -> str:
    """A whole page from the skeleton (``assets/page.html``)."""
    skeleton = Template(asset("page.html").decode("utf-8"))
    return skeleton.substitute(title=_e(title), main=main, base=_e(base), nav=navigation, body=body)


def live_page(
    views: Sequence[RequestView],
    *,
    base: str,
    tenant: Tenant,
    open_mode: bool,
    cursor: str,
    listed_all: bool,
) -> str:
    """The live requests page."""
    show_tenant = tenant.admin
    bodies = "".join(request_tbody(v, base, show_tenant) for v in views)
    scope = "every tenant" if tenant.admin else f"tenant {tenant.name}"
    more = "" if listed_all else '<p class="empty">Only the first requests are shown.</p>'
    main = (
        "<h1>Live requests</h1>"
        f'<p class="live" id="live" data-state="connecting">Live: connecting</p>'
        f"<p>The open requests of {_e(scope)}. Bars are shares of each request's ceiling; "
        "they change as grants begin and settle.</p>"
        f"{_LEGEND}"
        '<div id="announcer" class="visually-hidden" aria-live="polite" aria-atomic="true">'
        "</div>"
        f'<p id="empty" class="empty"{" hidden" if views else ""}>No open requests.</p>'
        f'<table id="requests"{"" if views else " hidden"}>'
        "<caption>Per request, then per agent: tokens used, held by open grants, and left "
        "(of the agent's plan; of the request's ceiling)</caption>"
        '<thead><tr><th scope="col">Request / agent</th><th scope="col">Budget</th>'
        '<th scope="col" class="num">Used</th><th scope="col" class="num">Held</th>'
        '<th scope="col" class="num">Left</th><th scope="col" class="num">Plan / ceiling</th>'
        '<th scope="col" class="num">Calls</th><th scope="col">Status</th>'
        '<th scope="col">Calls ended</th></tr></thead>'
        f"{bodies}</table>{more}"
    )
    body = (
        f'data-stream="{_e(base)}/dashboard/events" '
        f'data-fragment="{_e(base)}/dashboard/fragments/requests" data-cursor="{_e(cursor)}"'
    )
    return render("Live requests", main, base, nav(base, "live", tenant, open_mode), body)


def _facts(pairs: Sequence[tuple[str, str, str]]) -> str:
    return (
        '<dl class="facts">'
        + "".join(f'<dt>{_e(k)}</dt><dd data-fact="{_e(f)}">{_e(v)}</dd>' for k, f, v in pairs)
        + "</dl>"
    )


def _note(event: Event) -> str:
    parts = []
    if event.kind == "begin" and event.asked > event.context_tokens:
        parts.append(f"input cut: {_n(event.asked - event.context_tokens)} tokens fitted away")
    if event.truncated:
        parts.append("answer cut at the cap")
    if event.overuse:
        parts.append(f"over-use {_n(event.overuse)}")
    if event.note:
        parts.append(
            event.note.rpartition("/")[2] if event.kind.startswith("child") else event.note
        )
    return "; ".join(parts)


def request_page(
    state: LedgerView,
    events: Sequence[Event],
    *,
    base: str,
    tenant: Tenant,
    open_mode: bool,
    cursor: str,
) -> str:
    """A request's page: its figures, per-agent table, children and timeline."""
    _, _, public = state.request_id.partition("/")
    outcome = "not scored" if state.outcome is None else f"{state.outcome:g}"
    fitted = sum(
        e.asked - e.context_tokens
        for e in events
        if e.kind == "begin" and e.asked > e.context_tokens
    )
    parent = ""
    if state.parent_id:
        parent = (
            f'<p>Child budget of <a href="{_e(request_url(base, state.parent_id))}">'
            f"{_e(state.parent_id.partition('/')[2])}</a> (depth {state.depth}).</p>"
        )
    facts = _facts(
        [
            ("Status", "status", state.status),
            ("Ceiling", "ceiling", _n(state.ceiling)),
            ("Consumed", "consumed", _n(state.consumed)),
            ("Held by open grants", "reserved", _n(state.reserved)),
            ("Free", "free", _n(state.free)),
            ("Overflow", "overflow", _n(state.overflow)),
            ("Calls with input cut", "cut-inputs", _n(sum(state.input_cut_calls.values()))),
            ("Input tokens fitted away", "fitted", _n(fitted)),
            ("Outcome score", "outcome", outcome),
        ]
    )
    outcomes = call_outcomes(events)
    agent_rows = []
    for name in state.ranks:
        tally, status = outcomes.get(name, ({}, "waiting"))
        agent_rows.append(
            f'<tr data-agent="{_e(name)}"><th scope="row">{_e(name)}</th>'
            f'<td class="num">{_n(state.allocation.get(name, 0))}</td>'
            f'<td class="num">{_n(state.reserved_by.get(name, 0))}</td>'
            f'<td class="num">{_n(state.consumed_by.get(name, 0))}</td>'
            f'<td class="num">{_n(state.overuse_by.get(name, 0))}</td>'
            f'<td class="num">{_n(state.calls.get(name, 0))}</td>'
            f'<td class="num">{_n(state.truncated_calls.get(name, 0))}</td>'
            f'<td class="num">{_n(state.input_cut_calls.get(name, 0))}</td>'
            f'<td class="status">{_e(status)}</td>'
            f"<td>{_e(_outcomes_text(tally))}</td></tr>"
        )
    agents = (
        "<table><caption>Per agent</caption><thead><tr>"
        '<th scope="col">Agent</th><th scope="col" class="num">Plan</th>'
        '<th scope="col" class="num">Held</th><th scope="col" class="num">Used</th>'
        '<th scope="col" class="num">Over-use</th><th scope="col" class="num">Calls</th>'
        '<th scope="col" class="num">Answers cut</th><th scope="col" class="num">Inputs cut</th>'
        '<th scope="col">Latest call</th><th scope="col">Calls ended</th></tr></thead>'
        f"<tbody>{''.join(agent_rows)}</tbody></table>"
    )
    kids = [e.note for e in events if e.kind == "child"]
    children = ""
    if kids:
        items = "".join(
            f'<li><a href="{_e(request_url(base, k))}">{_e(k.partition("/")[2])}</a></li>'
            for k in dict.fromkeys(kids)
        )
        children = f"<h2>Child budgets</h2><ul>{items}</ul>"
    timeline_rows = "".join(
        f"<tr><td>{_e(clock(e.at))}</td><td>{_e(e.kind)}</td><td>{_e(e.agent or '')}</td>"
        f'<td class="num">{e.grant_id or ""}</td><td class="num">{_n(e.context_tokens)}</td>'
        f'<td class="num">{_n(e.output_tokens)}</td><td>{_e(_note(e))}</td></tr>'
        for e in events
    )
    timeline = (
        "<h2>Timeline</h2><table><caption>Every grant, extension, settlement and release "
        "(times in UTC; tokens: granted at begin and extend, used at finish, returned at "
        "release and expiry)</caption><thead><tr>"
        '<th scope="col">Time</th><th scope="col">Change</th><th scope="col">Agent</th>'
        '<th scope="col" class="num">Grant</th><th scope="col" class="num">Context</th>'
        '<th scope="col" class="num">Output</th><th scope="col">Note</th></tr></thead>'
        f'<tbody id="timeline-rows">{timeline_rows}</tbody></table>'
    )
    main = (
        f"<h1>Request {_e(public)}</h1>"
        f'<p class="live" id="live" data-state="connecting">Live: connecting</p>'
        f"{parent}{facts}<h2>Agents</h2>{agents}{children}{timeline}"
    )
    body = (
        f'data-stream="{_e(base)}/dashboard/events" data-cursor="{_e(cursor)}" '
        f'data-request="{_e(state.request_id)}"'
    )
    return render(f"Request {public}", main, base, nav(base, "", tenant, open_mode), body)


def login_page(base: str, error: str = "", next_path: str = "/") -> str:
    """The sign-in form: a tenant's API key, exchanged for a session cookie."""
    problem = (
        f'<div class="panel error" role="alert"><strong>Not signed in:</strong> {_e(error)}</div>'
        if error
        else ""
    )
    main = (
        "<h1>Sign in</h1>"
        "<p>Sign in with one of your gateway API keys. The key is checked once; the "
        "browser then keeps a session cookie (the key itself is not kept).</p>"
        f'{problem}<form class="login" method="post" action="{_e(base)}/dashboard/login">'
        '<label for="key">API key</label>'
        '<input id="key" name="key" type="password" autocomplete="current-password" '
        "required autofocus>"
        f'<input type="hidden" name="next" value="{_e(next_path)}">'
        '<button type="submit">Sign in</button></form>'
    )
    return render("Sign in", main, base, "")


def message_page(
    title: str, message: str, *, base: str, tenant: Tenant | None, open_mode: bool
) -> str:
    """A page saying one thing (not found, store unavailable ...)."""
    main = f'<h1>{_e(title)}</h1><p>{_e(message)}</p><p><a href="{_e(base)}/">Live requests</a></p>'
    return render(title, main, base, nav(base, "", tenant, open_mode))


PRIORITY_CLASSES = ("critical", "standard", "peripheral")


def pools_table(statuses: Sequence[tuple[PoolStatus, bool]], show_tenant: bool) -> str:
    """The pools' table: per pool its window and figures, then a row per priority class."""
    if not statuses:
        return '<p id="pools" class="empty">No shared pools are defined.</p>'
    bodies = []
    for status, draining in statuses:
        pool = status.pool
        tenant, _, name = pool.name.partition("/")
        owner = f'<span class="tenant">({_e(tenant)})</span>' if show_tenant else ""
        window = (
            "one window"
            if not math.isfinite(pool.window_seconds)
            else f"{pool.window_seconds:g} s from {clock(status.window_start)}"
        )
        state = "draining" if draining else "open"
        rows = [
            f'<tbody class="pool" data-pool="{_e(pool.name)}" data-drawn="{status.drawn}" '
            f'data-capacity="{pool.capacity}">'
            f'<tr class="req"><th scope="rowgroup">{_e(name)}{owner}</th>'
            f'<td class="barcell">{_bar(status.drawn, 0, 0, pool.capacity)}</td>'
            f'<td class="num" data-cell="capacity">{_n(pool.capacity)}</td>'
            f'<td class="num" data-cell="drawn">{_n(status.drawn)}</td>'
            f'<td class="num" data-cell="remaining">{_n(status.remaining)}</td>'
            f'<td class="num">{_n(status.open_draws)}</td>'
            f'<td class="num">{_n(status.overflow)}</td>'
            f"<td>{_e(window)}</td>"
            f'<td class="status">{state}</td></tr>'
        ]
        for priority in PRIORITY_CLASSES:
            held = pool.reserve.get(priority, 0)
            free = status.available_to(priority)
            rows.append(
                f'<tr class="agent" data-priority="{priority}"><th scope="row">{priority}</th>'
                f'<td class="barcell">{_bar(status.drawn, 0, free, pool.capacity)}</td>'
                f'<td class="num">{_n(held)}</td><td></td>'
                f'<td class="num" data-cell="available">{_n(free)}</td>'
                "<td></td><td></td><td></td><td></td>"
                "</tr>"
            )
        rows.append("</tbody>")
        bodies.append("".join(rows))
    return (
        '<table id="pools"><caption>Per pool: tokens drawn in the current window (ceilings of '
        "its open requests and what closed ones used), then per priority class the reserve "
        "held for it and what a request of that class may draw now</caption>"
        '<thead><tr><th scope="col">Pool / class</th><th scope="col">Window use</th>'
        '<th scope="col" class="num">Capacity / reserve</th>'
        '<th scope="col" class="num">Drawn</th>'
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
        f'data-stream="{_e(base)}/dashboard/events" data-cursor="{_e(cursor)}" '
        f'data-pools="{_e(base)}/dashboard/fragments/pools"'
    )
    return render("Pools", main, base, nav(base, "pools", tenant, open_mode), body)


_NUM = ' class="num"'


def _table(caption: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(
        f'<th scope="col"{_NUM if i else ""}>{_e(c)}</th>' for i, c in enumerate(columns)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<th scope="row">{_e(v)}</th>' if i == 0 else f'<td class="num">{_e(v)}</td>'
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def report_panel(panel: ReportPanel, base: str, show_source: bool = False) -> str:
    """The report panel: the figures of ``apportion report``, or what went wrong.

    The database's address is shown to an admin only (it is the operator's).
    """
    where = f" ({_e(panel.database)})" if panel.database and show_source else ""
    if panel.problem is not None:
        return (
            '<div class="panel error" id="report-panel" role="alert">'
            f"<p><strong>No report{where}:</strong> {_e(panel.problem)}</p>"
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
            f"{_e(message)}.</p></div>"
        )
    summary = (
        f"<p>{_n(int(document.get('requests') or 0))} requests, "
        f"{_n(int(document.get('calls') or 0))} calls in the last {_e(panel.window)}{where}.</p>"
    )
    download = ""
    if panel.budgets is not None:
        download = (
            f'<p><a href="{_e(base)}/dashboard/report/budgets.yaml?window={_e(panel.window)}" '
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
        f'<form method="get" action="{_e(base)}/dashboard/report" class="window">'
        '<label for="window">Window</label> '
        f'<select id="window" name="window">{options}</select> '
        '<button type="submit">Show</button></form>'
        f"{report_panel(panel, base, tenant.admin)}"
    )
    return render("Report", main, base, nav(base, "report", tenant, open_mode))
