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

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from apportion import Agent, Controller, Pipeline
from apportion.integrations.langchain import BudgetMiddleware
from apportion.testing.openai_server import OpenAIServer, Reply

CEILING = 6_000
REASONER_CAP = 150

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="prose"),
    ]
)

TICKET = "I was billed twice for my March invoice and the refund I was promised never came."

# A 40-message support history the reasoner reads (20 customer turns, 20 agent turns).
HISTORY: list[Any] = []
for turn in range(20):
    HISTORY.append(
        HumanMessage(
            f"Message {turn + 1} from the customer: invoice INV-{1000 + turn} shows a charge "
            f"of {20 + turn} dollars on card ending 4242, and I do not recognise it."
        )
    )
    HISTORY.append(
        AIMessage(
            f"Reply {turn + 1}: thank you, I have checked invoice INV-{1000 + turn}; the charge "
            "is for the monthly plan, and I have noted your question for the billing team."
        )
    )

LOCAL_ANSWERS = [
    '{"category": "billing", "urgency": "high", "topic": "double charge and missing refund"}',
    " ".join(
        [
            "First, the history shows the customer was charged for the monthly plan on every",
            "invoice from INV-1000 to INV-1019, and each reply only acknowledged the charge",
            "without checking for duplicates. Second, the March invoice appears twice in the",
            "payment processor's log if the retry after the card update succeeded while the",
            "first attempt was still pending, which is the usual cause of a double charge.",
            "Third, the promised refund was never issued because the ticket was noted for",
            "the billing team but never escalated with a refund request. Fourth, the right",
            "action is to confirm the duplicate in the processor, refund the second charge",
            "in full, reply with the refund reference, and add a check so that retries do",
            "not run while a payment is pending. Fifth, apologise for the delay and offer",
            "a credit for the month, since the customer asked twenty times without an",
            "answer that addressed the question.",
        ]
    ),
    "1. Confirm the duplicate March charge. 2. Refund it in full. 3. Send the refund "
    "reference. 4. Stop retries while a payment is pending. 5. Offer a month's credit.",
]


@contextlib.contextmanager
def chat_models() -> Iterator[tuple[str, dict[str, Any]]]:
    """Arguments of ``ChatOpenAI``: the real API, or the local server started here."""
    if os.environ.get("OPENAI_API_KEY") and "--local" not in sys.argv[1:]:
        yield "gpt-4o-mini (real calls)", {"model": "gpt-4o-mini"}
        return
    with OpenAIServer([Reply(text) for text in LOCAL_ANSWERS]) as server:
        local = {"model": "gpt-4o-mini", "base_url": server.url, "api_key": "local"}
        yield f"gpt-4o-mini on the local server at {server.url}", local


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

        for record in req.calls.values():
            print(
                f"  {record.agent:<9} asked {record.input_asked} in; granted "
                f"{record.context_granted} in / {record.output_cap} out; used "
                f"{record.input_used} in / {record.output_used} out; "
                f"{record.extensions} extension(s), truncated={record.truncated}"
            )
        print("\nanswer:\n" + answer + "\n")
    summary = req.summary()
    print(summary)
    held = summary.consumed <= CEILING
    print(f"ceiling held: consumed {summary.consumed} <= {CEILING}: {held}")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
