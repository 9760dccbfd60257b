"""Schemathesis fuzzes the gateway's OpenAPI document: no 5xx, no answer off the schema.

Every operation, the proxy's ``/v1/chat/completions`` and ``/v1/responses`` included
(their upstream: the fake one of :mod:`apportion.testing.fast_upstream`), gets 50
examples against the app in process (ASGI) with a tenant's key; then a few against a live
uvicorn server, and a bounded number per operation against ``apportion serve --workers 2``
on a real redis-server.
"""

from __future__ import annotations

import atexit
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from redis_server import RedisServer
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from apportion.serve import ServeConfig, create_app
from apportion.testing.fast_upstream import FastUpstream
from conftest import KEYS, LiveServer, free_port, output, start_cli, stop, wait_ready, write_config

UPSTREAM = FastUpstream().start()  # the proxy's provider, for the whole module
atexit.register(UPSTREAM.stop)

# the fuzzer's invalid-authentication checks would soon meet the failure limit (429)
EXTRA = (
    "auth_failure_limit: 1000000\n"
    "upstreams:\n"
    f"  fake: {{prefix: '', api_base: '{UPSTREAM.url}', api_key: sk-fake-0123, direct: true}}\n"
)
_CONFIG = ServeConfig.from_yaml(
    write_config(Path(tempfile.mkdtemp(prefix="apportion-fuzz-")), extra=EXTRA)
)
APP = create_app(_CONFIG)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
HEADERS = {"Authorization": f"Bearer {KEYS['acme']}"}
# every check but positive_data_acceptance: what the library refuses across fields
# (min_context_tokens above input_tokens, a child's name taken ...) no schema can say
EXCLUDED = [positive_data_acceptance]


def _checks_off(case: schemathesis.Case) -> list[Any]:
    """The checks left out for ``case``: :data:`EXCLUDED`, and the negative-data check when
    nothing negative reaches the server: its generated headers are replaced by the
    tenant's key, and a query value that is an object is not sent (a URL cannot carry
    one), so such a case arrives as a valid request."""
    negative = (
        {
            where
            for where, info in case.meta.components.items()
            if info.mode is GenerationMode.NEGATIVE
        }
        if case.meta is not None
        else set()
    )
    unsent = {ParameterLocation.HEADER}
    if any(_object_in(value) for value in (case.query or {}).values()):
        unsent.add(ParameterLocation.QUERY)
    return [*EXCLUDED, negative_data_rejection] if negative <= unsent else EXCLUDED


def _object_in(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
    )


@SCHEMA.parametrize()
# 50 per operation (the dev profile's count), not the CI profile's 100: ~2 s per operation
# saved, and the live gateway is fuzzed again below and by ``st`` in test_live
@settings(max_examples=50, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx_or_off_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=HEADERS, excluded_checks=_checks_off(case))


@SCHEMA.include(path_regex=r"^/v1/(chat/completions|responses)$").parametrize()
@settings(max_examples=20, suppress_health_check=list(HealthCheck))
def test_proxied_calls_with_good_budget_headers_answer_no_5xx(case: schemathesis.Case) -> None:
    """Fuzzed bodies through a budget (a new request each), on to the fake upstream."""
    budget = {
        "Apportion-Request": uuid.uuid4().hex,
        "Apportion-Agent": "intake",
        "Apportion-Ceiling": "20000",
    }
    # the good headers replace the generated ones: a case made "negative" by its headers
    # is one no longer, so the negative-data check does not apply here
    case.call_and_validate(
        headers={**HEADERS, **budget}, excluded_checks=[*EXCLUDED, negative_data_rejection]
    )


def test_the_document_validates_and_a_live_server_serves_it() -> None:
    with LiveServer(create_app(_CONFIG)) as server:
        document = httpx.get(f"{server.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/v1/budget/requests/{request_id}/close" in document["paths"]
    for path in ("/v1/chat/completions", "/v1/responses"):
        operation = document["paths"][path]["post"]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert {
            "Apportion-Request",
            "Apportion-Agent",
            "Apportion-Ceiling",
            "Apportion-Parent",
        } <= headers
        assert operation["requestBody"]["content"]["application/json"]["schema"]["required"]
        for status in ("400", "401", "402", "404", "413"):
            error = operation["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorOut"}
        assert "Apportion-Granted" in operation["responses"]["200"]["headers"]
        assert operation["security"] == [{"HTTPBearer": []}]


def test_two_workers_on_redis_answer_no_5xx_nor_off_schema(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A few examples per operation (bounded: the suite stays fast) against 2 workers."""
    store = f"{redis_server.url}?prefix=fuzz-{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path, store=store, extra=EXTRA)
    port = free_port()
    process = start_cli("--config", str(path), "--workers", "2", port=port)
    url = f"http://127.0.0.1:{port}"
    fuzzed = []
    try:
        wait_ready(url, process)
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        for found in schema.get_all_operations():
            operation = found.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=5, suppress_health_check=list(HealthCheck), deadline=None)
            def fuzz(case: schemathesis.Case) -> None:
                # a bound, not a check: a first proxied call may wait for LiteLLM's import
                case.call_and_validate(
                    headers=HEADERS, excluded_checks=_checks_off(case), timeout=120
                )

            fuzz()
            fuzzed.append(operation.label)
    finally:
        stop(process)
    assert "POST /v1/chat/completions" in fuzzed and "POST /v1/responses" in fuzzed
    assert "Traceback" not in output(process)
