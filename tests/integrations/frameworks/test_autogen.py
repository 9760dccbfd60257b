"""AutoGen AgentChat's real AssistantAgent / RoundRobinGroupChat on the local server.

Every call the server sees carries a cap, the server-billed total stays within the ceiling,
an over-long history is fitted, a cut answer is extended (streamed too), and the ledger
settles what the server billed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from integration_helpers import FixedPolicy, assert_shown_and_wrapped_up, controller, words

from apportion.errors import ApportionError, InvalidArgument, NoOpenRequest
from apportion.testing.openai_server import OpenAIServer, Reply
from conftest import require

require("autogen_agentchat")
require("autogen_ext.models.openai")

from autogen_agentchat.agents import AssistantAgent  # noqa: E402
from autogen_agentchat.conditions import MaxMessageTermination  # noqa: E402
from autogen_agentchat.teams import RoundRobinGroupChat  # noqa: E402
from autogen_core.models import ModelFamily, UserMessage  # noqa: E402
from autogen_ext.models.openai import OpenAIChatCompletionClient  # noqa: E402

from apportion.integrations.autogen import budgeted  # noqa: E402

MODEL = "gpt-4o-mini"
NAMES = ("triage", "reasoner", "formatter")
ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.filterwarnings("ignore:Resolved model mismatch")


def inner(server: OpenAIServer) -> Any:
    return OpenAIChatCompletionClient(
        model=MODEL,
        base_url=server.url,
        api_key="test",
        max_retries=0,
        model_info={
            "vision": False,
            "function_calling": True,
            "json_output": True,
            "family": ModelFamily.GPT_4O,
            "structured_output": True,
        },
    )


def agents(server: OpenAIServer, stream: bool, named: bool = True) -> list[Any]:
    client = inner(server)
    return [
        AssistantAgent(
            name,
            model_client=budgeted(client, agent=name if named else None),
            system_message=f"You are the {name}.",
            model_client_stream=stream,
        )
        for name in NAMES
    ]


def check(server: OpenAIServer, summary: Any, ceiling: int, stream: bool) -> None:
    assert server.requests
    for sent in server.requests:
        assert isinstance(sent.get("max_tokens"), int)
        if stream:
            assert sent["stream_options"] == {"include_usage": True}
    billed = sum(map(sum, server.billed))
    assert billed <= ceiling
    assert summary.consumed == billed and summary.reserved == 0


CEILING = 1_500  # less than the history: the reasoner's one task message is shortened
HISTORY = "\n".join(f"{'user' if i % 2 else 'agent'}: {words(30, f'h{i}_')}" for i in range(40))


@pytest.mark.parametrize("stream", [False, True])
def test_pipeline_fits_history_extends_and_settles(server, store, stream):
    server.queue(Reply("ticket billing"), Reply("refund one charge"), Reply(words(30)))
    ctl = controller(store, FixedPolicy(context=600, output=12, extra=50))
    triage, reasoner, formatter = agents(server, stream)

    async def run() -> Any:
        with ctl.request(ceiling=CEILING) as req:
            t = (await triage.run(task="Customer says they were billed twice.")).messages[-1]
            r = await reasoner.run(task=HISTORY + "\nReason about: " + str(t.content))
            f = await formatter.run(task="Format: " + str(r.messages[-1].content))
            return req.summary(), r.messages[-1].content, f.messages[-1].content

    summary, reasoned, formatted = asyncio.run(run())
    assert reasoned == "refund one charge"
    assert formatted == words(30)  # cut at 12, extended to the whole answer
    assert len(server.requests) == 1 + 1 + 3
    reasoner_prompt = server.requests[1]["messages"][-1]["content"]
    assert len(reasoner_prompt) < len(HISTORY)  # the one long task message was shortened
    assert set(summary.agents) >= set(NAMES)
    check(server, summary, CEILING, stream)


def test_team_names_agents_from_the_runtime(server, store):
    ctl = controller(store)
    team = RoundRobinGroupChat(
        agents(server, False, named=False), termination_condition=MaxMessageTermination(4)
    )

    async def run() -> Any:
        with ctl.request(ceiling=5_000) as req:
            await team.run(task="Customer says they were billed twice.")
            return req.summary()

    summary = asyncio.run(run())
    assert {name for name, a in summary.agents.items() if a.consumed} == set(NAMES)
    check(server, summary, 5_000, False)


def test_direct_create_and_stream_report_usage(server, store):
    client = budgeted(inner(server), agent="reasoner")
    ctl = controller(store, FixedPolicy(output=5, extra=50))
    server.queue(Reply(words(12)), Reply(words(12)))
    messages = [UserMessage(content="Count.", source="user")]

    async def run() -> Any:
        with ctl.request(ceiling=2_000) as req:
            result = await client.create(messages, extra_create_args={"max_tokens": 100})
            items = [item async for item in client.create_stream(messages)]
            return req.summary(), result, items

    summary, result, items = asyncio.run(run())
    assert result.content == words(12) and result.finish_reason == "stop"
    assert result.usage.completion_tokens == 12
    assert "".join(i for i in items if isinstance(i, str)) == words(12)
    final = items[-1]
    assert final.content == words(12) and final.usage.completion_tokens == 12
    assert [r["max_tokens"] for r in server.requests] == [5, 5, 5, 5, 5, 5]
    check(server, summary, 2_000, False)
    assert client.count_tokens(messages) > 0
    assert client.remaining_tokens(messages) > 0
    with ctl.request(ceiling=300):
        counted = client.count_tokens(messages)
        assert client.remaining_tokens(messages) == 300 - counted  # the budget, not the window
    assert client.model_info["family"] == ModelFamily.GPT_4O


def test_no_request_and_no_agent_are_refused(server, store):
    client = budgeted(inner(server))
    messages = [UserMessage(content="hi", source="user")]
    with pytest.raises(NoOpenRequest):
        asyncio.run(client.create(messages))
    with controller(store).request(ceiling=100), pytest.raises(InvalidArgument):
        asyncio.run(client.create(messages))
    assert server.requests == []
    with pytest.raises(InvalidArgument):
        budgeted(object(), agent="x")


def test_example_runs_without_a_key():
    with warnings.catch_warnings():
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples/frameworks/autogen_pipeline.py")],
            capture_output=True,
            text=True,
            timeout=300,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")},
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert "formatter" in done.stdout


def test_a_version_outside_the_range_is_refused(server, monkeypatch):
    import importlib.metadata

    from apportion.errors import UnsupportedVersion

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.8.1")
    with pytest.raises(UnsupportedVersion, match=r">=0\.7\.5,<0\.8") as caught:
        budgeted(inner(server), agent="triage")
    assert caught.value.version == "0.8.1"


class NoUsageStream(OpenAIChatCompletionClient):  # type: ignore[misc]
    """A client whose streams report ``RequestUsage(0, 0)``, as AutoGen's do by default."""

    async def create_stream(self, *args: Any, **kwargs: Any) -> Any:
        from autogen_core.models import CreateResult, RequestUsage

        async for item in super().create_stream(*args, **kwargs):
            if isinstance(item, CreateResult):
                item = item.model_copy(update={"usage": RequestUsage(0, 0)})
            yield item


def test_a_stream_without_usage_is_settled_estimated(server, store):
    plain = NoUsageStream(model=MODEL, base_url=server.url, api_key="test", max_retries=0)
    client = budgeted(plain, agent="formatter")
    server.queue(Reply(words(8)))
    messages = [UserMessage(content="Count.", source="user")]

    async def run() -> Any:
        with controller(store).request(ceiling=2_000) as req:
            items = [item async for item in client.create_stream(messages)]
            return req, items

    req, items = asyncio.run(run())
    assert items[-1].content == words(8)
    [record] = req.calls.values()
    assert record.notes["usage_estimated"] is True
    assert record.output_used >= 8  # counted here (tiktoken) as the pieces arrived, not 0


def test_an_agent_with_tools_is_budgeted_and_its_tools_sent(server, store):
    def lookup(invoice: str) -> str:
        """Look an invoice up."""
        return invoice

    agent = AssistantAgent(
        "triage", model_client=budgeted(inner(server), agent="triage"), tools=[lookup]
    )
    server.queue(Reply("billing"))

    async def run() -> Any:
        with controller(store).request(ceiling=2_000) as req:
            result = await agent.run(task="Classify: billed twice.")
            return req.summary(), result.messages[-1].content

    summary, answer = asyncio.run(run())
    assert answer == "billing"
    [sent] = server.requests
    assert sent["tools"][0]["function"]["name"] == "lookup" and isinstance(sent["max_tokens"], int)
    check(server, summary, 2_000, False)


@pytest.mark.parametrize("stream", [False, True])
def test_a_budgeted_client_wraps_up_and_shows_the_budget(server, store, stream):
    server.queue(Reply(words(70)))
    ctl = controller(store, FixedPolicy(output=60, extra=0))
    client = budgeted(inner(server), agent="reasoner", wrap_up_tokens=400, show_budget=True)
    reasoner = AssistantAgent(
        "reasoner", model_client=client, system_message="You count.", model_client_stream=stream
    )

    async def run() -> Any:
        with ctl.request(ceiling=5_000) as req:
            result = await reasoner.run(task="Count for me.")
            assert_shown_and_wrapped_up(server, req)
            return result.messages[-1].content

    assert asyncio.run(run()) == words(70)
    assert server.requests[0]["max_tokens"] == 60


@pytest.mark.parametrize(
    ("keywords", "argument"),
    [({"wrap_up_tokens": -1}, "wrap_up_tokens"), ({"show_budget": "yes"}, "show_budget")],
)
def test_bad_wrap_up_and_show_budget_are_refused(server, keywords, argument):
    with pytest.raises(ApportionError) as caught:
        budgeted(inner(server), agent="reasoner", **keywords)
    assert getattr(caught.value, "argument", getattr(caught.value, "field", None)) == argument
