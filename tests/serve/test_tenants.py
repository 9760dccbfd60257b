"""Tenants and keys over the budget API: signed grant handles, failed-auth limits, admin."""

from __future__ import annotations

import uuid
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


ADMIN = "/v1/admin"


def test_an_admin_key_creates_resizes_lists_and_drains_a_tenants_pools(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        ops = auth("ops")
        made = await client.post(
            f"{ADMIN}/pools/acme",
            # a day's window: a minute's could end between two steps
            json={"name": "team", "capacity": 30_000, "window_seconds": 86_400},
            headers=ops,
        )
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "team" and made.json()["capacity"] == 30_000
        check_error(
            await client.post(
                f"{ADMIN}/pools/acme",
                json={"name": "team", "capacity": 5},
                headers=ops,
            ),
            409,
            "duplicate_pool",
        )
        # the tenant draws from it
        await open_request(client, "acme", pool="team", ceiling=20_000)
        check_error(
            await client.post(BASE, json={"ceiling": 20_000, "pool": "team"}, headers=auth("acme")),
            429,
            "pool_exhausted",
        )
        grown = await client.patch(
            f"{ADMIN}/pools/acme/team", json={"capacity": 50_000}, headers=ops
        )
        assert grown.status_code == 200, grown.text
        assert grown.json()["capacity"] == 50_000 and grown.json()["drawn"] == 20_000
        await open_request(client, "acme", pool="team", ceiling=20_000)
        listed = await client.get(f"{ADMIN}/pools", params={"tenant": "acme"}, headers=ops)
        assert [p["name"] for p in listed.json()["pools"]] == ["team"]
        assert (
            await client.get(f"{ADMIN}/pools", params={"tenant": "globex"}, headers=ops)
        ).json()["pools"] == []
        drained = await client.post(f"{ADMIN}/pools/acme/team/drain", headers=ops)
        assert drained.status_code == 200 and drained.json()["draining"] is True
        check_error(
            await client.post(BASE, json={"ceiling": 10, "pool": "team"}, headers=auth("acme")),
            409,
            "pool_draining",
        )
        check_error(
            await client.patch(f"{ADMIN}/pools/acme/none", json={"capacity": 9}, headers=ops),
            404,
            "unknown_pool",
        )
        # a tenant's key is no admin key, and another tenant's pool is another pool
        for call in (
            client.get(f"{ADMIN}/pools", params={"tenant": "acme"}, headers=auth("acme")),
            client.post(
                f"{ADMIN}/pools/globex",
                json={"name": "x", "capacity": 5},
                headers=auth("acme"),
            ),
            client.post(f"{ADMIN}/pools/acme/team/drain", headers=auth("globex")),
            client.post(f"{ADMIN}/reload", headers=auth("acme")),
        ):
            check_error(await call, 403, "forbidden")
        check_error(
            await client.post(BASE, json={"ceiling": 10, "pool": "team"}, headers=auth("globex")),
            404,
            "unknown_pool",
        )

    run(gateway, body)


def test_an_admin_reads_any_tenants_summary_a_tenant_only_its_own(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        rid = await open_request(client, "acme", request_id="t-1")
        seen = await client.get(f"{BASE}/{rid}", params={"tenant": "acme"}, headers=auth("ops"))
        assert seen.status_code == 200 and seen.json()["request_id"] == "t-1"
        check_error(
            await client.get(f"{BASE}/{rid}", params={"tenant": "acme"}, headers=auth("globex")),
            403,
            "forbidden",
        )
        check_error(
            await client.get(f"{BASE}/{rid}", headers=auth("globex")), 404, "unknown_request"
        )

    run(gateway, body)


def test_reload_rereads_the_config_and_a_bad_file_keeps_the_old(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    gateway = Gateway(ServeConfig.from_yaml(path))

    async def body(client: httpx.AsyncClient) -> None:
        rid = await open_request(client, "acme")
        handle = (await _begin(client, "acme", rid, "reasoner"))["grant"]
        text = path.read_text()
        path.write_text(
            text.replace("sk-globex-9876543210", "sk-globex-rotated-1")
            + "  initech: {keys: [sk-initech-123456]}\n"
        )
        done = await client.post(f"{ADMIN}/reload", headers=auth("ops"))
        assert done.status_code == 200, done.text
        assert done.json()["tenants"] == ["acme", "globex", "initech", "ops"]
        new = {"Authorization": "Bearer sk-initech-123456"}
        assert (await client.post(BASE, json={"ceiling": 100}, headers=new)).status_code == 201
        rotated = {"Authorization": "Bearer sk-globex-rotated-1"}
        assert (await client.post(BASE, json={"ceiling": 100}, headers=rotated)).status_code == 201
        check_error(await client.get(f"{BASE}/x", headers=auth("globex")), 401, "unauthenticated")
        # the grant made before the reload is still good (the signing key is kept)
        gone = await client.post(
            f"{BASE}/{rid}/release", json={"grant": handle}, headers=auth("acme")
        )
        assert gone.status_code == 200, gone.text
        path.write_text(text + "  broken: {admin: maybe}\n")
        error = check_error(
            await client.post(f"{ADMIN}/reload", headers=auth("ops")), 422, "invalid_spec"
        )
        assert error["file"] == str(path) and error["line"] is not None
        assert (await client.post(BASE, json={"ceiling": 100}, headers=new)).status_code == 201

    run(gateway, body)


def test_pools_and_drains_live_in_redis_for_every_replica(
    tmp_path: Path, redis_server: Any
) -> None:
    store = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}"
    config = ServeConfig.from_yaml(write_config(tmp_path, store=store))
    first, second = Gateway(config), Gateway(config)

    async def define(client: httpx.AsyncClient) -> None:
        ops = auth("ops")
        for name in ("b-team", "a-team"):
            made = await client.post(
                f"{ADMIN}/pools/acme",
                json={"name": name, "capacity": 1000},
                headers=ops,
            )
            assert made.status_code == 201, made.text
        await client.post(f"{ADMIN}/pools/globex", json={"name": "x", "capacity": 9}, headers=ops)
        assert (
            await client.post(f"{ADMIN}/pools/acme/a-team/drain", headers=ops)
        ).status_code == 200

    async def read(client: httpx.AsyncClient) -> None:
        listed = await client.get(f"{ADMIN}/pools", params={"tenant": "acme"}, headers=auth("ops"))
        assert [(p["name"], p["draining"]) for p in listed.json()["pools"]] == [
            ("a-team", True),
            ("b-team", False),
        ]
        check_error(
            await client.post(BASE, json={"ceiling": 10, "pool": "a-team"}, headers=auth("acme")),
            409,
            "pool_draining",
        )
        await open_request(client, "acme", pool="b-team", ceiling=10)

    run(first, define)
    run(second, read)
