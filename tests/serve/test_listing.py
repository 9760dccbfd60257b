"""``GET /v1/requests``: each key lists the open requests it may see."""

from __future__ import annotations

import httpx
import pytest
from test_budget_api import BASE, check_error, open_request, run

from apportion.errors import InvalidArgument
from apportion.serve import Gateway
from apportion.serve.app import create_app
from apportion.serve.gateway import Tenant
from conftest import auth

LIST = "/v1/requests"


def test_a_tenant_lists_its_own_open_requests_and_an_admin_every_one(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        mine = sorted([await open_request(client, "acme") for _ in range(2)])
        theirs = await open_request(client, "globex")
        closed = await open_request(client, "acme")
        done = await client.post(f"{BASE}/{closed}/close", headers=auth("acme"))
        assert done.status_code == 200
        grant = await client.post(
            f"{BASE}/{mine[0]}/begin",
            json={"agent": "reasoner", "input_tokens": 500, "output_tokens": 100},
            headers=auth("acme"),
        )
        assert grant.status_code == 200, grant.text
        listed = await client.get(LIST, headers=auth("acme"))
        assert listed.status_code == 200, listed.text
        rows = listed.json()["requests"]
        assert [r["request_id"] for r in rows] == mine
        assert {r["tenant"] for r in rows} == {"acme"}
        first = rows[0]
        assert (first["status"], first["ceiling"], first["reserved"]) == ("open", 20_000, 600)
        assert first["agents"]["reasoner"]["reserved"] == 600
        assert first["free"] + first["reserved"] + first["consumed"] == first["ceiling"]
        assert [
            r["request_id"]
            for r in (await client.get(LIST, headers=auth("globex"))).json()["requests"]
        ] == [theirs]
        every = (await client.get(LIST, headers=auth("ops"))).json()["requests"]
        assert {(r["tenant"], r["request_id"]) for r in every} == {
            ("acme", mine[0]),
            ("acme", mine[1]),
            ("globex", theirs),
        }
        assert (
            len(
                (await client.get(LIST, params={"limit": 1}, headers=auth("ops"))).json()[
                    "requests"
                ]
            )
            == 1
        )
        check_error(await client.get(LIST), 401, "unauthenticated")
        bad = await client.get(LIST, params={"limit": 0}, headers=auth("acme"))
        assert bad.status_code == 422
        odd = await client.get(LIST, params={"tenant": "globex"}, headers=auth("acme"))
        assert odd.status_code == 422 and "globex" not in str(odd.json()["error"].get("reason"))

    run(gateway, body)


def test_the_listing_is_in_the_openapi_schema(gateway: Gateway) -> None:
    schema = create_app(gateway).openapi()
    operation = schema["paths"]["/v1/requests"]["get"]
    assert "RequestsOut" in str(operation["responses"]["200"])


def test_the_gateway_method_checks_its_limit(gateway: Gateway) -> None:
    import asyncio

    with pytest.raises(InvalidArgument):
        asyncio.run(gateway.open_requests(Tenant("acme"), limit=0))
