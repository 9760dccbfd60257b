"""Schemathesis fuzzes the gateway's OpenAPI document: no 5xx, no answer off the schema.

Every operation gets the loaded Hypothesis profile's examples (see ``tests/conftest.py``),
against the app in process (ASGI) with a tenant's key, then a few against a live uvicorn
server.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from apportion.serve import ServeConfig, create_app
from conftest import KEYS, LiveServer, write_config

# the fuzzer's invalid-authentication checks would soon meet the failure limit (429)
_CONFIG = ServeConfig.from_yaml(
    write_config(
        Path(tempfile.mkdtemp(prefix="apportion-fuzz-")), extra="auth_failure_limit: 1000000\n"
    )
)
APP = create_app(_CONFIG)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
HEADERS = {"Authorization": f"Bearer {KEYS['acme']}"}


@SCHEMA.parametrize()
@settings(suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx_or_off_schema(case: schemathesis.Case) -> None:
    # every check but positive_data_acceptance: what the library refuses across fields
    # (min_context_tokens above input_tokens, a child's name taken ...) no schema can say
    case.call_and_validate(headers=HEADERS, excluded_checks=[positive_data_acceptance])


def test_the_document_validates_and_a_live_server_serves_it() -> None:
    with LiveServer(create_app(_CONFIG)) as server:
        document = httpx.get(f"{server.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/v1/budget/requests/{request_id}/close" in document["paths"]
