"""The billing ticket the LangChain and LangGraph examples share: its 40-message history, the
pipeline, the local server's answers, and which model to call.

Imported by ``langchain_pipeline.py`` and ``langgraph_pipeline.py`` next to it (run as
scripts, their folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage

from apportion import Agent, Pipeline
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
def chat_models(answers: list[str] = LOCAL_ANSWERS) -> Iterator[tuple[str, dict[str, Any]]]:
    """Arguments of ``ChatOpenAI``: the real API, or the local server started here.

    Args:
        answers: what the local server answers, in order.
    """
    if os.environ.get("OPENAI_API_KEY") and "--local" not in sys.argv[1:]:
        yield "gpt-4o-mini (real calls)", {"model": "gpt-4o-mini"}
        return
    with OpenAIServer([Reply(text) for text in answers]) as server:
        local = {"model": "gpt-4o-mini", "base_url": server.url, "api_key": "local"}
        yield f"gpt-4o-mini on the local server at {server.url}", local


def print_calls_and_check(req: Any, answer: str) -> int:
    """Print each call's grant and use, the answer and the summary; 0 if the ceiling held."""
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
