"""Token counting per model: tiktoken, LiteLLM, the approximate counter, offline use."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from apportion.errors import NoTokenizer
from apportion.tokens import (
    ApproximateCounter,
    LiteLLMCounter,
    TiktokenCounter,
    TokenCounter,
    count_messages,
    counter_for,
    counting,
)

HAS_LITELLM = importlib.util.find_spec("litellm") is not None
needs_litellm = pytest.mark.skipif(not HAS_LITELLM, reason="litellm is not installed")

TEXTS = [
    "",
    "hello world",
    "Token budgets per agent, under one ceiling: 20,000 tokens <|endoftext|> déjà vu 日本語",
    "def f(x):\n    return {'a': [1, 2, 3]}\n" * 5,
]

# The OpenAI cookbook's example ("How to count tokens with tiktoken"): the API bills 129
# prompt tokens for gpt-3.5-turbo and gpt-4, 124 for gpt-4o.
COOKBOOK = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.mark.parametrize(
    ("model", "encoding"), [("gpt-4o", "o200k_base"), ("gpt-3.5-turbo", "cl100k_base")]
)
def test_tiktoken_counts_match_tiktoken(model: str, encoding: str) -> None:
    counter = counter_for(model)
    assert isinstance(counter, TiktokenCounter)
    assert counter.encoding_name == encoding
    assert counter.model == model
    assert counter.approximate is False
    import tiktoken

    direct = tiktoken.encoding_for_model(model)
    for text in TEXTS:
        assert counter.count_text(text) == len(direct.encode(text, disallowed_special=()))


def test_kept_counts_are_each_encodings_own_and_long_texts_are_counted_whole() -> None:
    """A count kept for a text is for its encoding; a text past the kept length is counted."""
    import tiktoken

    from apportion.tokens import counting

    texts = ["ünïcödé 😀 " * 40, "<|endoftext|> special as text", "x" * 3]
    longer = "word " * (counting.RECENT_TEXT_CHARS // 5 + 10)
    for _ in range(2):  # the second pass reads the kept counts
        for model in ("gpt-4o", "gpt-3.5-turbo"):
            direct = tiktoken.encoding_for_model(model)
            counter = counter_for(model)
            for text in [*texts, longer]:
                assert counter.count_text(text) == len(direct.encode(text, disallowed_special=()))
    o200k, cl100k = counter_for("gpt-4o"), counter_for("gpt-3.5-turbo")
    assert o200k.count_text(texts[0]) != cl100k.count_text(texts[0])
    assert len(longer) > counting.RECENT_TEXT_CHARS


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("openai/gpt-4o-mini", "o200k_base"),
        ("azure/gpt-4.1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4o-2099-01-01-preview", "o200k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
    ],
)
def test_openai_models_pick_their_encoding(model: str, encoding: str) -> None:
    counter = counter_for(model)
    assert isinstance(counter, TiktokenCounter)
    assert counter.encoding_name == encoding


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124)]
)
def test_cookbook_example_matches_the_api(model: str, expected: int) -> None:
    assert count_messages(model, COOKBOOK) == expected


def test_message_overhead() -> None:
    counter = counter_for("gpt-4o")
    text = counter.count_text
    assert counter.count_message({"role": "user", "content": "hello"}) == 3 + text("user") + text(
        "hello"
    )
    named = {"role": "user", "name": "bob", "content": "hello"}
    assert counter.count_message(named) == 3 + text("user") + text("bob") + 1 + text("hello")
    messages = [{"role": "system", "content": "be brief"}, named]
    assert counter.count_messages(messages) == sum(map(counter.count_message, messages)) + 3
    assert counter.count_messages([]) == 3


def test_content_parts_tool_calls_and_results() -> None:
    counter = counter_for("gpt-4o")
    text = counter.count_text
    parts = {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x/z.png"}},
        ],
    }
    expected = 3 + text("user") + text("what is in this picture?") + 85 + 765
    assert counter.count_message(parts) == expected
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert counter.count_message(call) == (
        3 + text("assistant") + 3 + text("get_weather") + text('{"city": "Paris"}')
    )
    result = {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"}
    assert counter.count_message(result) == 3 + text("tool") + text("call_1") + text("18C, sunny")


def test_tools_are_counted() -> None:
    counter = counter_for("gpt-4o")
    messages = [{"role": "user", "content": "weather in Paris?"}]
    with_tools = counter.count_messages(messages, TOOLS)
    definition = json.dumps(TOOLS[0]["function"], separators=(",", ":"))
    assert counter.count_tools(TOOLS) == 9 + counter.count_text(definition)
    assert with_tools == counter.count_messages(messages) + counter.count_tools(TOOLS)
    assert with_tools > counter.count_messages(messages) + 20
    assert count_messages("gpt-4o", messages, tools=TOOLS) == with_tools


def test_approximate_by_name_only() -> None:
    counter = counter_for("some-private-model", "approximate")
    assert isinstance(counter, ApproximateCounter)
    assert counter.approximate is True
    assert counter.model == "some-private-model"
    assert counter.count_text("") == 0
    assert counter.count_text("abcdefgh") == 2
    assert counter.count_text("abcdefghi") == 3
    assert counter.count_messages([{"role": "user", "content": "abcd"}]) == 3 + 1 + 1 + 3


def test_named_encoding_and_counter_objects() -> None:
    counter = counter_for("my-local-model", "tiktoken:cl100k_base")
    assert isinstance(counter, TiktokenCounter)
    assert counter.encoding_name == "cl100k_base"
    assert counter_for("gpt-4o", "tiktoken").encoding_name == "o200k_base"  # type: ignore[attr-defined]
    assert counter_for("anything", counter) is counter
    assert counter_for("gpt-4o") is counter_for("gpt-4o")
    with pytest.raises(ValueError, match="no encoding 'nope'"):
        counter_for("x", "tiktoken:nope")


def test_unknown_counter_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="approximate") as caught:
        counter_for("gpt-4o", "exact")
    assert "tiktoken:<encoding>" in str(caught.value)


def test_openai_looking_name_without_family_needs_a_choice() -> None:
    with pytest.raises(NoTokenizer) as caught:
        counter_for("gpt-neox-20b")
    assert caught.value.model == "gpt-neox-20b"


def test_a_custom_counter_needs_only_count_text() -> None:
    class Words(TokenCounter):
        model = "words"

        def count_text(self, text: str) -> int:
            return len(text.split())

    counter = Words()
    assert counter.count_messages([{"role": "user", "content": "a b c"}]) == 3 + 1 + 3 + 3


@needs_litellm
def test_claude_counts_via_litellm() -> None:
    counter = counter_for("claude-sonnet-4-5")  # imports litellm with its local model map
    import litellm

    assert isinstance(counter, LiteLLMCounter)
    assert counter.approximate is False
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise the ledger invariants in one line."},
    ]
    assert counter.count_messages(messages) == litellm.token_counter(
        model="claude-sonnet-4-5", messages=messages
    )
    assert counter.count_messages(messages, TOOLS) == litellm.token_counter(
        model="claude-sonnet-4-5", messages=messages, tools=TOOLS
    )
    assert counter.count_messages(messages, TOOLS) > counter.count_messages(messages)
    text = "Summarise the ledger invariants in one line."
    assert counter.count_text(text) == litellm.token_counter(model="claude-sonnet-4-5", text=text)
    single = counter.count_message(messages[1])
    assert single >= 3 + counter.count_text(text)
    assert counter_for("anthropic/claude-sonnet-4-5").count_text(text) == counter.count_text(text)


@needs_litellm
def test_unknown_model_has_no_tokenizer() -> None:
    with pytest.raises(NoTokenizer) as caught:
        counter_for("no-such-model-xyz-123")
    assert caught.value.model == "no-such-model-xyz-123"
    assert caught.value.fields["model"] == "no-such-model-xyz-123"
    assert "approximate" in str(caught.value)
    assert counter_for("no-such-model-xyz-123", "approximate").approximate


def test_an_existing_cache_dir_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/somewhere/else")
    counting._use_litellm_encodings()
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/somewhere/else"


def _clean_env() -> dict[str, str]:
    drop = ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "LITELLM_LOCAL_MODEL_COST_MAP")
    return {key: value for key, value in os.environ.items() if key not in drop}


@pytest.mark.skipif(counting.litellm_tokenizers_dir() is None, reason="litellm is not installed")
def test_counts_offline_from_litellm_encoding_files(tmp_path: Any) -> None:
    code = """
import os, sys
import tiktoken.load

def no_download(*args, **kwargs):
    raise AssertionError(f"download attempted: {args}")

tiktoken.load.read_file = no_download
import requests
requests.get = no_download
requests.Session.request = no_download

from apportion.tokens import counter_for
from apportion.tokens.counting import litellm_tokenizers_dir

for model in ("gpt-4o", "gpt-3.5-turbo", "o3-mini"):
    assert counter_for(model).count_text("hello offline world") > 0
assert counter_for("x", "tiktoken:p50k_base").count_text("hello") > 0
assert os.environ["TIKTOKEN_CACHE_DIR"] == str(litellm_tokenizers_dir())
assert "litellm" not in sys.modules
print("ok")
"""
    env = _clean_env() | {"TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_import_loads_neither_tiktoken_nor_litellm() -> None:
    code = (
        "import sys, apportion, apportion.tokens; "
        "print(sorted({'tiktoken', 'litellm'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), check=True
    )
    assert done.stdout.strip() == "[]"


def test_bad_input_is_refused() -> None:
    counter = counter_for("gpt-4o")
    with pytest.raises(TypeError):
        counter.count_messages("hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        counter.count_message(["role", "user"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        counter.count_message({"role": "user", "content": 42})
    with pytest.raises(ValueError):
        counter_for("")
