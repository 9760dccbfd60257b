"""The dashboard over HTTP (no browser): sign-in, pages per tenant, escaping, 404s, the stream."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from dashboard_helpers import EVIL, dashboard_config
from test_budget_api import BASE

from apportion.ledger import Event
from apportion.serve import Gateway
from apportion.serve.app import create_app
from apportion.serve.dashboard import create_dashboard
from apportion.serve.dashboard.session import COOKIE, SESSION_SECONDS, issue_session
from apportion.serve.gateway import Tenant
from conftest import KEYS, LiveServer, auth


def run(gateway: Gateway, body: Any, app: Any = None) -> Any:
    async def main() -> Any:
        transport = httpx.ASGITransport(app=app or create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await body(client)

    return asyncio.run(main())


async def sign_in(client: httpx.AsyncClient, tenant: str) -> None:
    answer = await client.post("/dashboard/login", data={"key": KEYS[tenant], "next": "/"})
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and KEYS[tenant] not in cookie
    client.cookies.set(COOKIE, answer.cookies[COOKIE])


async def open_and_run(client: httpx.AsyncClient, tenant: str) -> str:
    """A request where the hostile agent finishes (answer cut) and the planner holds a grant."""
    opened = await client.post(BASE, json={"ceiling": 20_000}, headers=auth(tenant))
    assert opened.status_code == 201, opened.text
    rid = str(opened.json()["request_id"])
    h = auth(tenant)
    grant = await client.post(
        f"{BASE}/{rid}/begin", json={"agent": EVIL, "input_tokens": 300}, headers=h
    )
    assert grant.status_code == 200, grant.text
    done = await client.post(
        f"{BASE}/{rid}/finish",
        json={
            "grant": grant.json()["grant"],
            "input_tokens": 300,
            "output_tokens": 50,
            "truncated": True,
        },
        headers=h,
    )
    assert done.status_code == 200, done.text
    held = await client.post(
        f"{BASE}/{rid}/begin", json={"agent": "planner", "input_tokens": 1000}, headers=h
    )
    assert held.status_code == 200, held.text
    return rid


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return Gateway(dashboard_config(tmp_path))


def test_pages_need_a_session_and_a_valid_key(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        page = await client.get("/")
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard/login?next=%2F"
        form = await client.get("/dashboard/login")
        assert form.status_code == 200
        assert '<label for="key">API key</label>' in form.text
        assert 'type="password"' in form.text
        bad = await client.post("/dashboard/login", data={"key": "sk-wrong"})
        assert bad.status_code == 401 and 'role="alert"' in bad.text
        assert "sk-wrong" not in bad.text and COOKIE not in bad.headers.get("set-cookie", "")
        assert (await client.get("/dashboard/events")).status_code == 401
        forged = issue_session(gateway, Tenant("acme"), 0.0)[:-2] + "xx"
        client.cookies.set(COOKIE, forged)
        assert (await client.get("/")).status_code == 303
        client.cookies.clear()
        await sign_in(client, "acme")
        page = await client.get("/")
        assert page.status_code == 200, page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        out = await client.post("/dashboard/logout")
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]

    run(gateway, body)


def test_a_session_ends_and_a_removed_tenant_loses_it(gateway: Gateway) -> None:
    import time

    old = issue_session(gateway, Tenant("acme"), time.time() - SESSION_SECONDS - 1)

    async def body(client: httpx.AsyncClient) -> None:
        client.cookies.set(COOKIE, old)
        assert (await client.get("/")).status_code == 303
        client.cookies.set(COOKIE, issue_session(gateway, Tenant("nobody"), time.time()))
        assert (await client.get("/")).status_code == 303

    run(gateway, body)


def test_the_next_page_after_sign_in_stays_on_the_dashboard(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        for target, lands in [
            ("/dashboard/requests/acme%2Fx", "/dashboard/requests/acme%2Fx"),
            ("https://evil.example/", "/"),
            ("//evil.example/", "/"),
        ]:
            answer = await client.post(
                "/dashboard/login", data={"key": KEYS["acme"], "next": target}
            )
            assert answer.headers["location"] == lands

    run(gateway, body)


def test_each_tenant_sees_its_own_requests_and_names_render_as_text(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        mine = await open_and_run(client, "acme")
        theirs = await open_and_run(client, "globex")
        await sign_in(client, "acme")
        page = (await client.get("/")).text
        assert f'data-request="acme/{mine}"' in page
        assert theirs not in page
        assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>" not in page.replace('<script src="/dashboard/static/dashboard.js"', "")
        rows = re.findall(r'<tr class="agent([^"]*)" data-agent="([^"]+)"', page)
        assert (" is-cut", "&lt;script&gt;alert(1)&lt;/script&gt;") in rows
        request = await client.get(f"/dashboard/requests/{quote('acme/' + mine, safe='')}")
        assert request.status_code == 200
        assert EVIL not in request.text and "answer cut at the cap" in request.text
        assert request.text.count("<tr><td>") == 4  # open, begin, finish, begin
        # messages fitted away: a note the store keeps with the request, on its timeline
        gateway.store.note(f"acme/{mine}", Event("fitted", 9.0, "planner", 2, 640, 0, note="2"))
        request = await client.get(f"/dashboard/requests/{quote('acme/' + mine, safe='')}")
        assert request.text.count("<tr><td>") == 5
        assert '<dd data-fact="fitted-messages">2</dd>' in request.text
        assert "2 message(s) dropped or shortened to fit the grant" in request.text
        for missing in (f"globex/{theirs}", "acme/nope", theirs):
            gone = await client.get(f"/dashboard/requests/{quote(missing, safe='')}")
            assert gone.status_code == 404 and "Not found" in gone.text
            fragment = await client.get(f"/dashboard/fragments/requests/{quote(missing, safe='')}")
            assert fragment.status_code == 404
        client.cookies.clear()
        await sign_in(client, "ops")
        every = (await client.get("/")).text
        assert f'data-request="acme/{mine}"' in every and f'data-request="globex/{theirs}"' in every

    run(gateway, body)


def test_assets_are_served_by_the_package(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        script = await client.get("/dashboard/static/dashboard.js")
        assert script.status_code == 200 and "EventSource" in script.text
        style = await client.get("/dashboard/static/dashboard.css")
        assert "prefers-color-scheme: dark" in style.text
        assert (await client.get("/dashboard/static/../app.py")).status_code == 404
        assert (
            (await client.get("/v1/nothing")).headers["content-type"].startswith("application/json")
        )  # the API's own 404s stay JSON

    run(gateway, body)


def test_the_dashboard_mounts_under_a_path(gateway: Gateway) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/budgets", create_dashboard(gateway))])

    async def body(client: httpx.AsyncClient) -> None:
        page = await client.get("/budgets/")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/budgets/dashboard/login")
        answer = await client.post("/budgets/dashboard/login", data={"key": KEYS["acme"]})
        assert "Path=/budgets/" in answer.headers["set-cookie"]
        client.cookies.set(COOKIE, answer.cookies[COOKIE])
        live = await client.get("/budgets/")
        assert 'href="/budgets/dashboard/static/dashboard.css"' in live.text

    run(gateway, body, outer)


def _events(lines: Any, wanted: int) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        if line.startswith("data: "):
            found.append(json.loads(line[6:]))
            if len(found) >= wanted:
                break
    return found


def test_the_stream_carries_a_tenants_changes_only(gateway: Gateway) -> None:
    with LiveServer(create_app(gateway)) as server, httpx.Client(base_url=server.url) as http:
        answer = http.post("/dashboard/login", data={"key": KEYS["acme"]})
        cookies = {COOKIE: answer.cookies[COOKIE]}
        with http.stream("GET", "/dashboard/events", cookies=cookies, timeout=30) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == "retry: 2000"
            other = http.post(BASE, json={"ceiling": 100}, headers=auth("globex"))
            mine = http.post(BASE, json={"ceiling": 200}, headers=auth("acme"))
            assert other.status_code == mine.status_code == 201
            (event,) = _events(lines, 1)
        assert event["r"] == f"acme/{mine.json()['request_id']}"
        assert (event["k"], event["f"], event["s"]) == ("open", 200, "open")


def _telemetry_gateway(tmp_path: Path) -> tuple[Gateway, Path]:
    import dataclasses

    db = tmp_path / "telemetry.db"
    config = dashboard_config(tmp_path)
    return Gateway(dataclasses.replace(config, telemetry=(f"sqlite:///{db}",))), db


def test_the_report_panel_reads_the_telemetry_of_the_tenant(tmp_path: Path) -> None:
    from apportion.telemetry import flush

    gateway, _ = _telemetry_gateway(tmp_path)

    async def body(client: httpx.AsyncClient) -> None:
        for tenant in ("acme", "acme", "globex"):
            rid = await open_and_run(client, tenant)
            closed = await client.post(f"{BASE}/{rid}/close", headers=auth(tenant))
            assert closed.status_code == 200
        assert flush(30)
        await sign_in(client, "acme")
        page = await client.get("/dashboard/report", params={"window": "hour"})
        assert page.status_code == 200, page.text
        assert 'role="alert"' not in page.text
        assert "2 requests" in page.text  # acme's two, not globex's
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and EVIL not in page.text
        assert "How calls ended" in page.text
        for tenant, count in (("globex", "1 request"), ("ops", "3 requests")):  # ops: admin
            await sign_in(client, tenant)
            other = await client.get("/dashboard/report", params={"window": "hour"})
            assert count in other.text and 'role="alert"' not in other.text
        await sign_in(client, "acme")
        budgets = await client.get("/dashboard/report/budgets.yaml", params={"window": "week"})
        assert budgets.status_code == 200
        assert budgets.headers["content-disposition"] == 'attachment; filename="budgets.yaml"'
        assert "budgets:" in budgets.text and "context_tokens" in budgets.text

    run(gateway, body)


def test_a_database_that_cannot_be_read_leaves_the_live_pages_working(tmp_path: Path) -> None:
    gateway, db = _telemetry_gateway(tmp_path)
    db.write_bytes(b"this is not a database, it is junk " * 100)

    async def body(client: httpx.AsyncClient) -> None:
        await open_and_run(client, "acme")
        await sign_in(client, "acme")
        page = await client.get("/dashboard/report")
        assert page.status_code == 200
        assert 'role="alert"' in page.text and "cannot be read" in page.text
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/dashboard/report/budgets.yaml")).status_code == 404

    run(gateway, body)


def test_without_a_telemetry_database_the_panel_says_how_to_add_one(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        await sign_in(client, "acme")
        page = await client.get("/dashboard/report", params={"window": "nonsense"})
        assert "no telemetry database is configured" in page.text
        assert '<option value="day" selected>' in page.text

    run(gateway, body)
