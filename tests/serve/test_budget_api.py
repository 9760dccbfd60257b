"""The budget API over HTTP (httpx's ASGI transport): flows, tenants, idempotency, errors."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from apportion.errors import ApportionError, SpecError, StoreOutcomeUnknown
from apportion.retry import StoreRetry
from apportion.serve import Gateway, ServeConfig, create_app
from apportion.serve.errors_json import CODES, error_response
from apportion.serve.idempotency import Outcome
from apportion.stores.memory import MemoryStore
from conftest import KEYS, auth, write_config

BASE = "/v1/budget/requests"
SEED = Path(__file__).resolve().parents[2] / "src/apportion/sim/workloads/seed-scenario.yaml"


def run(gateway: Gateway, body: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run ``body`` with a client of the gateway's app (its lifespan not run: no reaper)."""

    async def main() -> Any:
        app = create_app(gateway)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await body(client)

    return asyncio.run(main())


def check_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    for key in KEYS.values():
        assert key not in response.text
    return error


async def open_request(client: httpx.AsyncClient, tenant: str, **body: Any) -> str:
    response = await client.post(BASE, json={"ceiling": 20_000, **body}, headers=auth(tenant))
    assert response.status_code == 201, response.text
    return str(response.json()["request_id"])


def test_a_request_runs_begin_extend_finish_close(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        rid = await open_request(client, "acme", features={"messages": 40})
        h = auth("acme")
        grant = (
            await client.post(
                f"{BASE}/{rid}/begin", json={"agent": "reasoner", "input_tokens": 7900}, headers=h
            )
        ).json()
        assert grant["request_id"] == rid and grant["context_tokens"] == 7900
        grown = await client.post(
            f"{BASE}/{rid}/extend",
            json={"grant": grant["grant"], "output_tokens": 100},
            headers=h,
        )
        assert grown.status_code == 200, grown.text
        assert grown.json()["grant"]["output_tokens"] == grant["output_tokens"] + 100
        done = await client.post(
            f"{BASE}/{rid}/finish",
            json={
                "grant": grant["grant"],
                "input_tokens": 7900,
                "output_tokens": 1312,
            },
            headers=h,
        )
        assert done.status_code == 200, done.text
        assert done.json()["summary"]["consumed"] == 7900 + 1312
        # the client fitted its messages itself: a note kept with the request, no ledger change
        noted = await client.post(
            f"{BASE}/{rid}/fitted",
            json={"grant": grant["grant"], "messages": 3, "tokens": 410},
            headers=h,
        )
        assert noted.json() == {"request_id": rid, "messages": 3, "tokens": 410}
        (note,) = [e for e in gateway.store.history(f"acme/{rid}") if e.kind == "fitted"]
        assert (note.agent, note.context_tokens, note.note) == ("reasoner", 410, "3")
        check_error(
            await client.post(
                f"{BASE}/{rid}/fitted", json={"grant": grant["grant"], "messages": -1}, headers=h
            ),
            422,
            "invalid_token_count",
        )
        assert (await client.get(f"{BASE}/{rid}", headers=h)).json()["consumed"] == 7900 + 1312
        other = (
            await client.post(
                f"{BASE}/{rid}/begin", json={"agent": "formatter", "input_tokens": 100}, headers=h
            )
        ).json()
        released = await client.post(
            f"{BASE}/{rid}/release",
            json={"grant": other["grant"]},
            headers=h,
        )
        assert released.json()["summary"]["reserved"] == 0
        assert (
            await client.post(f"{BASE}/{rid}/score", json={"outcome": 0.75}, headers=h)
        ).status_code == 200
        closed = await client.post(f"{BASE}/{rid}/close", headers=h)
        assert closed.status_code == 200, closed.text
        final = closed.json()
        assert final["status"] == "closed" and final["outcome"] == 0.75
        assert final["consumed"] + final["reserved"] + final["free"] == final["ceiling"]
        shown = await client.get(f"{BASE}/{rid}", headers=h)
        assert shown.json()["status"] == "closed" and shown.json()["request_id"] == rid
        check_error(
            await client.post(
                f"{BASE}/{rid}/begin", json={"agent": "reasoner", "input_tokens": 1}, headers=h
            ),
            409,
            "request_closed",
        )

    run(gateway, body)


def test_a_child_budget_is_carved_from_its_parent(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        rid = await open_request(client, "acme")
        kid = await client.post(
            BASE, json={"parent": rid, "name": "research", "ceiling": 3000}, headers=h
        )
        assert kid.status_code == 201, kid.text
        assert kid.json()["parent_id"] == rid and kid.json()["ceiling"] == 3000
        kid_id = kid.json()["request_id"]
        assert kid_id == f"{rid}::research"
        parent = (await client.get(f"{BASE}/{rid}", headers=h)).json()
        assert parent["children_reserved"] == 3000
        too_much = await client.post(
            BASE, json={"parent": rid, "name": "greedy", "ceiling": 10**9}, headers=h
        )
        error = check_error(too_much, 409, "child_budget_exceeded")
        assert error["parent_id"] == rid and error["requested"] == 10**9
        assert (await client.get(f"{BASE}/{rid}", headers=h)).json() == parent  # unchanged

    run(gateway, body)


def test_tenants_cannot_see_each_others_requests(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        rid = await open_request(client, "acme", request_id="shared-name")
        begin = {"agent": "reasoner", "input_tokens": 10}
        for method, path, payload in (
            ("GET", f"{BASE}/{rid}", None),
            ("POST", f"{BASE}/{rid}/begin", begin),
            ("POST", f"{BASE}/{rid}/close", None),
            ("POST", BASE, {"parent": rid, "ceiling": 10}),
        ):
            answer = await client.request(method, path, json=payload, headers=auth("globex"))
            error = check_error(answer, 404, "unknown_request")
            assert error["request_id"] == rid  # its own namespace: no tenant prefix shown
            assert "acme" not in answer.text
        # globex may use the same id for a request of its own, a different one
        assert await open_request(client, "globex", request_id="shared-name") == rid
        acme = (await client.get(f"{BASE}/{rid}", headers=auth("acme"))).json()
        assert acme["status"] == "open" and acme["reserved"] == 0
        check_error(
            await client.post(BASE, json={"request_id": "shared-name"}, headers=auth("acme")),
            409,
            "duplicate_request",
        )

    run(gateway, body)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer x"},
    ],
)
def test_calls_without_a_valid_key_are_refused(gateway: Gateway, headers: dict[str, str]) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        error = check_error(
            await client.post(BASE, json={}, headers=headers), 401, "unauthenticated"
        )
        assert set(error) == {"code", "message", "reason"}

    run(gateway, body)


def _settled(gateway: Gateway, rid: str) -> list[Any]:
    async def events() -> list[Any]:
        return await gateway.store.aevents(f"acme/{rid}")

    return [e for e in asyncio.run(events()) if e.kind in ("finish", "release")]


def test_an_idempotent_retry_of_finish_settles_once(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> tuple[str, list[httpx.Response]]:
        h = auth("acme")
        rid = await open_request(client, "acme")
        grant = (
            await client.post(
                f"{BASE}/{rid}/begin", json={"agent": "reasoner", "input_tokens": 500}, headers=h
            )
        ).json()
        finish = {
            "grant": grant["grant"],
            "input_tokens": 500,
            "output_tokens": 40,
        }
        keyed = {**h, "Idempotency-Key": "finish-1"}
        answers = [
            await client.post(f"{BASE}/{rid}/finish", json=finish, headers=keyed) for _ in range(3)
        ]
        # the key's record is the tenant's own: another tenant's same key is another call
        check_error(
            await client.post(
                f"{BASE}/{rid}/finish",
                json=finish,
                headers={**auth("globex"), "Idempotency-Key": "finish-1"},
            ),
            404,
            "unknown_request",
        )
        return rid, answers

    rid, answers = run(gateway, body)
    assert {a.status_code for a in answers} == {200}
    assert answers[0].content == answers[1].content == answers[2].content
    assert answers[0].json()["summary"]["consumed"] == 540
    assert len(_settled(gateway, rid)) == 1  # the ledger saw one settlement


def test_an_idempotency_key_with_another_body_is_refused(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        h = {**auth("acme"), "Idempotency-Key": "open-1"}
        first = await client.post(BASE, json={"ceiling": 1000}, headers=h)
        again = await client.post(BASE, json={"ceiling": 1000}, headers=h)
        assert first.status_code == again.status_code == 201
        assert first.json()["request_id"] == again.json()["request_id"]
        error = check_error(
            await client.post(BASE, json={"ceiling": 2000}, headers=h),
            422,
            "idempotency_key_reused",
        )
        assert error["key"] == "open-1" and error["operation"] == "open"
        bad = check_error(
            await client.post(BASE, json={}, headers={**auth("acme"), "Idempotency-Key": "a b"}),
            422,
            "invalid_body",
        )
        assert bad["argument"] == "header.Idempotency-Key"

    run(gateway, body)


def test_a_refusal_is_the_first_outcome_too(gateway: Gateway) -> None:
    """A retried begin that was refused stays refused, even after budget freed up."""

    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        rid = await open_request(client, "acme", ceiling=1000)
        ask = {"agent": "reasoner", "input_tokens": 900}
        taken = []
        for _ in range(10):  # take grants until the request can give no more
            answer = await client.post(f"{BASE}/{rid}/begin", json=ask, headers=h)
            if answer.status_code != 200:
                break
            taken.append(answer.json())
        keyed = {**h, "Idempotency-Key": "late"}
        first = await client.post(f"{BASE}/{rid}/begin", json=ask, headers=keyed)
        error = check_error(first, 409, "budget_exceeded")
        assert error["agent"] == "reasoner" and error["requested"] > error["available"]
        for grant in taken:
            ref = {"grant": grant["grant"]}
            freed = await client.post(f"{BASE}/{rid}/release", json=ref, headers=h)
        assert freed.json()["summary"]["free"] == 1000
        again = await client.post(f"{BASE}/{rid}/begin", json=ask, headers=keyed)
        assert (again.status_code, again.content) == (first.status_code, first.content)
        fresh = await client.post(f"{BASE}/{rid}/begin", json=ask, headers=h)
        assert fresh.status_code == 200

    run(gateway, body)


def test_a_concurrent_duplicate_gets_in_progress(gateway: Gateway) -> None:
    tenant = gateway.authenticate(auth("acme"))

    async def main() -> tuple[Outcome, ApportionError | None, Outcome]:
        started, release = asyncio.Event(), asyncio.Event()
        calls = 0

        async def slow() -> Outcome:
            nonlocal calls
            calls += 1
            started.set()
            await release.wait()
            return Outcome(200, b'{"done": true}')

        first = asyncio.create_task(gateway.idempotent(tenant, "k", "finish", slow))
        await started.wait()
        refused: ApportionError | None = None
        try:
            await gateway.idempotent(tenant, "k", "finish", slow)
        except ApportionError as exc:
            refused = exc
        release.set()
        done = await first
        replay = await gateway.idempotent(tenant, "k", "finish", slow)
        assert calls == 1
        return done, refused, replay

    done, refused, replay = asyncio.run(main())
    assert refused is not None
    status, body = error_response(refused)
    assert (status, body["error"]["code"]) == (409, "in_progress")
    assert replay == done


BAD_CALLS: list[tuple[str, str, Any, int, str, str | None]] = [
    # method, path (REQ: an open request), body, status, code, the field named
    ("POST", BASE, b"{not json", 400, "invalid_json", "body"),
    ("POST", BASE, [1, 2], 422, "invalid_body", "body"),
    ("POST", BASE, {"ceiling": "20000"}, 422, "invalid_body", "ceiling"),
    ("POST", BASE, {"ceiling": 0}, 422, "invalid_ceiling", "ceiling"),
    ("POST", BASE, {"ceiling": -5}, 422, "invalid_ceiling", "ceiling"),
    ("POST", BASE, {"ceiling": 10**30}, 422, "invalid_ceiling", "ceiling"),
    ("POST", BASE, {"surprise": 1}, 422, "invalid_body", "surprise"),
    ("POST", BASE, {"pipeline": "nope"}, 404, "unknown_pipeline", None),
    ("POST", BASE, {"features": {"m": "x"}}, 422, "invalid_body", "features.m"),
    ("POST", BASE, {"cost_ceiling": -1}, 422, "invalid_price", "ceiling_usd"),
    ("POST", BASE, {"pool": "nowhere"}, 404, "unknown_pool", None),
    ("POST", BASE, {"request_id": "has/slash"}, 422, "invalid_body", "request_id"),
    ("POST", BASE, {"parent": "REQ", "share": 7.0}, 422, "invalid_argument", "share"),
    ("POST", BASE, {"parent": "REQ", "ceiling": 9, "pool": "p"}, 422, "invalid_argument", "pool"),
    ("POST", BASE, {"parent": "REQ", "ceiling": 9, "request_id": "x"}, 422, "invalid_argument",
     "request_id"),
    ("POST", BASE, {"ceiling": 9, "name": "sub"}, 422, "invalid_argument", "name"),
    ("POST", f"{BASE}/REQ/begin", {}, 422, "invalid_body", "agent"),
    ("POST", f"{BASE}/REQ/begin", {"agent": "ghost", "input_tokens": 1}, 404, "unknown_agent",
     None),
    ("POST", f"{BASE}/REQ/begin", {"agent": "reasoner", "input_tokens": -1}, 422,
     "invalid_token_count", "input_tokens"),
    ("POST", f"{BASE}/REQ/finish", {"grant": "g1.e30.AAAA", "input_tokens": 1,
     "output_tokens": 1}, 403, "grant_invalid", "grant"),
    ("POST", f"{BASE}/REQ/finish", {"grant": 1}, 422, "invalid_body", "grant"),
    ("POST", f"{BASE}/REQ/extend", {"grant": "", "output_tokens": 1}, 422,
     "invalid_body", "grant"),
    ("POST", f"{BASE}/REQ/score", {"outcome": "good"}, 422, "invalid_body", "outcome"),
    ("POST", f"{BASE}/REQ/close", {"status": "expired"}, 422, "invalid_body", "status"),
    ("GET", f"{BASE}/no-such-request", None, 404, "unknown_request", None),
    ("GET", f"{BASE}/..%2F..%2Fetc", None, 404, "not_found", None),
    ("GET", f"{BASE}/a%00b", None, 404, "unknown_request", None),
    ("GET", "/v1/nothing-here", None, 404, "not_found", None),
    ("DELETE", BASE, None, 405, "method_not_allowed", None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "payload", "status", "code", "field"), BAD_CALLS)
def test_every_error_is_json_with_a_code_and_fields(
    gateway: Gateway,
    method: str,
    path: str,
    payload: Any,
    status: int,
    code: str,
    field: str | None,
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        rid = await open_request(client, "acme")
        before = (await client.get(f"{BASE}/{rid}", headers=h)).json()
        if isinstance(payload, dict):
            sent = {k: (rid if v == "REQ" else v) for k, v in payload.items()}
        else:
            sent = payload
        options: dict[str, Any] = {"headers": h}
        if isinstance(sent, bytes):
            options["content"] = sent
        elif sent is not None:
            options["json"] = sent
        answer = await client.request(method, path.replace("REQ", rid), **options)
        error = check_error(answer, status, code)
        if field is not None:
            assert field in (error.get("argument"), error.get("field")), error
        assert (await client.get(f"{BASE}/{rid}", headers=h)).json() == before  # unchanged

    run(gateway, body)


def test_a_body_over_the_limit_is_refused_with_413(tmp_path: Any) -> None:
    config = ServeConfig.from_yaml(write_config(tmp_path, extra="max_body_bytes: 2048\n"))

    async def body(client: httpx.AsyncClient) -> None:
        big = json.dumps({"ceiling": 100, "features": {f"f{i}": i for i in range(400)}})
        check_error(
            await client.post(BASE, content=big, headers=auth("acme")), 413, "body_too_large"
        )

    run(Gateway(config), body)


def test_every_error_class_has_a_stable_code() -> None:
    import apportion.errors as e
    import apportion.serve.errors as se

    classes = [
        c
        for module in (e, se)
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, e.ApportionError)
    ]
    codes = [code for code, _ in CODES.values()]
    assert len(codes) == len(set(codes))
    for cls in classes:
        if cls in CODES:
            continue
        assert any(base in CODES for base in cls.__mro__[1:]), cls
    assert all(400 <= status < 600 for _, status in CODES.values())


def test_the_docs_page_loads_nothing_from_elsewhere(gateway: Gateway) -> None:
    async def body(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
        page = await client.get("/docs")
        document = await client.get("/openapi.json")
        assert page.status_code == document.status_code == 200
        return page.text, document.json()

    page, document = run(gateway, body)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "src=" not in page and "url(" not in page
    for path in document["paths"]:
        assert path in page
    assert "/v1/budget/requests/{request_id}/finish" in document["paths"]


def test_open_mode_needs_no_key() -> None:
    async def body(client: httpx.AsyncClient) -> None:
        answer = await client.post(BASE, json={"ceiling": 500})
        assert answer.status_code == 201, answer.text
        rid = answer.json()["request_id"]
        assert (await client.get(f"{BASE}/{rid}")).json()["ceiling"] == 500

    run(Gateway(), body)


def test_a_pooled_request_and_a_cost_ceiling(gateway: Gateway) -> None:
    from apportion.pools import Pool

    gateway.store.define_pool(Pool("acme/team", 5000, math.inf))  # pools are per tenant

    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        first = await client.post(BASE, json={"ceiling": 4000, "pool": "team"}, headers=h)
        assert first.status_code == 201, first.text
        over = await client.post(BASE, json={"ceiling": 4000, "pool": "team"}, headers=h)
        error = check_error(over, 429, "pool_exhausted")
        assert error["pool"] == "team" and error["available"] == 1000
        assert "acme" not in over.text
        other = await client.post(
            BASE, json={"ceiling": 10, "pool": "team"}, headers=auth("globex")
        )
        assert check_error(other, 404, "unknown_pool")["pool"] == "team"  # not globex's pool
        priced = await client.post(BASE, json={"ceiling": 4000, "cost_ceiling": 2.5}, headers=h)
        assert priced.status_code == 201, priced.text
        assert priced.json()["cost_ceiling"] == 2.5

    run(gateway, body)


def test_two_pipelines_each_request_on_its_own(tmp_path: Any) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"
    (tmp_path / "pipeline.yaml").write_text(example.read_text())
    extra = (
        "pipelines:\n"
        "  support: {path: pipeline.yaml, policy: uniform, ceiling: 3000}\n"
        "  seed: {workload: " + str(SEED) + "}\n"
    )
    gateway = Gateway(ServeConfig.from_yaml(write_config(tmp_path, extra=extra)))

    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        small = (await client.post(BASE, json={"pipeline": "support"}, headers=h)).json()
        assert small["ceiling"] == 3000 and set(small["summary"]["agents"]) == {
            "triage",
            "reasoner",
            "formatter",
        }
        seed = (await client.post(BASE, json={"pipeline": "seed"}, headers=h)).json()
        assert "intake" in seed["summary"]["agents"]
        for rid, agent, other in (
            (small["request_id"], "triage", "intake"),
            (seed["request_id"], "intake", "triage"),
        ):
            grant = await client.post(
                f"{BASE}/{rid}/begin", json={"agent": agent, "input_tokens": 50}, headers=h
            )
            assert grant.status_code == 200, grant.text
            check_error(
                await client.post(
                    f"{BASE}/{rid}/begin", json={"agent": other, "input_tokens": 50}, headers=h
                ),
                404,
                "unknown_agent",
            )

    run(gateway, body)


def test_an_expired_request_teaches_and_reaches_its_own_pipeline(tmp_path: Any) -> None:
    """A request no client closed: the gateway's reap hands it to its pipeline's policy
    and telemetry, whichever pipeline's controller reaped it."""
    from apportion.telemetry import flush
    from apportion.telemetry.sql import open_database

    example = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"
    (tmp_path / "pipeline.yaml").write_text(example.read_text())
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    extra = (
        f"telemetry: {url}\n"
        "pipelines:\n"
        "  seed: {workload: " + str(SEED) + "}\n"
        "  support: {path: pipeline.yaml, policy: elastic, ceiling: 30000}\n"
    )
    now = [1_000.0]
    gateway = Gateway(
        ServeConfig.from_yaml(write_config(tmp_path, extra=extra)), clock=lambda: now[0]
    )

    async def body(client: httpx.AsyncClient) -> str:
        h = auth("acme")
        opened = {"pipeline": "support", "features": {"messages": 12.0}}
        rid = (await client.post(BASE, json=opened, headers=h)).json()["request_id"]
        begin = {"agent": "triage", "input_tokens": 300}
        grant = (await client.post(f"{BASE}/{rid}/begin", json=begin, headers=h)).json()
        done = {"grant": grant["grant"], "input_tokens": 300, "output_tokens": 44}
        assert (await client.post(f"{BASE}/{rid}/finish", json=done, headers=h)).is_success
        return rid  # never closed

    rid = run(gateway, body)
    now[0] += 601  # past the request's TTL
    assert gateway.reap() >= 1
    assert gateway.store.get(f"acme/{rid}").status == "expired"
    policy: Any = gateway.controllers["support"].policy
    triage = policy.needs(gateway.controllers["support"].pipeline).document()["output"]["triage"]
    assert triage["count"] + len(triage["pending"]) == 1
    assert triage["pending"][-1][0][:2] == [1.0, 12.0]  # with the features it opened with
    assert flush(60)
    stored = open_database(url).load().requests[f"acme/{rid}"]
    assert (stored.pipeline, stored.status, stored.consumed) == ("support", "expired", 344)
    assert stored.features == {"messages": 12.0}


def test_two_pipelines_with_the_same_agents_are_refused(tmp_path: Any) -> None:
    extra = f"pipelines:\n  a: {{workload: {SEED}}}\n  b: {{workload: {SEED}}}\n"
    with pytest.raises(SpecError) as caught:
        ServeConfig.from_yaml(write_config(tmp_path, extra=extra))
    assert caught.value.key == "pipelines.b" and caught.value.line is not None


def test_a_streamed_body_over_the_limit_is_refused_with_413(tmp_path: Any) -> None:
    config = ServeConfig.from_yaml(write_config(tmp_path, extra="max_body_bytes: 2048\n"))

    async def chunks() -> Any:
        yield b'{"ceiling": 100, "features": {'
        for i in range(300):
            yield f'"f{i}": {i}, '.encode()
        yield b'"end": 0}}'

    async def body(client: httpx.AsyncClient) -> None:
        answer = await client.post(BASE, content=chunks(), headers=auth("acme"))
        check_error(answer, 413, "body_too_large")

    run(Gateway(config), body)


def test_closed_requests_reach_the_configured_telemetry(tmp_path: Any) -> None:
    from apportion.telemetry import flush
    from apportion.telemetry.sql import open_database

    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    config = ServeConfig.from_yaml(write_config(tmp_path, extra=f"telemetry: {url}\n"))

    async def body(client: httpx.AsyncClient) -> str:
        h = auth("acme")
        rid = await open_request(client, "acme", features={"messages": 12.0})
        grant = (
            await client.post(
                f"{BASE}/{rid}/begin", json={"agent": "intake", "input_tokens": 300}, headers=h
            )
        ).json()
        await client.post(
            f"{BASE}/{rid}/finish",
            json={
                "grant": grant["grant"],
                "input_tokens": 300,
                "output_tokens": 40,
            },
            headers=h,
        )
        await client.post(f"{BASE}/{rid}/close", headers=h)
        return rid

    rid = run(Gateway(config), body)
    assert flush(60)
    stored = open_database(url).load().requests
    assert list(stored) == [f"acme/{rid}"]  # the operator's telemetry names the tenant
    assert stored[f"acme/{rid}"].consumed == 340 and stored[f"acme/{rid}"].status == "closed"
    assert stored[f"acme/{rid}"].features == {"messages": 12.0}  # as it opened


def test_a_child_left_open_and_a_refused_begin_reach_telemetry(tmp_path: Any) -> None:
    """Every call takes a handle of its own: the close still records the whole tree."""
    from apportion.telemetry import flush
    from apportion.telemetry.sql import open_database

    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    config = ServeConfig.from_yaml(write_config(tmp_path, extra=f"telemetry: {url}\n"))

    async def body(client: httpx.AsyncClient) -> tuple[str, str]:
        h = auth("acme")
        rid = await open_request(client, "acme", ceiling=1_000)
        kid = await client.post(
            BASE, json={"parent": rid, "name": "research", "share": 1.0}, headers=h
        )
        assert kid.status_code == 201, kid.text
        kid_id = kid.json()["request_id"]
        begin = {"agent": "intake", "input_tokens": 300}
        grant = (await client.post(f"{BASE}/{kid_id}/begin", json=begin, headers=h)).json()
        done = {"grant": grant["grant"], "input_tokens": 300, "output_tokens": 40}
        await client.post(f"{BASE}/{kid_id}/finish", json=done, headers=h)
        refused = await client.post(f"{BASE}/{rid}/begin", json=begin, headers=h)
        check_error(refused, 409, "budget_exceeded")  # the child drew it all
        await client.post(f"{BASE}/{rid}/close", headers=h)  # the child left open
        return rid, kid_id

    rid, kid_id = run(Gateway(config), body)
    assert flush(60)
    stored = open_database(url).load()
    assert sorted(stored.requests) == sorted([f"acme/{rid}", f"acme/{kid_id}"])
    assert stored.requests[f"acme/{rid}"].refused == {"intake": 1}
    assert [c.used for c in stored.calls if c.request_id == f"acme/{kid_id}"] == [340]


def test_the_app_mounts_in_another_asgi_app() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/budgets", app=create_app())])

    async def main() -> None:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            opened = await client.post("/budgets/v1/budget/requests", content=b'{"ceiling": 700}')
            assert opened.status_code == 201, opened.text
            rid = opened.json()["request_id"]
            shown = await client.get(f"/budgets/v1/budget/requests/{rid}")
            assert shown.json()["ceiling"] == 700
            assert (await client.get("/budgets/docs")).status_code == 200

    asyncio.run(main())


class _LosingStore(MemoryStore):
    """Carries each ``open`` and ``begin`` out, then loses its reply, ``lose`` times."""

    def __init__(self, lose: int) -> None:
        super().__init__()
        self.left = {"open": lose, "begin": lose}
        self.ops: list[str | None] = []

    def _lost(self, name: str, result: Any, op_id: str | None) -> Any:
        self.ops.append(op_id)
        if self.left[name] > 0:
            self.left[name] -= 1
            raise StoreOutcomeUnknown(self.url, "connection closed by server")
        return result

    def open(self, *args: Any, **kwargs: Any) -> Any:
        return self._lost("open", super().open(*args, **kwargs), kwargs.get("op_id"))

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        return self._lost("begin", super().begin(*args, **kwargs), kwargs.get("op_id"))


def test_a_keyed_retry_after_a_lost_reply_gets_the_first_outcome(
    tenants_config: ServeConfig,
) -> None:
    """The store ran the call but its reply was lost (503): the retry with the key opens
    the same request and gets the same grant, applied once (operation ids from the key)."""
    store = _LosingStore(lose=3)  # every attempt of the controller's first try
    gateway = Gateway(tenants_config, store=store)
    for controller in gateway.controllers.values():
        controller._config.retry = StoreRetry.immediate(3)

    async def body(client: httpx.AsyncClient) -> tuple[list[httpx.Response], str]:
        opened = [
            await client.post(
                BASE, json={"ceiling": 5_000}, headers={**auth("acme"), "Idempotency-Key": "o-1"}
            )
            for _ in range(2)
        ]
        rid = opened[1].json()["request_id"]
        keyed = {**auth("acme"), "Idempotency-Key": "b-1"}
        ask = {"agent": "reasoner", "input_tokens": 500}
        begun = [await client.post(f"{BASE}/{rid}/begin", json=ask, headers=keyed) for _ in "ab"]
        return opened + begun, rid

    (open_lost, opened, begin_lost, begun), rid = run(gateway, body)
    check_error(open_lost, 503, "store_unavailable")
    check_error(begin_lost, 503, "store_unavailable")
    assert opened.status_code == 201 and begun.status_code == 200, begun.text
    kinds = [e.kind for e in store.events(f"acme/{rid}")]
    assert kinds == ["open", "begin"]  # each carried out once
    assert (
        store.get(f"acme/{rid}").reserved
        == begun.json()["context_tokens"] + begun.json()["output_tokens"]
    )
    opens, begins = store.ops[:4], store.ops[4:]
    assert len(set(opens)) == 1 and len(set(begins)) == 1 and opens[0] != begins[0]


def test_the_policy_learns_from_calls_made_over_http(gateway: Gateway) -> None:
    """Each call takes a handle of its own; the close reads them all from the store."""
    agents = ("intake", "retriever", "reasoner", "critic", "formatter")

    async def body(client: httpx.AsyncClient) -> None:
        h = auth("acme")
        for i in range(3):
            rid = await open_request(client, "acme", features={"messages": 10.0 * (i + 1)})
            for agent in agents:
                begin = {"agent": agent, "input_tokens": 700}
                grant = (await client.post(f"{BASE}/{rid}/begin", json=begin, headers=h)).json()
                done = {"grant": grant["grant"], "input_tokens": 700, "output_tokens": 333}
                await client.post(f"{BASE}/{rid}/finish", json=done, headers=h)
            closed = (await client.post(f"{BASE}/{rid}/close", headers=h)).json()
            assert closed["statuses"] == {"completed": 5}  # every call, not the close's own

    run(gateway, body)
    (controller,) = gateway.controllers.values()
    policy: Any = controller.policy
    assert policy.name == "elastic"
    outputs = policy.needs(controller.pipeline).document()["output"]
    for agent in agents:  # each saw three answers of 333 tokens ...
        seen = outputs[agent]["count"] + len(outputs[agent]["pending"])
        assert seen == 3 and outputs[agent]["pending"][-1][1] == 333.0
        assert outputs[agent]["pending"][-1][0][:2] == [1.0, 30.0]  # ... with their features
