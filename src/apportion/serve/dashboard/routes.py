"""The dashboard's routes: pages, the login form, fragments, assets and the live stream.

Every page needs a session (:mod:`apportion.serve.dashboard.session`); without one a page
redirects to the login form, the stream and fragments answer 401. A request another tenant
owns is answered exactly as one that does not exist: a 404 page.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from apportion.errors import ApportionError, StoreUnavailable, UnknownPool, UnknownRequest
from apportion.pools import PoolStatus
from apportion.serve.dashboard import pages, panels
from apportion.serve.dashboard.report import WINDOWS, build_panel
from apportion.serve.dashboard.session import (
    COOKIE,
    issue_session,
    read_session,
    session_cookie,
)
from apportion.serve.errors import AuthenticationThrottled
from apportion.serve.gateway import Gateway, Tenant
from apportion.serve.gather import gather_bounded
from apportion.stores.feed import FeedEvent

__all__ = ["dashboard_routes"]

HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""Sent with every page: no inline code, nothing from elsewhere, no framing."""

_ASSETS: Final = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
KEEPALIVE_SECONDS: Final = 15.0
"""How long the stream waits for events before sending a comment (keeps proxies open)."""
LIVE_LIMIT: Final = 1000
"""The most open requests the live page lists."""
_MAX_FORM: Final = 8192


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=HEADERS)


def _event_json(item: FeedEvent) -> str:
    event = item.event
    note = event.note
    if event.kind in ("child", "child_close"):
        note = note.partition("/")[2]  # a child's id, without its tenant
    elif event.kind == "open":
        note = pages.opened_with(event)
    return json.dumps(
        {
            "c": item.cursor,
            "r": item.request_id,
            "pub": item.request_id.partition("/")[2],
            "k": event.kind,
            "a": event.agent,
            "gid": event.grant_id,
            "x": event.context_tokens,
            "o": event.output_tokens,
            "tr": event.truncated,
            "note": note,
            "t": event.at,
            "s": item.status,
            "g": item.granted,
            "u": item.used,
            "f": item.free,
            "n": item.consumed,
        },
        separators=(",", ":"),
    )


def dashboard_routes(
    gateway: Gateway, *, clock: Callable[[], float] = time.time
) -> list[BaseRoute]:
    """The dashboard's routes over ``gateway`` (``/`` and ``/dashboard/...``)."""

    def open_mode() -> bool:  # read each time: a reload may change it
        return gateway.config.open_mode

    def tenant_of(request: Request) -> Tenant | None:
        return read_session(gateway, request.cookies.get(COOKIE), clock())

    def visible(tenant: Tenant, store_id: str) -> bool:
        return store_id.startswith(gateway.visible_prefix(tenant))

    def to_login(request: Request) -> Response:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = f"{_base(request)}/dashboard/login?next={quote(here, safe='')}"
        return RedirectResponse(target, status_code=303, headers=HEADERS)

    def unavailable(request: Request, tenant: Tenant, exc: StoreUnavailable) -> Response:
        text = pages.message_page(
            "Store unavailable",
            f"The store cannot be reached: {exc.reason}",
            base=_base(request),
            tenant=tenant,
            open_mode=open_mode(),
        )
        return _html(text, 503)

    def not_found(request: Request, tenant: Tenant | None, what: str) -> Response:
        text = pages.message_page(
            "Not found", what, base=_base(request), tenant=tenant, open_mode=open_mode()
        )
        return _html(text, 404)

    async def live(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return to_login(request)
        try:
            cursor = await gateway.store.afeed_cursor()  # before reading: no change missed
            states = await gateway.open_requests(tenant, LIVE_LIMIT)
            histories = await gather_bounded(
                (gateway.store.ahistory(s.request_id) for s in states), return_exceptions=True
            )
        except StoreUnavailable as exc:
            return unavailable(request, tenant, exc)
        events = {
            s.request_id: h for s, h in zip(states, histories, strict=True) if isinstance(h, list)
        }
        views = pages.request_views(states, events)
        text = pages.live_page(
            views,
            base=_base(request),
            tenant=tenant,
            open_mode=open_mode(),
            cursor=cursor,
            listed_all=len(states) < LIVE_LIMIT,
        )
        return _html(text)

    async def read_request(
        tenant: Tenant, store_id: str, *, notes: bool
    ) -> tuple[Any, list[Any]] | None:
        if not visible(tenant, store_id):
            return None
        try:
            state = await gateway.store.aget(store_id)
            if notes:
                history = await gateway.store.ahistory(store_id)
            else:
                history = await gateway.store.aevents(store_id)
        except UnknownRequest:
            return None
        return state, history

    async def request_page(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return to_login(request)
        store_id = str(request.path_params["request_id"])
        try:
            cursor = await gateway.store.afeed_cursor()
            found = await read_request(tenant, store_id, notes=True)
        except StoreUnavailable as exc:
            return unavailable(request, tenant, exc)
        if found is None:
            return not_found(request, tenant, "There is no such request (or it is not yours).")
        state, history = found
        text = pages.request_page(
            state,
            history,
            base=_base(request),
            tenant=tenant,
            open_mode=open_mode(),
            cursor=cursor,
        )
        return _html(text)

    async def fragment(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return Response("sign in first", status_code=401, headers=HEADERS)
        store_id = str(request.path_params["request_id"])
        try:
            cursor = await gateway.store.afeed_cursor()  # before reading: changes since are newer
            # The ledger's events only: a live page fetches these rows when the request's
            # open reaches it, so every note of the request reaches it too, held meanwhile
            # and replayed onto the rows (notes read here as well would count twice).
            found = await read_request(tenant, store_id, notes=False)
        except StoreUnavailable:
            return Response("store unavailable", status_code=503, headers=HEADERS)
        if found is None:
            return Response("not found", status_code=404, headers=HEADERS)
        state, history = found
        (view,) = pages.request_views([state], {store_id: history})
        return _html(pages.request_tbody(view, _base(request), tenant.admin, cursor))

    async def stream(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return Response("sign in first", status_code=401, headers=HEADERS)
        after = request.headers.get("last-event-id") or request.query_params.get("after")
        try:
            cursor = after or await gateway.store.afeed_cursor()
            await gateway.store.afeed(cursor, limit=1)  # a bad cursor is refused here
        except ApportionError:
            return Response("bad cursor, or the store is unavailable", 400, headers=HEADERS)
        prefix = gateway.visible_prefix(tenant)

        async def events() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            # One reader per worker (the gateway's feed hub) for every stream: this one
            # registers, reads what it missed since its cursor from the store, then takes
            # the hub's events. Fallen too far behind, it ends: the browser reconnects.
            async with gateway.feed_hub.subscription(cursor, prefix) as sub:
                caught_up = False
                while not await request.is_disconnected():
                    if tenant_of(request) is None:  # the session ended, or its tenant went
                        return
                    if caught_up:
                        page = await sub.next(KEEPALIVE_SECONDS)
                        if sub.dropped:
                            return
                    else:
                        try:
                            page = await sub.catch_up()
                        except StoreUnavailable:
                            yield ": store unavailable\n\n"
                            await asyncio.sleep(1.0)
                            continue
                        if not page:
                            caught_up = True
                            continue
                    for item in page:
                        yield f"id: {item.cursor}\nevent: change\ndata: {_event_json(item)}\n\n"
                    if not page:
                        yield ": store unavailable\n\n" if sub.problem else ": keepalive\n\n"

        headers = {**HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def read_pools(tenant: Tenant) -> list[tuple[PoolStatus, bool]]:
        try:
            names = await gateway.store.apool_names(gateway.visible_prefix(tenant))
        except NotImplementedError:
            return []
        now = gateway.clock()
        found = []
        for name in names:
            try:
                status = await gateway.store.aget_pool(name, now)
            except UnknownPool:
                continue
            found.append((status, await gateway.draining(name)))
        return found

    async def pools_page(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return to_login(request)
        try:
            cursor = await gateway.store.afeed_cursor()
            statuses = await read_pools(tenant)
        except StoreUnavailable as exc:
            return unavailable(request, tenant, exc)
        text = panels.pools_page(
            statuses, base=_base(request), tenant=tenant, open_mode=open_mode(), cursor=cursor
        )
        return _html(text)

    async def pools_fragment(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return Response("sign in first", status_code=401, headers=HEADERS)
        try:
            statuses = await read_pools(tenant)
        except StoreUnavailable:
            return Response("store unavailable", status_code=503, headers=HEADERS)
        return _html(panels.pools_table(statuses, tenant.admin))

    def window_of(request: Request) -> str:
        window = request.query_params.get("window", "day")
        return window if window in WINDOWS else "day"

    async def report(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return to_login(request)
        window = window_of(request)
        panel = await asyncio.to_thread(build_panel, gateway.config, tenant, window, clock())
        text = panels.report_page(panel, base=_base(request), tenant=tenant, open_mode=open_mode())
        return _html(text)

    async def budgets(request: Request) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return Response("sign in first", status_code=401, headers=HEADERS)
        window = window_of(request)
        panel = await asyncio.to_thread(build_panel, gateway.config, tenant, window, clock())
        if panel.budgets is None:
            reason = panel.problem or "no calls in this window: nothing to recommend"
            return Response(reason, status_code=404, headers=HEADERS, media_type="text/plain")
        headers = {**HEADERS, "Content-Disposition": 'attachment; filename="budgets.yaml"'}
        return Response(panel.budgets, media_type="application/yaml", headers=headers)

    async def login_form(request: Request) -> Response:
        if open_mode():
            return RedirectResponse(f"{_base(request)}/", status_code=303, headers=HEADERS)
        return _html(pages.login_page(_base(request), next_path=_next(request, None)))

    async def login(request: Request) -> Response:
        base = _base(request)
        body = await _read_form(request)
        key = body.get("key", "")
        target = _next(request, body.get("next"))
        client = request.client.host if request.client is not None else None
        try:
            tenant = gateway.authenticate({"authorization": f"Bearer {key}"}, client)
        except AuthenticationThrottled as exc:
            text = pages.login_page(
                base, f"too many failed attempts; try again in {exc.retry_after} s", target
            )
            return _html(text, 429)
        except ApportionError:
            return _html(pages.login_page(base, "that key is not valid", target), 401)
        value = issue_session(gateway, tenant, clock())
        headers = {
            **HEADERS,
            "Set-Cookie": session_cookie(
                value, path=f"{base}/", secure=request.url.scheme == "https"
            ),
        }
        return RedirectResponse(f"{base}{target}", status_code=303, headers=headers)

    async def logout(request: Request) -> Response:
        base = _base(request)
        headers = {
            **HEADERS,
            "Set-Cookie": session_cookie(
                "", path=f"{base}/", secure=request.url.scheme == "https", clear=True
            ),
        }
        return RedirectResponse(f"{base}/dashboard/login", status_code=303, headers=headers)

    async def static(request: Request) -> Response:
        name = str(request.path_params["name"])
        kind = _ASSETS.get(name)
        if kind is None:
            return Response("not found", status_code=404, headers=HEADERS)
        headers = {**HEADERS, "Cache-Control": "public, max-age=300"}
        return Response(pages.asset(name), media_type=kind, headers=headers)

    return [
        Route("/", live, methods=["GET"], name="dashboard"),
        Route("/dashboard/login", login_form, methods=["GET"]),
        Route("/dashboard/login", login, methods=["POST"]),
        Route("/dashboard/logout", logout, methods=["POST"]),
        Route("/dashboard/requests/{request_id:path}", request_page, methods=["GET"]),
        Route("/dashboard/fragments/requests/{request_id:path}", fragment, methods=["GET"]),
        Route("/dashboard/events", stream, methods=["GET"]),
        Route("/dashboard/pools", pools_page, methods=["GET"]),
        Route("/dashboard/report", report, methods=["GET"]),
        Route("/dashboard/report/budgets.yaml", budgets, methods=["GET"]),
        Route("/dashboard/fragments/pools", pools_fragment, methods=["GET"]),
        Route("/dashboard/static/{name}", static, methods=["GET"]),
    ]


def _next(request: Request, given: str | None) -> str:
    """Where to go after signing in: a path on this dashboard, never another site."""
    target = given if given is not None else request.query_params.get("next", "/")
    base = _base(request)
    if base and target.startswith(base + "/"):
        target = target[len(base) :]
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _read_form(request: Request) -> dict[str, str]:
    """A small ``application/x-www-form-urlencoded`` body (no multipart dependency)."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > _MAX_FORM:
            return {}
    fields = parse_qs(data.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items() if v}
