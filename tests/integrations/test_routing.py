"""Integrations obey a routing policy's model (and only a routing policy's), priced by it."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from integration_helpers import (
    PIPELINE,
    FixedPolicy,
    async_openai_client,
    openai_client,
    words,
)

from apportion import AsyncController, Controller
from apportion.catalog import Catalog, ModelInfo
from apportion.policies.base import Observation
from apportion.spec import Agent
from apportion.testing.openai_server import Reply

QUESTION = [{"role": "user", "content": "Count for me, please."}]
ASKED = "gpt-4o-mini"
CHEAP = ModelInfo("cheap-llm", input_price=0.1, output_price=0.2)


class RoutesTo(FixedPolicy):
    """A fixed grant on the model ``target`` (routing or not, as ``routes`` says)."""

    name = "routes-to"
    routes: ClassVar[bool] = True

    def __init__(self, target: str) -> None:
        super().__init__(context=10_000, output=100)
        self.target = target

    def route(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int, str | None]:
        ctx, out = self.grant(obs, agent, input_tokens, output_tokens)
        return ctx, out, self.target


class Chooses(RoutesTo):
    """Names a model but does not route: the caller's model stays."""

    name = "chooses"
    routes: ClassVar[bool] = False


def _controller(store: Any, policy: Any, cls: type[Controller] = Controller) -> Controller:
    return cls(PIPELINE, policy=policy, store=store, catalog=Catalog([CHEAP]))


def test_a_routing_policy_chooses_the_model_called_and_priced(server, store):
    server.queue(Reply(words(5)))
    with _controller(store, RoutesTo("cheap-llm")).request(ceiling=2_000) as req:
        response = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=ASKED, messages=QUESTION
        )
        report = response.apportion
    assert [r["model"] for r in server.requests] == ["cheap-llm"]
    assert report.model == "cheap-llm" and report.grant.model == "cheap-llm"
    assert report.cost_usd == pytest.approx(
        (0.1 * report.input_tokens + 0.2 * report.output_tokens) / 1e6
    )


def test_a_non_routing_policy_keeps_the_callers_model(server, store):
    server.queue(Reply(words(5)))
    with _controller(store, Chooses("cheap-llm")).request(ceiling=2_000) as req:
        response = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=ASKED, messages=QUESTION
        )
        report = response.apportion
    assert [r["model"] for r in server.requests] == [ASKED]
    assert report.model == ASKED and report.grant.model == ASKED
    assert report.cost_usd == pytest.approx(
        (0.15 * report.input_tokens + 0.6 * report.output_tokens) / 1e6
    )


def test_routing_keeps_the_callers_model_when_the_policy_names_none(server, store):
    server.queue(Reply(words(3)))
    with _controller(store, FixedPolicy()).request(ceiling=2_000) as req:
        response = req.openai(openai_client(server)).chat.completions.create(
            agent="triage", model=ASKED, messages=QUESTION
        )
    assert [r["model"] for r in server.requests] == [ASKED]
    assert response.apportion.grant.model == ASKED


def test_a_routed_extension_and_stream_stay_on_the_routed_model(server, store):
    server.queue(Reply(words(150)), Reply(words(4)))
    policy = RoutesTo("cheap-llm")
    policy.extra = 100
    with _controller(store, policy).request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server)).chat.completions
        response = chat.create(agent="reasoner", model=ASKED, messages=QUESTION)
        assert response.apportion.calls == 2
        stream = chat.create(agent="formatter", model=ASKED, messages=QUESTION, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert [r["model"] for r in server.requests] == ["cheap-llm"] * 3


def test_async_client_obeys_the_routing_policy(server, store):
    server.queue(Reply(words(5)))

    async def main() -> None:
        ctl = _controller(store, RoutesTo("cheap-llm"), AsyncController)
        async with ctl.request(ceiling=2_000) as req:
            chat = req.openai(async_openai_client(server))
            await chat.chat.completions.create(agent="reasoner", model=ASKED, messages=QUESTION)

    asyncio.run(main())
    assert [r["model"] for r in server.requests] == ["cheap-llm"]


def test_routed_policy_with_a_catalog_sends_a_catalog_model(server, store):
    server.queue(Reply(words(5)))
    catalog = Catalog(
        [
            ModelInfo("big-llm", 3.0, 15.0, capability={"reasoning": 1.0}),
            ModelInfo("small-llm", 0.15, 0.6, capability={"reasoning": 0.5}),
        ]
    )
    ctl = Controller(PIPELINE, policy="routed", store=store, catalog=catalog)
    with ctl.request(ceiling=20_000) as req:
        response = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=ASKED, messages=QUESTION
        )
    sent = server.requests[0]["model"]
    assert sent in {"big-llm", "small-llm"} and response.apportion.model == sent


def test_litellm_completion_obeys_the_routing_policy(server, store):
    from integration_helpers import litellm_args

    server.queue(Reply(words(5)))
    catalog = Catalog([ModelInfo("openai/cheap-llm", 0.1, 0.2)])
    ctl = Controller(PIPELINE, policy=RoutesTo("openai/cheap-llm"), store=store, catalog=catalog)
    with ctl.request(ceiling=2_000) as req:
        response = req.completion(agent="reasoner", messages=QUESTION, **litellm_args(server))
        report = response.apportion
    assert [r["model"] for r in server.requests] == ["cheap-llm"]  # LiteLLM drops "openai/"
    assert report.model == "openai/cheap-llm"
    assert report.cost_usd == pytest.approx(
        (0.1 * report.input_tokens + 0.2 * report.output_tokens) / 1e6
    )
