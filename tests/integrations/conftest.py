"""Fixtures for the integration tests: a local OpenAI-protocol server and a checking store.

No test touches an outside network: LiteLLM reads its bundled cost map, the clients talk
to :class:`~apportion.testing.openai_server.OpenAIServer` on a loopback port, and
LiteLLM's ``mock_response`` path makes no HTTP call at all.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator

import pytest
from integration_helpers import CheckedStore

from apportion.testing.openai_server import OpenAIServer


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def store() -> CheckedStore:
    return CheckedStore()
