"""LangGraph nodes calling ``budgeted(ChatOpenAI(...))``, against the local server.

Real LangGraph (``StateGraph``) and ChatOpenAI over HTTP to the local OpenAI-protocol
server: invoked, streamed (``stream_mode="messages"``), awaited and async-streamed, every
call the server sees carries a cap, the server-billed total stays under the ceiling, an
over-long history is fitted, a cut answer is extended, and the ledger settles what the
server billed.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.metadata
import operator
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

from conftest import require

require("langgraph")
require("langchain_openai")

from integration_helpers import (  # noqa: E402
    FixedPolicy,
    assert_shown_and_wrapped_up,
    controller,
    words,
)
from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from apportion import InvalidArgument, NoOpenRequest, UnbudgetedCall  # noqa: E402
from apportion.errors import ApportionError, UnsupportedVersion  # noqa: E402
from apportion.integrations import CONTINUE_PROMPT  # noqa: E402
from apportion.integrations import langgraph as adapter  # noqa: E402
from apportion.integrations.langgraph import budgeted  # noqa: E402
from apportion.testing.openai_server import Reply  # noqa: E402

CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def chat_model(server: Any, **kwargs: Any) -> Any:
    return ChatOpenAI(
        model="gpt-4o-mini", base_url=server.url, api_key="test", max_retries=0, **kwargs
    )


def graph_of(llm: Any, *names: str) -> Any:
    graph = StateGraph(MessagesState)
    for name in names:
        graph.add_node(name, lambda state: {"messages": [llm.invoke(state["messages"])]})
    previous = START
    for name in names:
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile()


def billed(server: Any) -> int:
    return sum(p + c for p, c in server.billed)


def settled(req: Any, name: str) -> int:
    return int(req.summary().agents[name].consumed)


def run(graph: Any, messages: list[Any], mode: str) -> str:
    state = {"messages": messages}
    if mode == "invoke":
        return graph.invoke(state)["messages"][-1].content
    if mode == "ainvoke":
        return asyncio.run(graph.ainvoke(state))["messages"][-1].content
    if mode == "stream":
        return "".join(c.content for c, _ in graph.stream(state, stream_mode="messages"))

    async def consume() -> str:
        return "".join([c.content async for c, _ in graph.astream(state, stream_mode="messages")])

    return asyncio.run(consume())


@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
def test_a_cut_answer_is_extended_capped_and_settled_as_billed(server, store, mode):
    server.queue(words(30))
    ctl = controller(store, FixedPolicy(output=8, extra=8))
    graph = graph_of(budgeted(chat_model(server)), "reasoner")
    with ctl.request(ceiling=2_000) as req:
        assert run(graph, [HumanMessage("Count for me.")], mode) == words(30)
        assert settled(req, "reasoner") == billed(server) <= 2_000
    assert len(server.requests) == 4
    assert all(r["max_completion_tokens"] == 8 for r in server.requests)
    assert server.requests[1]["messages"][-1]["content"] == CONTINUE_PROMPT
    if mode in ("stream", "astream"):
        assert all(r["stream_options"] == {"include_usage": True} for r in server.requests)
    record = next(iter(req.calls.values()))
    assert record.agent == "reasoner" and record.extensions == 3


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_a_reader_that_stops_early_stops_the_call_and_settles_what_arrived(server, store, mode):
    server.queue(words(30))
    ctl = controller(store, FixedPolicy(output=8, extra=8))  # cut at 8: would be continued
    llm = budgeted(chat_model(server), agent="reasoner")

    async def first_three() -> None:
        stream = llm.astream("Count for me.")
        async for i, _ in _enumerate(stream):
            if i == 2:
                break
        await stream.aclose()

    with ctl.request(ceiling=2_000) as req:
        if mode == "stream":
            for i, _ in enumerate(llm.stream("Count for me.")):
                if i == 2:
                    break
        else:
            asyncio.run(first_three())
        summary = req.summary()
        assert summary.reserved == 0 and settled(req, "reasoner") > 0
    assert len(server.requests) == 1  # no follow-up once the reader stopped


async def _enumerate(stream: Any) -> Any:
    i = 0
    async for item in stream:
        yield i, item
        i += 1


def test_each_node_is_its_own_agent_and_the_ceiling_holds(server, store):
    server.default = Reply(words(60))
    ctl = controller(store, "elastic")
    graph = graph_of(budgeted(chat_model(server)), "triage", "reasoner", "formatter")
    with ctl.request(ceiling=1_200) as req:
        graph.invoke({"messages": [HumanMessage(words(80))]})
        total = sum(settled(req, n) for n in ("triage", "reasoner", "formatter"))
        assert total == billed(server)
    assert billed(server) <= 1_200
    assert [r.agent for r in req.calls.values()][:3] == ["triage", "reasoner", "formatter"]
    assert all(any(k in r for k in CAPS) for r in server.requests)


def test_an_over_long_history_is_fitted(server, store):
    history = [HumanMessage(words(40, f"m{i}_")) for i in range(40)]
    ctl = controller(store, FixedPolicy(context=300, output=20))
    with ctl.request(ceiling=5_000) as req:
        graph_of(budgeted(chat_model(server)), "reasoner").invoke({"messages": history})
        assert settled(req, "reasoner") == billed(server)
    assert len(server.requests[0]["messages"]) < 40
    assert server.billed[0][0] <= 300
    assert server.requests[0]["messages"][-1]["content"] == history[-1].content


def test_bind_tools_and_structured_output_stay_budgeted(server, store):
    def lookup_invoice(invoice_id: str, customer_email: str, include_line_items: bool) -> str:
        """Look up an invoice of a customer by its id, with its line items if asked."""
        return "none"

    class Label(BaseModel):
        label: str

    llm = budgeted(chat_model(server), agent="triage")
    ctl = controller(store, FixedPolicy(output=20))
    with ctl.request(ceiling=5_000) as req:
        llm.invoke([HumanMessage("hi")])
        llm.bind_tools([lookup_invoice]).invoke([HumanMessage("hi")])
        llm.with_structured_output(Label, include_raw=True).invoke([HumanMessage("hi")])
        assert settled(req, "triage") == billed(server)
    plain, tools, structured = (r.input_asked for r in req.calls.values())
    assert tools > plain + 20 and structured > plain
    assert [r.get("max_completion_tokens") for r in server.requests] == [20, 20, 20]
    assert "tools" in server.requests[1] and "tools" in server.requests[2]


def test_under_create_agent_the_agent_is_its_name(server, store):
    agent = create_agent(budgeted(chat_model(server)), tools=[], name="formatter")
    ctl = controller(store, FixedPolicy(output=10))
    with ctl.request(ceiling=2_000) as req:
        agent.invoke({"messages": [HumanMessage("hi")]})
    assert [r.agent for r in req.calls.values()] == ["formatter"]


def test_the_request_may_come_from_the_run_config(server, store):
    ctl = controller(store, FixedPolicy(output=10))
    graph = graph_of(budgeted(chat_model(server)), "triage")
    with pytest.raises(NoOpenRequest):
        graph.invoke({"messages": [HumanMessage("hi")]})
    assert server.requests == []
    with ctl.request(ceiling=2_000) as req:
        config = {"configurable": {"apportion_request": req}}
        # a fresh context has no current request: the run config names it
        contextvars.Context().run(graph.invoke, {"messages": [HumanMessage("hi")]}, config)
        assert settled(req, "triage") == billed(server) > 0


def test_bad_arguments_and_versions_are_refused(server, monkeypatch):
    with pytest.raises(InvalidArgument):
        budgeted("gpt-4o-mini")
    with pytest.raises(InvalidArgument):
        budgeted(chat_model(server), agent="")
    adapter._class.cache_clear()
    adapter.import_langchain.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.3.0")
    try:
        with pytest.raises(UnsupportedVersion, match=r"langgraph 1\.3\.0 .*>=1\.2,<1\.3"):
            budgeted(chat_model(server))
    finally:
        monkeypatch.undo()
        adapter._class.cache_clear()
        adapter.import_langchain.cache_clear()


def test_a_cut_answer_with_tool_calls_is_not_continued(store):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    calls = [{"name": "lookup", "args": {"q": "x"}, "id": "call_1", "type": "tool_call"}]
    cut = AIMessage(
        content="partial", tool_calls=calls, response_metadata={"finish_reason": "length"}
    )
    llm = budgeted(
        GenericFakeChatModel(messages=iter([cut])),
        agent="triage",
        model_id="gpt-4o-mini",
        counter="approximate",
    )
    ctl = controller(store, FixedPolicy(output=8, extra=8))
    with ctl.request(ceiling=2_000) as req:
        answer = llm.invoke([HumanMessage("find x")])
    assert answer.tool_calls[0]["name"] == "lookup"
    record = next(iter(req.calls.values()))
    assert record.extensions == 0 and record.truncated


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "frameworks" / "langgraph_pipeline.py"


def run_example(path: Path) -> subprocess.CompletedProcess[str]:
    """Run an example with no key (so on the local server), ``src`` first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    src = str(Path(__file__).resolve().parents[3] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out


def test_the_example_pipeline_runs_on_the_local_server():
    out = run_example(EXAMPLE)
    assert "on the local server at http://127.0.0.1:" in out.stdout
    reasoner = re.search(r"reasoner .* (\d+) extension\(s\), truncated=(\w+)", out.stdout)
    assert reasoner is not None, out.stdout
    assert int(reasoner.group(1)) >= 1 and reasoner.group(2) == "False"
    assert out.stdout.rstrip().endswith("True")


def test_the_research_fan_out_example_keeps_every_child_within_its_draw():
    out = run_example(EXAMPLE.with_name("research_fanout.py"))
    children = re.findall(r"::(\w+) \(closed\): ceiling (\d+), consumed (\d+)", out.stdout)
    assert [name for name, _, _ in children] == ["onboarding", "pricing", "support", "competitors"]
    assert all(0 < int(used) <= int(ceiling) for _, ceiling, used in children)
    assert "ceilings held" in out.stdout


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_outside_pass_makes_the_call_unbudgeted_with_a_warning(server, mode):
    graph = graph_of(budgeted(chat_model(server), outside="pass"), "triage")
    with pytest.warns(UnbudgetedCall, match="not budgeted"):
        assert run(graph, [HumanMessage("hi")], mode)
    assert "max_completion_tokens" not in server.requests[0]
    with pytest.raises(InvalidArgument):
        budgeted(chat_model(server), outside="maybe")


class Plan(TypedDict, total=False):
    """A planner's state: topics, their child budgets, the branches' notes."""

    topics: list[str]
    budgets: list[Any]
    notes: Annotated[list[str], operator.add]


def test_send_branches_each_budgeted_as_a_child(server, store):
    """A planner fans out with ``Send``; each branch runs in its own child budget."""
    from langgraph.types import Send

    from apportion import current_request

    llm = budgeted(chat_model(server))
    server.default = Reply(words(40, "r"))

    def planner(state: Plan) -> dict[str, Any]:
        kids = current_request().fan_out(state["topics"], share=0.8)
        return {"budgets": kids}

    def fan_out(state: Plan) -> list[Any]:
        return [Send("reasoner", {"topic": k.name, "budget": k}) for k in state["budgets"]]

    def research(branch: dict[str, Any]) -> dict[str, Any]:
        with branch["budget"] as kid:  # current_request() is the child in this branch
            assert current_request() is kid
            return {"notes": [llm.invoke(f"Research {branch['topic']}.").text]}

    graph = StateGraph(Plan)
    graph.add_node("planner", planner)
    graph.add_node("reasoner", research)
    graph.add_edge(START, "planner")
    graph.add_conditional_edges("planner", fan_out, ["reasoner"])
    graph.add_edge("reasoner", END)
    ctl = controller(store, FixedPolicy(output=12, extra=12))
    with ctl.request(ceiling=2_000) as req:
        out = graph.compile().invoke({"topics": ["web", "papers", "code", "news"]})
        summary = req.summary()
        assert len(out["notes"]) == 4 and all(n == words(40, "r") for n in out["notes"])
        assert [c.ceiling for c in summary.children] == [400] * 4  # 0.8 of 2,000, split
        assert summary.consumed == billed(server) <= 2_000
        for child in summary.children:  # each branch within its own draw, charged there
            assert 0 < child.consumed <= child.ceiling and child.status == "closed"
            assert child.agents["reasoner"].calls == 1
    assert len(server.requests) == 4 * 4  # each answer cut at 12 and extended three times
    assert all(r["max_completion_tokens"] <= 12 for r in server.requests)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream"])
def test_a_budgeted_node_wraps_up_and_shows_the_budget(server, store, mode):
    server.queue(Reply(words(70)))
    ctl = controller(store, FixedPolicy(output=60, extra=0))
    llm = budgeted(chat_model(server), wrap_up_tokens=400, show_budget=True)
    with ctl.request(ceiling=5_000) as req:
        text = run(graph_of(llm, "reasoner"), [HumanMessage("Count for me.")], mode)
        assert_shown_and_wrapped_up(server, req)
    assert text == words(70)
    assert server.requests[0]["max_completion_tokens"] == 60


@pytest.mark.parametrize(
    ("keywords", "argument"),
    [({"wrap_up_tokens": 2.0}, "wrap_up_tokens"), ({"show_budget": "on"}, "show_budget")],
)
def test_bad_wrap_up_and_show_budget_are_refused(server, keywords, argument):
    with pytest.raises(ApportionError) as caught:
        budgeted(chat_model(server), **keywords)
    assert getattr(caught.value, "argument", getattr(caught.value, "field", None)) == argument
