"""Who may read ``/metrics``: an admin key (or the config's metrics key) once tenants exist.

The app runs in process (``httpx.ASGITransport``); ``/metrics`` is the process's
Prometheus registry. Its labels name routes, pipelines and agents, never a request id.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from proxy_helpers import MODEL, asgi_client, budget_headers, gateway_for

from apportion.errors import SpecError
from apportion.serve import Gateway, ServeConfig, create_app
from apportion.testing.openai_server import OpenAIServer
from conftest import auth, write_config

METRICS_KEY = "prometheus-scrape-key-0123"


def scrape(app: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get("/metrics", headers=headers or {})

    return asyncio.run(get())


def test_with_tenants_only_an_admin_key_reads_the_metrics(tmp_path: Path) -> None:
    app = create_app(ServeConfig.from_yaml(write_config(tmp_path)))
    anonymous = scrape(app)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    tenant = scrape(app, auth("acme"))
    assert tenant.status_code == 403
    assert tenant.json()["error"]["code"] == "forbidden"
    wrong = scrape(app, {"Authorization": "Bearer sk-not-a-key-000"})
    assert wrong.status_code == 401
    admin = scrape(app, auth("ops"))
    assert admin.status_code == 200 and admin.headers["content-type"].startswith("text/plain")
    assert "apportion_http_requests_total" in admin.text


def test_a_metrics_key_reads_the_metrics_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRAPE_KEY", METRICS_KEY)
    app = create_app(
        ServeConfig.from_yaml(write_config(tmp_path, extra="metrics_key_env: SCRAPE_KEY\n"))
    )
    scraper = {"Authorization": f"Bearer {METRICS_KEY}"}
    assert scrape(app, scraper).status_code == 200
    assert scrape(app, auth("ops")).status_code == 200  # an admin key still does
    assert scrape(app, auth("globex")).status_code == 403

    async def elsewhere() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            answer = await client.post("/v1/budget/requests", json={}, headers=scraper)
            return answer.status_code

    assert asyncio.run(elsewhere()) == 401  # not a tenant's key


def test_metrics_public_and_the_quick_start_need_no_key(tmp_path: Path) -> None:
    public = create_app(ServeConfig.from_yaml(write_config(tmp_path, extra="metrics: public\n")))
    assert scrape(public).status_code == 200
    assert ServeConfig.default().metrics_access == "public"
    assert scrape(create_app()).status_code == 200  # no config: memory store, open mode


def test_failed_metrics_keys_count_as_failed_authentications(tmp_path: Path) -> None:
    app = create_app(ServeConfig.from_yaml(write_config(tmp_path, extra="auth_failure_limit: 2\n")))
    bad = {"Authorization": "Bearer sk-guessing-000000"}
    assert [scrape(app, bad).status_code for _ in range(3)] == [401, 401, 429]


def test_metrics_admin_without_tenants_needs_a_metrics_key(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("metrics: admin\n", encoding="utf-8")
    with pytest.raises(SpecError) as refused:
        ServeConfig.from_yaml(path)
    assert refused.value.fields["key"] == "metrics"
    path.write_text(f"metrics: admin\nmetrics_key: {METRICS_KEY}\n", encoding="utf-8")
    config = ServeConfig.from_yaml(path)
    assert config.open_mode and config.metrics_access == "admin"
    assert METRICS_KEY not in repr(config)
    app = create_app(config)
    assert scrape(app).status_code == 401
    assert scrape(app, {"Authorization": f"Bearer {METRICS_KEY}"}).status_code == 200
    path.write_text("metrics: sometimes\n", encoding="utf-8")
    with pytest.raises(SpecError, match="public"):
        ServeConfig.from_yaml(path)


def test_metric_labels_never_carry_a_request_id() -> None:
    ids = ["zq-secret-alpha", "zq-secret-beta", "zq-secret-gamma"]

    async def calls(app: Any) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "plan it"}]}
        async with asgi_client(app) as client:
            for request_id in ids:
                answer = await client.post(
                    "/v1/chat/completions",
                    json=body,
                    headers=budget_headers(request_id, "planner", 5000),
                )
                assert answer.status_code == 200, answer.text
                assert (await client.get(f"/v1/budget/requests/{request_id}")).status_code == 200
                closed = await client.post(f"/v1/budget/requests/{request_id}/close", json={})
                assert closed.status_code == 200, closed.text
            missing = await client.get("/v1/budget/requests/zq-secret-missing/nowhere")
            assert missing.status_code == 404

    with OpenAIServer() as upstream:
        built = gateway_for(upstream)
        config = dataclasses.replace(built.config, telemetry=("prometheus://",), metrics="public")
        app = create_app(Gateway(config, store=built.store))
        asyncio.run(calls(app))
        answer = scrape(app)
    assert answer.status_code == 200, answer.text
    labels = {
        value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        for value in sample.labels.values()
    }
    assert "/v1/budget/requests/{request_id}/close" in labels  # routes, as templates
    assert "planner" in labels  # the controller's metrics count by pipeline and agent
    assert not [value for value in labels if "zq-secret" in value]
    assert "zq-secret" not in answer.text
