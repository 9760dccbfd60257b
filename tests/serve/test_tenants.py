"""Tenants and keys over the budget API: signed grant handles, failed-auth limits, admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from test_budget_api import BASE, check_error, open_request, run

from apportion.serve import Gateway, ServeConfig
from apportion.serve.errors import AuthenticationFailed, AuthenticationThrottled
from conftest import auth, write_config


def _flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


async def _begin(client: httpx.AsyncClient, tenant: str, rid: str, agent: str) -> dict[str, Any]:
    response = await client.post(
        f"{BASE}/{rid}/begin", json={"agent": agent, "input_tokens": 500}, headers=auth(tenant)
    )
    assert response.status_code == 200, response.text
    grant: dict[str, Any] = response.json()
    return grant


def test_begin_answers_a_grant_handle_that_finish_extend_and_release_take(
    gateway: Gateway,
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        rid = await open_request(client, "acme")
        grant = await _begin(client, "acme", rid, "reasoner")
        handle = grant["grant"]
        assert isinstance(handle, str) and handle.count(".") == 2
        assert grant["grant_id"] == 1 and grant["agent"] == "reasoner"  # readable beside it
        grown = await client.post(
            f"{BASE}/{rid}/extend", json={"grant": handle, "output_tokens": 10}, headers=h
        )
        assert grown.status_code == 200, grown.text
        assert grown.json()["grant"]["grant"] == handle
        renewed = await client.post(f"{BASE}/{rid}/renew", json={"grant": handle}, headers=h)
        assert renewed.status_code == 200, renewed.text
        done = await client.post(
            f"{BASE}/{rid}/finish",
            json={"grant": handle, "input_tokens": 500, "output_tokens": 20},
            headers=h,
        )
        assert done.status_code == 200, done.text
        assert done.json()["summary"]["consumed"] == 520
        other = (await _begin(client, "acme", rid, "critic"))["grant"]
        gone = await client.post(f"{BASE}/{rid}/release", json={"grant": other}, headers=h)
        assert gone.json()["summary"]["reserved"] == 0
        # a grant is named by its handle only: id and agent are no longer taken
        check_error(
            await client.post(
                f"{BASE}/{rid}/release", json={"grant_id": 1, "agent": "reasoner"}, headers=h
            ),
            422,
            "invalid_body",
        )

    run(gateway, body)


def test_a_tampered_or_foreign_grant_handle_is_refused_and_nothing_changes(
    gateway: Gateway,
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        rid = await open_request(client, "acme", request_id="shared")
        await open_request(client, "globex", request_id="shared")
        other = await open_request(client, "acme", request_id="another")
        handle = (await _begin(client, "acme", rid, "reasoner"))["grant"]
        other_handle = (await _begin(client, "acme", other, "reasoner"))["grant"]
        before = (await client.get(f"{BASE}/{rid}", headers=h)).json()
        version, payload, signature = handle.split(".")
        forged = [
            f"{version}.{_flip(payload, 3)}.{signature}",
            f"{version}.{payload}.{_flip(signature, 2)}",
            f"{version}.{payload}",
            "not-a-handle",
            handle.replace("g1.", "v1.", 1),
        ]
        for bad in forged:
            error = check_error(
                await client.post(
                    f"{BASE}/{rid}/finish",
                    json={"grant": bad, "input_tokens": 1, "output_tokens": 1},
                    headers=h,
                ),
                403,
                "grant_invalid",
            )
            assert bad not in error["message"]
        # another request's handle, of the same tenant
        check_error(
            await client.post(f"{BASE}/{rid}/release", json={"grant": other_handle}, headers=h),
            403,
            "grant_invalid",
        )
        # acme's handle at globex's request of the same id
        check_error(
            await client.post(
                f"{BASE}/shared/release", json={"grant": handle}, headers=auth("globex")
            ),
            403,
            "grant_invalid",
        )
        after = (await client.get(f"{BASE}/{rid}", headers=h)).json()
        assert after == before
        assert after["reserved"] > 0

    run(gateway, body)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _limited(tmp_path: Path, limit: int = 3, window: float = 60.0) -> tuple[Gateway, Clock]:
    extra = f"auth_failure_limit: {limit}\nauth_failure_window: {window}\n"
    clock = Clock()
    return Gateway(ServeConfig.from_yaml(write_config(tmp_path, extra=extra)), clock=clock), clock


def test_failed_authentication_is_limited_per_client_then_forgiven(tmp_path: Path) -> None:
    gateway, clock = _limited(tmp_path)

    async def body(client: httpx.AsyncClient) -> None:
        good = auth("acme")
        for n in range(3):
            bad = {"Authorization": f"Bearer sk-guess-{n}"}
            assert (await client.get(f"{BASE}/x", headers=good)).status_code == 404
            check_error(await client.get(f"{BASE}/x", headers=bad), 401, "unauthenticated")
        for headers in ({"Authorization": "Bearer sk-guess-9"}, {}, good):
            limited = await client.get(f"{BASE}/x", headers=headers)
            error = check_error(limited, 429, "too_many_auth_failures")
            assert 1 <= int(limited.headers["Retry-After"]) <= 60
            assert error["retry_after"] == int(limited.headers["Retry-After"])
        proxied = await client.post("/v1/chat/completions", json={}, headers=good)
        assert proxied.status_code == 429 and "Retry-After" in proxied.headers
        clock.now += 61
        assert (await client.get(f"{BASE}/x", headers=good)).status_code == 404
        check_error(
            await client.get(f"{BASE}/x", headers={"Authorization": "Bearer no"}),
            401,
            "unauthenticated",
        )

    run(gateway, body)


def test_successful_calls_never_count_and_memory_stays_bounded(tmp_path: Path) -> None:
    gateway, clock = _limited(tmp_path, limit=2)
    limiter = gateway.failures
    for _ in range(50):
        assert gateway.authenticate(auth("acme"), client="10.0.0.1").name == "acme"
    for n in range(limiter.capacity * 3):  # many clients, each with a new bad key
        with pytest.raises(AuthenticationFailed):
            gateway.authenticate({"Authorization": f"Bearer bad-{n}"}, client=f"10.1.{n}")
        clock.now += 0.001
    assert len(limiter) <= limiter.capacity
    for n in range(5):  # one client, many distinct bad keys: one entry
        with pytest.raises((AuthenticationFailed, AuthenticationThrottled)):
            gateway.authenticate({"Authorization": f"Bearer other-{n}"}, client="10.9.9.9")
    assert len(limiter) <= limiter.capacity
    with pytest.raises(AuthenticationThrottled):
        gateway.authenticate(auth("acme"), client="10.9.9.9")
    assert gateway.authenticate(auth("acme"), client="10.0.0.1").name == "acme"

