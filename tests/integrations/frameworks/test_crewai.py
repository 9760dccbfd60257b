"""CrewAI's real sequential Crew on the local server (its own environment: openai 2.x).

Every call the server sees carries a cap, the server-billed total stays within the ceiling,
the reasoner's history (inside its ONE task message) is shortened to fit, a cut answer is
extended (streamed too), and the ledger settles what the server billed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from integration_helpers import FixedPolicy, assert_shown_and_wrapped_up, controller, words

from apportion.errors import (
    ApportionError,
    InvalidArgument,
    NoOpenRequest,
    UnknownAgent,
    UnsupportedVersion,
)
from apportion.testing.openai_server import OpenAIServer, Reply
from conftest import require

require("crewai")

# CrewAI's own telemetry stays off (no network); not OTEL_SDK_DISABLED, which would switch
# off the OpenTelemetry SDK for every other test of the same run
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import Agent, Crew, Process, Task  # noqa: E402

from apportion.integrations.crewai import budgeted_llm  # noqa: E402

MODEL = "gpt-4o-mini"
NAMES = ("triage", "reasoner", "formatter")
ROOT = Path(__file__).resolve().parents[3]
CEILING = 1_500
HISTORY = "\n".join(f"{'user' if i % 2 else 'agent'}: {words(30, f'h{i}_')}" for i in range(40))


def crew(server: OpenAIServer, stream: bool, roles: tuple[str, ...] = NAMES) -> Any:
    llm = budgeted_llm(MODEL, base_url=server.url, api_key="test", stream=stream)
    agents = [
        Agent(
            role=role,
            goal=f"act as the {role}",
            backstory=f"You are the {role}.",
            llm=llm,
            allow_delegation=False,
            verbose=False,
            max_iter=1,
        )
        for role in roles
    ]
    descriptions = (
        "Classify: customer says they were billed twice.",
        "Conversation so far:\n" + HISTORY + "\nReason about the dispute.",
        "Format the analysis.",
    )
    tasks = [
        Task(description=text, expected_output="an answer", agent=agent)
        for text, agent in zip(descriptions, agents, strict=False)
    ]
    return Crew(agents=agents, tasks=tasks, process=Process.sequential, verbose=False)


def check(server: OpenAIServer, summary: Any, stream: bool) -> None:
    assert server.requests
    for sent in server.requests:
        assert isinstance(sent.get("max_tokens"), int)
        if stream:
            assert sent["stream_options"] == {"include_usage": True}
    billed = sum(map(sum, server.billed))
    assert billed <= CEILING
    assert summary.consumed == billed and summary.reserved == 0


@pytest.mark.parametrize("stream", [False, True])
def test_crew_fits_history_extends_and_settles(server, store, stream):
    server.queue(Reply("billing"), Reply("refund one charge"), Reply(words(30)))
    ctl = controller(store, FixedPolicy(context=600, output=12, extra=50))
    with ctl.request(ceiling=CEILING) as req:
        out = crew(server, stream).kickoff()
        summary = req.summary()
    assert str(out) == words(30)  # the formatter's answer: cut at 12, extended
    assert len(server.requests) == 1 + 1 + 3
    sizes = [len(sent["messages"]) for sent in server.requests]
    assert sizes == [2, 2, 2, 4, 4]  # system + one user; continuations add two
    reasoner_prompt = server.requests[1]["messages"][-1]["content"]
    assert "h0_0" in reasoner_prompt and "h39_29" in reasoner_prompt  # head and tail kept
    assert "tokens cut" in reasoner_prompt and len(reasoner_prompt) < len(HISTORY)
    assert {n for n, a in summary.agents.items() if a.consumed} == set(NAMES)
    check(server, summary, stream)


def test_kickoff_async_finds_the_request_in_its_thread(server, store):
    ctl = controller(store)

    async def run() -> Any:
        with ctl.request(ceiling=20_000) as req:
            await crew(server, False).kickoff_async()
            return req.summary()

    summary = asyncio.run(run())
    assert len(server.requests) == 3
    assert summary.consumed == sum(map(sum, server.billed))


def test_bad_calls_are_refused_before_anything_is_sent(server, store, monkeypatch):
    with pytest.raises(NoOpenRequest):
        crew(server, False).kickoff()
    with controller(store).request(ceiling=5_000), pytest.raises(UnknownAgent):
        crew(server, False, roles=("intruder", "reasoner", "formatter")).kickoff()
    assert server.requests == []
    with pytest.raises(InvalidArgument):
        budgeted_llm("")
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.0.0")
    with pytest.raises(UnsupportedVersion, match=r">=1\.15,<2"):
        budgeted_llm(MODEL)


def test_example_runs_without_a_key():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples/frameworks/crewai_pipeline.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": "/tmp"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "request: consumed" in done.stdout


def test_structured_output_goes_through_the_budget(server, store):
    from pydantic import BaseModel

    class Label(BaseModel):
        category: str

    server.queue(Reply('{"category": "billing"}'))
    llm = budgeted_llm(MODEL, base_url=server.url, api_key="test")
    agent = Agent(
        role="triage",
        goal="classify",
        backstory="You classify.",
        llm=llm,
        allow_delegation=False,
        verbose=False,
        max_iter=1,
    )
    task = Task(
        description="Classify: billed twice.",
        expected_output="a label",
        agent=agent,
        output_pydantic=Label,
    )
    with controller(store).request(ceiling=5_000) as req:
        out = Crew(agents=[agent], tasks=[task], process=Process.sequential).kickoff()
        summary = req.summary()
    assert out.pydantic == Label(category="billing")
    [sent] = server.requests
    assert isinstance(sent["max_tokens"], int) and "response_format" in sent
    assert summary.consumed == sum(map(sum, server.billed))


def test_a_rate_limited_call_retried_by_crewai_settles_once(server, store, monkeypatch):
    retry = pytest.importorskip("crewai.llms.retry")
    monkeypatch.setattr(retry, "get_retry_delay_seconds", lambda *a, **k: 0.0)
    server.fail_at(1, status=429)
    llm = budgeted_llm(MODEL, base_url=server.url, api_key="test", max_retries=0)
    agent = Agent(
        role="triage",
        goal="classify",
        backstory="You classify.",
        llm=llm,
        allow_delegation=False,
        verbose=False,
        max_iter=1,
    )
    task = Task(description="Classify: billed twice.", expected_output="a label", agent=agent)
    with controller(store).request(ceiling=5_000) as req:
        Crew(agents=[agent], tasks=[task], process=Process.sequential).kickoff()
        summary = req.summary()
    assert len(server.requests) == 2  # the 429, then CrewAI's retry
    assert len(server.billed) == 1
    assert summary.consumed == sum(map(sum, server.billed)) and summary.reserved == 0
    statuses = [record.status for record in req.calls.values()]
    assert statuses == ["released", "completed"]  # the 429's grant released, the retry's settled


@pytest.mark.parametrize("stream", [False, True])
def test_a_budgeted_llm_wraps_up_and_shows_the_budget(server, store, stream):
    server.queue(Reply(words(70)))
    ctl = controller(store, FixedPolicy(output=60, extra=0))
    llm = budgeted_llm(
        MODEL,
        base_url=server.url,
        api_key="test",
        stream=stream,
        wrap_up_tokens=400,
        show_budget=True,
    )
    with ctl.request(ceiling=5_000) as req, req.agent("reasoner"):
        text = llm.call([{"role": "user", "content": "Count for me."}])
        assert_shown_and_wrapped_up(server, req)
    assert text == words(70)


@pytest.mark.parametrize(
    ("keywords", "argument"),
    [({"wrap_up_tokens": -1}, "wrap_up_tokens"), ({"show_budget": "yes"}, "show_budget")],
)
def test_bad_wrap_up_and_show_budget_are_refused(server, keywords, argument):
    with pytest.raises(ApportionError) as caught:
        budgeted_llm(MODEL, base_url=server.url, api_key="test", **keywords)
    assert getattr(caught.value, "argument", getattr(caught.value, "field", None)) == argument
