"""A three-agent OpenAI Agents SDK pipeline under one apportion ceiling.

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

Run from the repository root (needs ``pip install -e ".[openai-agents]"``):
    python examples/frameworks/openai_agents_pipeline.py [--local]
"""

from __future__ import annotations

import asyncio
import os

from agents import Agent, ModelSettings, Runner, set_tracing_disabled
from openai import AsyncOpenAI
from support_ticket import MODEL, PIPELINE, TICKET, openai_client, report, thread

from apportion import Controller
from apportion.integrations.openai_agents import run_config  # apportion

CEILING = 2_000


async def run(client: AsyncOpenAI) -> int:
    triage = Agent(name="triage", instructions="Classify the ticket. JSON only.", model=MODEL)
    reasoner = Agent(
        name="reasoner",
        instructions="You are a senior SRE. Explain what to check, in order, and why.",
        model=MODEL,
        model_settings=ModelSettings(max_tokens=120),
    )
    formatter = Agent(name="formatter", instructions="A short numbered list.", model=MODEL)
    controller = Controller(PIPELINE, policy="elastic")
    with controller.request(CEILING) as req:  # apportion
        budget = run_config(client)  # apportion
        kind = await Runner.run(triage, TICKET, run_config=budget)
        analysis = await Runner.run(
            reasoner,
            [*thread(), {"role": "user", "content": str(kind.final_output)}],
            run_config=budget,
        )
        listed = Runner.run_streamed(formatter, str(analysis.final_output), run_config=budget)
        async for _ in listed.stream_events():
            pass
        print("\nanswer:\n" + str(listed.final_output) + "\n")
    return report(req, CEILING, str(analysis.final_output), 120)


def main() -> int:
    if not os.environ.get("OPENAI_API_KEY"):
        set_tracing_disabled(True)  # no key: nowhere to send traces
    with openai_client() as client:
        return asyncio.run(run(client))


if __name__ == "__main__":
    raise SystemExit(main())
