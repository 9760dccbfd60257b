"""The dashboard's pages, rendered on the server: every name and id escaped, no inline script.

Bars are SVG rectangles sized by attributes (no inline style, so the page's
Content-Security-Policy allows no inline code at all); the numbers beside each bar are in
table cells, so a screen reader reads the figures, not the picture. The page's skeleton,
style sheet and script are package data (``assets/``).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from html import escape
from importlib import resources
from string import Template
from urllib.parse import quote

from apportion.features import features_from
from apportion.ledger import Event
from apportion.serve.gateway import Tenant
from apportion.stores import LedgerView

__all__ = [
    "AgentView",
    "RequestView",
    "asset",
    "bar_svg",
    "call_outcomes",
    "esc",
    "live_page",
    "login_page",
    "message_page",
    "num",
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


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return escape(str(value), quote=True)


def num(value: int) -> str:
    """A token count with thousands separators."""
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


def bar_svg(used: int, held: int, plan: int, ceiling: int) -> str:
    """A bar of ``ceiling``: used, held and planned segments (decoration: aria-hidden)."""
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
    name = esc(view.public_id)
    tenant = f'<span class="tenant">({esc(view.tenant)})</span>' if show_tenant else ""
    tree = '<span class="tree" aria-hidden="true">↳ </span>' if view.depth else ""
    child = (
        f'<span class="visually-hidden">child budget of '
        f"{esc(view.parent_id.partition('/')[2])}, </span>"
        if view.parent_id
        else ""
    )
    closed = "" if view.status == "open" else " closed"
    rows = [
        f'<tbody class="request{closed}" data-request="{esc(view.store_id)}" '
        f'data-parent="{esc(view.parent_id or "")}" data-depth="{view.depth}" '
        f'data-ceiling="{view.ceiling}" data-free="{view.free}" '
        f'data-consumed="{view.consumed}" data-status="{esc(view.status)}" '
        f'data-cursor="{esc(cursor)}">',
        '<tr class="req">'
        f'<th scope="rowgroup">{tree}{child}<a href="{esc(request_url(base, view.store_id))}">'
        f"{name}</a>{tenant}</th>"
        f'<td class="barcell">{bar_svg(view.consumed, view.reserved, 0, view.ceiling)}</td>'
        f'<td class="num" data-cell="used">{num(view.consumed)}</td>'
        f'<td class="num" data-cell="held">{num(view.reserved)}</td>'
        f'<td class="num" data-cell="free">{num(view.free)}</td>'
        f'<td class="num">{num(view.ceiling)}</td>'
        '<td class="num"></td>'
        f'<td class="status" data-cell="status">{esc(view.status)}</td>'
        '<td data-cell="outcomes"></td></tr>',
    ]
    for agent in view.agents:
        cut = " is-cut" if agent.outcomes.get("cut") else ""
        tallies = "".join(f' data-{s}="{agent.outcomes[s]}"' for s in agent.outcomes)
        rows.append(
            f'<tr class="agent{cut}" data-agent="{esc(agent.name)}" '
            f'data-allocation="{agent.allocation}" data-used="{agent.used}" '
            f'data-held="{agent.held}" data-calls="{agent.calls}" '
            f'data-status="{esc(agent.status)}"{tallies}>'
            f'<th scope="row">{esc(agent.name)}</th>'
            f'<td class="barcell">{bar_svg(agent.used, agent.held, agent.plan_left, view.ceiling)}'
            "</td>"
            f'<td class="num" data-cell="used">{num(agent.used)}</td>'
            f'<td class="num" data-cell="held">{num(agent.held)}</td>'
            f'<td class="num" data-cell="plan">{num(agent.plan_left)}</td>'
            f'<td class="num">{num(agent.allocation)}</td>'
            f'<td class="num" data-cell="calls">{num(agent.calls)}</td>'
            f'<td class="status" data-cell="status">{esc(agent.status)}</td>'
            f'<td data-cell="outcomes">{esc(_outcomes_text(agent.outcomes))}</td></tr>'
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
        f'<li><a href="{esc(base + path)}"'
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
            else f'<form method="post" action="{esc(base)}/dashboard/logout">'
            '<button type="submit">Sign out</button></form>'
        )
        who = (
            f'<div class="who"><span>Tenant <strong>{esc(tenant.name)}</strong>{role}</span>'
            f"{out}</div>"
        )
    return f'<nav aria-label="Dashboard"><ul>{items}</ul></nav>{who}' if tenant else who


def render(title: str, main: str, base: str, navigation: str, body: str = "") -> str:
    """A whole page from the skeleton (``assets/page.html``)."""
    skeleton = Template(asset("page.html").decode("utf-8"))
    return skeleton.substitute(
        title=esc(title), main=main, base=esc(base), nav=navigation, body=body
    )


_LIVE_COLUMNS = (
    '<colgroup><col class="c-name"><col class="c-bar"><col class="c-num"><col class="c-num">'
    '<col class="c-num"><col class="c-plan"><col class="c-calls"><col class="c-status">'
    '<col class="c-ended"></colgroup>'
)
"""The live table's columns: fixed widths, so a figure that changes never lays out the
whole table again (with 1,000 requests, an auto-width table took a third of a second)."""


def _quiet(match: re.Match[str]) -> str:
    return f'{match.group(1)}<span class="visually-hidden">{match.group(2)}</span></th>'


_LIVE_HEADER = (
    '<tr><th scope="col">Request / agent</th><th scope="col">Budget</th>'
    '<th scope="col" class="num">Used</th><th scope="col" class="num">Held</th>'
    '<th scope="col" class="num">Left</th><th scope="col" class="num">Plan / ceiling</th>'
    '<th scope="col" class="num">Calls</th><th scope="col">Status</th>'
    '<th scope="col">Calls ended</th></tr>'
)
_QUIET_HEADER = re.sub(r'(<th scope="col"[^>]*>)([^<]*)</th>', _quiet, _LIVE_HEADER)


def _block_open(depth: int) -> str:
    """The start of a request's block: a table of its own, headed for screen readers.

    Each request is a block with ``content-visibility: auto``: a block off screen is not
    laid out at all, so a change in one request lays out that request's table only (one
    table of a thousand requests took a third of a second a layout). The columns are
    fixed, the same in every block; the header row is shown once, above the blocks, and
    in each table only to screen readers.
    """
    return (
        f'<div class="req-block" data-depth="{depth}"><table class="live">{_LIVE_COLUMNS}'
        f'<thead class="quiet">{_QUIET_HEADER}</thead>'
    )


def _block_close() -> str:
    return "</table></div>"


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
    blocks = "".join(
        _block_open(v.depth) + request_tbody(v, base, show_tenant) + _block_close() for v in views
    )
    scope = "every tenant" if tenant.admin else f"tenant {tenant.name}"
    more = "" if listed_all else '<p class="empty">Only the first requests are shown.</p>'
    main = (
        "<h1>Live requests</h1>"
        f'<p class="live" id="live" data-state="connecting">Live: connecting</p>'
        f"<p>The open requests of {esc(scope)}. Bars are shares of each request's ceiling; "
        "they change as grants begin and settle.</p>"
        f"{_LEGEND}"
        '<div id="announcer" class="visually-hidden" aria-live="polite" aria-atomic="true">'
        "</div>"
        f'<p id="empty" class="empty"{" hidden" if views else ""}>No open requests.</p>'
        f'<div id="requests" class="live-list"{"" if views else " hidden"}>'
        '<p class="live-caption">Per request, then per agent: tokens used, held by open '
        "grants, and left (of the agent's plan; of the request's ceiling)</p>"
        f'<table class="live live-head" aria-hidden="true">{_LIVE_COLUMNS}'
        f"<thead>{_LIVE_HEADER}</thead></table>"
        f"{blocks}</div>{more}"
        f'<template id="request-block">{_block_open(0)}{_block_close()}</template>'
    )
    body = (
        f'data-stream="{esc(base)}/dashboard/events" '
        f'data-fragment="{esc(base)}/dashboard/fragments/requests" data-cursor="{esc(cursor)}"'
    )
    return render("Live requests", main, base, nav(base, "live", tenant, open_mode), body)


def _facts(pairs: Sequence[tuple[str, str, str]]) -> str:
    return (
        '<dl class="facts">'
        + "".join(f'<dt>{esc(k)}</dt><dd data-fact="{esc(f)}">{esc(v)}</dd>' for k, f, v in pairs)
        + "</dl>"
    )


def _plain(value: object) -> object:
    """A feature as shown: a whole float without its ``.0`` (JSON numbers may carry one)."""
    if type(value) is float and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def opened_with(event: Event) -> str:
    """What an ``open`` event's note shows: the request's features (``""`` for none)."""
    shown = ", ".join(f"{name}={_plain(value)}" for name, value in features_from([event]).items())
    return f"features {shown}" if shown else ""


def _note(event: Event) -> str:
    if event.kind == "open":
        return opened_with(event)
    parts = []
    if event.kind == "begin" and event.asked > event.context_tokens:
        parts.append(f"input cut: {num(event.asked - event.context_tokens)} tokens fitted away")
    if event.truncated:
        parts.append("answer cut at the cap")
    if event.overuse:
        parts.append(f"over-use {num(event.overuse)}")
    if event.kind == "fitted":
        parts.append(f"{event.note} message(s) dropped or shortened to fit the grant")
    elif event.kind == "begin" and event.note:
        parts.append(f"model {event.note}")
    elif event.note:
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
    fitted_messages = sum(int(e.note) for e in events if e.kind == "fitted" and e.note.isdecimal())
    parent = ""
    if state.parent_id:
        parent = (
            f'<p>Child budget of <a href="{esc(request_url(base, state.parent_id))}">'
            f"{esc(state.parent_id.partition('/')[2])}</a> (depth {state.depth}).</p>"
        )
    facts = _facts(
        [
            ("Status", "status", state.status),
            ("Ceiling", "ceiling", num(state.ceiling)),
            ("Consumed", "consumed", num(state.consumed)),
            ("Held by open grants", "reserved", num(state.reserved)),
            ("Free", "free", num(state.free)),
            ("Overflow", "overflow", num(state.overflow)),
            ("Calls with input cut", "cut-inputs", num(sum(state.input_cut_calls.values()))),
            ("Input tokens fitted away", "fitted", num(fitted)),
            ("Messages fitted away", "fitted-messages", num(fitted_messages)),
            ("Outcome score", "outcome", outcome),
        ]
    )
    outcomes = call_outcomes(events)
    agent_rows = []
    for name in state.ranks:
        tally, status = outcomes.get(name, ({}, "waiting"))
        agent_rows.append(
            f'<tr data-agent="{esc(name)}"><th scope="row">{esc(name)}</th>'
            f'<td class="num">{num(state.allocation.get(name, 0))}</td>'
            f'<td class="num">{num(state.reserved_by.get(name, 0))}</td>'
            f'<td class="num">{num(state.consumed_by.get(name, 0))}</td>'
            f'<td class="num">{num(state.overuse_by.get(name, 0))}</td>'
            f'<td class="num">{num(state.calls.get(name, 0))}</td>'
            f'<td class="num">{num(state.truncated_calls.get(name, 0))}</td>'
            f'<td class="num">{num(state.input_cut_calls.get(name, 0))}</td>'
            f'<td class="status">{esc(status)}</td>'
            f"<td>{esc(_outcomes_text(tally))}</td></tr>"
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
            f'<li><a href="{esc(request_url(base, k))}">{esc(k.partition("/")[2])}</a></li>'
            for k in dict.fromkeys(kids)
        )
        children = f"<h2>Child budgets</h2><ul>{items}</ul>"
    timeline_rows = "".join(
        f"<tr><td>{esc(clock(e.at))}</td><td>{esc(e.kind)}</td><td>{esc(e.agent or '')}</td>"
        f'<td class="num">{e.grant_id or ""}</td><td class="num">{num(e.context_tokens)}</td>'
        f'<td class="num">{num(e.output_tokens)}</td><td>{esc(_note(e))}</td></tr>'
        for e in events
    )
    timeline = (
        "<h2>Timeline</h2><table><caption>Every grant, extension, settlement and release, "
        "and the calls refused and messages fitted away "
        "(times in UTC; tokens: granted at begin and extend, used at finish, returned at "
        "release and expiry, removed by fitting)</caption><thead><tr>"
        '<th scope="col">Time</th><th scope="col">Change</th><th scope="col">Agent</th>'
        '<th scope="col" class="num">Grant</th><th scope="col" class="num">Context</th>'
        '<th scope="col" class="num">Output</th><th scope="col">Note</th></tr></thead>'
        f'<tbody id="timeline-rows">{timeline_rows}</tbody></table>'
    )
    main = (
        f"<h1>Request {esc(public)}</h1>"
        f'<p class="live" id="live" data-state="connecting">Live: connecting</p>'
        f"{parent}{facts}<h2>Agents</h2>{agents}{children}{timeline}"
    )
    body = (
        f'data-stream="{esc(base)}/dashboard/events" data-cursor="{esc(cursor)}" '
        f'data-request="{esc(state.request_id)}"'
    )
    return render(f"Request {public}", main, base, nav(base, "", tenant, open_mode), body)


def login_page(base: str, error: str = "", next_path: str = "/") -> str:
    """The sign-in form: a tenant's API key, exchanged for a session cookie."""
    problem = (
        f'<div class="panel error" role="alert"><strong>Not signed in:</strong> {esc(error)}</div>'
        if error
        else ""
    )
    main = (
        "<h1>Sign in</h1>"
        "<p>Sign in with one of your gateway API keys. The key is checked once; the "
        "browser then keeps a session cookie (the key itself is not kept).</p>"
        f'{problem}<form class="login" method="post" action="{esc(base)}/dashboard/login">'
        '<label for="key">API key</label>'
        '<input id="key" name="key" type="password" autocomplete="current-password" '
        "required autofocus>"
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<button type="submit">Sign in</button></form>'
    )
    return render("Sign in", main, base, "")


def message_page(
    title: str, message: str, *, base: str, tenant: Tenant | None, open_mode: bool
) -> str:
    """A page saying one thing (not found, store unavailable ...)."""
    home = f'<p><a href="{esc(base)}/">Live requests</a></p>'
    main = f"<h1>{esc(title)}</h1><p>{esc(message)}</p>{home}"
    return render(title, main, base, nav(base, "", tenant, open_mode))
