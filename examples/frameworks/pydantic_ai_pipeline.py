"""A three-agent Pydantic AI pipeline under one apportion ceiling.

triage classifies a ticket; the reasoner reads the ticket's 40-message support thread
(more than its grant holds: apportion fits it, keeping the most recent turns) and answers
in at most 120 tokens per call: a cut answer is extended when the ceiling can pay for the
follow-up call (which re-reads the fitted thread), else it is handed on cut and reported;
the formatter turns the analysis into a list, streamed. The lines apportion adds are
marked ``# apportion``.

Which model it runs against: ``gpt-4o-mini`` when ``OPENAI_API_KEY`` is set (real calls);
otherwise (or with ``--local``) a local server speaking the OpenAI protocol, started here
on a loopback port (:class:`apportion.testing.openai_server.OpenAIServer`), with scripted
answers: nothing leaves the machine.

Run from the repository root (needs ``pip install -e ".[pydantic-ai]"``):
    python examples/frameworks/pydantic_ai_pipeline.py [--local]
"""

from __future__ import annotations

import asyncio
from typing import Any

from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart
from support_ticket import MODEL, PIPELINE, TICKET, openai_client, report, thread

from apportion import Controller
from apportion.integrations.pydantic_ai import Apportion, budgeted_model  # apportion

CEILING = 2_000


def history() -> list[Any]:
    """The support thread as Pydantic AI messages (the ticket itself is the prompt)."""
    turns = thread()[:-1]
    return [
        ModelRequest(parts=[UserPromptPart(t["content"])])
        if t["role"] == "user"
        else ModelResponse(parts=[TextPart(t["content"])])
        for t in turns
    ]


async def run(client: AsyncOpenAI) -> int:
    model = budgeted_model(MODEL, client)  # apportion (was OpenAIChatModel(MODEL, ...))
    budget = [Apportion()]  # apportion
    triage = Agent(
        model, name="triage", instructions="Classify the ticket. JSON only.", capabilities=budget
    )
    reasoner = Agent(
        model,
        name="reasoner",
        instructions="You are a senior SRE. Explain what to check, in order, and why.",
        model_settings={"max_tokens": 120},
        capabilities=budget,
    )
    formatter = Agent(
        model, name="formatter", instructions="A short numbered list.", capabilities=budget
    )
    controller = Controller(PIPELINE, policy="elastic")
    with controller.request(CEILING) as req:  # apportion
        kind = await triage.run(TICKET)
        analysis = await reasoner.run(f"{TICKET}\n{kind.output}", message_history=history())
        async with formatter.run_stream(analysis.output) as listed:
            answer = ""
            async for answer in listed.stream_text():  # noqa: B007  (the last is whole)
                pass
        print("\nanswer:\n" + answer + "\n")
    return report(req, CEILING, analysis.output, 120)


def main() -> int:
    with openai_client() as client:
        return asyncio.run(run(client))


if __name__ == "__main__":
    raise SystemExit(main())
