"""Pass-through provider keys, end to end: the caller's key reaches the upstream, nowhere else.

The official OpenAI client calls a live gateway (uvicorn on a loopback port) whose
upstream is configured ``pass_through_key: true``; the local upstream
(:class:`~apportion.testing.openai_server.OpenAIServer`) records the ``Authorization``
header it received. The caller's key must reach it, and appear in no answer (a provider's
401 quotes the key it was sent), no log record (read raw, before any scrubbing), no metric
and no span.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from proxy_helpers import MODEL, budget_headers

from apportion.serve import ServeConfig, create_app
from apportion.testing.openai_server import OpenAIServer
from conftest import KEYS, LiveServer, auth, write_config

CALLER_KEY = "sk-caller-own-PASSED-4c1d2e"
QUESTION = [{"role": "user", "content": "Count for me, please."}]


class RawRecords(logging.Handler):
    """Every log record as its whole ``__dict__`` (message, args, fields), unscrubbed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + json.dumps(record.__dict__, default=str))


@pytest.fixture
def records() -> Iterator[RawRecords]:
    handler = RawRecords()
    root, serve = logging.getLogger(), logging.getLogger("apportion.serve")
    level = serve.level
    root.addHandler(handler)
    serve.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    serve.setLevel(level)


def _spans() -> tuple[Any, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _config(tmp_path: Path, upstream: OpenAIServer, direct: bool, tenants: bool) -> ServeConfig:
    passed = (
        "upstreams:\n"
        f"  passed: {{prefix: gpt-, api_base: '{upstream.url}', pass_through_key: true, "
        f"direct: {str(direct).lower()}}}\n"
    )
    if tenants:
        return ServeConfig.from_yaml(write_config(tmp_path, extra=passed))
    path = tmp_path / "open.yaml"
    path.write_text(passed, encoding="utf-8")
    return ServeConfig.from_yaml(path)


def _texts(answers: list[Any]) -> str:
    out = []
    for answer in answers:
        out.append(answer.text)
        out.extend(f"{k}: {v}" for k, v in answer.headers.items())
    return "\n".join(out)


@pytest.mark.parametrize("direct", [True, False], ids=["openai-sdk", "litellm"])
def test_the_caller_s_key_reaches_the_upstream_and_nothing_else(
    tmp_path: Path, records: RawRecords, direct: bool
) -> None:
    provider, exporter = _spans()
    with OpenAIServer(default="one two three") as upstream:
        app = create_app(
            _config(tmp_path, upstream, direct, tenants=True), tracer_provider=provider
        )
        with LiveServer(app) as served:
            client = openai.OpenAI(
                base_url=f"{served.url}/v1",
                api_key=KEYS["acme"],  # the gateway's key of tenant acme
                default_headers={
                    **budget_headers("passed-1", "intake", 5000),
                    "Apportion-Upstream-Key": CALLER_KEY,
                },
                max_retries=0,
            )
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
            answer = raw.parse()
            assert answer.choices[0].message.content == "one two three"
            streamed = list(
                client.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
            )
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            upstream.fail_at(len(upstream.requests) + 1, 401)  # it quotes the key it got
            with pytest.raises(openai.AuthenticationError) as refused:
                client.chat.completions.create(model=MODEL, messages=QUESTION)
            with httpx.Client(base_url=served.url) as http:
                metrics = http.get("/metrics", headers=auth("ops"))
                summary = http.get("/v1/budget/requests/passed-1", headers=auth("acme"))
    assert upstream.authorizations == [f"Bearer {CALLER_KEY}"] * 3  # never the gateway's key
    error = refused.value
    assert error.status_code == 401 and "Incorrect API key provided" in str(error.message)
    assert CALLER_KEY not in str(error.message) and CALLER_KEY not in error.response.text
    assert metrics.status_code == 200 and summary.status_code == 200
    shown = _texts([raw.http_response, error.response, metrics, summary])
    assert CALLER_KEY not in shown and KEYS["acme"] not in shown
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    for span in spans:
        assert CALLER_KEY not in json.dumps(dict(span.attributes or {}), default=str)
        assert CALLER_KEY not in (span.status.description or "")
        assert all(CALLER_KEY not in str(event.attributes) for event in span.events)
    logged = "\n".join(records.lines)
    assert "http_request" in logged  # the gateway did log its calls
    assert CALLER_KEY not in logged


def test_in_open_mode_the_authorization_key_is_passed_through(
    tmp_path: Path, records: RawRecords
) -> None:
    with OpenAIServer(default="one two three") as upstream:
        app = create_app(_config(tmp_path, upstream, direct=True, tenants=False))
        with LiveServer(app) as served:
            client = openai.OpenAI(
                base_url=f"{served.url}/v1",
                api_key=CALLER_KEY,  # no tenants: the key is the provider's
                default_headers=budget_headers("passed-2", "intake", 5000),
                max_retries=0,
            )
            answer = client.chat.completions.create(model=MODEL, messages=QUESTION)
            metrics = httpx.get(f"{served.url}/metrics")  # open mode: public
    assert answer.choices[0].message.content == "one two three"
    assert upstream.authorizations == [f"Bearer {CALLER_KEY}"]
    assert metrics.status_code == 200 and CALLER_KEY not in metrics.text
    assert CALLER_KEY not in "\n".join(records.lines)
