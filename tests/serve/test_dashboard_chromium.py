"""The dashboard in a real headless Chromium: bars match the ledger, SSE updates arrive live.

The browser signs in through the form (the session cookie is HttpOnly: the page's script
never sees it), and the test compares what the page shows with the store's ledgers, then
changes the ledgers through the budget API and waits (a bounded number of polls) for the
page to follow without a reload. One test runs on the memory store in-process; one on a
real ``redis-server`` with two replicas (``apportion serve --workers 2`` for the browser,
a second ``apportion serve`` for the API calls), so the update crosses processes through
the store's event feed. A screenshot of each view is written (paths printed); with
``APPORTION_DASHBOARD_SCREENSHOTS=DIR`` those of the views are copied there too
(``docs/images``, for the README).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from dashboard_helpers import EVIL, dashboard_config, dashboard_config_file
from redis_server import RedisServer
from test_budget_api import BASE

from apportion.ledger import Event
from apportion.serve import Gateway
from apportion.serve.app import create_app
from apportion.stores import Store, open_store
from apportion.telemetry import flush
from apportion.testing.cdp import Browser
from apportion.testing.chromium import chromium_or_skip
from conftest import KEYS, LiveServer, auth, free_port, start_cli, stop, wait_ready

ROWS = """
[...document.querySelectorAll('tbody.request')].map(tb => ({
  id: tb.dataset.request,
  status: tb.querySelector('tr.req [data-cell=status]').textContent,
  used: tb.querySelector('tr.req [data-cell=used]').textContent,
  agents: [...tb.querySelectorAll('tr.agent')].map(tr => ({
    name: tr.querySelector('th').textContent,
    used: Number(tr.dataset.used),
    held: Number(tr.dataset.held),
    status: tr.querySelector('[data-cell=status]').textContent,
    cut: tr.classList.contains('is-cut'),
    usedWidth: Number(tr.querySelector('rect.used').getAttribute('width')),
    heldWidth: Number(tr.querySelector('rect.held').getAttribute('width')),
  })),
}))
"""


VIEWS = frozenset({"live", "live-dark", "pools", "request", "report"})
"""The views whose screenshots the README shows."""


def shot(browser: Browser, tmp_path: Path, name: str) -> Path:
    """A screenshot of the page as ``dashboard-NAME.png`` (printed; copied when asked)."""
    path = browser.screenshot(tmp_path / f"dashboard-{name}.png")
    print(f"screenshot: {path}")
    target = os.environ.get("APPORTION_DASHBOARD_SCREENSHOTS")
    if target and name in VIEWS:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def check_rows(browser: Browser, store: Store) -> list[dict[str, Any]]:
    """Every request on the page shows its ledger: per agent used, held, bar widths."""
    rows: list[dict[str, Any]] = browser.evaluate(ROWS)
    assert rows
    for row in rows:
        state = store.get(row["id"])
        assert row["status"] == state.status
        assert row["used"] == f"{state.consumed:,}"
        assert [a["name"] for a in row["agents"]] == list(state.ranks)
        for agent in row["agents"]:
            name = agent["name"]
            assert (agent["used"], agent["held"]) == (
                state.consumed_by[name],
                state.reserved_by[name],
            )
            assert abs(agent["usedWidth"] - 1000 * agent["used"] / state.ceiling) < 0.01
            assert abs(agent["heldWidth"] - 1000 * agent["held"] / state.ceiling) < 0.01
            assert agent["cut"] == (state.truncated_calls[name] > 0)
    return rows


def begin(http: httpx.Client, tenant: str, rid: str, agent: str, tokens: int, **more: str) -> str:
    call = {"agent": agent, "input_tokens": tokens, **more}
    answer = http.post(f"{BASE}/{rid}/begin", json=call, headers=auth(tenant))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["grant"])


def finish(
    http: httpx.Client, tenant: str, rid: str, grant: str, used: int, truncated: bool = False
) -> None:
    answer = http.post(
        f"{BASE}/{rid}/finish",
        json={"grant": grant, "input_tokens": used, "output_tokens": 40, "truncated": truncated},
        headers=auth(tenant),
    )
    assert answer.status_code == 200, answer.text


def open_request(http: httpx.Client, tenant: str, **body: Any) -> str:
    answer = http.post(BASE, json={"ceiling": 20_000, **body}, headers=auth(tenant))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["request_id"])


def sign_in(browser: Browser, url: str, tenant: str) -> None:
    browser.go(f"{url}/")
    browser.wait_for("document.getElementById('key') !== null")
    browser.submit("form.login", {"key": KEYS[tenant]})
    browser.wait_for("document.getElementById('live')?.dataset.state === 'open'")


def test_the_live_page_matches_the_ledger_and_follows_it(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    config = dashboard_config(tmp_path)
    telemetry = (f"sqlite:///{tmp_path / 'telemetry.db'}",)
    gateway = Gateway(dataclasses.replace(config, telemetry=telemetry))
    store = gateway.store
    with (
        LiveServer(create_app(gateway)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
        Browser(chromium, tmp_path) as browser,
    ):
        rid = open_request(http, "acme", request_id="support-1", features={"messages": 40})
        finish(http, "acme", rid, begin(http, "acme", rid, EVIL, 2000), 2000, truncated=True)
        held = begin(http, "acme", rid, "planner", 3000, model="gpt-4o-mini")
        child = open_request(http, "acme", parent=rid, name="research", share=0.3)
        finish(http, "acme", child, begin(http, "acme", child, "writer", 800), 700)
        other = open_request(http, "globex", request_id="not-yours")
        sign_in(browser, server.url, "acme")
        rows = check_rows(browser, store)
        assert [r["id"] for r in rows] == [f"acme/{rid}", f"acme/{child}"]  # child under parent
        assert browser.evaluate("document.querySelector('[data-agent] th') !== null")
        assert EVIL in [a["name"] for a in rows[0]["agents"]]  # the name, as text
        assert "not-yours" not in browser.evaluate("document.body.textContent")
        shot(browser, tmp_path, "live")
        browser.color_scheme("dark")
        shot(browser, tmp_path, "live-dark")
        browser.color_scheme("light")

        # live: the planner's grant settles, a request opens and one closes; no reload
        browser.evaluate("window.stillHere = true")
        finish(http, "acme", rid, held, 2500)
        planner = (
            f"document.querySelector('tbody[data-request=\"acme/{rid}\"] tr[data-agent=planner]')"
        )
        browser.wait_for(f"{planner}.dataset.used === '2540'")
        assert browser.evaluate(f"{planner}.querySelector('[data-cell=status]').textContent") == (
            "completed"
        )
        late = open_request(http, "acme", request_id="support-2")
        begin(http, "acme", late, "writer", 1500)
        browser.wait_for(
            f"document.querySelector('tbody[data-request=\"acme/{late}\"] tr[data-agent=writer]')"
            "?.dataset.held > 0"
        )
        # a begin refused and an extension refused (the agent wraps up): live statuses
        tight = open_request(http, "acme", request_id="support-3", ceiling=1000)
        wrapping = begin(http, "acme", tight, "planner", 900)
        refused = http.post(
            f"{BASE}/{tight}/begin",
            json={"agent": "writer", "input_tokens": 900, "min_context_tokens": 900},
            headers=auth("acme"),
        )
        assert refused.status_code >= 400, refused.text
        grown = http.post(
            f"{BASE}/{tight}/extend",
            json={"grant": wrapping, "output_tokens": 5000},
            headers=auth("acme"),
        )
        assert grown.json()["grant"] is None
        finish(http, "acme", tight, wrapping, 900)
        row = f"document.querySelector('tbody[data-request=\"acme/{tight}\"] tr[data-agent=%s]')"
        browser.wait_for(f"{row % 'writer'}?.dataset.status === 'refused'")
        browser.wait_for(f"{row % 'planner'}?.dataset.status === 'wrapped_up'")
        closed = http.post(f"{BASE}/{child}/close", headers=auth("acme"))
        assert closed.status_code == 200
        browser.wait_for(
            f"document.querySelector('tbody[data-request=\"acme/{child}\"]')"
            ".dataset.status === 'closed'"
        )
        assert browser.evaluate("window.stillHere") is True
        check_rows(browser, store)
        announced = browser.wait_for("document.getElementById('announcer').textContent")
        assert "opened" in announced or "closed" in announced

        # a page drawn later counts the refusals made before it (the store keeps its notes)
        ended = (
            f"[{row % 'writer'}.dataset.refused, {row % 'planner'}.dataset.wrapped_up, "
            f"{row % 'writer'}.dataset.status, {row % 'planner'}.dataset.status]"
        )
        assert browser.evaluate(ended) == ["1", "1", "refused", "wrapped_up"]
        browser.go(f"{server.url}/")
        browser.wait_for("document.getElementById('live')?.dataset.state === 'open'")
        assert browser.evaluate(ended) == ["1", "1", "refused", "wrapped_up"]

        # the pools page: each pool's window as the store counts it, refreshed live
        defined = http.post(
            "/v1/admin/pools/acme",
            # a day's window: a minute's could end between two steps (then nothing is back)
            json={
                "name": "team",
                "capacity": 60_000,
                "window_seconds": 86_400,
                "reserve": {"critical": 15_000},
            },
            headers=auth("ops"),
        )
        assert defined.status_code in (200, 201), defined.text
        pooled = open_request(http, "acme", pool="team", ceiling=12_000)
        browser.go(f"{server.url}/dashboard/pools")
        browser.wait_for("document.getElementById('live')?.dataset.state === 'open'")
        drawn = "document.querySelector('tbody[data-pool=\"acme/team\"]').dataset.drawn"
        assert browser.evaluate(drawn) == str(store.get_pool("acme/team", gateway.clock()).drawn)
        may = browser.evaluate(
            "[...document.querySelectorAll('tr[data-priority]')].map(tr => "
            "tr.querySelector('[data-cell=available]').textContent)"
        )
        status = store.get_pool("acme/team", gateway.clock())
        assert may == [
            f"{status.available_to(p):,}" for p in ("critical", "standard", "peripheral")
        ]
        open_request(http, "acme", pool="team", ceiling=8_000)
        browser.wait_for(f"{drawn} === '20000'")
        finish(http, "acme", pooled, begin(http, "acme", pooled, "writer", 1000), 1000)
        assert http.post(f"{BASE}/{pooled}/close", headers=auth("acme")).status_code == 200
        browser.wait_for(f"{drawn} === '9040'")  # 12,000 drawn, 1,040 used: 10,960 back
        returned = "document.querySelector('tbody[data-pool=\"acme/team\"] [data-cell=returned]')"
        assert browser.evaluate(f"{returned}.textContent") == "10,960"
        assert store.get_pool("acme/team", gateway.clock()).returned == 10_960
        shot(browser, tmp_path, "pools")

        # a request's page: the timeline holds every event of its ledger, and its notes
        browser.go(f"{server.url}/dashboard/requests/{quote('acme/' + rid, safe='')}")
        browser.wait_for("document.getElementById('live')?.dataset.state === 'open'")
        shown = browser.evaluate("document.querySelectorAll('#timeline-rows tr').length")
        assert shown == len(store.history(f"acme/{rid}"))
        assert browser.evaluate("document.querySelector('[data-fact=consumed]').textContent") == (
            f"{store.get(f'acme/{rid}').consumed:,}"
        )
        planner_began = (
            "[...document.querySelectorAll('#timeline-rows tr')].map(tr => tr.textContent)"
            ".filter(text => text.includes('begin') && text.includes('planner'))"
        )
        assert "model gpt-4o-mini" in browser.evaluate(planner_began)[0]  # the call's model
        first = "document.querySelector('#timeline-rows tr').textContent"
        assert "features messages=40" in browser.evaluate(first)  # what it opened with
        shot(browser, tmp_path, "request")
        renewed = begin(http, "acme", rid, "writer", 100, model="gpt-4o")  # grows live
        browser.wait_for(f"document.querySelectorAll('#timeline-rows tr').length === {shown + 1}")
        assert renewed
        last = "document.querySelector('#timeline-rows tr:last-child').textContent"
        assert "model gpt-4o" in browser.evaluate(last)
        # messages fitted away (a note the integrations send): counted live, on the timeline
        store.note(f"acme/{rid}", Event("fitted", gateway.clock(), "writer", 0, 300, 0, note="4"))
        browser.wait_for(
            "document.querySelector('[data-fact=\"fitted-messages\"]').textContent === '4'"
        )
        assert "4 message(s) dropped or shortened" in browser.evaluate(last)

        # another tenant's request, and one that never was: 404 pages
        for missing in (f"globex/{other}", "acme/never-was"):
            browser.go(f"{server.url}/dashboard/requests/{quote(missing, safe='')}")
            assert browser.evaluate("document.querySelector('h1').textContent") == "Not found"
        shot(browser, tmp_path, "not-found")

        # the report panel over the telemetry of the closed requests
        assert http.post(f"{BASE}/{rid}/close", headers=auth("acme")).status_code == 200
        assert flush(30)
        browser.go(f"{server.url}/dashboard/report?window=hour")
        browser.wait_for("document.getElementById('report-panel') !== null")
        assert "cannot be read" not in browser.evaluate("document.body.textContent")
        assert browser.evaluate(
            "document.querySelector('a[download]').getAttribute('href')"
        ).endswith("budgets.yaml?window=hour")
        shot(browser, tmp_path, "report")
        assert browser.dialogs() == []  # no script ran from a name


def test_a_change_on_one_replica_reaches_a_page_served_by_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    chromium = chromium_or_skip()
    store_url = f"{redis_server.url}?prefix=dash{uuid.uuid4().hex[:8]}"
    config = dashboard_config_file(tmp_path, store=store_url)
    ports = [free_port(), free_port()]
    replicas = [
        start_cli(
            "--config", str(config), "--workers", "2", "--log-level", "warning", port=ports[0]
        ),
        start_cli("--config", str(config), "--log-level", "warning", port=ports[1]),
    ]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, process in zip(urls, replicas, strict=True):
            wait_ready(url, process)
        with (
            httpx.Client(base_url=urls[1], timeout=30) as http,
            Browser(chromium, tmp_path) as browser,
        ):
            first = open_request(http, "acme", request_id="before")
            sign_in(browser, urls[0], "acme")
            assert browser.evaluate(
                f"document.querySelector('tbody[data-request=\"acme/{first}\"]') !== null"
            )
            rid = open_request(http, "acme", request_id="after")
            finish(http, "acme", rid, begin(http, "acme", rid, "planner", 1200), 1100)
            browser.wait_for(
                f'document.querySelector(\'tbody[data-request="acme/{rid}"] '
                "tr[data-agent=planner]')?.dataset.used === '1140'"
            )
            check_rows(browser, open_store(store_url))
            shot(browser, tmp_path, "replicas")
    finally:
        for process in replicas:
            stop(process)
