"""AutoGen AgentChat: triage -> reasoner (reading a 40-message history) -> formatter, budgeted.

The only apportion lines: the import, ``budgeted(client, agent=name)`` as each agent's
model client, and the request around the run. Each agent's calls are counted, fitted (the
reasoner's one long task message is shortened inside when the ceiling is tight), capped,
extended when cut, and settled on the usage the server reports.

Against OpenAI when ``OPENAI_API_KEY`` is set (``gpt-4o-mini``); otherwise against a local
OpenAI-protocol server this script starts on a loopback port, with scripted answers.

Run from the repository root:  python examples/frameworks/autogen_pipeline.py
"""

from __future__ import annotations

import asyncio
import os
import warnings
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import ModelFamily
from autogen_ext.models.openai import OpenAIChatCompletionClient
from invoice_ticket import CEILING, HISTORY, LOCAL_ANSWERS, PIPELINE

from apportion import Controller
from apportion.integrations.autogen import budgeted
from apportion.testing.openai_server import OpenAIServer, Reply


def client(url: str | None) -> Any:
    """The model client the three agents share (the real one, or the local server's)."""
    if url is None:
        return OpenAIChatCompletionClient(model="gpt-4o-mini")
    return OpenAIChatCompletionClient(
        model="gpt-4o-mini",
        base_url=url,
        api_key="local",
        max_retries=0,
        model_info={
            "vision": False,
            "function_calling": True,
            "json_output": True,
            "family": ModelFamily.GPT_4O,
            "structured_output": True,
        },
    )


async def pipeline(url: str | None) -> None:
    inner = client(url)
    triage, reasoner, formatter = (
        AssistantAgent(name, model_client=budgeted(inner, agent=name), system_message=prompt)
        for name, prompt in (
            ("triage", "Classify the ticket as JSON with category and urgency."),
            ("reasoner", "Work out what happened and what to do, step by step."),
            ("formatter", "Rewrite the plan as one short instruction for the agent."),
        )
    )
    controller = Controller(PIPELINE, policy="elastic")
    async with controller.arequest(ceiling=CEILING) as req:
        ticket = "Customer says they were billed twice for the same invoice."
        label = (await triage.run(task=ticket)).messages[-1].content
        plan = (await reasoner.run(task=f"{HISTORY}\nTriage: {label}")).messages[-1].content
        final = (await formatter.run(task=f"Plan: {plan}")).messages[-1].content
        summary = req.summary()
    print(f"final answer: {final}")
    for name, used in summary.agents.items():
        print(f"{name:10} consumed {used.consumed:5} tokens")
    print(f"request: consumed {summary.consumed} of {CEILING}")


def main() -> None:
    if os.environ.get("OPENAI_API_KEY"):
        asyncio.run(pipeline(None))
        return
    # the local server names its model differently from OpenAI: AutoGen warns, harmlessly
    warnings.filterwarnings("ignore", "Resolved model mismatch")
    with OpenAIServer() as server:
        server.queue(*(Reply(answer) for answer in LOCAL_ANSWERS))
        asyncio.run(pipeline(server.url))
        print(f"server billed {sum(map(sum, server.billed))} tokens")


if __name__ == "__main__":
    main()
