"""A proxied call's telemetry record: written when another call closes the request.

The proxy's call and the budget API's close each take a handle of their own; the close
reads the call from the store, with its model, and prices it from the catalog.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from proxy_helpers import MODEL, asgi_client, budget_headers, proxy_app, words

from apportion.catalog import Catalog
from apportion.telemetry import flush
from apportion.telemetry.sql import open_database
from apportion.testing.openai_server import OpenAIServer


def test_a_proxied_call_reaches_telemetry_with_its_model_and_cost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    with OpenAIServer() as server:
        app, _ = proxy_app(server, "elastic", direct=True, telemetry=(url,))

        async def body() -> None:
            async with asgi_client(app) as client:
                call = {"model": MODEL, "messages": [{"role": "user", "content": words(50)}]}
                headers = budget_headers("t-1", "planner", 5_000)
                answer = await client.post("/v1/chat/completions", json=call, headers=headers)
                assert answer.status_code == 200, answer.text
                closed = await client.post("/v1/budget/requests/t-1/close")
                assert closed.status_code == 200, closed.text

        asyncio.run(body())
        billed = server.billed
    assert flush(30)
    (call,) = open_database(url).load().calls
    ((prompt, completion),) = billed
    assert (call.agent, call.model, call.status) == ("planner", MODEL, "completed")
    assert call.used == prompt + completion
    price_in, price_out = Catalog().get(MODEL).nano_prices()  # what the gateway charges
    assert call.cost_usd == pytest.approx((prompt * price_in + completion * price_out) / 1e9)
