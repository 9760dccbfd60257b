"""The proxy's small pieces: upstream choice, body checks, keys, upstream errors."""

from __future__ import annotations

import pytest

from apportion import InvalidArgument
from apportion.errors import BudgetExceeded, ChildBudgetExceeded, PoolExhausted
from apportion.serve.config import ServeConfig, UpstreamConfig
from apportion.serve.forward import (
    DEFAULT_UPSTREAM,
    read_body,
    upstream_error,
    upstream_for,
)
from apportion.serve.passes import BudgetTokenExpired
from apportion.serve.proxy import caller_key, status_of

UPSTREAMS = (
    UpstreamConfig("openai", prefix="gpt-", api_key="sk-one"),
    UpstreamConfig("claude", prefix="claude-", model="anthropic/claude-x", api_key="sk-two"),
    UpstreamConfig("rest", prefix="", api_base="http://127.0.0.1:9/v1"),
)


def config(*upstreams: UpstreamConfig) -> ServeConfig:
    return ServeConfig(ServeConfig.default().pipelines, upstreams=upstreams)


def test_the_first_upstream_whose_prefix_matches_serves_the_model():
    assert upstream_for(config(*UPSTREAMS), "gpt-4o-mini").name == "openai"
    assert upstream_for(config(*UPSTREAMS), "claude-3").name == "claude"
    assert upstream_for(config(*UPSTREAMS), "llama").name == "rest"
    assert upstream_for(config(), "anything") is DEFAULT_UPSTREAM
    with pytest.raises(InvalidArgument) as caught:
        upstream_for(config(*UPSTREAMS[:2]), "llama")
    assert caught.value.argument == "model"


@pytest.mark.parametrize(
    ("protocol", "raw", "field"),
    [
        ("chat", b"", "body"),
        ("chat", b'"text"', "body"),
        ("chat", b'{"model": 3, "messages": [{}]}', "model"),
        ("chat", b'{"model": "m", "messages": []}', "messages"),
        ("chat", b'{"model": "m", "messages": ["hi"]}', "messages"),
        ("responses", b'{"model": "m"}', "input"),
        ("responses", b'{"model": "m", "input": 5}', "input"),
        ("responses", b'{"model": "m", "input": "hi", "stream": 1}', "stream"),
    ],
)
def test_a_bad_body_names_its_field(protocol, raw, field):
    with pytest.raises(InvalidArgument) as caught:
        read_body(protocol, raw)
    assert caught.value.argument == field


def test_a_body_is_split_into_model_messages_and_the_rest():
    body = read_body("responses", b'{"model": "m", "input": "hi", "stream": true, "top_p": 1}')
    assert (body.model, body.messages, body.params, body.stream) == (
        "m",
        "hi",
        {"stream": True, "top_p": 1},
        True,
    )


def test_the_callers_provider_key():
    assert caller_key({"Apportion-Upstream-Key": "sk-mine"}, open_mode=False) == "sk-mine"
    assert caller_key({"authorization": "Bearer sk-mine"}, open_mode=False) is None
    assert caller_key({"authorization": "Bearer sk-mine"}, open_mode=True) == "sk-mine"
    with pytest.raises(InvalidArgument):
        caller_key({"Apportion-Upstream-Key": " "}, open_mode=True)


class _Failure(Exception):
    def __init__(self, message: str, status_code: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class ReadTimeout(Exception):
    pass


def test_an_upstream_error_keeps_its_status_and_never_shows_a_key():
    status, message = upstream_error(
        _Failure("Incorrect API key provided: sk-one (and sk-two)", 401), ["sk-one", "sk-two", None]
    )
    assert status == 401 and "sk-one" not in message and "sk-two" not in message
    assert message == "Incorrect API key provided: *** (and ***)"
    assert upstream_error(_Failure("boom", None), [])[0] == 502
    assert upstream_error(ReadTimeout("slow"), [])[0] == 504


def test_the_proxys_statuses_are_openai_like():
    assert status_of(BudgetExceeded("a", 10, 5), 409) == 402
    assert status_of(ChildBudgetExceeded("p", "c", 10, 5), 409) == 402
    assert status_of(PoolExhausted("pool", 10, 5, "standard"), 429) == 429
    assert status_of(BudgetTokenExpired(1.0, 2.0), 400) == 403
    assert status_of(InvalidArgument("x", 1, "bad"), 422) == 400
