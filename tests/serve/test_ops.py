"""Operations of the real gateway: /metrics, spans, JSON logs, SIGTERM and SIGKILL.

Servers are real (``apportion serve`` subprocesses, uvicorn, redis-server, the local
OpenAI server); every wait is a bounded number of polls, never a timed check.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from proxy_helpers import MODEL, asgi_client, budget_headers, gateway_for
from redis_server import RedisServer

from apportion.serve import Gateway, ServeConfig, create_app
from apportion.testing.openai_server import OpenAIServer, Reply
from conftest import KEYS, LiveServer, auth, free_port, output, start_cli, stop, wait_ready
from conftest import write_config as base_config

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
SIGNING_KEY = "a-test-signing-key-of-some-length"
PIPELINE = "seed-scenario"
CHAT = "/v1/chat/completions"
STOPPED = (0, -signal.SIGTERM)
"""How a stopped server exits (uvicorn raises the signal it caught again, once shut down)."""


def write_config(
    tmp_path: Path, upstream: OpenAIServer, store: str = "memory://", **more: Any
) -> Path:
    """A serve.yaml of tenants acme, globex, ops over ``upstream`` (sent directly)."""
    extra = "".join(f"{key}: {value}\n" for key, value in more.items())
    return base_config(
        tmp_path,
        store=store,
        extra=extra
        + "upstreams:\n"
        + f"  local: {{prefix: gpt-, api_base: '{upstream.url}', "
        + f"api_key: {UPSTREAM_KEY}, direct: true}}\n",
    )


def chat(request_id: str, agent: str = "intake", ceiling: int = 20_000, **headers: str) -> Any:
    """The arguments of a proxied call of ``agent`` in ``request_id`` (tenant acme)."""
    return {
        "json": {"model": MODEL, "messages": [{"role": "user", "content": "sort this ticket"}]},
        "headers": {
            **auth("acme"),
            "Apportion-Request": request_id,
            "Apportion-Agent": agent,
            "Apportion-Ceiling": str(ceiling),
            **headers,
        },
    }


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of a Prometheus exposition, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return found.get((name, frozenset(labels.items())))


def poll(check: Callable[[], Any], polls: int = 300) -> Any:
    """``check()`` until it is truthy, at most ``polls`` times, 0.1 s apart; the value."""
    event = threading.Event()
    for _ in range(polls):
        value = check()
        if value:
            return value
        event.wait(0.1)
    raise AssertionError(f"never: {check}")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; its result (or error) lands in the dict."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # the test reads it
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# ---------------------------------------------------------------------- /metrics


def test_metrics_are_scraped_after_proxied_calls(tmp_path: Path) -> None:
    with OpenAIServer() as upstream:
        port = free_port()
        process = start_cli("--config", str(write_config(tmp_path, upstream)), port=port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            for _ in range(3):
                answer = httpx.post(f"{url}{CHAT}", **chat("metered"), timeout=60)
                assert answer.status_code == 200, answer.text
            refused = httpx.post(f"{url}{CHAT}", **chat("metered", agent="nobody"), timeout=60)
            assert refused.status_code == 404, refused.text
            closed = httpx.post(
                f"{url}/v1/budget/requests/metered/close", json={}, headers=auth("acme")
            )
            assert closed.status_code == 200, closed.text

            def scraped() -> Any:
                answer = httpx.get(f"{url}/metrics", headers=auth("ops"))
                assert answer.status_code == 200, answer.text
                assert answer.headers["content-type"].startswith("text/plain")
                found = samples(answer.text)
                calls = sample(
                    found,
                    "apportion_calls_total",
                    pipeline=PIPELINE,
                    agent="intake",
                    status="completed",
                )
                return found if calls == 3 else None  # the sink counts at the close

            found = poll(scraped)
        finally:
            stop(process)
    assert sample(found, "apportion_grants_total", pipeline=PIPELINE, agent="intake") == 3
    assert sample(found, "apportion_requests_total", pipeline=PIPELINE, status="closed") == 1
    assert (
        sample(found, "apportion_http_requests_total", route=CHAT, method="POST", status="200") == 3
    )
    assert (
        sample(found, "apportion_http_requests_total", route=CHAT, method="POST", status="404") == 1
    )
    assert sample(found, "apportion_http_request_duration_seconds_count", route=CHAT) == 4


def test_metrics_of_two_workers_are_summed(tmp_path: Path, redis_server: RedisServer) -> None:
    store = f"{redis_server.url}?prefix=ops-{uuid.uuid4().hex[:8]}"
    path = base_config(tmp_path, store=store)
    port = free_port()
    process = start_cli("--config", str(path), "--workers", "2", port=port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        for _ in range(6):
            with httpx.Client() as client:  # a connection each: either worker answers
                opened = client.post(
                    f"{url}/v1/budget/requests", json={"ceiling": 1000}, headers=auth("acme")
                )
                assert opened.status_code == 201, opened.text
        for _ in range(6):  # whichever worker answers the scrape, it counts both workers'
            with httpx.Client() as client:
                found = samples(client.get(f"{url}/metrics", headers=auth("ops")).text)
            opened_count = sample(
                found,
                "apportion_http_requests_total",
                route="/v1/budget/requests",
                method="POST",
                status="201",
            )
            assert opened_count == 6, opened_count
    finally:
        stop(process)


# ---------------------------------------------------------------------- spans


def test_each_proxied_call_is_a_span_with_the_genai_conventions() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    async def calls() -> None:
        with OpenAIServer() as upstream:
            app = create_app(gateway_for(upstream), tracer_provider=provider)
            async with asgi_client(app) as client:
                body = {"model": MODEL, "messages": [{"role": "user", "content": "plan it"}]}
                ok = await client.post(
                    CHAT,
                    json=body,
                    headers={
                        **budget_headers("spanned", "planner", 5000),
                        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                        "X-Request-Id": "call-1",
                    },
                )
                assert ok.status_code == 200, ok.text
                assert ok.headers["x-request-id"] == "call-1"
                refused = await client.post(
                    CHAT, json=body, headers=budget_headers("spanned", "nobody")
                )
                assert refused.status_code == 404, refused.text
                await client.get("/healthz")  # not a proxied call: no span

    asyncio.run(calls())
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [f"chat {MODEL}", f"chat {MODEL}"]
    first, second = spans
    a = dict(first.attributes or {})
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.agent.name"] == "planner"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["apportion.request.id"] == "spanned" and a["apportion.tenant"] == "acme"
    assert a["apportion.call.status"] == "completed"
    assert (
        a["apportion.used_tokens"]
        == a["gen_ai.usage.input_tokens"] + a["gen_ai.usage.output_tokens"]
    )
    assert a["http.response.status_code"] == 200
    assert a["apportion.http.request_id"] == "call-1"
    assert format(first.context.trace_id, "032x") == trace_id  # the caller's trace
    assert first.status.is_ok
    b = dict(second.attributes or {})
    assert b["error.type"] == "unknown_agent" and b["http.response.status_code"] == 404
    assert not second.status.is_ok


@pytest.mark.parametrize("path", [CHAT, "/v1/responses"])
def test_a_streamed_call_s_span_has_its_usage_and_status(path: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: dict[str, Any] = {}

    async def calls() -> None:
        with OpenAIServer(default="one two three four") as upstream:
            app = create_app(gateway_for(upstream), tracer_provider=provider)
            async with asgi_client(app) as client:
                question = [{"role": "user", "content": "plan it"}]
                key = "messages" if path == CHAT else "input"
                body = {"model": MODEL, key: question, "stream": True}
                answer = await client.post(
                    path, json=body, headers=budget_headers("streamed", "planner", 5000)
                )
                assert answer.status_code == 200, answer.text
                seen["text"] = answer.text
            seen["sent"] = upstream.requests
            seen["billed"] = upstream.billed

    asyncio.run(calls())
    if path == CHAT:  # the gateway asked for the usage; the client, which did not, sees none
        assert seen["sent"][0]["stream_options"] == {"include_usage": True}
        events = [
            json.loads(line.removeprefix("data: "))
            for line in seen["text"].splitlines()
            if line.startswith("data: {")
        ]
        assert events and not any(event.get("usage") for event in events)
    (span,) = exporter.get_finished_spans()
    a = dict(span.attributes or {})
    (prompt, completion), *_ = seen["billed"]
    assert a["gen_ai.usage.input_tokens"] == prompt
    assert a["gen_ai.usage.output_tokens"] == completion == 4
    assert a["apportion.call.status"] == "completed"  # the settled call's, not "open"
    assert a["apportion.used_tokens"] == prompt + completion
    assert a["apportion.grant.tokens"] > 0
    assert span.status.is_ok


# ---------------------------------------------------------------------- logs


def test_logs_are_json_lines_with_the_call_and_no_secret(tmp_path: Path) -> None:
    with OpenAIServer() as upstream:
        port = free_port()
        process = start_cli("--config", str(write_config(tmp_path, upstream)), port=port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            answer = httpx.post(
                f"{url}{CHAT}", **chat("logged", **{"X-Request-Id": "trace-me-1"}), timeout=60
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-request-id"] == "trace-me-1"
            made = httpx.post(
                f"{url}/v1/budget/requests", json={"ceiling": 900}, headers=auth("acme")
            )
            assert made.status_code == 201
            wrong = httpx.post(
                f"{url}{CHAT}", **chat("logged", Authorization="Bearer sk-not-a-key-123456")
            )
            assert wrong.status_code == 401
        finally:
            stop(process)
    text = output(process)
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    assert all({"time", "level", "event"} <= set(line) for line in lines)
    assert any("apportion gateway on" in line["event"] for line in lines)
    calls = [line for line in lines if line["event"] == "http_request"]
    proxied = next(line for line in calls if line["request_id"] == "trace-me-1")
    assert proxied["tenant"] == "acme" and proxied["agent"] == "intake"
    assert proxied["status"] == 200 and proxied["level"] == "info"
    assert proxied["apportion_request"] == "logged" and proxied["model"] == MODEL
    assert isinstance(proxied["latency_ms"], float) and proxied["latency_ms"] >= 0
    assert proxied["used"] > 0 and proxied["apportion_status"] == "completed"
    opened = next(line for line in calls if line["status"] == 201)
    assert opened["tenant"] == "acme" and opened["route"] == "/v1/budget/requests"
    refused = next(line for line in calls if line["status"] == 401)
    assert "tenant" not in refused and refused["error_code"] == "unauthenticated"
    assert not any(line["logger"] == "uvicorn.access" for line in lines)  # ours replace it
    for secret in (*KEYS.values(), UPSTREAM_KEY, SIGNING_KEY, "sk-not-a-key-123456"):
        assert secret not in text


def test_a_formatter_hides_url_passwords_and_configured_secrets() -> None:
    import logging

    from apportion.serve.ops import JsonFormatter, hide

    hide("sk-very-secret-xyz")
    record = logging.LogRecord(
        "apportion.serve", logging.ERROR, __file__, 1, "store redis://u:pw123@h:1/0 down", (), None
    )
    record.fields = {"detail": "key sk-very-secret-xyz"}
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["event"] == "store redis://u:***@h:1/0 down"
    assert data["detail"] == "key ***" and data["level"] == "error"
    assert "pw123" not in line and "\n" not in line


# ---------------------------------------------------------------------- shutdown


def _ledger(config: Path, request_id: str) -> dict[str, Any]:
    """The request's summary as another gateway on the same store reads it."""
    with LiveServer(create_app(Gateway(ServeConfig.from_yaml(config)))) as live:
        answer = httpx.get(f"{live.url}/v1/budget/requests/{request_id}", headers=auth("acme"))
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def _consistent(summary: dict[str, Any]) -> bool:
    return bool(summary["free"] + summary["reserved"] + summary["consumed"] == summary["ceiling"])


def test_sigterm_lets_a_call_in_flight_finish(tmp_path: Path, redis_server: RedisServer) -> None:
    store = f"{redis_server.url}?prefix=ops-{uuid.uuid4().hex[:8]}"
    with OpenAIServer(default=Reply(delay=1.5)) as upstream:
        path = write_config(tmp_path, upstream, store=store)
        port = free_port()
        process = start_cli("--config", str(path), "--log-level", "warning", port=port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            thread, box = in_thread(lambda: httpx.post(f"{url}{CHAT}", **chat("slow"), timeout=60))
            poll(lambda: upstream.requests)  # the call is at the upstream: in flight
            process.send_signal(signal.SIGTERM)
            thread.join(60)
            assert process.wait(60) in STOPPED
        finally:
            stop(process)
    answer = box.get("result")
    assert answer is not None, box
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["apportion-used"]) > 0
    summary = _ledger(path, "slow")
    assert summary["reserved"] == 0 and summary["consumed"] == int(answer.headers["apportion-used"])
    assert _consistent(summary)
    lines = [json.loads(line) for line in output(process).splitlines() if line.strip()]
    assert not [line for line in lines if line["event"] == "http_request"]  # --log-level warning


def test_sigterm_past_the_bound_releases_the_grant(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    store = f"{redis_server.url}?prefix=ops-{uuid.uuid4().hex[:8]}"
    with OpenAIServer(default=Reply(delay=120)) as upstream:
        path = write_config(tmp_path, upstream, store=store)
        port = free_port()
        process = start_cli("--config", str(path), "--shutdown-timeout", "1", port=port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            thread, box = in_thread(lambda: httpx.post(f"{url}{CHAT}", **chat("stuck"), timeout=60))
            poll(lambda: upstream.requests)
            granted = _ledger(path, "stuck")
            assert granted["reserved"] > 0  # the grant is held while the call runs
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) in STOPPED  # the bound: it does not wait for the upstream
            thread.join(60)
        finally:
            stop(process)
    assert "result" not in box or box["result"].status_code >= 500
    summary = _ledger(path, "stuck")
    assert summary["reserved"] == 0 and summary["consumed"] == 0  # released, not leaked
    assert summary["free"] == summary["ceiling"] == 20_000


def test_a_gateway_killed_mid_call_returns_the_grant_after_its_lease(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    store = f"{redis_server.url}?prefix=ops-{uuid.uuid4().hex[:8]}"
    with OpenAIServer(default=Reply(delay=120)) as upstream:
        path = write_config(tmp_path, upstream, store=store, lease_seconds=1)
        port = free_port()
        process = start_cli("--config", str(path), port=port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            thread, box = in_thread(
                lambda: httpx.post(f"{url}{CHAT}", **chat("killed"), timeout=60)
            )
            poll(lambda: upstream.requests)
            process.send_signal(signal.SIGKILL)
            process.wait(60)
            thread.join(60)
        finally:
            stop(process)
    assert "error" in box  # the connection died with the gateway
    config = ServeConfig.from_yaml(path)
    with LiveServer(create_app(Gateway(config))) as live:  # its reaper runs every second

        def returned() -> Any:
            answer = httpx.get(f"{live.url}/v1/budget/requests/killed", headers=auth("acme"))
            assert answer.status_code == 200, answer.text
            summary = answer.json()
            assert _consistent(summary), summary
            return summary if summary["reserved"] == 0 else None

        summary = poll(returned)
    assert summary["consumed"] == 0 and summary["free"] == summary["ceiling"] == 20_000
