"""The local OpenAI-protocol server itself, over plain HTTP (stdlib client)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from apportion.testing.openai_server import (
    OpenAIServer,
    Reply,
    count_tokens,
    prompt_tokens,
    split_tokens,
)


def post(server: OpenAIServer, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        server.url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def ask(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def test_tokens_are_words():
    assert split_tokens("one  two three") == ["one", "  two", " three"]
    assert count_tokens("") == 0
    assert prompt_tokens([{"role": "user", "content": "a b"}]) == 3 + 3 + 2


def test_reply_cap_usage_and_continuation():
    with OpenAIServer([Reply("a b c d e f")]) as server:
        status, body = post(server, ask(max_tokens=4))
        first = json.loads(body)
        assert status == 200
        assert first["choices"][0]["message"]["content"] == "a b c d"
        assert first["choices"][0]["finish_reason"] == "length"
        assert first["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
        follow = ask()
        follow["messages"] += [
            {"role": "assistant", "content": "a b c d"},
            {"role": "user", "content": "Continue."},
        ]
        second = json.loads(post(server, follow)[1])
        assert second["choices"][0]["message"]["content"] == " e f"
        assert second["choices"][0]["finish_reason"] == "stop"
        # the script is used up: the default reply
        third = json.loads(post(server, ask())[1])
        assert third["choices"][0]["message"]["content"] == server.default.text
        assert [r.get("max_tokens") for r in server.requests] == [4, None, None]


def test_a_request_that_does_not_continue_drops_the_rest():
    with OpenAIServer([Reply("a b c d"), "next"]) as server:
        post(server, ask(max_tokens=2))
        answer = json.loads(post(server, ask())[1])
        assert answer["choices"][0]["message"]["content"] == "next"


def test_errors_and_missing_usage():
    with OpenAIServer([Reply(status=429), Reply("x", usage=False)]) as server:
        status, body = post(server, ask())
        assert status == 429 and json.loads(body)["error"]["code"] == "429"
        status, body = post(server, ask())
        assert status == 200 and "usage" not in json.loads(body)
        server.fail_at(3, 503)
        assert post(server, ask())[0] == 503
        assert post(server, ask())[0] == 200


def test_streaming_events():
    with OpenAIServer([Reply("a b c")]) as server:
        _, body = post(server, ask(stream=True, stream_options={"include_usage": True}))
        lines = [x for x in body.decode().split("\n\n") if x]
        assert all(x.startswith("data: ") for x in lines) and lines[-1] == "data: [DONE]"
        chunks = [json.loads(x[6:]) for x in lines[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "a b c"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def events(body: bytes) -> list[dict[str, Any]]:
    lines = [x for x in body.decode().split("\n\n") if x]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(x[6:]) for x in lines[:-1]]


def test_a_streamed_answer_is_cut_at_its_cap_and_its_rest_streamed_to_a_follow_up():
    with OpenAIServer([Reply("a b c d e f", usage=False)]) as server:
        cut = events(post(server, ask(max_tokens=4, stream=True))[1])
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in cut)
        assert text == "a b c d" and cut[-1]["choices"][0]["finish_reason"] == "length"
        follow = ask(stream=True, stream_options={"include_usage": True})
        follow["messages"] += [
            {"role": "assistant", "content": "a b c d"},
            {"role": "user", "content": "Continue."},
        ]
        rest = events(post(server, follow)[1])
        assert [c["choices"][0]["delta"].get("content") for c in rest[1:3]] == [" e", " f"]
        assert all("usage" not in c for c in rest)  # the reply reports no usage
        assert rest[-1]["choices"][0]["finish_reason"] == "stop"
        # what each request cost, though neither reported it
        assert server.billed == [(7, 4), (prompt_tokens(follow["messages"]), 2)]


def test_billed_is_the_servers_own_count_whatever_usage_reports():
    with OpenAIServer([Reply("a b", usage={"completion_tokens": 0}), Reply(status=500)]) as server:
        assert json.loads(post(server, ask())[1])["usage"]["completion_tokens"] == 0
        post(server, ask())
        assert server.billed == [(7, 2)]  # the error bills nothing


def test_unknown_routes_and_bad_bodies():
    with OpenAIServer() as server:
        request = urllib.request.Request(server.url + "/nothing", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 404
        bad = urllib.request.Request(server.url + "/chat/completions", data=b"not json")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(bad, timeout=5)
        assert caught.value.code == 400
    with pytest.raises(RuntimeError):
        _ = server.url
