"""A three-agent LangChain pipeline (triage, reasoner, formatter) under one token ceiling.

Three ``create_agent`` agents, each with apportion's ``BudgetMiddleware``; the pipeline runs
inside one ``controller.request(...)``, so every model call of every agent is counted,
granted, fitted, capped and settled against the same ceiling. The reasoner reads a
40-message support history and asks for at most 150 output tokens per call: its answer is
cut at the cap, and the middleware continues it by calling the model again (the elastic
policy extends the grant). The formatter's call is streamed (``stream_mode="messages"``).

Which model it runs against: ``gpt-4o-mini`` when ``OPENAI_API_KEY`` is set; otherwise
(or with ``--local``) a local server speaking the OpenAI chat-completions protocol,
started here on a loopback port with scripted answers: nothing leaves the machine.

Run from the repository root:  python examples/frameworks/langchain_pipeline.py [--local]
(Not named ``langchain.py``: a script of that name would shadow the package.)
"""

from __future__ import annotations

from typing import Any

from billing_ticket import (
    CEILING,
    HISTORY,
    PIPELINE,
    REASONER_CAP,
    TICKET,
    chat_models,
    print_calls_and_check,
)
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from apportion import Controller
from apportion.integrations.langchain import BudgetMiddleware


def build(name: str, prompt: str, **model: Any) -> Any:
    return create_agent(
        ChatOpenAI(max_retries=0, **model),
        tools=[],
        system_prompt=prompt,
        name=name,  # the agent's name in the budget
        middleware=[BudgetMiddleware()],
    )


def main() -> int:
    controller = Controller(PIPELINE, policy="elastic")
    with chat_models() as (where, model), controller.request(CEILING) as req:
        print(f"model: {where}")
        triage = build("triage", "Classify the ticket. Answer with JSON only.", **model)
        reasoner = build(
            "reasoner",
            "You are a senior billing specialist. Think step by step.",
            max_tokens=REASONER_CAP,
            **model,
        )
        formatter = build("formatter", "Turn the analysis into a short numbered list.", **model)

        label = triage.invoke({"messages": [HumanMessage(TICKET)]})["messages"][-1].text
        analysis = reasoner.invoke(
            {
                "messages": [
                    *HISTORY,
                    HumanMessage(TICKET),
                    AIMessage(label),
                    HumanMessage("Explain, step by step, what went wrong and what to do."),
                ]
            }
        )["messages"][-1].text
        answer = ""
        for chunk, _ in formatter.stream(
            {"messages": [HumanMessage(analysis)]}, stream_mode="messages"
        ):
            if isinstance(chunk, AIMessage):
                answer += chunk.text

    return print_calls_and_check(req, answer)


if __name__ == "__main__":
    raise SystemExit(main())
