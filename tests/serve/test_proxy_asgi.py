"""The proxy's logic over ASGI (in process): budgets, headers, streams, errors, budget tokens.

The upstream is the local OpenAI-protocol server on a loopback port, reached through
LiteLLM; the proxy runs in a Starlette app called with ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import proxy_helpers
import pytest
from proxy_helpers import (
    ACME,
    KEY,
    MODEL,
    asgi_client,
    billed,
    budget_headers,
    proxy_app,
    words,
)

from apportion import UnknownRequest
from apportion.serve.proxy import FEATURES
from apportion.testing.openai_server import OpenAIServer, Reply
from apportion.tokens import counter_for
from policy_helpers import FixedPolicy, NoMore

QUESTION = [{"role": "user", "content": "Count for me, please."}]
EIGHT = "one two three four five six seven eight"


@pytest.fixture(autouse=True, params=["litellm", "direct"])
def sender(request, monkeypatch):
    """Every test runs with both senders: LiteLLM (the default) and the direct one."""
    monkeypatch.setitem(proxy_helpers.SENDER, "direct", request.param == "direct")
    return request.param


@pytest.fixture
def server():
    with OpenAIServer(default=EIGHT) as running:
        yield running


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def post(app: Any, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    async with asgi_client(app) as client:
        return await client.post(path, json=body, headers=headers)


def chat(messages: Any = QUESTION, **params: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, **params}


async def summary(gateway: Any, request_id: str) -> Any:
    return await gateway.summary(ACME, request_id)


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """``(event, data)`` of each server-sent event; comments as ``(":", text)``."""
    out: list[tuple[str | None, str]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(":"):
            out.append((":", block[1:].strip()))
            continue
        event = None
        data = []
        for line in block.splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


# ---------------------------------------------------------------- budgeted calls


def test_the_upstream_gets_the_grant_as_cap_and_the_messages_fitted(server):
    app, proxy = proxy_app(server, FixedPolicy(context=40, output=12))
    long = [
        {"role": "user", "content": words(300, "old")},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "Now count to three."},
    ]

    async def go() -> Any:
        response = await post(
            app, "/v1/chat/completions", chat(long), budget_headers("run-1", "planner", 2_000)
        )
        return response, await summary(proxy, "run-1")

    response, after = run(go())
    assert response.status_code == 200, response.text
    sent = server.requests[-1]
    assert sent["max_tokens"] == 12
    assert counter_for(MODEL).count_messages(sent["messages"]) <= 40
    assert sent["messages"][-1]["content"] == "Now count to three."
    assert response.json()["choices"][0]["message"]["content"].startswith("one two")
    headers = response.headers
    assert headers["Apportion-Request"] == "run-1"
    assert headers["Apportion-Status"] == "completed"
    assert int(headers["Apportion-Used"]) == billed(server) == after.consumed
    assert int(headers["Apportion-Remaining"]) == after.free == 2_000 - billed(server)
    assert int(headers["Apportion-Granted"]) >= 12
    assert KEY not in response.text


def test_a_cut_answer_is_extended_and_settled_once(server):
    app, proxy = proxy_app(server, FixedPolicy(output=5, extra=5))

    async def go() -> Any:
        headers = budget_headers("run-2", "writer", 1_000)
        response = await post(app, "/v1/chat/completions", chat(), headers)
        return response, await summary(proxy, "run-2")

    response, after = run(go())
    assert response.status_code == 200, response.text
    assert [r.get("max_tokens") for r in server.requests] == [5, 5]
    assert response.json()["choices"][0]["message"]["content"] == EIGHT
    assert response.headers["Apportion-Status"] == "completed"
    counted = counter_for(MODEL).count_messages(QUESTION)
    granted, used = (
        int(response.headers["Apportion-Granted"]),
        int(response.headers["Apportion-Used"]),
    )
    assert granted > counted + 5 + 5  # the first grant, the extension and its resent context
    assert used <= granted
    assert int(response.headers["Apportion-Used"]) == billed(server) == after.consumed
    assert after.agents["writer"].calls == 1 and after.reserved == 0


def test_a_streamed_chat_is_passed_as_sse_extended_and_settled(server):
    app, proxy = proxy_app(server, FixedPolicy(output=5, extra=5))

    async def go() -> Any:
        headers = budget_headers("run-3", "writer", 1_000)
        response = await post(app, "/v1/chat/completions", chat(stream=True), headers)
        return response, await summary(proxy, "run-3")

    response, after = run(go())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["Apportion-Status"] == "open"
    events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    kind, figures = events[-2]
    assert kind == ":" and figures.startswith("apportion ")
    figures = json.loads(figures.removeprefix("apportion "))
    chunks = [json.loads(data) for kind, data in events[:-2]]
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    assert text == EIGHT
    assert [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")][-1] == "stop"
    assert figures == {
        "granted": figures["granted"],
        "used": billed(server),
        "status": "completed",
        "remaining": 1_000 - billed(server),
    }
    assert after.consumed == billed(server) and after.reserved == 0
    assert len(server.requests) == 2


def test_responses_plain_and_streamed(server):
    app, proxy = proxy_app(server, FixedPolicy(output=40))

    async def go() -> Any:
        headers = budget_headers("run-4", "planner", 1_000)
        body = {"model": MODEL, "input": "Count, please.", "instructions": "Be brief."}
        plain = await post(app, "/v1/responses", body, headers)
        streamed = await post(app, "/v1/responses", {**body, "stream": True}, headers)
        return plain, streamed, await summary(proxy, "run-4")

    plain, streamed, after = run(go())
    assert plain.status_code == 200, plain.text
    assert plain.json()["output"][0]["content"][0]["text"] == EIGHT
    assert server.requests[0]["max_output_tokens"] == 40
    assert server.paths == ["/responses", "/responses"]
    events = sse_events(streamed.text)
    assert [e for e, _ in events if e not in (":",)][-1] == "response.completed"
    assert events[-1][0] == ":"
    completed = json.loads(events[-2][1])
    assert completed["response"]["usage"]["output_tokens"] == 8
    assert after.consumed == billed(server) and after.reserved == 0
    assert after.agents["planner"].calls == 2


def test_later_calls_find_the_request_and_its_id_is_checked(server):
    app, _proxy = proxy_app(server, FixedPolicy(output=20))

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            path = "/v1/chat/completions"
            return [
                await client.post(path, json=chat(), headers=budget_headers("r", "planner", 500)),
                await client.post(path, json=chat(), headers=budget_headers("r", "writer")),
                await client.post(path, json=chat(), headers=budget_headers("r", "checker", 500)),
                await client.post(path, json=chat(), headers=budget_headers("nope", "writer")),
            ]

    first, second, third, unknown = run(go())
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 200]
    remaining = [int(r.headers["Apportion-Remaining"]) for r in (first, second, third)]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 500 - billed(server)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_request"
    assert len(server.requests) == 3


def test_a_child_budget_by_parent_header(server):
    app, proxy = proxy_app(server, FixedPolicy(output=20))

    async def go() -> Any:
        async with asgi_client(app) as client:
            path = "/v1/chat/completions"
            await client.post(path, json=chat(), headers=budget_headers("root", "planner", 900))
            kid = budget_headers("sub", "writer", 300, Apportion_Parent="root")
            first = await client.post(path, json=chat(), headers=kid)
            again = await client.post(path, json=chat(), headers=kid)
        return first, again, await summary(proxy, "root::sub"), await summary(proxy, "root")

    first, again, child, root = run(go())
    assert first.status_code == again.status_code == 200, first.text
    assert first.headers["Apportion-Request"] == again.headers["Apportion-Request"] == "root::sub"
    assert child.ceiling == 300 and child.parent_id == "acme/root"  # the store's id
    assert child.agents["writer"].calls == 2
    assert root.reserved == 300  # the open child's draw


# ---------------------------------------------------------------- refusals


def test_the_proxy_behind_a_root_path_is_served_by_its_fast_path(server, monkeypatch):
    """Behind ``--root-path /gw`` the proxy's path arrives as ``/gw/v1/...``: still its route."""
    import httpx

    from apportion.serve.proxy import FastPath

    guarded = FastPath._guarded
    fast: list[str] = []

    async def counted(route: Any, scope: Any, receive: Any, send: Any) -> None:
        fast.append(scope["path"])
        await guarded(route, scope, receive, send)

    monkeypatch.setattr(FastPath, "_guarded", staticmethod(counted))
    app, proxy = proxy_app(server)

    async def go() -> Any:
        transport = httpx.ASGITransport(app=app, root_path="/gw")
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {proxy_helpers.TENANT_KEYS['acme']}"},
        ) as client:
            answered = await client.post(
                "/gw/v1/chat/completions", json=chat(), headers=budget_headers("r", "planner", 900)
            )
            health = await client.get("/gw/healthz")
        return answered, health, await summary(proxy, "r")

    answered, health, after = run(go())
    assert answered.status_code == 200, answered.text
    assert int(answered.headers["Apportion-Used"]) == after.consumed == billed(server)
    assert health.status_code == 200  # the rest: FastAPI's routes, as before
    assert fast == ["/gw/v1/chat/completions"]  # the proxied call, ahead of FastAPI


def test_calls_without_budget_headers_are_refused_by_default(server):
    app, _ = proxy_app(server)
    response = run(post(app, "/v1/chat/completions", chat(), {}))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "budget_headers_missing" and error["param"] == "Apportion-Request"
    assert server.requests == []


def test_pass_through_mode_forwards_unbudgeted_calls(server):
    app, _ = proxy_app(server, unbudgeted="pass")

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            return [
                await client.post("/v1/chat/completions", json=chat(max_tokens=3)),
                await client.post("/v1/chat/completions", json=chat(stream=True)),
            ]

    plain, streamed = run(go())
    assert plain.status_code == 200 and "Apportion-Request" not in plain.headers
    assert plain.json()["choices"][0]["message"]["content"] == "one two three"
    assert server.requests[0]["max_tokens"] == 3  # the caller's own, untouched
    assert "max_tokens" not in server.requests[1]
    assert sse_events(streamed.text)[-1] == (None, "[DONE]")


def test_a_refused_budget_is_an_openai_style_402_with_the_fields(server):
    app, proxy = proxy_app(server, NoMore())
    response = run(
        post(app, "/v1/chat/completions", chat(), budget_headers("tight", "writer", 100))
    )
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "budget_error"
    assert error["agent"] == "writer" and error["available"] == 100
    assert error["requested"] > 100 and error["message"]
    assert response.headers["Apportion-Request"] == "tight"
    assert response.headers["Apportion-Status"] == "refused"
    assert (response.headers["Apportion-Used"], response.headers["Apportion-Remaining"]) == (
        "0",
        "100",
    )
    assert server.requests == []
    after = run(summary(proxy, "tight"))
    assert (after.consumed, after.reserved) == (0, 0)


@pytest.mark.parametrize(
    ("headers", "body", "status", "param"),
    [
        (
            {"Apportion-Request": "x", "Apportion-Agent": "writer", "Apportion-Ceiling": "-5"},
            chat(),
            400,
            "Apportion-Ceiling",
        ),
        (
            {"Apportion-Request": "x", "Apportion-Agent": "writer", "Apportion-Ceiling": "1e3"},
            chat(),
            400,
            "Apportion-Ceiling",
        ),
        (  # a digit, to str.isdigit, but not to int(): found by the OpenAPI fuzz
            {"Apportion-Request": "x", "Apportion-Agent": "writer", "Apportion-Ceiling": b"\xb2"},
            chat(),
            400,
            "Apportion-Ceiling",
        ),
        ({"Apportion-Request": "x", "Apportion-Ceiling": "100"}, chat(), 400, "Apportion-Agent"),
        *(
            (budget_headers("x", "writer", 100, Apportion_Features=bad), chat(), 400, FEATURES)
            for bad in (
                "messages",
                "messages=forty",
                "messages=inf",
                "messages=1, messages=2",
                "=3",
                "a=1,,b=2",
                ",".join(f"f{i}=1" for i in range(65)),
            )
        ),
        ({"Apportion-Agent": "writer"}, chat(), 400, "Apportion-Request"),
        (budget_headers("x", "writer", 100), {"messages": QUESTION}, 400, "model"),
        (budget_headers("x", "writer", 100), {"model": MODEL}, 400, "messages"),
        (budget_headers("x", "writer", 100), chat(stream="yes"), 400, "stream"),
        (budget_headers("x", "nobody", 100), chat(), 404, None),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(
    server, headers, body, status, param
):
    app, _proxy = proxy_app(server)
    response = run(post(app, "/v1/chat/completions", body, headers))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if param is None:
        assert error["code"] == "unknown_agent" and error["agent"] == "nobody"
    assert server.requests == []


def test_features_in_a_header_open_the_request_with_them(server):
    """Every later call of the request is budgeted from them: they are kept in the store."""
    app, gateway = proxy_app(server)
    headers = budget_headers("f", "writer", 5_000, Apportion_Features="messages=40, doc=1.5e3")
    response = run(post(app, "/v1/chat/completions", chat(), headers))
    assert response.status_code == 200, response.text
    assert gateway.store.features("acme/f") == {"messages": 40.0, "doc": 1500.0}
    later = run(post(app, "/v1/chat/completions", chat(), budget_headers("f", "writer")))
    assert later.status_code == 200, later.text
    assert gateway.store.features("acme/f") == {"messages": 40.0, "doc": 1500.0}


def test_malformed_json_and_a_body_over_the_limit(server):
    app, _ = proxy_app(server, max_body_bytes=1_000)

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            headers = budget_headers("x", "writer", 100)
            return [
                await client.post("/v1/chat/completions", content=b"{nope", headers=headers),
                await client.post("/v1/chat/completions", content=b"[1, 2]", headers=headers),
                await client.post("/v1/chat/completions", json=chat(words(500)), headers=headers),
            ]

    bad, array, big = run(go())
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "body")
    assert (array.status_code, array.json()["error"]["param"]) == (400, "body")
    assert big.status_code == 413
    assert (big.json()["error"]["code"], big.json()["error"]["argument"]) == (
        "body_too_large",
        "body",
    )
    assert server.requests == []


def test_an_upstream_error_returns_its_status_and_releases_the_grant(server):
    app, proxy = proxy_app(server)
    server.queue(Reply(status=429))
    response = run(post(app, "/v1/chat/completions", chat(), budget_headers("e", "writer", 500)))
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "upstream_error" and error["message"]
    assert KEY not in response.text
    after = run(summary(proxy, "e"))
    assert (after.consumed, after.reserved, after.free) == (0, 0, 500)


def test_the_total_billed_never_exceeds_the_ceiling_across_agents(server):
    app, proxy = proxy_app(server, "elastic")
    server.default = Reply(words(60))
    ceiling = 700

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            path = "/v1/chat/completions"
            await client.post(path, json=chat(), headers=budget_headers("many", "planner", ceiling))
            calls = [
                client.post(
                    path,
                    json=chat([{"role": "user", "content": words(30, f"a{i}")}], stream=i % 2 == 0),
                    headers=budget_headers("many", agent),
                )
                for i, agent in enumerate(["planner", "writer", "checker"] * 6)
            ]
            return list(await asyncio.gather(*calls))

    responses = run(go())
    statuses = {
        (r.status_code, r.json()["error"]["code"] if r.status_code != 200 else "")
        for r in responses
    }
    assert statuses <= {(200, ""), (402, "budget_exceeded"), (400, "input_too_large")}
    assert (402, "budget_exceeded") in statuses
    after = run(summary(proxy, "many"))
    assert billed(server) <= ceiling
    assert after.consumed == billed(server) and after.reserved == 0


# ---------------------------------------------------------------- budget tokens


def _token(app: Any, request_id: str = "up", ceiling: int = 1_000) -> tuple[str, Any]:
    response = run(
        post(app, "/v1/chat/completions", chat(), budget_headers(request_id, "planner", ceiling))
    )
    assert response.status_code == 200, response.text
    return response.headers["Apportion-Budget-Token"], response


def test_a_budget_token_opens_a_child_that_rolls_up_into_the_parent(server):
    app, proxy = proxy_app(server, FixedPolicy(output=20))
    token, first = _token(app)
    remaining = int(first.headers["Apportion-Remaining"])

    async def go() -> Any:
        async with asgi_client(app) as client:
            path = "/v1/chat/completions"
            down = {"Apportion-Budget-Token": token, "Apportion-Agent": "writer"}
            opened = await client.post(path, json=chat(), headers=down)
            child_id = opened.headers["Apportion-Request"]
            more = await client.post(path, json=chat(), headers=budget_headers(child_id, "checker"))
            during = (await summary(proxy, child_id), await summary(proxy, "up"))
            await proxy.close(ACME, child_id)
            return opened, more, during, await summary(proxy, "up")

    opened, more, (child, parent_during), parent = run(go())
    assert opened.status_code == more.status_code == 200, opened.text
    assert child.parent_id == "acme/up" and child.ceiling == remaining
    assert child.consumed == int(opened.headers["Apportion-Used"]) + int(
        more.headers["Apportion-Used"]
    )
    assert parent_during.reserved == remaining and parent_during.free == 0
    assert parent.consumed == billed(server) and parent.reserved == 0
    assert parent.free == 1_000 - billed(server)
    assert "Apportion-Budget-Token" in opened.headers  # passes go on down the tree


def test_a_token_child_takes_the_features_sent_with_it_or_its_parents(server):
    app, gateway = proxy_app(server, FixedPolicy(output=20))
    opened = budget_headers("up", "planner", 5_000, Apportion_Features="messages=8")
    with_features = run(post(app, "/v1/chat/completions", chat(), opened))
    cases = (
        (with_features.headers["Apportion-Budget-Token"], {}, {"messages": 8.0}),
        (_token(app, "bare", 5_000)[0], {"Apportion-Features": "depth=2"}, {"depth": 2.0}),
    )
    for token, sent, kept in cases:
        down = {"Apportion-Budget-Token": token, "Apportion-Agent": "writer", **sent}
        answer = run(post(app, "/v1/chat/completions", chat(), down))
        assert answer.status_code == 200, answer.text
        assert gateway.store.features("acme/" + answer.headers["Apportion-Request"]) == kept


def test_a_token_asking_less_gets_less(server):
    app, proxy = proxy_app(server, FixedPolicy(output=20))
    token, _ = _token(app)
    headers = {
        "Apportion-Budget-Token": token,
        "Apportion-Agent": "writer",
        "Apportion-Ceiling": "150",
    }
    opened = run(post(app, "/v1/chat/completions", chat(), headers))
    assert opened.status_code == 200
    child = run(summary(proxy, opened.headers["Apportion-Request"]))
    assert child.ceiling == 150


def _refusal(response: Any, code: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == "Apportion-Budget-Token"


def test_tampered_expired_replayed_and_widened_tokens_are_refused(server):
    now = [1_800_000_000.0]
    app, proxy = proxy_app(server, FixedPolicy(output=20), clock=lambda: now[0], pass_ttl=60)
    token, first = _token(app)
    carried = int(first.headers["Apportion-Remaining"])
    version, payload, signature = token.split(".")
    tampered = f"{version}.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{signature}"

    def down(value: str, **more: str) -> Any:
        headers = {"Apportion-Budget-Token": value, "Apportion-Agent": "writer", **more}
        return run(post(app, "/v1/chat/completions", chat(), headers))

    before = run(summary(proxy, "up"))
    seen = len(server.requests)
    _refusal(down(tampered), "budget_token_invalid")
    _refusal(down(token, **{"Apportion-Ceiling": str(carried + 1)}), "budget_token_widened")
    now[0] += 60
    _refusal(down(token), "budget_token_expired")
    now[0] -= 1
    assert run(summary(proxy, "up")) == before and len(server.requests) == seen
    assert down(token).status_code == 200
    _refusal(down(token), "budget_token_replayed")
    assert len(server.requests) == seen + 1


def test_a_token_stays_spent_after_its_child_closed(server):
    app, gateway = proxy_app(server, FixedPolicy(output=20))
    token, _ = _token(app)
    headers = {"Apportion-Budget-Token": token, "Apportion-Agent": "writer"}
    opened = run(post(app, "/v1/chat/completions", chat(), headers))
    assert opened.status_code == 200
    run(gateway.close(ACME, opened.headers["Apportion-Request"]))
    seen = len(server.requests)
    _refusal(run(post(app, "/v1/chat/completions", chat(), headers)), "budget_token_replayed")
    assert len(server.requests) == seen
    assert run(summary(gateway, "up")).reserved == 0  # no second child left open


# ---------------------------------------------------------------- tenants, idempotency


def test_another_tenant_neither_sees_the_request_nor_redeems_its_token(server):
    app, _gateway = proxy_app(server, FixedPolicy(output=20))
    token, _ = _token(app)

    async def go() -> list[Any]:
        async with asgi_client(app, "globex") as client:
            path = "/v1/chat/completions"
            return [
                await client.post(path, json=chat(), headers=budget_headers("up", "writer")),
                await client.post(
                    path,
                    json=chat(),
                    headers={"Apportion-Budget-Token": token, "Apportion-Agent": "writer"},
                ),
            ]

    seen = len(server.requests)
    lookup, redeem = run(go())
    assert lookup.status_code == 404 and lookup.json()["error"]["code"] == "unknown_request"
    assert "acme" not in lookup.text
    _refusal(redeem, "budget_token_invalid")
    assert len(server.requests) == seen


def test_a_call_without_a_key_is_refused_before_anything(server):
    app, _gateway = proxy_app(server)

    async def go() -> Any:
        async with asgi_client(app) as client:
            client.headers.pop("Authorization")
            return await client.post(
                "/v1/chat/completions", json=chat(), headers=budget_headers("x", "writer", 100)
            )

    response = run(go())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert server.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_an_idempotent_retry_gets_the_first_answer_and_settles_once(server, stream):
    app, gateway = proxy_app(server, FixedPolicy(output=20))

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            headers = {**budget_headers("idem", "writer", 500), "Idempotency-Key": "call-1"}
            body = chat(stream=stream)
            first = await client.post("/v1/chat/completions", json=body, headers=headers)
            again = await client.post("/v1/chat/completions", json=body, headers=headers)
            other = await client.post(
                "/v1/chat/completions", json=chat(max_tokens=3), headers=headers
            )
            return [first, again, other]

    first, again, other = run(go())
    assert first.status_code == again.status_code == 200, first.text
    assert again.content == first.content
    for name in ("Apportion-Used", "Apportion-Remaining", "Apportion-Request"):
        assert again.headers.get(name) == first.headers.get(name)
    assert len(server.requests) == 1
    after = run(summary(gateway, "idem"))
    assert after.consumed == billed(server) and after.agents["writer"].calls == 1
    assert other.status_code == 400  # the key reused for another call
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_an_idempotent_call_the_upstream_failed_runs_again(server):
    app, gateway = proxy_app(server, FixedPolicy(output=20))
    server.queue(Reply(status=503))

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            headers = {**budget_headers("flaky", "writer", 500), "Idempotency-Key": "k-2"}
            first = await client.post("/v1/chat/completions", json=chat(), headers=headers)
            again = await client.post("/v1/chat/completions", json=chat(), headers=headers)
            return [first, again]

    first, again = run(go())
    assert (first.status_code, again.status_code) == (503, 200)
    after = run(summary(gateway, "flaky"))
    assert after.consumed == billed(server) and after.reserved == 0


def test_an_unknown_agent_opens_nothing_and_spends_no_token(server):
    app, gateway = proxy_app(server, FixedPolicy(output=20))
    token, _ = _token(app)

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            path = "/v1/chat/completions"
            down = {"Apportion-Budget-Token": token}
            return [
                await client.post(path, json=chat(), headers=budget_headers("new", "nobody", 100)),
                await client.post(
                    path,
                    json=chat(),
                    headers=budget_headers("k", "nobody", 50, Apportion_Parent="up"),
                ),
                await client.post(path, json=chat(), headers={**down, "Apportion-Agent": "nobody"}),
                await client.post(path, json=chat(), headers={**down, "Apportion-Agent": "writer"}),
            ]

    root, child, redeem, redeemed = run(go())
    for refused in (root, child, redeem):
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "unknown_agent"
    assert redeemed.status_code == 200  # the token was not spent by the refused call
    with pytest.raises(UnknownRequest):
        run(summary(gateway, "new"))
    with pytest.raises(UnknownRequest):
        run(summary(gateway, "up::k"))


def test_two_replicas_on_one_redis_server_agree_a_token_was_redeemed(server, redis_server):
    import uuid

    url = f"{redis_server.url}?prefix=proxy-{uuid.uuid4().hex[:8]}"
    one, gateway = proxy_app(server, FixedPolicy(output=20), store_url=url)
    two, _ = proxy_app(server, FixedPolicy(output=20), store_url=url)
    token, _ = _token(one)
    headers = {"Apportion-Budget-Token": token, "Apportion-Agent": "writer"}
    opened = run(post(two, "/v1/chat/completions", chat(), headers))
    assert opened.status_code == 200, opened.text
    _refusal(run(post(one, "/v1/chat/completions", chat(), headers)), "budget_token_replayed")
    _refusal(run(post(two, "/v1/chat/completions", chat(), headers)), "budget_token_replayed")
    child = run(summary(gateway, opened.headers["Apportion-Request"]))
    assert child.consumed == int(opened.headers["Apportion-Used"])


def test_a_cost_ceiling_opens_with_the_request_and_its_token_carries_the_usd_left(server):
    from proxy_helpers import SIGNING_KEY

    from apportion.serve.passes import verify

    app, gateway = proxy_app(server, FixedPolicy(output=20))
    headers = budget_headers("usd", "planner", 5_000, Apportion_Ceiling_USD="0.5")
    response = run(post(app, "/v1/chat/completions", chat(), headers))
    assert response.status_code == 200, response.text
    after = run(summary(gateway, "usd"))
    assert after.ceiling_usd == 0.5 and after.cost_usd > 0
    carried = verify(SIGNING_KEY, response.headers["Apportion-Budget-Token"], now=0)
    assert carried.usd == pytest.approx(0.5 - after.cost_usd)
    assert carried.tokens == after.free == int(response.headers["Apportion-Remaining"])
    assert (carried.request_id, carried.tenant) == ("usd", "acme")


@pytest.mark.parametrize(
    ("more", "status", "code"),
    [
        ({"Apportion-Ceiling-USD": "lots"}, 400, "invalid_argument"),
        ({"Apportion-Ceiling-USD": "-1"}, 400, "invalid_argument"),
        ({"Apportion-Pipeline": "nope"}, 404, "unknown_pipeline"),
        ({"Apportion-Request": "bad id!"}, 400, "invalid_argument"),
    ],
)
def test_bad_opening_headers_are_refused(server, more, status, code):
    app, _gateway = proxy_app(server)
    headers = {**budget_headers("fresh", "writer", 500), **more}
    response = run(post(app, "/v1/chat/completions", chat(), headers))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert server.requests == []


def test_an_upstream_model_of_the_config_is_sent_counted_and_priced(server):
    app, gateway = proxy_app(server, FixedPolicy(output=20), upstream_model="openai/gpt-4o-mini")
    headers = budget_headers("aliased", "writer", 2_000)
    response = run(post(app, "/v1/chat/completions", chat(model="gpt-house"), headers))
    assert response.status_code == 200, response.text
    assert server.requests[-1]["model"] == "gpt-4o-mini"
    after = run(summary(gateway, "aliased"))
    assert after.consumed == billed(server) and after.cost_usd > 0  # priced as the real model


@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_responses_answer_is_extended(server, stream):
    server.default = Reply(words(30))
    app, gateway = proxy_app(server, FixedPolicy(output=16, extra=16))
    body = {"model": MODEL, "input": "Count, please.", "stream": stream}
    response = run(post(app, "/v1/responses", body, budget_headers("cut-r", "writer", 2_000)))
    assert response.status_code == 200, response.text
    assert [r["max_output_tokens"] for r in server.requests] == [16, 16]
    assert server.requests[1].get("previous_response_id")  # chained to the cut answer
    if stream:
        events = sse_events(response.text)
        final = json.loads(next(d for e, d in events if e == "response.completed"))["response"]
    else:
        final = response.json()
    assert final["output"][0]["content"][0]["text"] == words(30)
    assert final["status"] == "completed"
    after = run(summary(gateway, "cut-r"))
    assert after.consumed == billed(server) and after.reserved == 0


def test_tool_calls_pass_through(server):
    server.queue(Reply(tool_calls=(("lookup", '{"q": "x"}'),)))
    app, gateway = proxy_app(server, FixedPolicy(output=40))
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    response = run(
        post(app, "/v1/chat/completions", chat(tools=tools), budget_headers("t", "writer", 900))
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "lookup",
        {"q": "x"},
    )
    assert server.requests[0]["tools"] == tools
    assert run(summary(gateway, "t")).consumed == billed(server)


def test_an_idempotent_refusal_answers_as_the_proxy_does_and_again_the_same(server):
    app, _gateway = proxy_app(server, FixedPolicy(output=20))
    token, _ = _token(app)
    version, payload, signature = token.split(".")
    tampered = f"{version}.{payload}x.{signature}"

    async def go() -> list[Any]:
        async with asgi_client(app) as client:
            headers = {
                "Apportion-Budget-Token": tampered,
                "Apportion-Agent": "writer",
                "Idempotency-Key": "k-3",
            }
            return [
                await client.post("/v1/chat/completions", json=chat(), headers=headers)
                for _ in range(2)
            ]

    first, again = run(go())
    _refusal(first, "budget_token_invalid")
    assert again.status_code == 403 and again.content == first.content
