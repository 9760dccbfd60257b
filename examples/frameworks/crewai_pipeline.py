"""CrewAI: a sequential crew, triage -> reasoner (reading a 40-message history) -> formatter.

The only apportion lines: the import, ``llm=budgeted_llm("gpt-4o-mini", ...)`` for the
agents (in place of ``LLM("gpt-4o-mini", ...)``), and the request around the kickoff.
CrewAI puts the whole history in the reasoner's one task message: under a tight ceiling it
is shortened inside (head and tail kept). Each call is capped, extended when cut, and
settled on the usage the server reports.

Against OpenAI when ``OPENAI_API_KEY`` is set (``gpt-4o-mini``); otherwise against a local
OpenAI-protocol server this script starts on a loopback port, with scripted answers.
Needs CrewAI's environment (``pip install "apportion[crewai]"``: openai 2.x).

Run from the repository root:  python examples/frameworks/crewai_pipeline.py
"""

from __future__ import annotations

import logging
import os

for _name in ("CREWAI_DISABLE_TELEMETRY", "OTEL_SDK_DISABLED"):
    os.environ.setdefault(_name, "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import Agent, Crew, Process, Task  # noqa: E402
from invoice_ticket import CEILING, HISTORY, LOCAL_ANSWERS, PIPELINE  # noqa: E402

from apportion import Controller  # noqa: E402
from apportion.integrations.crewai import budgeted_llm  # noqa: E402
from apportion.testing.openai_server import OpenAIServer, Reply  # noqa: E402


def run(url: str | None) -> None:
    local = {} if url is None else {"base_url": url, "api_key": "local"}
    llm = budgeted_llm("gpt-4o-mini", **local)
    roles = {
        "triage": "Classify the ticket as JSON with category and urgency.",
        "reasoner": "Work out what happened and what to do, step by step.",
        "formatter": "Rewrite the plan as one short instruction for the agent.",
    }
    agents = {
        role: Agent(
            role=role,
            goal=goal,
            backstory=f"You are the {role}.",
            llm=llm,
            allow_delegation=False,
            verbose=False,
            max_iter=1,
        )
        for role, goal in roles.items()
    }
    tasks = [
        Task(
            description="Customer says they were billed twice for the same invoice.",
            expected_output="a JSON label",
            agent=agents["triage"],
        ),
        Task(
            description=f"Conversation so far:\n{HISTORY}\nWhat happened, what to do?",
            expected_output="a plan",
            agent=agents["reasoner"],
        ),
        Task(
            description="Format the plan.",
            expected_output="one instruction",
            agent=agents["formatter"],
        ),
    ]
    crew = Crew(agents=list(agents.values()), tasks=tasks, process=Process.sequential)
    controller = Controller(PIPELINE, policy="elastic")
    with controller.request(ceiling=CEILING) as req:
        final = crew.kickoff()
        summary = req.summary()
    print(f"final answer: {final}")
    for name, used in summary.agents.items():
        print(f"{name:10} consumed {used.consumed:5} tokens")
    print(f"request: consumed {summary.consumed} of {CEILING}")


def main() -> None:
    # CrewAI logs that it estimates input tokens itself (apportion counts its own): quiet
    logging.getLogger("crewai.llms.base_llm").setLevel(logging.ERROR)
    if os.environ.get("OPENAI_API_KEY"):
        run(None)
        return
    with OpenAIServer() as server:
        server.queue(*(Reply(answer) for answer in LOCAL_ANSWERS))
        run(server.url)
        print(f"server billed {sum(map(sum, server.billed))} tokens")


if __name__ == "__main__":
    main()
