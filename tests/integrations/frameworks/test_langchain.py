"""LangChain 1.x ``create_agent`` with :class:`BudgetMiddleware`, against the local server.

Real LangChain (``create_agent``, ``ChatOpenAI``) over HTTP to the local OpenAI-protocol
server, invoked, streamed (``stream_mode="messages"``) and awaited: every call the server
sees carries a cap, the server-billed total stays under the ceiling, an over-long history
is fitted, a cut answer is extended, and the ledger settles what the server billed.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import require

require("langchain")
require("langchain_openai")

from integration_helpers import (  # noqa: E402
    FixedPolicy,
    assert_shown_and_wrapped_up,
    controller,
    words,
)
from langchain.agents import create_agent  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402

from apportion import InvalidArgument, MissingExtra, NoOpenRequest, UnbudgetedCall  # noqa: E402
from apportion.errors import ApportionError, UnsupportedVersion  # noqa: E402
from apportion.integrations import CONTINUE_PROMPT  # noqa: E402
from apportion.integrations import langchain as adapter  # noqa: E402
from apportion.integrations.langchain import BudgetMiddleware  # noqa: E402
from apportion.testing.openai_server import Reply  # noqa: E402

CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def chat_model(server: Any, **kwargs: Any) -> Any:
    return ChatOpenAI(
        model="gpt-4o-mini", base_url=server.url, api_key="test", max_retries=0, **kwargs
    )


def agent(server: Any, name: str | None = "triage", **kwargs: Any) -> Any:
    return create_agent(
        chat_model(server),
        tools=kwargs.pop("tools", []),
        system_prompt=f"You are the {name or 'agent'}.",
        name=name,
        middleware=[BudgetMiddleware(**kwargs)],
    )


def billed(server: Any) -> int:
    return sum(p + c for p, c in server.billed)


def settled(req: Any, name: str) -> int:
    return int(req.summary().agents[name].consumed)


def streamed(graph: Any, messages: list[Any]) -> str:
    text = ""
    for chunk, _ in graph.stream({"messages": messages}, stream_mode="messages"):
        if isinstance(chunk, AIMessage) and isinstance(chunk.content, str):
            text += chunk.content
    return text


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke"])
def test_a_cut_answer_is_extended_capped_and_settled_as_billed(server, store, mode):
    server.queue(words(30))
    ctl = controller(store, FixedPolicy(output=8, extra=8))
    graph = agent(server)
    question = [HumanMessage("Count for me.")]
    with ctl.request(ceiling=2_000) as req:
        if mode == "invoke":
            text = graph.invoke({"messages": question})["messages"][-1].content
        elif mode == "stream":
            text = streamed(graph, question)
        else:
            text = asyncio.run(graph.ainvoke({"messages": question}))["messages"][-1].content
        assert text == words(30)
        assert settled(req, "triage") == billed(server)
        assert billed(server) <= 2_000
    assert len(server.requests) == 4  # 8 + 8 + 8 + 6 words
    assert all(r["max_completion_tokens"] == 8 for r in server.requests)
    assert server.requests[1]["messages"][-1]["content"] == CONTINUE_PROMPT
    assert server.requests[0]["messages"][0] == {"role": "system", "content": "You are the triage."}
    if mode == "stream":
        assert all(r["stream_options"] == {"include_usage": True} for r in server.requests)
    record = next(iter(req.calls.values()))
    assert record.agent == "triage" and record.extensions == 3


def test_the_joined_answer_carries_the_summed_usage(server, store):
    server.queue(words(12))
    ctl = controller(store, FixedPolicy(output=8, extra=8))
    with ctl.request(ceiling=2_000) as req:
        message = agent(server).invoke({"messages": [HumanMessage("hi")]})["messages"][-1]
        assert message.usage_metadata["total_tokens"] == billed(server) == settled(req, "triage")
        assert message.response_metadata["finish_reason"] == "stop"


def test_an_over_long_history_is_fitted_keeping_the_system_message(server, store):
    history = [HumanMessage(words(40, f"m{i}_")) for i in range(40)]
    ctl = controller(store, FixedPolicy(context=300, output=20))
    with ctl.request(ceiling=5_000) as req:
        agent(server, name="reasoner").invoke({"messages": history})
        assert settled(req, "reasoner") == billed(server)
    sent = server.requests[0]["messages"]
    assert sent[0]["role"] == "system"
    assert len(sent) < 41
    assert server.billed[0][0] <= 300
    assert sent[-1]["content"] == history[-1].content


def test_the_ceiling_holds_over_a_pipeline_of_three_agents(server, store):
    server.default = Reply(words(50))
    ctl = controller(store, "elastic")
    with ctl.request(ceiling=1_500) as req:
        for name in ("triage", "reasoner", "formatter"):
            agent(server, name=name).invoke({"messages": [HumanMessage(words(100))]})
        assert settled(req, "triage") + settled(req, "reasoner") + settled(req, "formatter") == (
            billed(server)
        )
    assert billed(server) <= 1_500
    assert all(any(k in r for k in CAPS) for r in server.requests)


def test_tools_are_counted(server, store):
    @tool
    def lookup_invoice(invoice_id: str, customer_email: str, include_line_items: bool) -> str:
        """Look up an invoice of a customer by its id, with its line items if asked."""
        return "none"

    ctl = controller(store, FixedPolicy(output=20))
    with ctl.request(ceiling=5_000) as req:
        agent(server, name="triage").invoke({"messages": [HumanMessage("hi")]})
        agent(server, name="reasoner", tools=[lookup_invoice]).invoke(
            {"messages": [HumanMessage("hi")]}
        )
    without, with_tools = (r.input_asked for r in req.calls.values())
    assert with_tools > without + 20


class ToolFake(GenericFakeChatModel):
    """A scripted chat model that takes tools, for answers the local server does not send."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


@pytest.mark.parametrize("valid", [True, False], ids=["tool_calls", "invalid_tool_calls"])
def test_an_answer_with_tool_calls_is_never_continued(store, valid):
    call = {"name": "lookup", "id": "call_1"}
    calls = {"tool_calls": [{**call, "args": {"q": "x"}, "type": "tool_call"}]}
    if not valid:  # arguments cut at the cap: LangChain cannot parse them
        calls = {"invalid_tool_calls": [{**call, "args": '{"q": "x', "error": None}]}
    cut = AIMessage(content="partial", response_metadata={"finish_reason": "length"}, **calls)
    model = ToolFake(messages=iter([cut, AIMessage("done")]))

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return "found"

    graph = create_agent(
        model,
        tools=[lookup],
        name="triage",
        middleware=[BudgetMiddleware(model="gpt-4o-mini", counter="approximate")],
    )
    ctl = controller(store, FixedPolicy(output=8, extra=8))
    with ctl.request(ceiling=2_000) as req:
        out = graph.invoke({"messages": [HumanMessage("find x")]})
    records = list(req.calls.values())
    assert all(r.extensions == 0 for r in records) and records[0].truncated
    if valid:  # the tool ran, then the model answered
        assert out["messages"][-1].content == "done" and len(records) == 2
    else:  # nothing to run: the cut answer is the last, as it was
        assert out["messages"][-1].content == "partial" and len(records) == 1


def test_a_real_tool_call_cut_at_its_cap_is_never_continued(server, store):
    arguments = '{"q": "one two three four five six seven eight nine ten"}'
    server.queue(Reply(tool_calls=(("lookup", arguments),)))

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return "found"

    ctl = controller(store, FixedPolicy(output=6, extra=50))  # extending is possible
    with ctl.request(ceiling=2_000) as req:
        out = agent(server, name="triage", tools=[lookup]).invoke({"messages": [HumanMessage("x")]})
        assert settled(req, "triage") == billed(server)
    assert len(server.requests) == 1  # cut, and not continued
    assert out["messages"][-1].invalid_tool_calls
    (record,) = req.calls.values()
    assert record.truncated and record.extensions == 0


def test_a_real_tool_call_runs_the_tool_and_every_call_is_settled(server, store):
    server.queue(Reply(tool_calls=(("lookup", '{"q": "x"}'),)), Reply("It was found."))
    seen: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        seen.append(q)
        return "found"

    ctl = controller(store, FixedPolicy(output=40))
    with ctl.request(ceiling=2_000) as req:
        out = agent(server, name="triage", tools=[lookup]).invoke({"messages": [HumanMessage("x")]})
        assert settled(req, "triage") == billed(server)
    assert seen == ["x"] and out["messages"][-1].content == "It was found."
    assert server.requests[1]["messages"][-1]["role"] == "tool"
    assert all(r["max_completion_tokens"] == 40 for r in server.requests)


def test_the_agent_comes_from_the_middleware_or_the_current_agent(server, store):
    ctl = controller(store, FixedPolicy(output=10))
    with ctl.request(ceiling=2_000) as req:
        agent(server, name=None, agent="formatter").invoke({"messages": [HumanMessage("a")]})
        with req.agent("reasoner"):
            agent(server, name=None).invoke({"messages": [HumanMessage("b")]})
        with pytest.raises(InvalidArgument):
            agent(server, name=None).invoke({"messages": [HumanMessage("c")]})
    assert [r.agent for r in req.calls.values()] == ["formatter", "reasoner"]


def test_no_open_request_raises_before_any_call(server):
    with pytest.raises(NoOpenRequest):
        agent(server).invoke({"messages": [HumanMessage("hi")]})
    assert server.requests == []


def test_an_explicit_request_wins(server, store):
    ctl = controller(store, FixedPolicy(output=10))
    with ctl.request(ceiling=2_000) as outer, ctl.request(ceiling=2_000) as inner:
        agent(server, req=outer).invoke({"messages": [HumanMessage("hi")]})
        assert settled(outer, "triage") == billed(server) > 0
        assert inner.summary().agents["triage"].consumed == 0
    assert server.requests[0]["max_completion_tokens"] == 10


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidArgument):
        BudgetMiddleware(agent="")
    with pytest.raises(InvalidArgument):
        BudgetMiddleware(max_extensions=-1)


@pytest.fixture
def uncached():
    adapter.import_langchain.cache_clear()
    yield
    adapter.import_langchain.cache_clear()


def test_a_version_outside_the_range_is_refused(monkeypatch, uncached):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.3.27")
    with pytest.raises(UnsupportedVersion, match=r">=1\.5,<2"):
        adapter.import_langchain()


def test_a_missing_langchain_names_the_extra(monkeypatch, uncached):
    real = importlib.import_module

    def fake(name: str, *args: Any) -> Any:
        if name.startswith("langchain"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingExtra, match=r"apportion\[langchain\]"):
        adapter.import_langchain()


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "frameworks" / "langchain_pipeline.py"


def test_the_example_pipeline_runs_on_the_local_server():
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    src = str(Path(__file__).resolve().parents[3] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "on the local server at http://127.0.0.1:" in out.stdout
    reasoner = re.search(r"reasoner .* (\d+) extension\(s\), truncated=(\w+)", out.stdout)
    assert reasoner is not None, out.stdout
    assert int(reasoner.group(1)) >= 1 and reasoner.group(2) == "False"
    assert "ceiling held: consumed" in out.stdout and out.stdout.rstrip().endswith("True")


def test_outside_pass_makes_the_call_unbudgeted_with_a_warning(server):
    with pytest.warns(UnbudgetedCall, match="not budgeted"):
        agent(server, outside="pass").invoke({"messages": [HumanMessage("hi")]})
    assert "max_completion_tokens" not in server.requests[0]
    with pytest.raises(InvalidArgument):
        BudgetMiddleware(outside="maybe")


def test_an_async_request_budgets_the_async_path(server, store):
    from integration_helpers import PIPELINE

    from apportion import AsyncController

    server.queue(words(20))
    ctl = AsyncController(PIPELINE, policy=FixedPolicy(output=8, extra=8), store=store)

    async def main() -> Any:
        async with ctl.arequest(ceiling=2_000) as req:
            out = await agent(server).ainvoke({"messages": [HumanMessage("hi")]})
            return req, out["messages"][-1].content

    req, text = asyncio.run(main())
    assert text == words(20)
    assert settled(req, "triage") == billed(server)


def test_the_responses_api_is_capped_and_a_cut_answer_extended(server, store):
    server.queue(words(20))
    model = chat_model(server, use_responses_api=True)
    graph = create_agent(model, tools=[], name="triage", middleware=[BudgetMiddleware()])
    ctl = controller(store, FixedPolicy(output=8, extra=8))
    with ctl.request(ceiling=2_000) as req:
        message = graph.invoke({"messages": [HumanMessage("hi")]})["messages"][-1]
        assert message.content == words(20)
        assert settled(req, "triage") == billed(server) == message.usage_metadata["total_tokens"]
    assert [r["max_output_tokens"] for r in server.requests] == [8, 8, 8]
    assert all(p.endswith("/responses") for p in server.paths)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_the_middleware_wraps_up_and_shows_the_budget(server, store, mode):
    server.queue(Reply(words(70)))
    ctl = controller(store, FixedPolicy(output=60, extra=0))
    graph = agent(server, name="reasoner", wrap_up_tokens=400, show_budget=True)
    question = {"messages": [HumanMessage("Count for me.")]}
    with ctl.request(ceiling=5_000) as req:
        if mode == "invoke":
            text = graph.invoke(question)["messages"][-1].content
        else:
            text = asyncio.run(graph.ainvoke(question))["messages"][-1].content
        assert_shown_and_wrapped_up(server, req)
    assert text == words(70)  # the wrap-up's conclusion joined to the cut answer
    assert server.requests[0]["max_completion_tokens"] == 60  # the reserve left unspent


@pytest.mark.parametrize(
    ("keywords", "argument"),
    [({"wrap_up_tokens": -1}, "wrap_up_tokens"), ({"show_budget": 1}, "show_budget")],
)
def test_bad_wrap_up_and_show_budget_are_refused(keywords, argument):
    with pytest.raises(ApportionError) as caught:
        BudgetMiddleware(**keywords)
    assert getattr(caught.value, "argument", getattr(caught.value, "field", None)) == argument
