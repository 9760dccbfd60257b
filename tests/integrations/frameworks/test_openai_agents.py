"""The OpenAI Agents SDK, budgeted by ``run_config(client)``: its real runner and models
over HTTP to the local server. Every call carries a cap, the server-billed total stays
under the ceiling, and what the ledger settles equals what the server billed."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from conftest import require

agents = require("agents")

from integration_helpers import (  # noqa: E402
    FixedPolicy,
    assert_shown_and_wrapped_up,
    async_openai_client,
    controller,
    words,
)

from apportion import InvalidArgument, MissingExtra, NoOpenRequest, current_agent  # noqa: E402
from apportion.errors import ApportionError, UnsupportedVersion  # noqa: E402
from apportion.integrations.openai_agents import check_version, run_config  # noqa: E402
from apportion.testing.openai_server import Reply  # noqa: E402

agents.set_tracing_disabled(True)
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


def three_agents(**settings: Any) -> list[Any]:
    ms = agents.ModelSettings(**settings)
    return [
        agents.Agent(name=n, instructions=f"You are the {n}.", model=MODEL, model_settings=ms)
        for n in ("triage", "reasoner", "formatter")
    ]


def history(n: int = 40) -> list[dict[str, str]]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": words(30, f"m{i}x")} for i in range(n)]


async def pipeline(cfg: Any, streamed: bool = False, **settings: Any) -> list[str]:
    triage, reasoner, formatter = three_agents(**settings)
    outputs = []
    for agent, given in ((triage, "Which team?"), (reasoner, history()), (formatter, "Format.")):
        if streamed:
            result = agents.Runner.run_streamed(agent, given, run_config=cfg)
            async for _ in result.stream_events():
                pass
        else:
            result = await agents.Runner.run(agent, given, run_config=cfg)
        outputs.append(result.final_output)
    return outputs


@pytest.mark.parametrize("use_responses", [True, False], ids=["responses", "chat"])
def test_a_three_agent_pipeline_is_capped_fitted_and_settled(server, store, use_responses):
    server.default = type(server.default)(words(12, "a"))
    ctl = controller(store, FixedPolicy(context=300, output=40))
    client = async_openai_client(server)

    async def main() -> None:
        with ctl.request(ceiling=1_500) as req:
            await pipeline(run_config(client, use_responses=use_responses))
            assert billed(server) <= 1_500
            assert settled(req) == billed(server)
            assert {a for a, s in req.summary().agents.items() if s.consumed} == {
                "triage",
                "reasoner",
                "formatter",
            }

    asyncio.run(main())
    assert len(server.requests) == 3 and capped(server)
    key = "input" if use_responses else "messages"
    assert len(server.requests[1][key]) < 40  # the 40-message history was fitted


@pytest.mark.parametrize("use_responses", [True, False], ids=["responses", "chat"])
def test_a_cut_answer_is_extended_and_the_sdk_gets_it_whole(server, store, use_responses):
    text = words(30, "c")
    server.queue(text)
    ctl = controller(store, FixedPolicy(output=12, extra=12))
    client = async_openai_client(server)

    async def main() -> str:
        with ctl.request(ceiling=3_000) as req:
            cfg = run_config(client, use_responses=use_responses)
            agent = three_agents()[1]
            result = await agents.Runner.run(agent, "Count.", run_config=cfg)
            assert consumed(req, "reasoner") == billed(server)
            return str(result.final_output)

    assert asyncio.run(main()) == text
    assert len(server.requests) == 3 and capped(server)


def test_a_cut_responses_answer_the_budget_cannot_extend_completes_the_run(server, store):
    server.queue(words(30, "c"))
    ctl = controller(store, FixedPolicy(output=10))  # extends by nothing
    client = async_openai_client(server)

    async def main() -> str:
        with ctl.request(ceiling=3_000) as req:
            cfg = run_config(client)
            result = await agents.Runner.run(three_agents()[1], "Go.", run_config=cfg)
            assert consumed(req, "reasoner") == billed(server)
            return str(result.final_output)

    assert asyncio.run(main()) == words(10, "c")  # no ModelBehaviorError: the cut answer
    assert server.requests[0]["max_output_tokens"] == 10


@pytest.mark.parametrize("use_responses", [True, False], ids=["responses", "chat"])
def test_streamed_runs_are_capped_extended_and_settled(server, store, use_responses):
    server.default = type(server.default)(words(20, "s"))
    ctl = controller(store, FixedPolicy(context=300, output=12, extra=12))
    client = async_openai_client(server)

    async def main() -> list[str]:
        with ctl.request(ceiling=3_000) as req:
            cfg = run_config(client, use_responses=use_responses)
            out = await pipeline(cfg, streamed=True)
            assert billed(server) <= 3_000
            assert settled(req) == billed(server)
            return out

    assert asyncio.run(main()) == [words(20, "s")] * 3
    assert capped(server) and len(server.requests) == 6  # each answer cut once, extended
    if use_responses:
        assert [r.get("previous_response_id") for r in server.requests[:2]] == [None, "resp_1"]
        assert len(server.requests[2]["input"]) < 40
    else:
        assert all(r["stream_options"] == {"include_usage": True} for r in server.requests)
        assert len(server.requests[2]["messages"]) < 40


def test_a_streamed_responses_answer_the_budget_cannot_extend_completes_the_run(server, store):
    server.queue(words(30, "c"))
    ctl = controller(store, FixedPolicy(output=10))  # extends by nothing
    client = async_openai_client(server)

    async def main() -> tuple[str, list[str]]:
        with ctl.request(ceiling=3_000) as req:
            result = agents.Runner.run_streamed(
                three_agents()[1], "Go.", run_config=run_config(client)
            )
            kinds = [
                e.data.type async for e in result.stream_events() if e.type == "raw_response_event"
            ]
            assert consumed(req, "reasoner") == billed(server)
            return str(result.final_output), kinds

    output, kinds = asyncio.run(main())
    assert output == words(10, "c")  # no ModelBehaviorError: the cut answer
    assert kinds[-1] == "response.completed" and "response.incomplete" not in kinds


@pytest.mark.parametrize("use_responses", [True, False], ids=["responses", "chat"])
def test_handoffs_and_agents_as_tools_charge_each_agent(server, store, use_responses):
    server.queue(
        Reply(tool_calls=(("transfer_to_reasoner", "{}"),)),
        Reply(tool_calls=(("fmt", '{"input": "x y"}'),)),
    )
    ctl = controller(store)
    client = async_openai_client(server)
    formatter = agents.Agent(name="formatter", instructions="Format.", model=MODEL)
    reasoner = agents.Agent(
        name="reasoner",
        instructions="Reason.",
        model=MODEL,
        tools=[formatter.as_tool(tool_name="fmt", tool_description="format text")],
    )
    triage = agents.Agent(name="triage", instructions="Route.", model=MODEL, handoffs=[reasoner])

    async def main() -> None:
        with ctl.request(ceiling=5_000) as req:
            result = await agents.Runner.run(
                triage, "Hi.", run_config=run_config(client, use_responses=use_responses)
            )
            assert result.last_agent.name == "reasoner"
            used = {a: int(s.consumed) for a, s in req.summary().agents.items()}
            assert all(used[a] > 0 for a in ("triage", "reasoner", "formatter"))
            assert settled(req) == billed(server)

    asyncio.run(main())
    assert len(server.requests) == 4 and capped(server)


def test_a_users_filter_runs_after_the_agent_is_named(server, store):
    seen: list[str] = []

    def mine(data: Any) -> Any:
        seen.append(str(current_agent()))
        return data.model_data

    ctl = controller(store)
    cfg = run_config(async_openai_client(server), call_model_input_filter=mine)

    async def main() -> None:
        with ctl.request(ceiling=3_000):
            await agents.Runner.run(three_agents()[2], "Hi.", run_config=cfg)
            assert current_agent() is None  # named inside the run only

    asyncio.run(main())
    assert seen == ["formatter"]


def test_no_open_request_is_a_clear_error_and_nothing_is_sent(server):
    cfg = run_config(async_openai_client(server))
    with pytest.raises(NoOpenRequest):
        asyncio.run(agents.Runner.run(three_agents()[0], "Hi.", run_config=cfg))
    assert server.requests == []


def test_a_version_outside_the_range_is_refused_naming_it():
    check_version("0.24.3")
    for version in ("0.23.9", "0.25.0", "1.0", "dev"):
        with pytest.raises(UnsupportedVersion, match=r">=0\.24,<0\.25") as refused:
            check_version(version)
        assert refused.value.version == version


def test_a_missing_sdk_names_the_extra(server, monkeypatch):
    monkeypatch.setitem(sys.modules, "agents", None)
    with pytest.raises(MissingExtra, match=r"apportion\[openai-agents\]"):
        run_config(async_openai_client(server))


def test_a_sync_client_is_refused(server):
    from integration_helpers import openai_client

    with pytest.raises(InvalidArgument, match="AsyncOpenAI"):
        run_config(openai_client(server))


@pytest.mark.parametrize("use_responses", [True, False], ids=["responses", "chat"])
def test_retry_settings_copy_the_client_and_it_stays_budgeted(server, store, use_responses):
    import openai

    copies: list[list[str]] = []

    class Spy(openai.AsyncOpenAI):
        def copy(self, **kwargs: Any) -> Any:
            copies.append(sorted(kwargs))
            return super().copy(**kwargs)

        with_options = copy

    ctl = controller(store, FixedPolicy(output=20))
    client = Spy(base_url=server.url, api_key="test", max_retries=0)
    retry = agents.ModelRetrySettings(max_retries=0)

    async def main() -> None:
        with ctl.request(ceiling=3_000) as req:
            cfg = run_config(client, use_responses=use_responses)
            await agents.Runner.run(three_agents(retry=retry)[0], "Hi.", run_config=cfg)
            assert consumed(req, "triage") == billed(server) > 0

    asyncio.run(main())
    assert copies and all(kwargs == ["max_retries"] for kwargs in copies)
    assert len(server.requests) == 1 and capped(server)


@pytest.mark.parametrize("use_responses", [True, False], ids=["responses", "chat"])
def test_a_sub_agent_run_in_a_tool_is_budgeted_as_a_child(server, store, use_responses):
    from apportion import current_request

    server.queue(
        Reply(tool_calls=(("research", '{"topic": "refunds"}'),)),  # the orchestrator
        Reply(words(30, "s")),  # the sub-agent, in its child budget
        Reply("Done."),  # the orchestrator again
    )
    client = async_openai_client(server)
    cfg = run_config(client, use_responses=use_responses)
    researcher = agents.Agent(name="reasoner", instructions="Research.", model=MODEL)

    @agents.function_tool
    async def research(topic: str) -> str:
        """Research a topic with a sub-agent."""
        with current_request().child("researcher", ceiling=600) as kid:
            result = await agents.Runner.run(researcher, topic, run_config=cfg)
            assert kid.summary().agents["reasoner"].consumed > 0
            return str(result.final_output)

    orchestrator = agents.Agent(
        name="triage", instructions="Delegate.", model=MODEL, tools=[research]
    )
    ctl = controller(store, FixedPolicy(output=12, extra=12))

    async def main() -> Any:
        with ctl.request(ceiling=3_000) as req:
            result = await agents.Runner.run(orchestrator, "Refunds?", run_config=cfg)
            assert result.final_output == "Done."
            return req.summary()

    summary = asyncio.run(main())
    (child,) = summary.children
    assert child.ceiling == 600 and 0 < child.consumed <= 600
    assert child.agents["reasoner"].calls == 1 and summary.agents["triage"].calls == 2
    assert summary.consumed == billed(server) <= 3_000
    sub_calls = server.requests[1:4]  # the sub-agent's answer: cut at 12, extended twice
    assert all(r.get("max_output_tokens", r.get("max_tokens")) <= 12 for r in sub_calls)


@pytest.mark.parametrize("use_responses", [True, False], ids=["responses", "chat"])
def test_run_config_wraps_up_and_shows_the_budget(server, store, use_responses):
    server.queue(Reply(words(70)))
    ctl = controller(store, FixedPolicy(output=60, extra=0))
    client = async_openai_client(server)

    async def main() -> str:
        with ctl.request(ceiling=5_000) as req:
            cfg = run_config(
                client, use_responses=use_responses, wrap_up_tokens=400, show_budget=True
            )
            result = await agents.Runner.run(three_agents()[1], "Count.", run_config=cfg)
            assert_shown_and_wrapped_up(server, req)
            return str(result.final_output)

    assert asyncio.run(main()) == words(70)


@pytest.mark.parametrize(
    ("keywords", "argument"),
    [({"wrap_up_tokens": -5}, "wrap_up_tokens"), ({"show_budget": "yes"}, "show_budget")],
)
def test_bad_wrap_up_and_show_budget_are_refused(server, keywords, argument):
    with pytest.raises(ApportionError) as caught:
        run_config(async_openai_client(server), **keywords)
    assert getattr(caught.value, "argument", getattr(caught.value, "field", None)) == argument
