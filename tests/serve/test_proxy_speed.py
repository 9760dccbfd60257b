"""The proxy's fast path pieces: cached prices, the raw direct sender, its JSON views.

No timing here: each test checks that a faster piece gives what the slower one gave.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from proxy_helpers import MODEL, asgi_client, budget_headers, proxy_app

from apportion.integrations.litellm import cost as litellm_cost
from apportion.serve import forward, upstream_http
from apportion.serve.config import UpstreamConfig
from apportion.serve.forward import CHAT, direct_sender
from apportion.serve.ops import LOGGER
from apportion.serve.proxy import Proxy
from apportion.serve.upstream_http import JSONView, UpstreamStatusError, raw_bytes, view_of
from apportion.testing.fast_upstream import FastUpstream
from apportion.testing.openai_server import OpenAIServer, Reply
from conftest import ROOT, wait_ready

USAGES = [(0, 0), (1, 0), (0, 1), (10, 5), (123_456, 789), (300_000, 20_000), (7, 2_000_000)]
MODELS = [
    "gpt-4o-mini",
    "openai/gpt-4o-mini",
    "gpt-4o",
    "gemini/gemini-2.5-pro",  # priced by tiers: LiteLLM every call
    "no-such-model-anywhere",  # not priced: None
]


@pytest.mark.parametrize("model", MODELS)
def test_the_cached_price_equals_litellms_for_the_same_usage(model, monkeypatch):
    monkeypatch.setattr(forward, "_PRICES", {})
    for prompt, completion in USAGES:
        assert forward.cost(model, prompt, completion) == litellm_cost(model, prompt, completion)


def test_a_linear_models_prices_are_read_once(monkeypatch):
    asked: list[tuple[str, int, int]] = []

    def counted(model: str, prompt: int, completion: int) -> float | None:
        asked.append((model, prompt, completion))
        return litellm_cost(model, prompt, completion)

    monkeypatch.setattr(forward, "_PRICES", {})
    monkeypatch.setattr(forward, "litellm_cost", counted)
    forward.cost("gpt-4o-mini", 10, 5)
    first = len(asked)
    for prompt, completion in USAGES:
        forward.cost("gpt-4o-mini", prompt, completion)
    assert first > 0 and len(asked) == first  # no lookup after the first call
    forward.cost("gemini/gemini-2.5-pro", 10, 5)
    tiered = len(asked)
    forward.cost("gemini/gemini-2.5-pro", 10, 5)
    assert len(asked) == tiered + 1  # a tiered model: LiteLLM every call


def test_a_view_reads_and_writes_the_json_and_keeps_the_upstreams_bytes():
    raw = (
        b'{"id":"c1","choices":[{"message":{"content":"hi"},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    )
    view = view_of(raw)
    assert view.choices[0].message.content == "hi" and view.usage.prompt_tokens == 3
    assert view.missing is None and getattr(view, "apportion", None) is None
    assert raw_bytes(view) is raw  # unchanged: passed as it came
    view.choices[0].message.content = "hi there"
    view.usage.completion_tokens = 2
    assert json.loads(raw_bytes(view)) == {
        "id": "c1",
        "choices": [{"message": {"content": "hi there"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    with pytest.raises(UpstreamStatusError) as caught:
        view_of(b"[1, 2]")
    assert caught.value.status_code == 502


def test_the_direct_sender_posts_raw_json_and_answers_views_not_sdk_objects():
    async def go(url: str) -> Any:
        send = direct_sender(CHAT, UpstreamConfig("u", api_base=url, model="openai/m-1"), "k")
        try:
            return await send(
                model="asked", messages=[{"role": "user", "content": "tag hello"}], max_tokens=3
            )
        finally:
            await upstream_http.aclose_clients()

    with FastUpstream(reply_tokens=8) as upstream:
        answer = asyncio.run(go(upstream.url))
        assert upstream.billed == {"tag": answer.usage.total_tokens}
    assert isinstance(answer, JSONView)
    assert answer.model == "m-1" and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3
    assert json.loads(forward.wire(answer))["choices"][0]["message"]["content"] == "ok ok ok"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_upstream_error_keeps_the_providers_status_and_message(status):
    async def go(url: str) -> Any:
        send = direct_sender(CHAT, UpstreamConfig("u", api_base=url), None)
        try:
            await send(model="m", messages=[{"role": "user", "content": "x"}])
        finally:
            await upstream_http.aclose_clients()

    with OpenAIServer() as server:
        server.queue(Reply(status=status))
        with pytest.raises(UpstreamStatusError) as caught:
            asyncio.run(go(server.url))
    assert forward.upstream_error(caught.value, ())[0] == status
    assert caught.value.message and "Error code" not in caught.value.message


def test_json_falls_back_to_the_standard_library(monkeypatch):
    monkeypatch.setattr(upstream_http, "_json", None)
    monkeypatch.setitem(__import__("sys").modules, "orjson", None)
    assert upstream_http.loads(upstream_http.dumps({"a": "é"})) == {"a": "é"}
    monkeypatch.setattr(upstream_http, "_json", None)


# ---------------------------------------------------------------- the fast path


class _Counting:
    """A middleware counting the calls that pass through the app's stack."""

    def __init__(self, app: Any, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


def _fast_app(**options: Any) -> tuple[Any, Any, list[str], OpenAIServer]:
    server = OpenAIServer(default="one two three").start()
    app, gateway = proxy_app(server, **options)
    seen: list[str] = []
    app.add_middleware(_Counting, seen=seen)
    return app, gateway, seen, server


async def _calls(app: Any, *calls: tuple[str, str, Any, dict[str, str]]) -> list[Any]:
    async with asgi_client(app) as client:
        return [
            await client.request(method, path, json=body, headers=headers)
            for method, path, body, headers in calls
        ]


def test_a_proxied_call_skips_the_middleware_stack_and_keeps_ids_logs_and_metrics(caplog):
    app, _gateway, seen, server = _fast_app()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}]}
    headers = {**budget_headers("fast-1", "writer", 500), "X-Request-Id": "call-fast-1"}
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            proxied, health, wrong_method = asyncio.run(
                _calls(
                    app,
                    ("POST", "/v1/chat/completions", chat, headers),
                    ("GET", "/healthz", None, {}),
                    ("GET", "/v1/chat/completions", None, {}),
                )
            )
    finally:
        server.stop()
    assert seen == ["/healthz", "/v1/chat/completions"]  # the POST went round the stack
    assert proxied.status_code == 200 and proxied.headers["X-Request-Id"] == "call-fast-1"
    assert proxied.headers["Apportion-Request"] == "fast-1"
    assert proxied.json()["choices"][0]["message"]["content"] == "one two three"
    assert health.status_code == 200 and wrong_method.status_code == 405
    lines = [r.fields for r in caplog.records if r.getMessage() == "http_request"]  # type: ignore[attr-defined]
    first = lines[0]
    assert first["request_id"] == "call-fast-1" and first["route"] == "/v1/chat/completions"
    assert first["status"] == 200 and first["agent"] == "writer" and first["tenant"] == "acme"
    assert first["apportion_request"] == "fast-1" and first["granted"] > 0


def test_the_fast_path_keeps_the_body_limit_auth_and_json_errors():
    app, _gateway, seen, server = _fast_app(max_body_bytes=2_000)
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x " * 2_000}]}
    small = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    try:
        too_big, no_key = asyncio.run(
            _calls(
                app,
                ("POST", "/v1/chat/completions", big, budget_headers("b", "writer", 500)),
                ("POST", "/v1/responses", small, {"Authorization": "Bearer nope"}),
            )
        )
    finally:
        server.stop()
    assert seen == []
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
    assert no_key.status_code == 401 and no_key.json()["error"]["code"]
    assert "X-Request-Id" in no_key.headers


def test_an_unexpected_error_on_the_fast_path_is_a_json_500(monkeypatch):
    app, _gateway, seen, server = _fast_app()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Proxy, "answer", broken)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

    async def go() -> Any:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post("/v1/chat/completions", json=chat)

    try:
        answered = asyncio.run(go())
    finally:
        server.stop()
    assert answered.status_code == 500 and seen == []
    assert answered.json()["error"]["code"] == "internal_error"
    assert "RuntimeError" in answered.json()["error"]["message"]


def test_a_catalog_reads_a_litellm_entry_once_per_model(monkeypatch):
    from apportion import catalog as catalog_module

    made: list[str] = []
    real = catalog_module._litellm_model

    def counted(name: str, entry: Any) -> Any:
        made.append(name)
        return real(name, entry)

    monkeypatch.setattr(catalog_module, "_litellm_model", counted)
    found = catalog_module.Catalog()
    first = found.find("gpt-4o-mini")
    assert first is not None and found.find("gpt-4o-mini") == first
    assert found.find("no-such-model-anywhere") is None is found.find("no-such-model-anywhere")
    assert made == ["gpt-4o-mini"]


_BLOCKER = """
import sys

for name in ("uvloop", "httptools", "orjson"):  # as if not installed
    sys.modules[name] = None
"""


def test_apportion_serve_runs_without_uvloop_httptools_and_orjson(tmp_path):
    """The speed-ups are optional: asyncio's loop, h11 and json serve instead."""
    import subprocess
    import sys

    from apportion.testing.ports import free_port

    (tmp_path / "sitecustomize.py").write_text(_BLOCKER, encoding="utf-8")
    with FastUpstream(reply_tokens=4) as upstream:
        config = tmp_path / "serve.yaml"
        config.write_text(
            "upstreams:\n"
            f"  fake: {{prefix: '', api_base: '{upstream.url}', api_key: sk-x, direct: true}}\n",
            encoding="utf-8",
        )
        port = free_port()
        paths = [str(tmp_path), str(ROOT / "src"), *sys.path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        log = tmp_path / "serve.log"
        with log.open("wb") as sink:
            argv = [sys.executable, "-m", "apportion.cli", "serve", "--config", str(config)]
            process = subprocess.Popen(
                [*argv, "--port", str(port), "--log-level", "warning"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "slow hello"}]}
            headers = budget_headers("plain", "intake", 1_000)
            # the first call may wait for LiteLLM's import (the gateway warms it after start)
            answered = httpx.post(
                f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
            )
            loaded = Path(f"/proc/{process.pid}/maps").read_text()
        finally:
            process.terminate()
            process.wait(30)
        assert answered.status_code == 200, log.read_text()
        assert int(answered.headers["Apportion-Used"]) == upstream.billed["slow"]
    assert "uvloop" not in loaded and "httptools" not in loaded and "orjson" not in loaded


def test_the_direct_sender_falls_back_to_httpx_without_aiohttp(monkeypatch):
    monkeypatch.setattr(upstream_http, "_aiohttp", lambda: None)

    async def go(url: str) -> Any:
        send = direct_sender(CHAT, UpstreamConfig("u", api_base=url), None)
        try:
            plain = await send(model="m", messages=[{"role": "user", "content": "tag hi"}])
            stream = await send(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
            chunks = [chunk async for chunk in stream]
            kind = type(upstream_http._CLIENTS[asyncio.get_running_loop()][0]).__name__
            return plain, chunks, kind
        finally:
            await upstream_http.aclose_clients()

    with OpenAIServer(default="one two three") as server:
        plain, chunks, kind = asyncio.run(go(server.url))
    assert kind == "_HttpxClient"
    assert plain.choices[0].message.content == "one two three"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"


def test_call_headers_are_read_whatever_the_case_and_the_first_of_repeats_counts():
    from apportion.serve.proxy import CallHeaders

    raw = [(b"apportion-agent", b"writer"), (b"x-twice", b"first"), (b"x-twice", b"second")]
    headers = CallHeaders.of(raw)
    assert headers.get("Apportion-Agent") == headers["APPORTION-AGENT"] == "writer"
    assert "Apportion-Agent" in headers and "Apportion-Request" not in headers
    assert headers.get("Apportion-Request") is None and headers["X-Twice"] == "first"


def test_litellm_is_imported_in_the_background_and_a_refused_call_does_not_wait(monkeypatch):
    """The app is built without importing LiteLLM and starts the warming thread (one per
    process) instead; a call refused before it is sent (no budget headers) never needs it."""
    from apportion.serve.app import create_app

    imported: list[str] = []
    monkeypatch.setattr(forward, "import_litellm", lambda: imported.append("litellm"))
    started: list[int] = []
    real = forward.warm_in_background
    monkeypatch.setattr(forward, "warm_in_background", lambda *a, **k: started.append(1))
    app = create_app()
    assert started == [1] and imported == []

    async def refused() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            return await client.post("/v1/chat/completions", json=chat)

    answered = asyncio.run(refused())
    assert answered.status_code == 400 and imported == []
    assert answered.json()["error"]["code"] == "budget_headers_missing"

    warmed: list[tuple[str, ...]] = []
    monkeypatch.setattr(forward, "warm", lambda models: warmed.append(tuple(models)))
    monkeypatch.setattr(forward, "_WARMING", [])
    thread = real()
    assert real() is thread and thread.name == "apportion-warm" and thread.daemon
    thread.join(60)
    assert warmed == [("gpt-4o-mini",)] and not thread.is_alive()


def test_a_call_waiting_for_litellm_s_import_does_not_stall_the_others(monkeypatch):
    """While LiteLLM is being imported (held here until a budget call has been answered),
    a proxied call waits for it in a worker thread; the event loop answers the others."""
    import threading

    real = forward.import_litellm
    entered, release = threading.Event(), threading.Event()

    def held() -> Any:
        entered.set()
        assert release.wait(60), "the import was never released"
        return real()

    monkeypatch.setattr(forward, "_LITELLM", [])
    monkeypatch.setattr(forward, "import_litellm", held)
    monkeypatch.setattr(forward, "warm_in_background", lambda *a, **k: None)  # the call imports
    app, _gateway, _seen, server = _fast_app()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}]}

    async def go() -> tuple[Any, Any, bool]:
        async with asgi_client(app) as client:
            proxied = asyncio.create_task(
                client.post(
                    "/v1/chat/completions", json=chat, headers=budget_headers("w", "writer", 500)
                )
            )
            for _ in range(600):  # until the proxied call is in the import
                if entered.is_set():
                    break
                await asyncio.sleep(0.05)
            opened = await client.post("/v1/budget/requests", json={"ceiling": 900})
            waiting = not proxied.done()
            release.set()
            return await proxied, opened, waiting

    try:
        proxied, opened, waiting = asyncio.run(go())
    finally:
        release.set()
        server.stop()
    assert entered.is_set() and waiting  # the budget call was answered while it waited
    assert opened.status_code == 201, opened.text
    assert proxied.status_code == 200, proxied.text
    assert int(proxied.headers["Apportion-Used"]) > 0 and forward._LITELLM
