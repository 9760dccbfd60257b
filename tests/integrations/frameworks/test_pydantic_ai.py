"""Pydantic AI, budgeted by ``budgeted_model(...)`` and the ``Apportion()`` capability: its real
agents and OpenAI models over HTTP to the local server. Every call carries a cap, the
server-billed total stays under the ceiling, and the ledger settles what the server billed."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from conftest import require

pydantic_ai = require("pydantic_ai")

from integration_helpers import (  # noqa: E402
    FixedPolicy,
    assert_shown_and_wrapped_up,
    async_openai_client,
    controller,
    words,
)
from pydantic_ai import Agent  # noqa: E402
from pydantic_ai.messages import (  # noqa: E402
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)

from apportion import InvalidArgument, MissingExtra, NoOpenRequest, current_agent  # noqa: E402
from apportion.errors import ApportionError, UnsupportedVersion  # noqa: E402
from apportion.integrations.pydantic_ai import Apportion, budgeted_model, check_version  # noqa: E402
from apportion.testing.openai_server import Reply  # noqa: E402

CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MODEL = "gpt-4o-mini"


def billed(server: Any) -> int:
    return sum(p + c for p, c in server.billed)


def settled(req: Any) -> int:
    return sum(int(a.consumed) for a in req.summary().agents.values())


def consumed(req: Any, agent: str) -> int:
    return int(req.summary().agents[agent].consumed)


def capped(server: Any) -> bool:
    return all(any(isinstance(r.get(k), int) for k in CAPS) for r in server.requests)


def three_agents(model: Any, **settings: Any) -> list[Any]:
    return [
        Agent(
            model,
            name=n,
            instructions=f"You are the {n}.",
            capabilities=[Apportion()],
            model_settings=settings or None,
        )
        for n in ("triage", "reasoner", "formatter")
    ]


def history(n: int = 40) -> list[Any]:
    out: list[Any] = []
    for i in range(n):
        text = words(30, f"m{i}x")
        out.append(
            ModelRequest(parts=[UserPromptPart(text)])
            if i % 2 == 0
            else ModelResponse(parts=[TextPart(text)])
        )
    return out


async def run(agent: Any, prompt: str, streamed: bool, hist: Any = None) -> str:
    if not streamed:
        return str((await agent.run(prompt, message_history=hist)).output)
    async with agent.run_stream(prompt, message_history=hist) as result:
        text = ""
        async for text in result.stream_text():  # noqa: B007  (the last is whole)
            pass
        return text


async def pipeline(model: Any, streamed: bool = False, **settings: Any) -> list[str]:
    triage, reasoner, formatter = three_agents(model, **settings)
    first = await run(triage, "Which team?", streamed)
    second = await run(reasoner, "Reason: " + first, streamed, history())
    return [first, second, await run(formatter, "Format: " + second, streamed)]


@pytest.mark.parametrize(
    ("responses", "streamed"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["chat", "responses", "chat-streamed", "responses-streamed"],
)
def test_a_three_agent_pipeline_is_capped_fitted_and_settled(server, store, responses, streamed):
    server.default = type(server.default)(words(12, "a"))
    ctl = controller(store, FixedPolicy(context=300, output=40))
    model = budgeted_model(MODEL, async_openai_client(server), responses=responses)

    async def main() -> None:
        with ctl.request(ceiling=1_500) as req:
            assert await pipeline(model, streamed) == [words(12, "a")] * 3
            assert billed(server) <= 1_500
            assert settled(req) == billed(server)
            assert all(consumed(req, a) > 0 for a in ("triage", "reasoner", "formatter"))

    asyncio.run(main())
    assert len(server.requests) == 3 and capped(server)
    key = "input" if responses else "messages"
    assert len(server.requests[1][key]) < 40  # the 40-message history was fitted
    if streamed and not responses:
        assert all(r["stream_options"] == {"include_usage": True} for r in server.requests)


@pytest.mark.parametrize(
    ("responses", "streamed"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["chat", "responses", "chat-streamed", "responses-streamed"],
)
def test_a_cut_answer_is_extended(server, store, responses, streamed):
    text = words(30, "c")
    server.queue(text)
    ctl = controller(store, FixedPolicy(output=12, extra=12))
    model = budgeted_model(MODEL, async_openai_client(server), responses=responses)

    async def main() -> str:
        with ctl.request(ceiling=3_000) as req:
            answer = await run(three_agents(model)[1], "Count.", streamed)
            assert consumed(req, "reasoner") == billed(server)
            return answer

    assert asyncio.run(main()) == text
    assert len(server.requests) == 3 and capped(server)


def test_max_retries_copies_the_client_and_it_stays_budgeted(server, store):
    import openai

    copies: list[list[str]] = []

    class Spy(openai.AsyncOpenAI):
        def copy(self, **kwargs: Any) -> Any:
            copies.append(sorted(kwargs))
            return super().copy(**kwargs)

        with_options = copy

    ctl = controller(store, FixedPolicy(output=20))
    model = budgeted_model(MODEL, Spy(base_url=server.url, api_key="test", max_retries=0))

    async def main() -> None:
        with ctl.request(ceiling=3_000) as req:
            await run(three_agents(model, max_retries=2)[0], "Hi.", False)
            assert consumed(req, "triage") == billed(server) > 0

    asyncio.run(main())
    assert copies == [["_extra_kwargs", "http_client", "max_retries"]]
    assert capped(server) and server.requests[0]["max_tokens"] == 20


def test_an_agent_run_inside_a_tool_is_charged_to_itself(server, store):
    server.queue(Reply(tool_calls=(("delegate", '{"text": "x y"}'),)))
    ctl = controller(store)
    model = budgeted_model(MODEL, async_openai_client(server))
    formatter = Agent(model, name="formatter", capabilities=[Apportion()])
    reasoner = Agent(model, name="reasoner", capabilities=[Apportion()])
    inside: list[str | None] = []

    @reasoner.tool_plain
    async def delegate(text: str) -> str:
        inside.append(current_agent())
        return str((await formatter.run(text)).output)

    async def main() -> None:
        with ctl.request(ceiling=5_000) as req:
            await reasoner.run("Go.")
            assert current_agent() is None  # named inside the run only
            assert consumed(req, "reasoner") > 15 and consumed(req, "formatter") > 0
            assert settled(req) == billed(server)

    asyncio.run(main())
    assert inside == ["reasoner"]
    assert len(server.requests) == 3 and capped(server)


def test_an_agent_without_the_capability_is_refused_before_anything_is_sent(server, store):
    model = budgeted_model(MODEL, async_openai_client(server))

    async def main() -> None:
        with (
            controller(store).request(ceiling=3_000),
            pytest.raises(InvalidArgument, match="no agent"),
        ):
            await Agent(model, name="triage").run("Hi.")

    asyncio.run(main())
    assert server.requests == []


def test_no_open_request_is_a_clear_error_and_nothing_is_sent(server):
    model = budgeted_model(MODEL, async_openai_client(server))
    with pytest.raises(NoOpenRequest):
        asyncio.run(three_agents(model)[0].run("Hi."))
    assert server.requests == []


def test_a_version_outside_the_range_is_refused_naming_it():
    check_version("2.68.0")
    for version in ("2.67.9", "3.0.0", "dev"):
        with pytest.raises(UnsupportedVersion, match=r">=2\.68,<3") as refused:
            check_version(version)
        assert refused.value.version == version


def test_a_missing_pydantic_ai_names_the_extra(server, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydantic_ai.models.openai", None)
    with pytest.raises(MissingExtra, match=r"apportion\[pydantic-ai\]"):
        budgeted_model(MODEL, async_openai_client(server))


@pytest.mark.parametrize("where", ["model", "capability"])
@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
def test_wraps_up_and_shows_the_budget_set_on_the_model_or_the_capability(
    server, store, where, responses
):
    server.queue(Reply(words(70)))
    ctl = controller(store, FixedPolicy(output=60, extra=0))
    keywords: dict[str, Any] = {"wrap_up_tokens": 400, "show_budget": True}
    on_model = keywords if where == "model" else {}
    on_run = keywords if where == "capability" else {}
    model = budgeted_model(MODEL, async_openai_client(server), responses=responses, **on_model)
    reasoner = Agent(model, name="reasoner", capabilities=[Apportion(**on_run)])

    async def main() -> str:
        with ctl.request(ceiling=5_000) as req:
            result = await reasoner.run("Count.")
            assert_shown_and_wrapped_up(server, req)
            return str(result.output)

    assert asyncio.run(main()) == words(70)


@pytest.mark.parametrize(
    ("keywords", "argument"),
    [({"wrap_up_tokens": True}, "wrap_up_tokens"), ({"show_budget": 0}, "show_budget")],
)
def test_bad_wrap_up_and_show_budget_are_refused(server, keywords, argument):
    for make in (
        lambda: budgeted_model(MODEL, async_openai_client(server), **keywords),
        lambda: Apportion(**keywords),
    ):
        with pytest.raises(ApportionError) as caught:
            make()
        assert getattr(caught.value, "argument", getattr(caught.value, "field", None)) == argument
